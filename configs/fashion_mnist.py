"""Fashion-MNIST (real 28 px photographs of clothing, offline): dense, SkipViT rows, ToE, ToMe,
PatchDropout.

  apt-get install dataset-fashion-mnist          # once: the four idx files
  python main.py --config configs/fashion_mnist.py --workdir /tmp/fashion_dense
  python main.py --config configs/fashion_mnist.py:row=6-55-11 --workdir /tmp/fashion_6_55_11
  python main.py --config configs/fashion_mnist.py:toe --workdir /tmp/fashion_toe
  python main.py --config configs/fashion_mnist.py:tome_r=3,tome_inflection=0.2,tome_start=3 \
      --workdir /tmp/fashion_tome
  python main.py --config configs/fashion_mnist.py:patch_keep=0.82 --workdir /tmp/fashion_pd
  python main.py --config configs/fashion_mnist.py:long --workdir /tmp/fashion_long

A 12-layer ViT (so the SkipViT paper's layer numbers mean the same) on 4 px patches: 7 x 7 =
49 patch tokens + [CLS]. `row` is a paper row as in configs/skipvit_s16_imagenet.py ("6-55-11":
drop 55% at layer 6, return before layer 11; "6-45-fused"; "4.7-30.30-10"; ...), after a drop
warm-up; `row=dense` (the default) routes nothing. `:toe` adds ToE after layer 1, its stages
compressed to the run. `:random` replaces the [CLS]-attention ranking of a row by a random
subset of the same size (the control). `tome_r=<int>` merges that many tokens per layer with
ToMe (config.tome: proportional attention, the same merging at evaluation) from layer
`tome_start` (default 1), shaped by ToMe's `tome_inflection` (default 0: constant), and
`patch_keep=<float>` keeps that fraction of the patch tokens at the input in training
(PatchDropout, config.patch_dropout); both start after the same drop warm-up as a row
(`warmup`). Matched to `row=6-55-11`'s FLOP-ideal whole-run speedup on the 5.5-epoch recipe
(docs/method.md §10 has the command): `patch_keep=0.82` (40 of 49 patches) is the closest
keep rate; ToMe's constant r is coarse on 50 tokens (from layer 1, r=2 overshoots and r=1
falls short), and `tome_r=3,tome_inflection=0.2,tome_start=3` (2, 2, 2, 2, 2, 3, 3, 3, 3, 4
tokens in layers 3-12) comes closest. configs/sweeps/race_fashion_mnist.py races them.
`patch_keep` combines with a row, `tome_r` does not.

`:long` is the longer recipe: width 40 (Tw/4) with a convolutional stem (config.model.stem),
batch 64, 12 epochs; it combines with the others (`:long,row=6-55-11`).

Both recipes are sized for 15 minutes of a 2-core CPU: the 5.5-epoch one (the reproduction's)
leaves room for a slow machine, and `:long` fills the budget with a wider model, twice the
updates per epoch and more epochs. Expected results, over seeds, and the wall time of each:
docs/results.md, "Fashion-MNIST" and "Fashion-MNIST, longer recipe" (ToMe and PatchDropout:
"Token reducers at equal FLOPs, Fashion-MNIST"); how both recipes were chosen: docs/results.md,
"How the Fashion-MNIST recipes were chosen".
"""

import ml_collections

from configs import common
from configs.sweeps import paper_row


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, row="dense", toe=False, random=False, warmup=1.0, long=False,
                          tome_r=0, tome_start=1, tome_inflection=0.0, patch_keep=1.0)
  config = common.base_config()
  config.model.variant = "Te/4"  # width 32, 12 layers; 28 px / 4 = 49 patches

  if args.row != "dense":
    config.update_from_flattened_dict(paper_row(args.row))
  if args.random:
    config.routing.score = "random"
  if args.tome_r:
    config.tome.r = args.tome_r  # tokens merged per layer ...
    config.tome.start_layer = args.tome_start  # ... from this layer on
    config.tome.inflection = args.tome_inflection  # 0: r in every layer; > 0: increasing
  if args.patch_keep < 1.0:
    config.patch_dropout.keep_rate = args.patch_keep  # patch tokens kept in training
  if args.row != "dense" or args.tome_r or args.patch_keep < 1.0:
    config.drop_warmup_epochs = args.warmup  # epochs on all tokens before reducing

  if args.toe:
    config.toe.enabled = True
    config.toe.expansion_epochs = (0, 2, 4)
    config.toe.keep_rates = (0.5, 0.75, 1.0)
    config.toe.init_rate = 0.25
    config.toe.substeps = 2

  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  config.data.eval_split = "test"
  config.data.num_threads = 2

  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 5.5  # the dense run within 15 minutes even on a slow 2-core CPU
  config.optimizer.lr = 2e-3
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.weight_decay = 0.05
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0
  config.cutmix_alpha = 0.0

  config.log_every_steps = 100
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 1000

  if args.long:  # a wider model, twice the updates per epoch, more epochs: the whole budget
    config.model.variant = "Tw/4"  # width 40, 12 layers
    config.model.stem = "conv"  # 3x3 stride-2 convolutions instead of the 4 x 4 patch kernel
    config.batch_size = 64
    config.num_epochs = 12.0
    config.eval_every_epochs = 12.0  # one evaluation, at the end
  return config
