"""Generate images from a trained checkpoint (the command line is ambient/sample.py: `python -m ambient.sample`).

    python sample.py --ckpt runs/00000-mnist-tiny --out grid.png           # a PNG grid of seeds 0-63
    python sample.py --ckpt RUN --seeds 0-9999 --out images/                # a folder of PNGs
    python sample.py --ckpt RUN --seeds 0-49999 --out samples.npz           # uint8 array (N, H, W, C)
"""
import sys

from ambient.sample import main

if __name__ == "__main__":
    sys.exit(main())
