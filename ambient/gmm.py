"""python -m ambient.gmm: the paper's theory as a Gaussian-mixture experiment (ambient.study.gmm)."""
import sys

from ambient.study.gmm import main

if __name__ == "__main__":
    sys.exit(main())
