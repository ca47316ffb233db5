"""ToE alone and ToE + SkipViT against dense, on the synthetic default.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/toe_synthetic.py \
      --sweep_dir /tmp/sweeps/toe

The default's ToE runs as a sweep: configs/default.py:baseline (dense),
configs/default.py:toe,baseline (ToE stages of 33 / 49 / 65 tokens) and configs/default.py:toe
(ToE plus the default SkipViT routing, 6-55-11 after a 1-epoch warm-up). Three runs of the
default's length per seed.
"""

BASE = "configs/default.py:baseline"
DENSE = "dense"
SEEDS = (0,)
RUNS = [
    {"name": "dense"},
    {"name": "toe", "base": "configs/default.py:toe,baseline"},
    {"name": "toe+skipvit", "base": "configs/default.py:toe"},
]
