"""The reproduction on the synthetic default: the papers' claims at a CPU's scale.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/reproduction_synthetic.py \
      --sweep_dir /tmp/sweeps/reproduction_synthetic

configs/default.py:baseline (the default's 12-layer ViT and recipe, dense): dense; the
SkipViT rows 6-55-11, 6-50-11, 6-45-11, 4.7-30.30-11, 4.7-30.30-10 and the fused-token row
6-45-fused, each after the default's drop warm-up; 6-55-11 without warm-up; 6-55-11 keeping a
random subset (the control for [CLS]-attention selection); ToE alone; ToE + 6-55-11. Three
seeds each, evaluated every half epoch (docs/results.md's recall-versus-epoch figure). 33 runs
of the default's length; interrupted sweeps resume where they stopped.
"""

from configs import default
from configs.sweeps import reproduction_runs

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0, 1, 2)


def runs() -> list[dict]:
  return reproduction_runs(
      dense=BASE, toe="configs/default.py:toe,baseline", toe_skipvit="configs/default.py:toe",
      warmup_epochs=default.get_config().drop_warmup_epochs,
      every_run={"eval_every_epochs": 0.5})
