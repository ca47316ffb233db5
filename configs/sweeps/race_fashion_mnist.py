"""Token reducers at equal FLOPs on Fashion-MNIST: SkipViT, ToMe and PatchDropout, on a CPU.

  apt-get install dataset-fashion-mnist
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/race_fashion_mnist.py \
      --sweep_dir docs/reproduction/race_fashion_mnist

configs/fashion_mnist.py's 5.5-epoch recipe, three seeds, every reducer after the same 1-epoch
warm-up on all tokens. Two points of whole-run FLOP-ideal speedup (docs/method.md §10 has the
command that finds them):
  - SkipViT 6-55-11's. PatchDropout keeps 40 of 49 patches; ToMe merges 2, 2, 2, 2, 2, 3, 3,
    3, 3, 4 tokens in layers 3-12 (its (r, inflection) schedule (3, 0.2) from layer 3), the
    closest schedule: ToMe's constant r from layer 1 overshoots with 2 and falls short with 1.
  - A larger saving: ToMe's constant r = 3 from layer 1, and PatchDropout's 31 of 49 patches.
The dense and 6-55-11 rows rerun here, on the machine that runs the new ones: runs are
deterministic on one machine only (docs/results.md, "Reproducibility"). 18 runs of the
recipe's length, 5 to 10 minutes each; an interrupted sweep resumes where it stopped. Expected
results, and the step speedups measured alone: docs/results.md, "Token reducers at equal FLOPs,
Fashion-MNIST".
"""

from configs.sweeps import paper_row

BASE = "configs/fashion_mnist.py"
DENSE = "dense"
SEEDS = (0, 1, 2)
EVERY_RUN = {"eval_every_epochs": 1.0}
WARMUP = {"drop_warmup_epochs": 1.0}
RUNS = [
    {"name": "dense", "overrides": EVERY_RUN},
    {"name": "6-55-11", "overrides": {**paper_row("6-55-11"), **WARMUP, **EVERY_RUN}},
    {"name": "tome_3i0.2_from3", "overrides": {"tome.r": 3, "tome.inflection": 0.2,
                                               "tome.start_layer": 3, **WARMUP, **EVERY_RUN}},
    {"name": "patchdrop_40of49", "overrides": {"patch_dropout.keep_rate": 40 / 49, **WARMUP,
                                               **EVERY_RUN}},
    {"name": "tome_3", "overrides": {"tome.r": 3, **WARMUP, **EVERY_RUN}},
    {"name": "patchdrop_31of49", "overrides": {"patch_dropout.keep_rate": 31 / 49, **WARMUP,
                                               **EVERY_RUN}},
]
