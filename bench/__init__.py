"""Benchmarks. Each module is runnable (``python -m bench.<name>``) and writes its figures into
bench/RESULTS.md under its own heading. Medians and ratios, never timed assertions in tests."""
