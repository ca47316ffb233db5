"""SkipViT on the embedded synthetic dataset: a 12-layer tiny ViT, CPU, a few minutes.

  python main.py --config configs/default.py --workdir /tmp/skipvit_default
  python main.py --config configs/default.py:baseline --workdir /tmp/dense_default
  python main.py --config configs/default.py:toe --workdir /tmp/toe_default
  python main.py --config configs/default.py:toe,baseline --workdir /tmp/toe_only_default

Drops 55% of the patch tokens at layer 6 and returns them before layer 11 (the SkipViT paper's
fastest accurate row), after a one-epoch drop warm-up. Minutes on a 2-core CPU. Expected
results, over seeds (top-1 routed / all tokens, kept-object recall against the keep ratio),
and the wall time of each command above: docs/results.md, "Synthetic shapes".

`:toe` adds ToE after layer 1 with a schedule compressed to the 4 epochs: 50% of the patch
tokens in epoch 0 (33 tokens), 75% in epoch 1 (49), all from epoch 2 on; SkipViT's drop
layers then work within ToE's tokens. `:toe,baseline` is ToE alone.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, baseline=False, toe=False)
  config = common.base_config()

  config.model.variant = "Te/6"  # width 32, 12 layers; 48 px / 6 = 64 patches

  if not args.baseline:
    config.routing.drop_layers = (6,)
    config.routing.drop_ratios = (0.55,)  # 64 patches -> 29 kept
    config.routing.return_layer = 11
    config.drop_warmup_epochs = 1.0

  if args.toe:
    config.toe.enabled = True
    config.toe.expansion_epochs = (0, 1, 2)  # DeiT-S's rates, stages every epoch
    config.toe.keep_rates = (0.5, 0.75, 1.0)
    config.toe.init_rate = 0.25
    config.toe.substeps = 2

  config.data.name = "synthetic"
  config.data.image_size = 48  # 48 / 6 = 8 x 8 = 64 patches
  config.data.eval_split = "test"
  config.data.synthetic.num_train = 20_000
  config.data.synthetic.num_test = 2_000

  config.data.num_threads = 2  # the 2-core laptop case: more threads only contend

  config.batch_size = 128  # the CPU's best images/s for this model among the batches tried
  config.eval_batch_size = 500
  config.num_epochs = 4.0
  config.optimizer.lr = 2e-3
  config.optimizer.warmup_epochs = 0.3
  config.optimizer.weight_decay = 0.05
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0  # small data, small model: no mixing
  config.cutmix_alpha = 0.0

  config.log_every_steps = 100
  config.eval_every_epochs = 4.0  # once, at the end
  config.checkpoint_every_steps = 500
  return config
