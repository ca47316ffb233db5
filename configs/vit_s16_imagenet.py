"""Dense ViT-S/16 on ImageNet-1k: the SkipViT paper's baseline recipe (its Table 2).

  python main.py --config configs/vit_s16_imagenet.py --workdir $WORKDIR \
      --config.data.data_dir=$TFDS_DATA_DIR

100 epochs from scratch, global batch 288 (the paper: 8 Ascend 910A x 36), AdamW lr 1e-3,
warm-up from lr 1e-6, mixup 0.1. The paper reports 70.17% top-1 and 4,503 img/s on its 8
devices. Where the paper states no value, DeiT's is used, except for the augmentations the
paper does not name (RandAugment, random erasing, repeated augmentation, EMA: off);
docs/recipes.md lists every field with its source. Needs `imagenet2012` prepared in
array_record format (docs/datasets.md).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # no variants
  config = common.base_config()
  config.model.variant = "S/16"
  config.model.dtype = "bfloat16"  # float32 parameters, bfloat16 compute
  config.model.stochastic_depth = 0.1  # not stated by the paper; DeiT-S's

  config.data.name = "imagenet2012"
  config.data.image_size = 224
  config.data.eval_split = "validation"
  config.data.augment_on = "device"  # the host decodes and crops; the step flips and normalises

  config.batch_size = 288  # 36 per device on 8 devices
  config.eval_batch_size = 576
  config.num_epochs = 100.0
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_lr = 1e-6
  config.optimizer.warmup_epochs = 5.0  # not given by the paper; DeiT's value
  config.optimizer.min_lr = 1e-5  # not stated by the paper; DeiT's
  # The paper prints 0.5, which would wipe out a ViT's weights; 0.05 (DeiT's) is meant.
  config.optimizer.weight_decay = 0.05
  config.label_smoothing = 0.1  # not stated by the paper; DeiT's
  config.mixup_alpha = 0.1  # "mixup 0.1"; the paper names no cutmix
  config.cutmix_alpha = 0.0

  config.log_every_steps = 200
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2000
  return config
