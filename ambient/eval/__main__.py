"""python -m ambient.eval: evaluate a checkpoint (ambient.eval.evaluation)."""
import sys

from .evaluation import main

if __name__ == "__main__":
    sys.exit(main())
