"""SkipViT on the embedded synthetic dataset: a 12-layer tiny ViT, CPU, a few minutes.

  python main.py --config configs/default.py --workdir /tmp/skipvit_default
  python main.py --config configs/default.py:baseline --workdir /tmp/dense_default

Drops 55% of the patch tokens at layer 6 and returns them before layer 11 (the SkipViT paper's
fastest accurate row), after a one-epoch drop warm-up. Expected on a 2-core CPU: see the
README's "Quick start" (measured figures: wall time, top-1 routed / all tokens, kept-object
recall versus the keep ratio).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, baseline=False)
  config = common.base_config()

  config.model.variant = "Te/4"  # width 32, 12 layers; 32 px / 4 = 64 patches

  if not args.baseline:
    config.routing.drop_layers = (6,)
    config.routing.drop_ratios = (0.55,)  # 64 patches -> 29 kept
    config.routing.return_layer = 11
    config.drop_warmup_epochs = 1.0

  config.data.name = "synthetic"
  config.data.image_size = 32
  config.data.eval_split = "test"
  config.data.synthetic.num_train = 20_000
  config.data.synthetic.num_test = 2_000

  config.data.num_threads = 2  # the 2-core laptop case: more threads only contend

  config.batch_size = 64  # small batches: more updates per CPU-minute for a tiny ViT
  config.eval_batch_size = 500
  config.num_epochs = 4.0
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_epochs = 0.3
  config.optimizer.weight_decay = 0.05
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0  # small data, small model: no mixing
  config.cutmix_alpha = 0.0

  config.log_every_steps = 100
  config.eval_every_epochs = 4.0  # once, at the end
  config.checkpoint_every_steps = 500
  return config
