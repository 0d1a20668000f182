"""python -m ambient.convert: import an NVIDIA EDM network pickle (ambient.io.convert)."""
import sys

from ambient.io.convert import main

if __name__ == "__main__":
    sys.exit(main())
