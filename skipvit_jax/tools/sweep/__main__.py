"""python -m skipvit_jax.tools.sweep --sweep configs/sweeps/FILE.py --sweep_dir DIR"""

from absl import app

from skipvit_jax.tools.sweep import runner

if __name__ == "__main__":
  app.run(runner.main, flags_parser=runner.parse_flags)
