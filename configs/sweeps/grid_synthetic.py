"""A grid over drop layer x drop ratio x return layer on the synthetic default, plus dense.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/grid_synthetic.py \
      --sweep_dir /tmp/sweeps/grid

Drop at layer 3 or 6, 30% or 55% of the tokens, return before layer 9 or 11: eight routed runs
named like the paper's rows ("3-30-9") and the dense run, each configs/default.py:baseline
(4 epochs, 1-epoch drop warm-up for routed runs). Nine runs of the default's length per seed.
"""

import itertools

from configs.sweeps import paper_row

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0,)
DROP_LAYERS = (3, 6)
DROP_PERCENTS = (30, 55)
RETURN_LAYERS = (9, 11)


def runs() -> list[dict]:
  grid = []
  for layer, percent, back in itertools.product(DROP_LAYERS, DROP_PERCENTS, RETURN_LAYERS):
    row = f"{layer}-{percent}-{back}"
    grid.append({"name": row, "overrides": {**paper_row(row), "drop_warmup_epochs": 1.0}})
  return [{"name": "dense"}, *grid]
