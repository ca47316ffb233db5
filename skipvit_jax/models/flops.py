"""Analytic forward cost of a ViT configuration, in multiply-adds (MACs).

Per transformer block on N tokens (width d, MLP width m):
  attention  4 N d^2 (q, k, v, out projections) + 2 N^2 d (q k^T and probs . v)
  MLP        2 N d m                            (= 8 N d^2 for m = 4d)
so 12 N d^2 + 2 N^2 d for the standard m = 4d. A drop layer with drop_point
"after_attention" runs its attention on the tokens present and its MLP on the kept ones.
Patch embedding (P * p^2 * 3 * d; with the convolutional stem, its 3x3 convolutions and the
1x1 projection, P * d^2) and the head (d * classes) complete the model.

With ToE, layer 1 runs on all tokens and every later layer on ToE's 1 + S (SkipViT's drop
layers then work within those). With PatchDropout (training), every layer starts from the
1 + K kept tokens. With ToMe, a merging layer runs its attention on the N tokens entering it
and its MLP on N - r, and the next layer starts from N - r.

Normalisation, softmax, activations and the routing's own work are not counted in `total`:
sorting and gathers are not MACs; the [CLS]-row recomputation of drop_point="block_input"
(2 d^2 + N d H per image), ToE's similarities and merge (P^2 d + (P - S) S d: about 20 M
MACs, 0.4% of ViT-S/16) and ToMe's matching and merge per merging layer
(ceil(N/2) floor(N/2) D + r floor(N/2) d, `tome.matching_macs`) are reported separately as
`routing_overhead`. Training costs about 3x the forward MACs.

`tome_r_for_speedup` and `patch_keep_for_speedup` find the ToMe r and the PatchDropout keep
rate whose whole-run FLOP-ideal speedup (after a drop warm-up on all tokens) comes closest to
a given one, e.g. a SkipViT row's (`run_speedup`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from skipvit_jax.models import tome
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.toe import ToEPlan
from skipvit_jax.models.variants import conv_stem_channels, decode_variant


class StepRange(Protocol):
  """Steps [start_step, end_step) trained with one token layout (a training phase)."""
  start_step: int
  end_step: int
  routing: RoutingConfig
  toe: ToEPlan | None


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


def embedding_macs(variant: str, *, image_size: int, stem: str = "patch", channels: int = 3) -> int:
  """MACs of the patch embedding ("patch") or of ViT's stem="conv" (models/vit.py: ConvStem)."""
  dims = decode_variant(variant)
  num_patches = (image_size // dims.patch_size) ** 2
  if stem == "patch":
    return num_patches * dims.patch_size**2 * channels * dims.width
  macs, side, in_channels = 0, image_size, channels
  for out_channels in conv_stem_channels(dims.width, dims.patch_size):
    side = -(-side // 2)  # stride 2, "SAME" padding
    macs += side * side * 9 * in_channels * out_channels
    in_channels = out_channels
  return macs + num_patches * in_channels * dims.width


def forward_macs(
    variant: str,
    *,
    image_size: int,
    num_classes: int,
    routing: RoutingConfig = RoutingConfig(),
    toe: ToEPlan | None = None,
    channels: int = 3,
    stem: str = "patch",
    train: bool = True,
) -> ForwardMacs:
  """MACs of one image's forward pass through ViT `variant` with `routing` (and ToE), in
  training (PatchDropout on) or, with train=False, at evaluation."""
  dims = decode_variant(variant)
  num_patches = (image_size // dims.patch_size) ** 2
  num_selected = num_patches if toe is None else toe.num_selected
  plan = routing.plan(dims.depth, num_selected, train=train)
  tokens = list(plan.tokens_per_layer())
  overhead = sum(tome.matching_macs(n_attn, r, dims.head_dim, dims.width)
                 for (n_attn, _), r in zip(tokens, plan.merges))
  if toe is not None:
    tokens[0] = (1 + num_patches, 1 + num_patches)  # ToE comes after layer 1
    overhead += (num_patches**2 + (num_patches - num_selected) * num_selected) * dims.width
  if routing.drop_point == "block_input":
    overhead += sum(
        2 * dims.width**2 + (1 + stage.num_present) * dims.width * dims.num_heads
        for stage in plan.stages
    )
  return ForwardMacs(
      patch_embedding=embedding_macs(variant, image_size=image_size, stem=stem, channels=channels),
      blocks=tuple(block_macs(n_attn, n_mlp, dims.width, dims.mlp_dim) for n_attn, n_mlp in tokens),
      head=dims.width * num_classes,
      routing_overhead=overhead,
  )


def ideal_speedup(
    variant: str, *, image_size: int, num_classes: int, routing: RoutingConfig = RoutingConfig(),
    toe: ToEPlan | None = None, stem: str = "patch", train: bool = True,
) -> float:
  """Dense forward MACs / routed forward MACs: the speedup if time followed MACs."""
  model = dict(image_size=image_size, num_classes=num_classes, stem=stem)
  dense = forward_macs(variant, **model)
  routed = forward_macs(variant, **model, routing=routing, toe=toe, train=train)
  return dense.total / routed.total


def schedule_speedup(
    variant: str, *, image_size: int, num_classes: int, phases: Sequence[StepRange],
    stem: str = "patch",
) -> float:
  """Whole-run ideal speedup: dense MACs of every step / the MACs of each step's phase."""
  model = dict(image_size=image_size, num_classes=num_classes, stem=stem)
  dense = forward_macs(variant, **model).total
  steps = sum(p.end_step - p.start_step for p in phases)
  routed = sum(
      (p.end_step - p.start_step)
      * forward_macs(variant, **model, routing=p.routing, toe=p.toe).total
      for p in phases
  )
  return steps * dense / routed


@dataclasses.dataclass(frozen=True)
class _Steps:
  start_step: int
  end_step: int
  routing: RoutingConfig
  toe: ToEPlan | None = None


def run_speedup(
    variant: str, *, image_size: int, num_classes: int, routing: RoutingConfig,
    warmup_steps: int = 0, total_steps: int = 1, stem: str = "patch",
) -> float:
  """Whole-run FLOP-ideal speedup of training `total_steps` steps, the first `warmup_steps`
  with every token (the drop warm-up) and the rest with `routing` (no ToE)."""
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"warmup_steps: must be in 0..{total_steps - 1} (total_steps "
                     f"{total_steps}), got {warmup_steps}")
  phases = [_Steps(0, warmup_steps, RoutingConfig()), _Steps(warmup_steps, total_steps, routing)]
  return schedule_speedup(variant, image_size=image_size, num_classes=num_classes,
                          phases=[p for p in phases if p.end_step > p.start_step], stem=stem)


def tome_r_for_speedup(
    target: float, variant: str, *, image_size: int, num_classes: int, warmup_steps: int = 0,
    total_steps: int = 1, stem: str = "patch", inflection: float = 0.0, start_layer: int = 1,
) -> tuple[int, float]:
  """The ToMe r (with `inflection` and `start_layer`) whose `run_speedup` is closest to
  `target`, and that speedup. Every r from 0 to half the tokens is tried (beyond it the cap
  makes every r the same); among equally close ones the smaller r."""
  num_patches = (image_size // decode_variant(variant).patch_size) ** 2
  return _closest(target, range(0, (num_patches + 2) // 2), lambda r: run_speedup(
      variant, image_size=image_size, num_classes=num_classes, stem=stem,
      warmup_steps=warmup_steps, total_steps=total_steps,
      routing=RoutingConfig(tome=tome.ToMeConfig(r=r, inflection=inflection,
                                                 start_layer=start_layer))))


def patch_keep_for_speedup(
    target: float, variant: str, *, image_size: int, num_classes: int, warmup_steps: int = 0,
    total_steps: int = 1, stem: str = "patch",
) -> tuple[float, float]:
  """The PatchDropout keep rate whose `run_speedup` is closest to `target`, and that speedup.
  Rates K / P for every kept count K in 1..P are tried (each keeps exactly K); among equally
  close ones the higher rate."""
  num_patches = (image_size // decode_variant(variant).patch_size) ** 2
  rates = [k / num_patches for k in range(num_patches, 0, -1)]
  return _closest(target, rates, lambda rate: run_speedup(
      variant, image_size=image_size, num_classes=num_classes, stem=stem,
      warmup_steps=warmup_steps, total_steps=total_steps,
      routing=RoutingConfig(patch_keep_rate=rate)))


def _closest(target: float, candidates, speedup_of) -> tuple:
  """(candidate, speedup) with |speedup - target| smallest; the first among equals."""
  best = None
  for candidate in candidates:
    speedup = speedup_of(candidate)
    if best is None or abs(speedup - target) < abs(best[1] - target):
      best = (candidate, speedup)
  return best
