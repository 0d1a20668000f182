"""python -m ambient.eval: evaluate a checkpoint (ambient.eval.evaluate)."""
import sys

from .evaluate import main

if __name__ == "__main__":
    sys.exit(main())
