"""SkipViT token routing: pure, jit-able functions with static shapes.

A drop layer ranks the patch tokens by the head-averaged [CLS] attention row, keeps the top
`num_keep` (in ascending position order), and sets the rest aside; at the return layer the
set-aside tokens go back to their original positions. Every count here is a Python int
decided on the host, so each routed model is one fixed-shape XLA program.

`RoutingConfig` is the user-facing description (1-based layer numbers as in the SkipViT
paper) of every token reduction a phase of training can switch on or off: SkipViT's drop
layers, ToMe's merging (`skipvit_jax/models/tome.py`) and PatchDropout at the input.
`RoutingConfig.plan` validates it against a model and turns it into the static token counts
the model and the FLOP model use. The semantics are specified in `docs/method.md` §2 (§5 for
drop layers after ToE, §8 for ToMe, §9 for PatchDropout).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from skipvit_jax.models.tome import ToMeConfig, merge_schedule

MODES = ("skip", "fused", "drop")
DROP_POINTS = ("after_attention", "block_input")
RATIO_BASES = ("present", "original")
# What ranks the tokens at a drop layer: the head-averaged [CLS] attention row (SkipViT), or
# independent uniform draws, which keep a uniformly random subset of the same size (the
# Random-LTD / patch-dropout control).
SCORES = ("cls_attention", "random")
# The SkipViT paper's Table 1 rows, by name (see RoutingConfig.from_paper_row).
PAPER_ROWS = (
    "6-45-fused", "4.7-30.30-10", "4.7-30.30-11", "6.8-35.35-10", "6.8-35.35-11",
    "6-45-11", "6-50-11", "6-55-11",
)


def cls_attention_scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """Head-averaged attention of [CLS] to every patch token.

  Args:
    q: (B, N, H, D) queries, [CLS] at index 0, N = 1 + P.
    k: (B, N, H, D) keys.

  Returns:
    (B, P) float32: row 0 of softmax(q k^T / sqrt(D)) over all N tokens, averaged over
    heads, columns 1..N-1.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bhd,bnhd->bhn", q[:, 0], k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits * scale, axis=-1)  # (B, H, N)
  return probs.mean(axis=1)[:, 1:]


def random_scores(key: jax.Array, batch: int, num_tokens: int) -> jax.Array:
  """(B, n) float32 uniform draws: ranking by them keeps a uniformly random subset of every
  size, independently per example (ties have probability ~0 and fall to the lower
  position, as in `split_tokens`)."""
  return jax.random.uniform(key, (batch, num_tokens), jnp.float32)


def patch_dropout_count(num_patches: int, keep_rate: float) -> int:
  """PatchDropout's kept patch count: floor(round(keep_rate * P, 9)) (the same float guard as
  drop ratios, §2.4), which must be >= 1."""
  num_keep = math.floor(round(keep_rate * num_patches, 9))
  if num_keep < 1:
    raise ValueError(
        f"RoutingConfig.patch_keep_rate: {keep_rate} of {num_patches} patch tokens keeps none; "
        f"allowed: rates in [1 / {num_patches}, 1]")
  return num_keep


def split_tokens(
    x: jax.Array, scores: jax.Array, num_keep: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Keeps [CLS] and the `num_keep` highest-scoring patch tokens; sets the rest aside.

  Args:
    x: (B, 1 + P, C), [CLS] first.
    scores: (B, P) ranking scores of the patch tokens; not differentiated.
    num_keep: static number of patch tokens to keep, 1 <= num_keep <= P.

  Returns:
    kept: (B, 1 + num_keep, C), [CLS] then the kept patches in ascending position order.
    keep_idx: (B, num_keep) int32 patch positions (0-based, [CLS] excluded), ascending;
      among equal scores the lower position wins.
    dropped: (B, P - num_keep, C), the other patches in ascending position order.
    drop_idx: (B, P - num_keep) int32, their positions, ascending.
  """
  num_patches = x.shape[1] - 1
  if scores.shape != (x.shape[0], num_patches):
    raise ValueError(f"scores must be (B, P) = {(x.shape[0], num_patches)}, got {scores.shape}")
  if not 1 <= num_keep <= num_patches:
    raise ValueError(f"num_keep must be in 1..{num_patches}, got {num_keep}")
  # A stable descending sort puts the lower position first among ties.
  order = jnp.argsort(jax.lax.stop_gradient(scores), axis=-1, descending=True, stable=True)
  keep_idx = jnp.sort(order[:, :num_keep], axis=-1).astype(jnp.int32)
  drop_idx = jnp.sort(order[:, num_keep:], axis=-1).astype(jnp.int32)
  patches = x[:, 1:]
  kept = jnp.concatenate([x[:, :1], take_tokens(patches, keep_idx)], axis=1)
  return kept, keep_idx, take_tokens(patches, drop_idx), drop_idx


def restore_tokens(
    kept: jax.Array, keep_idx: jax.Array, dropped: jax.Array, drop_idx: jax.Array
) -> jax.Array:
  """Inverse of `split_tokens`: every patch back at its original position.

  Args:
    kept: (B, 1 + K, C), [CLS] first.
    keep_idx: (B, K) int32 positions of kept[:, 1:].
    dropped: (B, P - K, C).
    drop_idx: (B, P - K) int32 positions of `dropped`.

  Returns:
    (B, 1 + P, C): [CLS] from `kept`, then the patches in position order 0..P-1.
  """
  if kept.shape[1] - 1 != keep_idx.shape[1] or dropped.shape[1] != drop_idx.shape[1]:
    raise ValueError(
        f"token and index counts differ: kept {kept.shape} vs keep_idx {keep_idx.shape}, "
        f"dropped {dropped.shape} vs drop_idx {drop_idx.shape}"
    )
  positions = jnp.concatenate([keep_idx, drop_idx], axis=1)  # (B, P), a permutation
  tokens = jnp.concatenate([kept[:, 1:], dropped], axis=1)  # (B, P, C)
  slot_of_position = jnp.argsort(positions, axis=-1)  # inverse permutation
  return jnp.concatenate([kept[:, :1], take_tokens(tokens, slot_of_position)], axis=1)


def fuse_tokens(dropped: jax.Array, drop_scores: jax.Array, *,
                normalize: bool = False) -> jax.Array:
  """EViT's fused token: the [CLS]-attention-weighted sum of the dropped tokens.

  Args:
    dropped: (B, M, C).
    drop_scores: (B, M) head-averaged [CLS] attention of each dropped token.
    normalize: divide the weights by their sum (EViT does not).

  Returns:
    (B, 1, C).
  """
  weights = drop_scores
  if normalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  fused = jnp.einsum("bm,bmc->bc", weights.astype(dropped.dtype), dropped)
  return fused[:, None, :]


class Split(NamedTuple):
  """What a drop layer decided, and the tokens it set aside."""

  scores: jax.Array  # (B, n) ranking scores of the n non-[CLS] tokens present
  keep_idx: jax.Array  # (B, K) int32, ascending
  drop_idx: jax.Array  # (B, n - K) int32, ascending
  dropped: jax.Array  # (B, n - K, C)


def route(
    x: jax.Array, scores: jax.Array, stage: DropStage, config: RoutingConfig
) -> tuple[jax.Array, Split]:
  """One drop layer: x (B, 1 + n, C) -> (the sequence that continues, the split).

  The sequence that continues is [CLS] + kept tokens, plus the fused token appended last in
  mode "fused". In mode "skip" the caller keeps the split to restore at the return layer.
  """
  kept, keep_idx, dropped, drop_idx = split_tokens(x, scores, stage.num_keep)
  if config.mode == "fused":
    drop_scores = jnp.take_along_axis(scores, drop_idx, axis=1)
    fused = fuse_tokens(dropped, drop_scores, normalize=config.fuse_normalize)
    kept = jnp.concatenate([kept, fused.astype(kept.dtype)], axis=1)
  return kept, Split(scores, keep_idx, drop_idx, dropped)


def take_tokens(tokens: jax.Array, idx: jax.Array) -> jax.Array:
  """tokens: (B, N, C), idx: (B, K) -> (B, K, C): each example's tokens at its indices."""
  return jnp.take_along_axis(tokens, idx[:, :, None], axis=1)


# --------------------------------------------------------------------------------------------
# Configuration and the static plan derived from it.


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
  """Where and how many tokens a ViT drops. The default drops nothing (a dense ViT).

  Attributes:
    drop_layers: 1-based layers at which tokens are dropped, strictly increasing.
    drop_ratios: fraction of tokens dropped at each drop layer, each in [0, 1).
    return_layer: 1-based layer before which every dropped token rejoins at its original
      position (mode "skip" only; must come after the last drop layer).
    mode: "skip" (SkipViT: dropped tokens ride a skip connection and return), "fused"
      (EViT: replaced by one attention-weighted token, appended), "drop" (discarded).
    drop_point: "after_attention" (rank with layer L's attention, split before its MLP) or
      "block_input" (rank with layer L's [CLS] row, split before its attention).
    ratio_of: "present" (ratio of the patch tokens present at that layer) or "original"
      (ratio of the image's patch count).
    fuse_normalize: "fused" mode only: normalise the fusion weights to sum to one.
    score: what ranks the tokens: "cls_attention" (the head-averaged [CLS] attention row) or
      "random" (a uniformly random subset of the same size, drawn from the model's "routing"
      RNG stream: in training a function of (seed, step); without that stream, as in
      evaluation, from a fixed key per layer). Not with mode "fused", whose fusion weights
      are the [CLS] attention.
    tome: ToMe's token merging (skipvit_jax/models/tome.py); r = 0 (the default) merges
      nothing. Not with drop layers.
    patch_keep_rate: PatchDropout: in training, keep this uniformly random fraction of the
      patch tokens at the input (after the position embedding, before layer 1), drawn from
      the model's "routing" RNG stream; every token at evaluation. 1.0 (the default) keeps
      all. Drop layers then rank and restore within the kept tokens (as after ToE).
  """

  drop_layers: tuple[int, ...] = ()
  drop_ratios: tuple[float, ...] = ()
  return_layer: int | None = None
  mode: str = "skip"
  drop_point: str = "after_attention"
  ratio_of: str = "present"
  fuse_normalize: bool = False
  score: str = "cls_attention"
  tome: ToMeConfig = ToMeConfig()
  patch_keep_rate: float = 1.0

  def __post_init__(self):
    # ml_collections and JSON hand us lists; the module attribute must be hashable.
    integer = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not isinstance(self.drop_layers, (tuple, list)) or not all(map(integer, self.drop_layers)):
      raise ValueError(f"RoutingConfig.drop_layers: must be integer layers, got "
                       f"{self.drop_layers!r}")
    if not isinstance(self.drop_ratios, (tuple, list)) or not all(
        isinstance(r, numbers.Real) and not isinstance(r, bool) for r in self.drop_ratios):
      raise ValueError(f"RoutingConfig.drop_ratios: must be numbers, got {self.drop_ratios!r}")
    if self.return_layer is not None and not integer(self.return_layer):
      raise ValueError(f"RoutingConfig.return_layer: must be an integer layer or None, got "
                       f"{self.return_layer!r}")
    object.__setattr__(self, "drop_layers", tuple(int(layer) for layer in self.drop_layers))
    object.__setattr__(self, "drop_ratios", tuple(float(r) for r in self.drop_ratios))
    _check_choice("mode", self.mode, MODES)
    _check_choice("drop_point", self.drop_point, DROP_POINTS)
    _check_choice("ratio_of", self.ratio_of, RATIO_BASES)
    _check_choice("score", self.score, SCORES)
    if self.score == "random" and self.mode == "fused":
      raise ValueError(
          "RoutingConfig.score: 'random' works with modes 'skip' and 'drop'; mode 'fused' "
          "weights its fused token by the [CLS] attention, so it needs 'cls_attention'")
    if len(self.drop_ratios) != len(self.drop_layers):
      raise ValueError(
          f"RoutingConfig.drop_ratios: needs one ratio per drop layer "
          f"({len(self.drop_layers)} layers {self.drop_layers}), got {self.drop_ratios}"
      )
    for ratio in self.drop_ratios:
      if not 0.0 <= ratio < 1.0:
        raise ValueError(f"RoutingConfig.drop_ratios: each ratio must be in [0, 1), got {ratio}")
    for prev, layer in zip(self.drop_layers, self.drop_layers[1:]):
      if layer <= prev:
        raise ValueError(
            f"RoutingConfig.drop_layers: must be strictly increasing, got {self.drop_layers}"
        )
    if self.mode != "skip" and self.return_layer is not None:
      raise ValueError(
          f"RoutingConfig.return_layer: must be None for mode={self.mode!r} "
          f"(only mode 'skip' returns tokens), got {self.return_layer}"
      )
    if self.mode == "skip" and self.drop_layers and self.return_layer is None:
      raise ValueError(
          "RoutingConfig.return_layer: mode 'skip' needs the layer before which dropped "
          f"tokens return, a layer after {self.drop_layers[-1]}; use mode 'drop' to discard them"
      )
    if not self.drop_layers and self.return_layer is not None:
      raise ValueError(
          f"RoutingConfig.return_layer: must be None when drop_layers is empty, "
          f"got {self.return_layer}"
      )
    if not isinstance(self.tome, ToMeConfig):
      raise ValueError(f"RoutingConfig.tome: must be a ToMeConfig, got {self.tome!r}")
    if self.tome.merges and self.drop_layers:
      raise ValueError(
          f"RoutingConfig.tome: ToMe's merging (r={self.tome.r}) does not combine with drop "
          f"layers {self.drop_layers}; use one or the other (drop_layers=() or r=0)")
    rate = self.patch_keep_rate
    if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
        or not 0.0 < rate <= 1.0):
      raise ValueError(f"RoutingConfig.patch_keep_rate: must be in (0, 1] (1.0: off), got "
                       f"{rate!r}")
    object.__setattr__(self, "patch_keep_rate", float(rate))

  @property
  def routes(self) -> bool:
    """Whether the model reduces tokens at evaluation: drop layers, or ToMe merging with
    `merge_at_eval` (so evaluating with all tokens differs)."""
    return bool(self.drop_layers) or (self.tome.merges and self.tome.merge_at_eval)

  @property
  def reduces(self) -> bool:
    """Whether training reduces tokens: drop layers, ToMe or PatchDropout (what a drop
    warm-up turns off)."""
    return bool(self.drop_layers) or self.tome.merges or self.patch_keep_rate < 1.0

  @classmethod
  def from_paper_row(cls, row: str) -> RoutingConfig:
    """A row of the SkipViT paper's Table 1 by name: "<layers>-<ratios %>-<return|fused>".

    "6-55-11": drop 55% at layer 6, return before layer 11; "4.7-30.30-10": 30% at layers 4
    and 7, back before layer 10; "6-45-fused": 45% at layer 6 into EViT's fused token.
    """
    try:
      layers, ratios, back = row.split("-")
      drop_layers = tuple(int(layer) for layer in layers.split("."))
      drop_ratios = tuple(int(ratio) / 100 for ratio in ratios.split("."))
      return_layer = None if back == "fused" else int(back)
    except ValueError:
      raise ValueError(
          f"paper row: expected '<layers>-<ratios %>-<return layer or fused>' such as "
          f"'6-55-11' or '4.7-30.30-10', got {row!r}") from None
    return cls(drop_layers, drop_ratios, return_layer, mode="fused" if back == "fused" else "skip")

  def plan(self, depth: int, num_patches: int, *, train: bool = True) -> RoutingPlan:
    """Validates against a model and returns the static per-layer token counts, in training
    (PatchDropout on; ToMe on) or at evaluation (all patches; ToMe with merge_at_eval)."""
    for layer in self.drop_layers:
      if not 1 <= layer <= depth:
        raise ValueError(
            f"RoutingConfig.drop_layers: layer {layer} is outside 1..{depth} "
            f"(the model has {depth} layers)"
        )
    if self.return_layer is not None and not self.drop_layers[-1] < self.return_layer <= depth:
      raise ValueError(
          f"RoutingConfig.return_layer: must be in {self.drop_layers[-1] + 1}..{depth} "
          f"(after the last drop layer {self.drop_layers[-1]}), got {self.return_layer}"
      )
    patch_dropout_count(num_patches, self.patch_keep_rate)  # validates in both cases
    num_input = (patch_dropout_count(num_patches, self.patch_keep_rate) if train
                 else num_patches)
    stages = []
    present = num_input  # non-[CLS] tokens in the sequence
    for layer, ratio in zip(self.drop_layers, self.drop_ratios):
      base = present if self.ratio_of == "present" else num_patches
      # round() first so that e.g. 0.29 * 100 = 28.999999999999996 drops 29, not 28.
      num_drop = math.floor(round(ratio * base, 9))
      num_keep = present - num_drop
      if num_keep < 1:
        raise ValueError(
            f"RoutingConfig.drop_ratios: ratio {ratio} at layer {layer} drops {num_drop} of the "
            f"{present} patch tokens present and leaves none; allowed: ratios that keep >= 1"
        )
      stages.append(DropStage(layer=layer, num_present=present, num_keep=num_keep))
      present = num_keep + (1 if self.mode == "fused" else 0)
    merging = self.tome.merges and (train or self.tome.merge_at_eval)
    merges = merge_schedule(self.tome, depth, 1 + num_input) if merging else (0,) * depth
    return RoutingPlan(config=self, depth=depth, num_patches=num_patches, stages=tuple(stages),
                       num_input=num_input, merges=merges)


class DropStage(NamedTuple):
  layer: int  # 1-based
  num_present: int  # non-[CLS] tokens entering the split
  num_keep: int

  @property
  def num_drop(self) -> int:
    return self.num_present - self.num_keep


@dataclasses.dataclass(frozen=True)
class RoutingPlan:
  """Static token counts of a validated `RoutingConfig` for one model, in training or at
  evaluation."""

  config: RoutingConfig
  depth: int
  num_patches: int  # patch tokens given to the routing (after ToE, if any)
  stages: tuple[DropStage, ...]
  num_input: int | None = None  # patch tokens entering layer 1: after PatchDropout, if on
  merges: tuple[int, ...] = ()  # ToMe's r per layer (zeros without merging)

  def __post_init__(self):
    if self.num_input is None:
      object.__setattr__(self, "num_input", self.num_patches)
    if not self.merges:
      object.__setattr__(self, "merges", (0,) * self.depth)

  def merge_at(self, layer: int) -> int:
    """ToMe's r at 1-based `layer` (0: no merge)."""
    return self.merges[layer - 1]

  def stage_at(self, layer: int) -> DropStage | None:
    """The drop stage at 1-based `layer`, if any."""
    return next((s for s in self.stages if s.layer == layer), None)

  def tokens_per_layer(self) -> tuple[tuple[int, int], ...]:
    """Per 1-based layer, (tokens through attention, tokens through the MLP), [CLS] included."""
    counts = []
    present = self.num_input
    for layer in range(1, self.depth + 1):
      if layer == self.config.return_layer:
        present = self.num_input
      stage = self.stage_at(layer)
      if stage is None:
        merged = present - self.merge_at(layer)
        counts.append((1 + present, 1 + merged))
        present = merged
        continue
      after = stage.num_keep + (1 if self.config.mode == "fused" else 0)
      before_attention = self.config.drop_point == "after_attention"
      counts.append((1 + (present if before_attention else after), 1 + after))
      present = after
    return tuple(counts)


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"RoutingConfig.{field}: must be one of {allowed}, got {value!r}")
