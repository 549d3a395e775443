"""Shim: `python cli.py ...` is the same as the `xnorpipe` console script."""

from xnorpipe.cli import main

if __name__ == "__main__":
    main()
