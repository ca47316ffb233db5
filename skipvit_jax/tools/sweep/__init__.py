"""Sweeps: a list of config overrides over a base config, trained one workdir each and
tabulated (`python -m skipvit_jax.tools.sweep`). spec.py reads sweep files (their format is
there) into runs and command lines, runner.py trains them, results.py reads the run dirs back
into rows and writes results.{csv,json,md} (fields and file names: schema.py; summaries over
seeds: stats.py; results.md: tables.py)."""
