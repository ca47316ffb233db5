"""Micro-benchmarks: `python -m benchmarks.NAME` from the repository root (or anywhere the
project is installed)."""
