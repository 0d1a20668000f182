"""python -m ambient.study: run a data-scaling study (ambient.study.runner)."""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
