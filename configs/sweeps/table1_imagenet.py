"""The SkipViT paper's Table 1 on ImageNet-1k: ViT-S/16 dense and every routed row.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_imagenet.py \
      --sweep_dir $SWEEP_DIR --override data.data_dir=$TFDS_DATA_DIR

Each run is a full 100-epoch recipe: configs/vit_s16_imagenet.py (dense) and
configs/skipvit_s16_imagenet.py:row=<row> (15 drop warm-up epochs), nine runs on an accelerator
box (the paper: 8 Ascend 910A, roughly a day per run; its figures are in the row config's
docstring). `--timeout` bounds an attempt; rerunning the command resumes. Not run on a CPU.
"""

from configs.skipvit_s16_imagenet import ROWS

BASE = "configs/vit_s16_imagenet.py"
DENSE = "dense"
SEEDS = (0,)
RUNS = [
    {"name": "dense"},
    *({"name": row, "base": f"configs/skipvit_s16_imagenet.py:row={row}"} for row in ROWS),
]
