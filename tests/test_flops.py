"""The FLOP model (docs/method.md §6) reproduces the figures the SkipViT paper and this
project quote."""

import pytest

from skipvit_jax import RoutingConfig
from skipvit_jax.models import flops

S16 = dict(image_size=224, num_classes=1000)
ROW_6_55_11 = RoutingConfig((6,), (0.55,), 11)


def test_dense_vit_s16_is_4_60_gmacs():
  macs = flops.forward_macs("S/16", **S16)
  assert round(macs.total / 1e9, 2) == 4.60
  assert macs.total == 12 * (12 * 197 * 384**2 + 2 * 197**2 * 384) + 196 * 768 * 384 + 384 * 1000


def test_conv_stem_counts_its_convolutions_and_the_projection():
  # Tw/4 on 28 px: 3 -> 20 channels on 14 x 14, 20 -> 40 on 7 x 7, then 1x1 40 -> 40 per patch.
  assert flops.embedding_macs("Tw/4", image_size=28, stem="conv") == (
      14 * 14 * 9 * 3 * 20 + 7 * 7 * 9 * 20 * 40 + 49 * 40 * 40)
  assert flops.embedding_macs("Tw/4", image_size=28) == 49 * 4 * 4 * 3 * 40
  # S/16: four convolutions, 48 -> 384 channels (Xiao et al.'s ViTC stem at width 384).
  assert flops.embedding_macs("S/16", image_size=224, stem="conv") == (
      112**2 * 9 * 3 * 48 + 56**2 * 9 * 48 * 96 + 28**2 * 9 * 96 * 192 + 14**2 * 9 * 192 * 384
      + 196 * 384 * 384)
  patch, conv = (flops.forward_macs("S/16", **S16, stem=stem) for stem in ("patch", "conv"))
  assert conv.blocks == patch.blocks and conv.head == patch.head
  # The stem is paid by dense and routed models alike: a smaller ideal speedup.
  assert 1 < flops.ideal_speedup("S/16", **S16, routing=ROW_6_55_11, stem="conv") < (
      flops.ideal_speedup("S/16", **S16, routing=ROW_6_55_11))


def test_drop_55_at_6_return_11_after_attention():
  macs = flops.forward_macs("S/16", **S16, routing=ROW_6_55_11)
  assert round(macs.total / 1e9, 2) == 3.62
  assert round(flops.ideal_speedup("S/16", **S16, routing=ROW_6_55_11), 2) == 1.27


def test_drop_55_at_6_return_11_block_input():
  routing = RoutingConfig((6,), (0.55,), 11, drop_point="block_input")
  macs = flops.forward_macs("S/16", **S16, routing=routing)
  assert round(macs.total / 1e9, 2) == 3.53
  assert round(flops.ideal_speedup("S/16", **S16, routing=routing), 2) == 1.30
  # The [CLS]-row recomputation is reported, and is tiny.
  assert 0 < macs.routing_overhead < 1e-3 * macs.total


def test_block_macs_counts_attention_and_mlp_tokens_separately():
  # Layer 6 of ROW_6_55_11: attention on 197 tokens, MLP on 90.
  macs = flops.forward_macs("S/16", **S16, routing=ROW_6_55_11)
  d = 384
  assert macs.blocks[5] == 4 * 197 * d * d + 2 * 197**2 * d + 8 * 90 * d * d
  assert macs.blocks[6] == 12 * 90 * d * d + 2 * 90**2 * d
  assert macs.blocks[10] == macs.blocks[0]


@pytest.mark.parametrize(
    "routing", [RoutingConfig((4, 7), (0.3, 0.3), 10), RoutingConfig((6,), (0.45,), mode="fused")]
)
def test_routing_never_costs_more_than_dense(routing):
  assert flops.ideal_speedup("S/16", **S16, routing=routing) > 1.0
