"""The benchmark: `python bench/run.py` (see bench/main.py and docs/performance.md)."""
