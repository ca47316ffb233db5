"""Fine-tuning a dense checkpoint with SkipViT routing (or ToE) at another resolution.

  # 1. a dense checkpoint: the default's dense run (synthetic shapes, 48 px, 8 x 8 patches)
  python main.py --config configs/default.py:baseline --workdir /tmp/dense_48
  # 2. exported as a vision_transformer .npz (what other tools read; any format
  #    skipvit_jax/models/pretrained.py lists can be the starting point instead)
  python -m skipvit_jax.tools.export --workdir /tmp/dense_48 --out /tmp/dense_48.npz
  # 3. fine-tuned at 60 px (10 x 10 patches: the position embedding is resized) with the
  #    6-55-11 routing from the first step, or with ToE and 6-55-11
  python main.py --config configs/finetune.py --config.init_from=/tmp/dense_48.npz --workdir /tmp/ft
  python main.py --config configs/finetune.py:toe --config.init_from=/tmp/dense_48.npz \
      --workdir /tmp/ft_toe

Without --config.init_from the same command trains from scratch: the comparison. Expected
results of all four and their wall times: docs/results.md, "Fine-tuning"; the checkpoint
formats init_from reads: docs/finetuning.md.

A fine-tune starts from a model whose [CLS] attention already means something, so the routing
drops tokens from the first step (no drop warm-up, the SkipViT paper's argument for one being
an untrained model's attention). ToE's stages are compressed to the single epoch.
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, toe=False)
  config = default.get_config("toe" if args.toe else None)  # 6-55-11 routing (+ ToE)
  config.init_from = ""  # the checkpoint to fine-tune: pass --config.init_from=PATH

  config.data.image_size = 60  # 60 / 6 = 10 x 10 = 100 patches (the checkpoint had 64)
  config.drop_warmup_epochs = 0.0  # drop from step 0: the [CLS] attention is trained
  if args.toe:
    config.toe.expansion_epochs = (0, 0.3, 0.6)  # 50% / 75% / all patch tokens

  config.num_epochs = 1.0
  config.optimizer.lr = 5e-4  # a quarter of the from-scratch recipe's
  config.optimizer.warmup_epochs = 0.1
  config.eval_every_epochs = 1.0
  return config
