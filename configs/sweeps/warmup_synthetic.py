"""The SkipViT paper's Table 3 ablation on the synthetic default: drop warm-up or none.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/warmup_synthetic.py \
      --sweep_dir /tmp/sweeps/warmup

Rows 4.7-30.30-10 and 6-55-11, each routed from step 0 (drop_warmup_epochs 0) and after one
epoch on all tokens (1, configs/default.py's value), plus the dense run; all over
configs/default.py:baseline (4 epochs). Five runs of the default's length per seed.
"""

from configs.sweeps import paper_row

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0,)
ROWS = ("4.7-30.30-10", "6-55-11")
WARMUP_EPOCHS = (0.0, 1.0)

RUNS = [
    {"name": "dense"},
    *({"name": f"{row}_warmup{warmup:g}",
       "overrides": {**paper_row(row), "drop_warmup_epochs": warmup}}
      for row in ROWS for warmup in WARMUP_EPOCHS),
]
