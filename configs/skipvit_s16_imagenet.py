"""SkipViT-S/16 on ImageNet-1k: the rows of the SkipViT paper's Table 1.

  python main.py --config configs/skipvit_s16_imagenet.py:row=6-55-11 --workdir $WORKDIR \
      --config.data.data_dir=$TFDS_DATA_DIR

`row` names the drop layers, ratios (percent) and return layer as in the paper: "6-55-11"
drops 55% at layer 6 and returns before layer 11; "4.7-30.30-10" drops 30% at layers 4 and
7 and returns before layer 10; "6-45-fused" is the EViT fused-token row. The recipe is the
dense baseline's (configs/vit_s16_imagenet.py) plus 15 drop warm-up epochs. Paper results
(8x Ascend 910A):

  row            img/s  top-1     row            img/s  top-1
  6-45-fused     4,963  68.39     6.8-35.35-11   4,838  70.41
  4.7-30.30-10   5,092  69.73     6-45-11        4,944  70.64
  4.7-30.30-11   5,227  69.40     6-50-11        5,021  70.27
  6.8-35.35-10   4,711  70.53     6-55-11        5,098  70.16
"""

import ml_collections

from configs import common, vit_s16_imagenet
from skipvit_jax.models.routing import PAPER_ROWS as ROWS
from skipvit_jax.models.routing import RoutingConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, row="6-55-11")
  if args.row not in ROWS:
    raise ValueError(f"config argument row: must be one of {ROWS}, got {args.row!r}")
  config = vit_s16_imagenet.get_config()
  routing = RoutingConfig.from_paper_row(args.row)
  config.routing.drop_layers = routing.drop_layers
  config.routing.drop_ratios = routing.drop_ratios
  config.routing.return_layer = routing.return_layer or 0  # 0: none (the fused row)
  config.routing.mode = routing.mode
  config.drop_warmup_epochs = 15.0  # the paper's warm-up: all tokens for 15 epochs
  return config
