"""Train an ambient diffusion model (the command line is ambient/train/cli.py: `python -m ambient.train` is the same).

    python train.py                                   # tiny UNet on the embedded MNIST-5k, 10% clean + 90% noisy
    python train.py --data DATA.zip --preset ddpmpp --n-clean 5000 --sigma-n 0.2 --batch 512
    python train.py --data noisy.zip                  # a noisy data set: its stored images and sigma_n as they are
    torchrun --nproc_per_node=8 train.py ...          # DDP, one process per GPU
"""
import sys

from ambient.train.cli import main, parse_args  # noqa: F401  (parse_args: for code that does `import train`)

if __name__ == "__main__":
    sys.exit(main())
