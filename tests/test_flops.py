"""The FLOP model (docs/method.md §6) reproduces the figures the SkipViT paper and this
project quote."""

import pytest

from skipvit_jax import RoutingConfig, flops

S16 = dict(image_size=224, num_classes=1000)
ROW_6_55_11 = RoutingConfig((6,), (0.55,), 11)


def test_dense_vit_s16_is_4_60_gmacs():
  macs = flops.forward_macs("S/16", **S16)
  assert round(macs.total / 1e9, 2) == 4.60
  assert macs.total == 12 * (12 * 197 * 384**2 + 2 * 197**2 * 384) + 196 * 768 * 384 + 384 * 1000


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
