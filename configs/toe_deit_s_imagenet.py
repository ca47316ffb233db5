"""ToE on DeiT-S (ViT-S/16), ImageNet-1k, 300 epochs: ToE's released DeiT-S schedule.

  python main.py --config configs/toe_deit_s_imagenet.py --workdir $WORKDIR \
      --config.data.data_dir=$TFDS_DATA_DIR
  python main.py --config configs/toe_deit_s_imagenet.py:deit_t --workdir $WORKDIR ...
  python main.py --config configs/toe_deit_s_imagenet.py:skipvit --workdir $WORKDIR ...

Default: seeds r0 0.25, kept rates 0.5 / 0.75 / 1.0 from epochs 0 / 100 / 200, 2 expansion
sub-steps: 99, 148, then all 197 tokens after layer 1 (docs/method.md §6: the whole run's
FLOP-ideal speedup);
DeiT's recipe (global batch 1024, AdamW lr 1e-3 cosine to 1e-5, weight decay 0.05, 5 warm-up
epochs, label smoothing 0.1, mixup 0.8 / cutmix 1.0, drop path 0.1, RandAugment m9 mstd 0.5,
random erasing 0.25, 3 repeated augmentations, a parameter EMA with decay 0.99996). The ToE
paper reports about 1.3x faster training at DeiT-S's accuracy (DeiT-S: 79.8% top-1).
docs/recipes.md compares every field with its source.

`:deit_t` is DeiT-T (ViT-Ti/16) with the only released DeiT-T rates, EfficientTrain's: r0 0.3,
rates 0.6 / 0.8 / 1.0 (117, 156, 197 tokens), trained with DeiT's recipe above (not
EfficientTrain's). `:skipvit` adds SkipViT's best row on top of the
DeiT-S schedule: after ToE, drop 55% of the tokens present at layer 6, return before layer 11
(both together: no other codebase offers this; not a published recipe).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, deit_t=False, skipvit=False)
  config = common.base_config()
  config.model.variant = "Ti/16" if args.deit_t else "S/16"
  config.model.dtype = "bfloat16"  # DeiT/ToE train with mixed precision
  config.model.stochastic_depth = 0.1  # DeiT's drop path, for DeiT-T and DeiT-S alike

  config.toe.enabled = True
  config.toe.expansion_epochs = (0, 100, 200)
  if args.deit_t:
    config.toe.keep_rates = (0.6, 0.8, 1.0)
    config.toe.init_rate = 0.3
  else:
    config.toe.keep_rates = (0.5, 0.75, 1.0)
    config.toe.init_rate = 0.25
  config.toe.substeps = 2

  if args.skipvit:
    config.routing.drop_layers = (6,)
    config.routing.drop_ratios = (0.55,)
    config.routing.return_layer = 11

  config.data.name = "imagenet2012"
  config.data.image_size = 224
  config.data.eval_split = "validation"
  config.data.augment_on = "device"  # the host decodes and crops; the step does the rest

  config.batch_size = 1024  # DeiT: 4 GPUs x 256 in ToE's run scripts
  config.eval_batch_size = 1024
  config.num_epochs = 300.0
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_lr = 1e-6
  config.optimizer.warmup_epochs = 5.0
  config.optimizer.min_lr = 1e-5
  config.optimizer.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.mixup_alpha = 0.8
  config.cutmix_alpha = 1.0
  config.data.rand_augment = "rand-m9-mstd0.5-inc1"  # DeiT's --aa
  config.data.random_erase = 0.25  # DeiT's --reprob (pixel mode, one rectangle)
  config.data.repeated_augmentations = 3  # DeiT's RASampler, on in ToE's runs
  # DeiT's and ToE's --model-ema default; ToE evaluates both models, as eval/* and eval_ema/*.
  config.ema_decay = 0.99996
  config.seed = 3407  # ToE's DeiT-S script

  config.log_every_steps = 200
  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 2000
  return config
