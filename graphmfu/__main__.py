"""``python -m graphmfu ...``: the same command line as ``graphmfu ...`` (graphmfu/cli.py)."""
import sys

from graphmfu.cli import main

if __name__ == "__main__":
    sys.exit(main())
