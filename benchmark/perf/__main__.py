"""`python -m benchmark.perf ...` is the harness (benchmark/perf/harness.py)."""

from benchmark.perf.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
