"""python -m ambient.dataset_tool: write an EDM-format data set, or a noisy one (ambient.data.tool)."""
import sys

from ambient.data.tool import main

if __name__ == "__main__":
    sys.exit(main())
