"""Trains a ViT (dense, SkipViT or ToE) from a config file.

  python main.py --config configs/default.py --workdir /tmp/skipvit
  python main.py --config configs/default.py:baseline --workdir /tmp/dense
  python main.py --config configs/default.py --config.routing.drop_ratios='(0.5,)' --workdir ...

The same as `python -m skipvit_jax` (skipvit_jax/__main__.py, which documents the exit status
and the one-line errors). Rerunning with the same --workdir resumes from its latest checkpoint.
"""

from skipvit_jax.__main__ import run

if __name__ == "__main__":
  run()
