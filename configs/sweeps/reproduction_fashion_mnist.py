"""The reproduction on real images: the papers' claims on Fashion-MNIST, on a CPU.

  apt-get install dataset-fashion-mnist
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/reproduction_fashion_mnist.py \
      --sweep_dir /tmp/sweeps/reproduction_fashion_mnist

configs/fashion_mnist.py (a 12-layer ViT on 49 patches of the 28 px images): dense; the
SkipViT rows 6-55-11, 6-50-11, 6-45-11, 4.7-30.30-11, 4.7-30.30-10 and the fused-token row
6-45-fused, each after the config's drop warm-up; 6-55-11 without warm-up; 6-55-11 keeping a
random subset (the control for [CLS]-attention selection); ToE alone; ToE + 6-55-11. Three
seeds each, evaluated every epoch (docs/results.md's recall-versus-epoch figure). 33 runs of
the recipe's length; interrupted sweeps resume where they stopped.
"""

from configs.sweeps import reproduction_runs

BASE = "configs/fashion_mnist.py"
DENSE = "dense"
SEEDS = (0, 1, 2)


def runs() -> list[dict]:
  return reproduction_runs(
      dense=BASE, toe="configs/fashion_mnist.py:toe",
      toe_skipvit="configs/fashion_mnist.py:toe,row=6-55-11", warmup_epochs=1.0,
      every_run={"eval_every_epochs": 1.0})
