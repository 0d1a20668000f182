"""python -m ambient.train: the trainer's command line (ambient.train.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
