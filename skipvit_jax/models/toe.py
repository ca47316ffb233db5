"""ToE (Token Expansion, Huang et al., CVPR 2024): host-side plan + jit-able token reduction.

During training, between block 0 and block 1, ToE keeps [CLS] and a subset of S patch tokens:
(1) fixed "seed" positions on a 1D stride, (2) grown in sub-steps by the unselected tokens
least cosine-similar to everything already selected, (3) every token left over is averaged
into its most similar selected token. S grows stage-wise over the epochs; in a final stage
with keep rate 1.0, and at evaluation, ToE is off and the model is a plain full-token ViT.

`make_plan` turns the schedule and the epoch into a `ToEPlan`: every count is a Python int
computed with the reference's own float expressions and truncations, so each stage is one
fixed-shape XLA program. `expand_tokens` applies a plan; `merge_assignment` returns the
same decisions per patch (for visualisation). The exact behaviour (quirks included) is
specified in `docs/method.md` §3; section numbers below refer to it.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from skipvit_jax.models.routing import take_tokens


@dataclasses.dataclass(frozen=True)
class ToEPlan:
  """Static token counts of ToE for one training stage (hashable: a static jit argument).

  Attributes:
    stage: 0 before the first stage starts, else 1..G.
    active: whether ToE runs. Off in stage 0 and in stage G when the last keep rate is 1.0.
    seeds: seed patch positions (0-based, [CLS] excluded), ascending. Empty when inactive.
    adds: tokens added by each expansion sub-step, in order, over stages 1..stage
      (`stage * substeps` entries; entries can be 0). Empty when inactive.
    num_selected: S, patch tokens after ToE; `num_patches` when inactive. With [CLS], ToE
      outputs 1 + S tokens.
    num_patches: P, patch tokens before ToE.
  """

  stage: int
  active: bool
  seeds: tuple[int, ...]
  adds: tuple[int, ...]
  num_selected: int
  num_patches: int

  def __post_init__(self):
    # Lists from callers would make the plan unhashable.
    object.__setattr__(self, "seeds", tuple(int(p) for p in self.seeds))
    object.__setattr__(self, "adds", tuple(int(m) for m in self.adds))
    selected = len(self.seeds) + sum(self.adds) if self.active else self.num_patches
    if self.num_selected != selected:
      raise ValueError(
          f"ToEPlan: num_selected must be {selected} (seeds + adds when active, else "
          f"num_patches), got {self.num_selected}"
      )
    if self.active and not (
        self.seeds
        and min(self.adds, default=0) >= 0
        and list(self.seeds) == sorted(set(self.seeds))
        and 0 <= self.seeds[0]
        and self.seeds[-1] < self.num_patches
        and selected <= self.num_patches
    ):
      raise ValueError(
          f"ToEPlan: an active plan needs >= 1 distinct ascending seeds in "
          f"0..{self.num_patches - 1}, adds >= 0 and S <= {self.num_patches}; "
          f"got seeds {self.seeds}, adds {self.adds}"
      )

  @property
  def num_merged(self) -> int:
    """U = P - S, patch tokens averaged into a selected token."""
    return self.num_patches - self.num_selected


def num_stages(expansion_epochs: Sequence[int]) -> int:
  """G: stages 1..G start at `expansion_epochs`; stage 0 (ToE off) precedes the first."""
  return len(expansion_epochs)


def stage_at(expansion_epochs: Sequence[int], epoch: int) -> int:
  """The stage of 0-based `epoch`: stage g starts exactly at epoch expansion_epochs[g - 1]."""
  return bisect.bisect_right(list(expansion_epochs), epoch)


def make_plan(
    num_patches: int,
    *,
    expansion_epochs: Sequence[int],
    keep_rates: Sequence[float],
    init_rate: float,
    substeps: int,
    epoch: int,
) -> ToEPlan:
  """The plan ToE follows during 0-based training `epoch`.

  Args:
    num_patches: P, patch tokens of the image (196 for 224/16).
    expansion_epochs: epoch at which each stage starts, non-decreasing (e.g. (0, 100, 200)).
    keep_rates: kept fraction of the P patch tokens in each stage, increasing, in (0, 1].
    init_rate: seed fraction r0, in (0, keep_rates[0]].
    substeps: k, expansion sub-steps per stage (the reference's expansion_multiple_stage).
    epoch: 0-based epoch, >= 0.

  Returns:
    The stage's plan. E.g. P=196, r0=.25, keep_rates (.5, .75, 1), k=2: 99 / 148 / 197
    output tokens in stages 1 / 2 / 3 (stage 3 inactive).
  """
  if not epoch >= 0:
    raise ValueError(f"epoch: must be >= 0, got {epoch}")
  epochs, rates = _check_schedule(num_patches, expansion_epochs, keep_rates, init_rate, substeps)
  return _stage_plan(num_patches, stage_at(epochs, epoch), rates, init_rate, substeps)


def stage_plans(
    num_patches: int,
    *,
    expansion_epochs: Sequence[int],
    keep_rates: Sequence[float],
    init_rate: float,
    substeps: int,
) -> tuple[ToEPlan, ...]:
  """The plan of every stage, indexed by stage: G + 1 plans, entry 0 the inactive stage 0
  (reached only while epoch < expansion_epochs[0])."""
  _, rates = _check_schedule(num_patches, expansion_epochs, keep_rates, init_rate, substeps)
  return tuple(
      _stage_plan(num_patches, stage, rates, init_rate, substeps)
      for stage in range(len(rates) + 1)
  )


def _check_schedule(
    num_patches, expansion_epochs, keep_rates, init_rate, substeps
) -> tuple[tuple[int, ...], tuple[float, ...]]:
  if not _is_int(num_patches) or num_patches < 1:
    raise ValueError(f"num_patches: must be an integer >= 1, got {num_patches!r}")
  epochs, rates = tuple(expansion_epochs), tuple(float(r) for r in keep_rates)
  if not rates:
    raise ValueError("keep_rates: needs at least one stage, got ()")
  if len(epochs) != len(rates):
    raise ValueError(
        f"expansion_epochs: needs one start epoch per keep rate ({len(rates)} rates {rates}), "
        f"got {epochs}"
    )
  if any(b < a for a, b in zip(epochs, epochs[1:])):
    raise ValueError(f"expansion_epochs: must be non-decreasing, got {epochs}")
  if not all(0.0 < r <= 1.0 for r in rates) or any(b <= a for a, b in zip(rates, rates[1:])):
    raise ValueError(f"keep_rates: must be strictly increasing values in (0, 1], got {rates}")
  if not 0.0 < init_rate <= rates[0]:
    raise ValueError(
        f"init_rate: must be in (0, keep_rates[0]] = (0, {rates[0]}], got {init_rate}"
    )
  if int(num_patches * init_rate) < 1:
    raise ValueError(
        f"init_rate: must give int(num_patches * init_rate) >= 1 seed, i.e. about "
        f"1 / num_patches = {1 / num_patches} or more; got {init_rate} for "
        f"num_patches={num_patches}"
    )
  if not _is_int(substeps) or substeps < 1:
    raise ValueError(f"substeps: must be an integer >= 1, got {substeps!r}")
  return epochs, rates


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _stage_plan(
    num_patches: int, stage: int, rates: tuple[float, ...], init_rate: float, substeps: int
) -> ToEPlan:
  """§3.2/§3.3 counts, with the reference's Python float expressions (their rounding is part of
  the behaviour: e.g. 0.7 - 0.4 = 0.29999999999999993, so 100 patches add 29, not 30)."""
  last = len(rates)
  if stage == 0 or (stage == last and rates[-1] == 1.0):
    return ToEPlan(stage, False, (), (), num_patches, num_patches)
  increments = [rates[0] - init_rate] + [b - a for a, b in zip(rates, rates[1:])]
  # Floor division of floats: 1 // 0.2 == 4.0, so r0 = 0.2 seeds every 4th patch.
  stride = int(1 // init_rate)
  seeds = tuple(range(0, num_patches, stride))[: int(num_patches * init_rate)]
  adds = []
  for s in range(1, stage + 1):
    if s == last:  # only reachable with a final keep rate below 1.0
      # The reference adds the increments with sum() (0 + d_1 + ... left to right) before
      # adding r0; an explicit loop keeps that rounding on Python >= 3.12, whose sum() of
      # floats is compensated.
      before = 0
      for d in increments[:-1]:
        before += d
      count = int(num_patches * rates[-1]) - int(num_patches * (init_rate + before))
    else:
      count = int(num_patches * increments[s - 1])
    # The last sub-step takes the remainder, so it is the largest.
    part = count // substeps
    adds += [part] * (substeps - 1) + [count - (substeps - 1) * part]
  selected = len(seeds) + sum(adds)
  return ToEPlan(stage, True, seeds, tuple(adds), selected, num_patches)


def expand_tokens(
    x: jax.Array,
    plan: ToEPlan,
    *,
    precision: jax.lax.PrecisionLike = None,
) -> tuple[jax.Array, jax.Array]:
  """ToE's token reduction (§3.3-§3.5): seeds, cosine farthest-point expansion sub-steps, merge.

  Jit with `plan` (and `precision`) static. Selection takes no gradient; values
  flow through the gather and the mean, so each token gets the cotangent of its output slot
  divided by the slot's group size (1 + members).

  Ties: in an expansion sub-step the earlier entry of the current unselected list is added
  first (a stable sort; the reference's torch argsort is unstable); a merged token goes to the
  first selected slot among equally similar ones. A zero patch vector has NaN similarities
  (normalisation has no epsilon, as in the reference); its selection is then meaningless.

  Args:
    x: (B, 1 + P, C), [CLS] first: the output of the first block.
    plan: from `make_plan`, with plan.num_patches == P.
    precision: precision of the similarity matmul (None: the backend's default, which on GPU
      may be TF32/bf16 and can reorder near-ties; tests use Precision.HIGHEST).

  Returns:
    out: (B, 1 + S, C), [CLS] unchanged, then the selected tokens in selection order (seeds
      ascending, then each sub-step's additions by ascending score), each the plain mean of
      itself and the tokens merged into it. `x` itself when the plan is inactive.
    out_index: (B, 1 + S) int32 positions in the full sequence: 0 for [CLS], 1 + patch
      position otherwise; arange(1 + P) when the plan is inactive.
  """
  if x.ndim != 3 or x.shape[1] != 1 + plan.num_patches:
    raise ValueError(
        f"x must be (B, 1 + P, C) with P = plan.num_patches = {plan.num_patches}, got {x.shape}"
    )
  if not plan.active:
    return x, jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
  patches = x[:, 1:]
  sims = _cosine_similarities(patches, precision)
  selected_idx, remaining_idx = _expand(sims, plan)
  selected = take_tokens(patches, selected_idx)
  if plan.num_merged:
    hosts = jnp.argmax(_pair_similarities(sims, remaining_idx, selected_idx), axis=-1)
    selected = _merge_mean(selected, take_tokens(patches, remaining_idx), hosts)
  out = jnp.concatenate([x[:, :1], selected.astype(x.dtype)], axis=1)
  cls_index = jnp.zeros((x.shape[0], 1), jnp.int32)
  return out, jnp.concatenate([cls_index, selected_idx.astype(jnp.int32) + 1], axis=1)


def merge_assignment(
    x: jax.Array, plan: ToEPlan, *, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
  """The output slot of `expand_tokens` that every patch ends up in (its merge group).

  The same decisions as `expand_tokens(x, plan, precision=precision)` (the same similarities,
  expansion and hosts), returned per patch instead of applied: a selected patch is in its own
  slot, an unselected one in the slot of the selected token it is averaged into. Patches with
  equal slots form one output token. Jit with `plan` and `precision` static.

  Args:
    x: (B, 1 + P, C), [CLS] first: the output of the first block.
    plan: from `make_plan`, with plan.num_patches == P.
    precision: as in `expand_tokens`; pass the same value to get the same decisions.

  Returns:
    (B, P) int32 in 1..S, indices into `expand_tokens`' output sequence ([CLS] is 0, so no
    patch maps there); arange(1, 1 + P) when the plan is inactive.
  """
  if x.ndim != 3 or x.shape[1] != 1 + plan.num_patches:
    raise ValueError(
        f"x must be (B, 1 + P, C) with P = plan.num_patches = {plan.num_patches}, got {x.shape}"
    )
  batch, num_patches = x.shape[0], plan.num_patches
  if not plan.active:
    return jnp.broadcast_to(jnp.arange(1, 1 + num_patches, dtype=jnp.int32), (batch, num_patches))
  sims = _cosine_similarities(x[:, 1:], precision)
  selected_idx, remaining_idx = _expand(sims, plan)
  slots = jnp.arange(1, 1 + plan.num_selected, dtype=jnp.int32)
  positions, slot_of = selected_idx, jnp.broadcast_to(slots, selected_idx.shape)
  if plan.num_merged:
    hosts = jnp.argmax(_pair_similarities(sims, remaining_idx, selected_idx), axis=-1)
    positions = jnp.concatenate([positions, remaining_idx], axis=1)  # (B, P), a permutation
    slot_of = jnp.concatenate([slot_of, 1 + hosts.astype(jnp.int32)], axis=1)
  # Invert the permutation: the entry listing position p moves to column p.
  order = jnp.argsort(positions, axis=-1)
  return jnp.take_along_axis(slot_of, order, axis=1)


def _cosine_similarities(patches: jax.Array, precision: jax.lax.PrecisionLike) -> jax.Array:
  """patches: (B, P, C) -> (B, P, P) cosine similarities, without gradient.

  All pairs at once: P^2 C MACs (docs/method.md §3.4 compares it with the reference's
  sub-block matmuls) and a (B, P, P) buffer. Every later decision
  reads these same numbers, so updating the best similarity with only the newly added tokens
  gives bit for bit what recomputing it over the whole selected set would.
  """
  v = jax.lax.stop_gradient(patches).astype(jnp.promote_types(patches.dtype, jnp.float32))
  unit = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  return jnp.einsum("bpc,bqc->bpq", unit, unit, precision=precision)


def _expand(sims: jax.Array, plan: ToEPlan) -> tuple[jax.Array, jax.Array]:
  """Seeds, then the expansion sub-steps (§3.4).

  Returns:
    selected: (B, S) int32 patch positions in selection order.
    remaining: (B, U) int32 patch positions, in the order the last sub-step left them.
  """
  batch = sims.shape[0]
  seeds = np.asarray(plan.seeds, np.int32)
  others = np.setdiff1d(np.arange(plan.num_patches, dtype=np.int32), seeds)
  selected = jnp.broadcast_to(seeds, (batch, seeds.size))
  remaining = jnp.broadcast_to(others, (batch, others.size))
  # Best similarity of each remaining token to the selected set.
  score = _pair_similarities(sims, remaining, selected).max(axis=-1)  # (B, U)
  for m in plan.adds:
    order = jnp.argsort(score, axis=-1, stable=True)  # least represented first
    added = jnp.take_along_axis(remaining, order[:, :m], axis=1)
    remaining = jnp.take_along_axis(remaining, order[:, m:], axis=1)
    score = jnp.take_along_axis(score, order[:, m:], axis=1)
    selected = jnp.concatenate([selected, added], axis=1)
    if m:  # only the new members can raise a remaining token's best similarity
      score = jnp.maximum(score, _pair_similarities(sims, remaining, added).max(axis=-1))
  return selected, remaining


def _merge_mean(selected: jax.Array, remaining: jax.Array, hosts: jax.Array) -> jax.Array:
  """Scatter-mean including self (§3.5).

  Args:
    selected: (B, S, C).
    remaining: (B, U, C).
    hosts: (B, U) slot in 0..S-1 each remaining token is averaged into.

  Returns:
    (B, S, C) float32 or wider: (selected_j + sum of its members) / (1 + member count).
  """
  dtype = jnp.promote_types(selected.dtype, jnp.float32)
  assign = jax.nn.one_hot(hosts, selected.shape[1], dtype=dtype)  # (B, U, S)
  # HIGHEST: a one-hot matmul at TF32/bf16 would round the token features themselves.
  sums = jnp.einsum(
      "bus,buc->bsc", assign, remaining.astype(dtype), precision=jax.lax.Precision.HIGHEST
  )
  counts = assign.sum(axis=1)  # (B, S)
  return (selected.astype(dtype) + sums) / (1.0 + counts)[:, :, None]


def _pair_similarities(sims: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """sims: (B, P, P), rows: (B, R), cols: (B, K) -> (B, R, K) = sims[b, rows, cols]."""
  picked = jnp.take_along_axis(sims, cols[:, None, :], axis=2)  # (B, P, K)
  return jnp.take_along_axis(picked, rows[:, :, None], axis=1)
