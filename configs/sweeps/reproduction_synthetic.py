"""Every run of docs/results.md: the papers' claims at the synthetic default's scale, on a CPU.

  python -m skipvit_jax.sweep --sweep configs/sweeps/reproduction_synthetic.py \
      --sweep_dir /tmp/sweeps/reproduction

The dense baseline; the SkipViT Table 1 rows with the fused-token row (as
configs/sweeps/table1_synthetic.py); the Table 3 warm-up ablation's runs without warm-up for two
rows (their 1-epoch runs are the Table 1 ones); ToE alone and ToE + SkipViT (as
configs/sweeps/toe_synthetic.py). All over configs/default.py:baseline (3.5 epochs of the tiny
ViT), evaluated every half epoch for the recall-versus-epoch plot. The runs whose claims turn
on small differences (dense, skip versus fused at 45% dropped, 6-55-11 with and without warm-up,
ToE) get a second seed. 19 runs of about 4 minutes on a 2-core CPU: about 80 minutes.
"""

from configs.skipvit_s16_imagenet import ROWS
from configs.sweeps import paper_row

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0,)
TWO_SEEDS = (0, 1)
EVAL = {"eval_every_epochs": 0.5}


def _row(row: str, warmup_epochs: float, name: str | None = None) -> dict:
  return {"name": name or row,
          "overrides": {**paper_row(row), "drop_warmup_epochs": warmup_epochs, **EVAL}}


def runs() -> list[dict]:
  closer_look = {"dense", "6-45-fused", "6-45-11", "6-55-11", "6-55-11_warmup0", "toe"}
  entries = [
      {"name": "dense", "overrides": EVAL},
      *(_row(row, 1.0) for row in ROWS),
      *(_row(row, 0.0, f"{row}_warmup0") for row in ("4.7-30.30-10", "6-55-11")),
      {"name": "toe", "base": "configs/default.py:toe,baseline", "overrides": EVAL},
      {"name": "toe+skipvit", "base": "configs/default.py:toe", "overrides": EVAL},
  ]
  return [{**entry, "seeds": TWO_SEEDS} if entry["name"] in closer_look else entry
          for entry in entries]
