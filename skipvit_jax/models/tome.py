"""ToMe (Token Merging, Bolya et al., ICLR 2023): pure, jit-able functions with static shapes.

In a merging layer, after the attention residual and before the MLP, the tokens are split
into two alternating sets, A (sequence positions 0, 2, 4, ...; [CLS] is A's first) and B
(1, 3, 5, ...). Each A token finds its most cosine-similar B token on the layer's attention
keys averaged over heads; the r A tokens with the highest such similarity are averaged into
their B token, weighted by token size (how many patches a token already stands for), and
sizes add. [CLS] is never merged. Later layers add log(size) to every key's attention logit
(proportional attention).

The sequence after a merge is ToMe's: [CLS], the unmerged A tokens in their order, then every
B token in its order (`merge_wavg`). r per layer is a Python int decided on the host
(`merge_schedule`), so every shape is static. The behaviour, ties and where it departs from
facebookresearch/ToMe are specified in `docs/method.md` §8.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

# The tokens a merge never touches: [CLS] at sequence position 0 (ToMe's `protected`).
PROTECTED = 1


@dataclasses.dataclass(frozen=True)
class ToMeConfig:
  """ToMe's merging schedule. The default, r = 0, merges nothing.

  Attributes:
    r: tokens merged per layer (ToMe's `r`), before the cap of `merge_schedule`.
    inflection: the shape of ToMe's `(r, inflection)` schedule over the merging layers: 0
      merges r in every layer, -1 decreases linearly from 2r to 0 (the paper's "decreasing
      schedule"), +1 increases from 0 to 2r; any value in [-1, 1].
    start_layer: the first (1-based) layer that merges; the schedule spans start_layer..depth.
    proportional_attention: add log(size) of every key to the attention logits.
    merge_at_eval: merge at evaluation too, with the same r (the paper's evaluation); False
      evaluates with every token.
  """

  r: int = 0
  inflection: float = 0.0
  start_layer: int = 1
  proportional_attention: bool = True
  merge_at_eval: bool = True

  def __post_init__(self):
    integer = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not integer(self.r) or self.r < 0:
      raise ValueError(f"ToMeConfig.r: must be an integer >= 0, got {self.r!r}")
    if (not isinstance(self.inflection, numbers.Real) or isinstance(self.inflection, bool)
        or not -1.0 <= self.inflection <= 1.0):
      raise ValueError(f"ToMeConfig.inflection: must be a number in [-1, 1], got "
                       f"{self.inflection!r}")
    if not integer(self.start_layer) or self.start_layer < 1:
      raise ValueError(f"ToMeConfig.start_layer: must be an integer layer >= 1, got "
                       f"{self.start_layer!r}")
    for field in ("proportional_attention", "merge_at_eval"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"ToMeConfig.{field}: must be True or False, got "
                         f"{getattr(self, field)!r}")
    object.__setattr__(self, "r", int(self.r))
    object.__setattr__(self, "inflection", float(self.inflection))
    object.__setattr__(self, "start_layer", int(self.start_layer))

  @property
  def merges(self) -> bool:
    return self.r > 0


def parse_r(num_layers: int, r: int, inflection: float = 0.0) -> tuple[int, ...]:
  """ToMe's `utils.parse_r(num_layers, (r, inflection))`, with its float expressions: r per
  layer, linear from int(r (1 - inflection)) to 2r minus that, each truncated by int()."""
  if num_layers < 1:
    return ()
  min_val = int(r * (1.0 - inflection))
  max_val = 2 * r - min_val
  if num_layers == 1:  # ToMe divides by num_layers - 1; one layer gets the start value
    return (min_val,)
  step = (max_val - min_val) / (num_layers - 1)
  return tuple(int(min_val + step * i) for i in range(num_layers))


def merge_schedule(config: ToMeConfig, depth: int, num_tokens: int) -> tuple[int, ...]:
  """The r each 1-based layer 1..depth merges, capped as ToMe caps it.

  Layers before `config.start_layer` merge nothing; from it, `parse_r` over the remaining
  layers; each capped at `(n - 1) // 2` for the n tokens ([CLS] included) entering that
  layer, ToMe's `min(r, (t - protected) // 2)`, so at most half the mergeable tokens go.

  Args:
    config: the schedule.
    depth: the model's layers.
    num_tokens: tokens entering layer 1, [CLS] included.

  Returns:
    depth ints >= 0.
  """
  if config.start_layer > depth:
    raise ValueError(f"ToMeConfig.start_layer: must be in 1..{depth} (the model has {depth} "
                     f"layers), got {config.start_layer}")
  wanted = (0,) * (config.start_layer - 1) + parse_r(
      depth - config.start_layer + 1, config.r, config.inflection)
  merges, present = [], num_tokens
  for r in wanted:
    r = max(0, min(r, (present - PROTECTED) // 2))
    merges.append(r)
    present -= r
  return tuple(merges)


class Matching(NamedTuple):
  """One layer's bipartite matching: indices into A (even positions) and B (odd positions)."""

  unm_idx: jax.Array  # (B, nA - r) int32 A indices kept, ascending ([CLS], A index 0, first)
  src_idx: jax.Array  # (B, r) int32 A indices merged, by descending best-match score
  dst_idx: jax.Array  # (B, r) int32 the B index each src_idx token merges into


def bipartite_soft_matching(
    metric: jax.Array, r: int, *, precision: jax.lax.PrecisionLike = None
) -> Matching:
  """ToMe's bipartite soft matching with [CLS] protected; takes no gradient.

  Cosine similarity between every A token (positions 0, 2, ...) and every B token (1, 3,
  ...); [CLS]'s row is -inf so it is never chosen. Each A token's best B match is the first
  (lowest B index) among equal maxima; the A tokens are ranked by that best score with a
  stable descending sort, so among equal scores the lower A index merges first; the first r
  merge.

  Args:
    metric: (B, N, D) the layer's keys averaged over heads, [CLS] at position 0.
    r: static, 1 <= r <= (N - 1) // 2 (merge_schedule caps it).
    precision: of the similarity matmul (None: the backend's default, which on GPU may be
      TF32/bfloat16 and can reorder near-ties; the model and the tests use HIGHEST).

  Returns:
    The Matching. A zero metric vector has NaN similarities (no epsilon, as in ToMe).
  """
  num_tokens = metric.shape[1]
  if not 1 <= r <= (num_tokens - PROTECTED) // 2:
    raise ValueError(f"r must be in 1..{(num_tokens - PROTECTED) // 2} for {num_tokens} tokens "
                     f"([CLS] protected), got {r}")
  m = jax.lax.stop_gradient(metric).astype(jnp.promote_types(metric.dtype, jnp.float32))
  m = m / jnp.linalg.norm(m, axis=-1, keepdims=True)
  scores = jnp.einsum("bic,bjc->bij", m[:, ::2], m[:, 1::2], precision=precision)
  scores = scores.at[:, 0, :].set(-jnp.inf)  # [CLS] (A index 0) is never merged
  node_max = scores.max(axis=-1)  # (B, nA)
  node_idx = jnp.argmax(scores, axis=-1)  # first maximum: the lowest B index
  edge_idx = jnp.argsort(node_max, axis=-1, descending=True, stable=True)
  src_idx = edge_idx[:, :r]
  unm_idx = jnp.sort(edge_idx[:, r:], axis=-1)
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  return Matching(unm_idx.astype(jnp.int32), src_idx.astype(jnp.int32),
                  dst_idx.astype(jnp.int32))


def merge_wavg(
    x: jax.Array, size: jax.Array, matching: Matching
) -> tuple[jax.Array, jax.Array]:
  """ToMe's `merge_wavg`: the size-weighted average of each B token and the A tokens merged
  into it; unmerged A tokens pass unchanged. The result is ToMe's order: [CLS] and the other
  unmerged A tokens (ascending), then all B tokens (ascending).

  Values carry gradient (a merged token's cotangent reaches each member in proportion to its
  size); sizes are counts and carry none.

  Args:
    x: (B, N, C) tokens, [CLS] first.
    size: (B, N) float32 patches each token stands for (ones before the first merge).
    matching: from `bipartite_soft_matching` on these N tokens.

  Returns:
    x: (B, N - r, C) in x.dtype, the average computed in float32 (or wider).
    size: (B, N - r) float32.
  """
  num_b = x.shape[1] // 2
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  size = jax.lax.stop_gradient(size).astype(jnp.float32)
  weighted = x.astype(dtype) * size[..., None].astype(dtype)
  size_a, size_b = size[:, ::2], size[:, 1::2]
  src = _take(weighted[:, ::2], matching.src_idx)
  assign = jax.nn.one_hot(matching.dst_idx, num_b, dtype=dtype)  # (B, r, nB)
  # HIGHEST: a one-hot matmul at TF32/bf16 would round the token features themselves.
  dst = weighted[:, 1::2] + jnp.einsum("brn,brc->bnc", assign, src,
                                       precision=jax.lax.Precision.HIGHEST)
  dst_size = size_b + jnp.einsum("brn,br->bn", assign.astype(jnp.float32),
                                 jnp.take_along_axis(size_a, matching.src_idx, axis=1),
                                 precision=jax.lax.Precision.HIGHEST)
  unm = _take(x[:, ::2], matching.unm_idx)
  out = jnp.concatenate([unm, (dst / dst_size[..., None].astype(dtype)).astype(x.dtype)], axis=1)
  new_size = jnp.concatenate(
      [jnp.take_along_axis(size_a, matching.unm_idx, axis=1), dst_size], axis=1)
  return out, new_size


def merged_index(matching: Matching, num_tokens: int) -> jax.Array:
  """Where each of the N tokens before the merge is after it.

  Returns:
    (B, N) int32 indices into `merge_wavg`'s output: an unmerged A token's own slot, a
    merged A token its B token's slot, a B token its slot. [CLS] stays at 0.
  """
  num_unm = matching.unm_idx.shape[1]
  num_b = num_tokens // 2
  batch = matching.unm_idx.shape[0]
  positions = jnp.concatenate([matching.unm_idx, matching.src_idx], axis=1)  # a permutation of A
  slots = jnp.concatenate([
      jnp.broadcast_to(jnp.arange(num_unm, dtype=jnp.int32), (batch, num_unm)),
      num_unm + matching.dst_idx], axis=1)
  a_slots = jnp.take_along_axis(slots, jnp.argsort(positions, axis=-1), axis=1)
  b_slots = jnp.broadcast_to(num_unm + jnp.arange(num_b, dtype=jnp.int32), (batch, num_b))
  out = jnp.zeros((batch, num_tokens), jnp.int32)
  return out.at[:, ::2].set(a_slots).at[:, 1::2].set(b_slots)


def source_index(matching: Matching, num_tokens: int) -> jax.Array:
  """Which token before the merge each token after it continues (its host: itself for an
  unmerged A token, the B token for a merged group).

  Returns:
    (B, N - r) int32 indices into the N tokens before the merge; 0 ([CLS]) first.
  """
  num_b = num_tokens // 2
  b = jnp.broadcast_to(2 * jnp.arange(num_b, dtype=jnp.int32) + 1,
                       (matching.unm_idx.shape[0], num_b))
  return jnp.concatenate([2 * matching.unm_idx, b], axis=1)


def proportional_bias(size: jax.Array) -> jax.Array:
  """(B, N) token sizes -> (B, N) float32 log(size): the logit bias of proportional attention
  (softmax(q k^T / sqrt(D) + log s) weighs key j as if it appeared s_j times)."""
  return jnp.log(jax.lax.stop_gradient(size).astype(jnp.float32))


def matching_macs(num_tokens: int, r: int, head_dim: int, width: int) -> int:
  """Multiply-adds of one merging layer's matching and merge per image: the A x B cosine
  similarities (ceil(N/2) floor(N/2) head_dim) and the one-hot merge (r floor(N/2) width)."""
  if r == 0:
    return 0
  num_a, num_b = math.ceil(num_tokens / 2), num_tokens // 2
  return num_a * num_b * head_dim + r * num_b * width


def _take(tokens: jax.Array, idx: jax.Array) -> jax.Array:
  """tokens: (B, N, C), idx: (B, K) -> (B, K, C)."""
  return jnp.take_along_axis(tokens, idx[:, :, None], axis=1)
