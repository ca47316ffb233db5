"""The SkipViT paper's Table 1 rows on the synthetic default (configs/default.py), on a CPU.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_synthetic.py \
      --sweep_dir /tmp/table1
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_synthetic.py \
      --sweep_dir /tmp/table1 --seeds 0,1,2  # every run over three seeds; seed 0's are reused

The dense baseline, the fused-token row and the seven skip rows, each the 4-epoch tiny ViT of
configs/default.py:baseline with the row's routing and the default's 1-epoch drop warm-up.
Nine runs of the default's length per seed (docs/results.md has its wall time). The paper's
ImageNet figures are in configs/skipvit_s16_imagenet.py; the same rows at full scale are
configs/sweeps/table1_imagenet.py.
"""

from configs.skipvit_s16_imagenet import ROWS
from configs.sweeps import paper_row

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0,)
RUNS = [
    {"name": "dense"},
    *({"name": row, "overrides": {**paper_row(row), "drop_warmup_epochs": 1.0}} for row in ROWS),
]
