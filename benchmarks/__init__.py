"""Benchmarks: ``python -m benchmarks.<name>`` from the repository root (ratios vs a same-run baseline)."""
