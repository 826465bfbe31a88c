"""Benchmarks: `make bench` or `python -m benchmarks [NAME ...]`. Each prints ratios measured in one run."""
