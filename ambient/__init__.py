"""ambient: a trainer for diffusion models on data sets of a few clean and many noisy images, and the tools to
measure what a noisy image is worth. The packages follow the layers and import only downward
(docs/design.md, "Layout"):

    ambient.common   atomic writes, argument types, pixels and image files, plots
    ambient.data     image sources, the clean/noisy split and corruption, random streams, data order, data set tool
    ambient.model    networks and preconditioning, the ambient loss, the sampler, image generation
    ambient.io       checkpoints, network templates, loading a network, EDM import
    ambient.train    configuration, the training step, the loop, torch.distributed, host CPU choices
    ambient.eval     metrics and checkpoint evaluation
    ambient.study    scaling studies, their report and fits, the GMM experiment

The modules beside the packages are command lines (python -m ambient.sample, .dataset_tool, .convert, .gmm) and
the public paths ambient.networks and ambient.sampler.
"""
