"""Analytic forward cost of a ViT configuration, in multiply-adds (MACs).

Per transformer block on N tokens (width d, MLP width m):
  attention  4 N d^2 (q, k, v, out projections) + 2 N^2 d (q k^T and probs . v)
  MLP        2 N d m                            (= 8 N d^2 for m = 4d)
so 12 N d^2 + 2 N^2 d for the standard m = 4d. A drop layer with drop_point
"after_attention" runs its attention on the tokens present and its MLP on the kept ones.
Patch embedding (P * p^2 * 3 * d) and the head (d * classes) complete the model.

Normalisation, softmax, activations and the routing's own work (sorting, gathers, the
[CLS]-row recomputation of drop_point="block_input": 2 d^2 + N d H per image) are not
counted: they are reported separately (`routing_overhead`) and are below 0.1% of the
forward pass at ViT-S/16. Training costs about 3x the forward MACs.
"""

from __future__ import annotations

import dataclasses

from skipvit_jax.models.variants import decode_variant
from skipvit_jax.routing import RoutingConfig


@dataclasses.dataclass(frozen=True)
class ForwardMacs:
  patch_embedding: int
  blocks: tuple[int, ...]  # per layer, in order
  head: int
  routing_overhead: int  # not part of `total`; see the module docstring

  @property
  def total(self) -> int:
    return self.patch_embedding + sum(self.blocks) + self.head


def block_macs(num_attention_tokens: int, num_mlp_tokens: int, width: int, mlp_dim: int) -> int:
  n, d = num_attention_tokens, width
  attention = 4 * n * d * d + 2 * n * n * d
  return attention + 2 * num_mlp_tokens * d * mlp_dim


def forward_macs(
    variant: str,
    *,
    image_size: int,
    num_classes: int,
    routing: RoutingConfig = RoutingConfig(),
    channels: int = 3,
) -> ForwardMacs:
  """MACs of one image's forward pass through ViT `variant` with `routing`."""
  dims = decode_variant(variant)
  num_patches = (image_size // dims.patch_size) ** 2
  plan = routing.plan(dims.depth, num_patches)
  blocks = tuple(
      block_macs(n_attn, n_mlp, dims.width, dims.mlp_dim)
      for n_attn, n_mlp in plan.tokens_per_layer()
  )
  overhead = 0
  if routing.drop_point == "block_input":
    overhead = sum(
        2 * dims.width**2 + (1 + stage.num_present) * dims.width * dims.num_heads
        for stage in plan.stages
    )
  return ForwardMacs(
      patch_embedding=num_patches * dims.patch_size**2 * channels * dims.width,
      blocks=blocks,
      head=dims.width * num_classes,
      routing_overhead=overhead,
  )


def ideal_speedup(
    variant: str, *, image_size: int, num_classes: int, routing: RoutingConfig
) -> float:
  """Dense forward MACs / routed forward MACs: the speedup if time followed MACs."""
  dense = forward_macs(variant, image_size=image_size, num_classes=num_classes)
  routed = forward_macs(variant, image_size=image_size, num_classes=num_classes, routing=routing)
  return dense.total / routed.total
