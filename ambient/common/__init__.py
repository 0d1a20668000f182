"""What every layer uses: atomic writes, command-line argument types, pixels and image files, plots."""
