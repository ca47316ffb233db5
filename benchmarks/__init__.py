"""Micro-benchmarks; run as scripts (python benchmarks/NAME.py) or modules."""
