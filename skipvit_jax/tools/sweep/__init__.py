"""Sweeps: a list of config overrides over a base config, trained one workdir each and
tabulated (`python -m skipvit_jax.tools.sweep`; the sweep file format is in runner.py)."""
