"""The benchmark's entry point: `python bench/run.py --help` (the work is in bench/main.py)."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: the repository instead of bench/ on the path, so `bench` is a package (and no
    # module of bench/ shadows another)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.main import main

if __name__ == "__main__":
    sys.exit(main())
