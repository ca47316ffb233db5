"""skipvit_jax.models.toe: plan counts of the released configs (float quirks included), and
expand_tokens against the plain-numpy float64 reference in tests/support/toe_reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skipvit_jax.models import toe
from skipvit_jax.models.toe import ToEPlan
from tests.support import toe_reference
from tests.support.jax_testing import trace_counter

HIGHEST = jax.lax.Precision.HIGHEST
# The released schedules (docs/method.md §3.2).
DEIT_S = dict(expansion_epochs=(0, 100, 200), keep_rates=(0.5, 0.75, 1.0), init_rate=0.25,
              substeps=2)
LVVIT_S = dict(DEIT_S, keep_rates=(0.4, 0.7, 1.0), init_rate=0.2)
EFFICIENTTRAIN = dict(DEIT_S, keep_rates=(0.6, 0.8, 1.0), init_rate=0.3)
YOLOS_S = dict(DEIT_S, expansion_epochs=(5, 50, 100))
CONFIGS = {"deit_s": DEIT_S, "lvvit_s": LVVIT_S, "efficienttrain": EFFICIENTTRAIN}

expand_jit = jax.jit(toe.expand_tokens, static_argnames=("plan", "precision"))


def _plan(config, num_patches, stage):
  """The plan of `stage`, built through make_plan at the stage's first epoch."""
  return toe.make_plan(num_patches, epoch=config["expansion_epochs"][stage - 1], **config)


def _reference_schedule(config, num_patches, stage):
  return toe_reference.schedule(
      num_patches, config["init_rate"], config["keep_rates"], config["substeps"], stage
  )


# --------------------------------------------------------------------------------------------
# Plans.


@pytest.mark.parametrize(
    "config,num_patches,stage,num_seeds,adds,num_selected",
    [
        ("deit_s", 196, 1, 49, (24, 25), 98),
        ("deit_s", 196, 2, 49, (24, 25, 24, 25), 147),
        ("lvvit_s", 196, 1, 39, (19, 20), 78),
        ("lvvit_s", 196, 2, 39, (19, 20, 29, 29), 136),  # not int(196 * 0.7) = 137
        ("efficienttrain", 196, 1, 58, (29, 29), 116),  # not int(196 * 0.6) = 117
        ("efficienttrain", 196, 2, 58, (29, 29, 19, 20), 155),
        ("deit_s", 64, 1, 16, (8, 8), 32),
        ("deit_s", 64, 2, 16, (8, 8, 8, 8), 48),
        ("lvvit_s", 64, 1, 12, (6, 6), 24),
        ("lvvit_s", 64, 2, 12, (6, 6, 9, 10), 43),
        ("efficienttrain", 64, 1, 19, (9, 10), 38),
        ("efficienttrain", 64, 2, 19, (9, 10, 6, 6), 50),  # not int(64 * 0.8) = 51
        ("deit_s", 576, 1, 144, (72, 72), 288),
        ("deit_s", 576, 2, 144, (72, 72, 72, 72), 432),
        ("lvvit_s", 576, 1, 115, (57, 58), 230),
        ("lvvit_s", 576, 2, 115, (57, 58, 86, 86), 402),
        ("efficienttrain", 576, 1, 172, (86, 86), 344),
        ("efficienttrain", 576, 2, 172, (86, 86, 57, 58), 459),
    ],
)
def test_plan_counts_of_released_configs(config, num_patches, stage, num_seeds, adds, num_selected):
  plan = _plan(CONFIGS[config], num_patches, stage)
  assert plan.stage == stage and plan.active
  assert (len(plan.seeds), plan.adds) == (num_seeds, adds)
  assert plan.num_selected == num_selected
  assert (plan.num_patches, plan.num_merged) == (num_patches, num_patches - num_selected)
  seeds, reference_adds = _reference_schedule(CONFIGS[config], num_patches, stage)
  assert plan.seeds == tuple(seeds) and plan.adds == tuple(reference_adds)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("num_patches", [64, 196, 576])
def test_final_stage_with_rate_one_is_off(config, num_patches):
  plan = _plan(CONFIGS[config], num_patches, 3)
  assert plan == ToEPlan(3, False, (), (), num_patches, num_patches)


@pytest.mark.parametrize(
    "num_patches,init_rate,want",
    [
        (196, 0.25, range(0, 193, 4)),  # 49 seeds, covering the 14x14 grid
        (196, 0.2, range(0, 153, 4)),  # 1 // 0.2 == 4.0: 39 seeds, bottom three rows empty
        (196, 0.3, range(0, 172, 3)),  # 58 seeds, rows 12 (partly) and 13 empty
        (64, 0.3, range(0, 55, 3)),
        (576, 0.2, range(0, 457, 4)),
        (576, 0.25, range(0, 573, 4)),
    ],
)
def test_seed_positions(num_patches, init_rate, want):
  config = dict(LVVIT_S, init_rate=init_rate)
  assert toe.make_plan(num_patches, epoch=0, **config).seeds == tuple(want)


def test_float_increment_is_truncated():
  # 0.7 - 0.4 == 0.29999999999999993, so 100 patches add 29 tokens in stage 2, not 30.
  plan = toe.make_plan(100, epoch=100, **LVVIT_S)
  assert plan.seeds == tuple(range(0, 80, 4))
  assert plan.adds == (10, 10, 14, 15) and plan.num_selected == 69


@pytest.mark.parametrize(
    "config,epoch,stage,num_out",
    [
        (DEIT_S, 0, 1, 99), (DEIT_S, 99, 1, 99), (DEIT_S, 100, 2, 148), (DEIT_S, 199, 2, 148),
        (DEIT_S, 200, 3, 197), (DEIT_S, 299, 3, 197),
        (YOLOS_S, 0, 0, 197), (YOLOS_S, 4, 0, 197), (YOLOS_S, 5, 1, 99), (YOLOS_S, 49, 1, 99),
        (YOLOS_S, 50, 2, 148), (YOLOS_S, 100, 3, 197), (YOLOS_S, 149, 3, 197),
        (dict(DEIT_S, expansion_epochs=(5, 100, 200)), 100, 2, 148),  # YOLOS-T
    ],
)
def test_stage_boundaries(config, epoch, stage, num_out):
  plan = toe.make_plan(196, epoch=epoch, **config)
  assert (plan.stage, 1 + plan.num_selected, plan.active) == (stage, num_out, num_out < 197)
  assert toe.stage_at(config["expansion_epochs"], epoch) == stage


def test_stage_zero_plan_is_off():
  plan = toe.make_plan(196, epoch=3, **YOLOS_S)
  assert plan == ToEPlan(0, False, (), (), 196, 196)


def test_final_rate_below_one_stays_active_with_its_own_count():
  config = dict(EFFICIENTTRAIN, keep_rates=(0.6, 0.8, 0.9))
  plan = toe.make_plan(196, epoch=250, **config)
  # a_3 = int(196 * 0.9) - int(196 * (0.3 + 0.5000000000000001)) = 176 - 156 = 20, where
  # int(196 * (0.9 - 0.8)) would give 19.
  assert plan.active and plan.stage == 3
  assert plan.adds == (29, 29, 19, 20, 10, 10) and 1 + plan.num_selected == 176
  assert plan.adds == tuple(_reference_schedule(config, 196, 3)[1])


def test_final_rate_below_one_adds_increments_before_init_rate():
  # r0 + (d_1 + d_2) = 0.7375 but (r0 + d_1) + d_2 = 0.75 in floats: 64 * . -> 47, not 48.
  config = dict(expansion_epochs=(0, 10, 20), keep_rates=(0.15, 0.75, 0.8), init_rate=0.1,
                substeps=2)
  plan = toe.make_plan(64, epoch=20, **config)
  assert (len(plan.seeds), plan.adds) == (6, (1, 2, 19, 19, 2, 2))
  assert plan.adds == tuple(_reference_schedule(config, 64, 3)[1])


def test_substep_split_puts_the_remainder_last():
  config = dict(DEIT_S, substeps=3)
  assert _plan(config, 196, 2).adds == (16, 16, 17, 16, 16, 17)
  # Fewer tokens than sub-steps: the early sub-steps add nothing.
  config = dict(expansion_epochs=(0,), keep_rates=(0.5,), init_rate=0.25, substeps=5)
  assert toe.make_plan(16, epoch=0, **config).adds == (0, 0, 0, 0, 4)


def test_stage_plans_index_by_stage():
  plans = toe.stage_plans(196, **DEIT_S)
  assert toe.num_stages(DEIT_S["expansion_epochs"]) == 3 and len(plans) == 4
  assert [1 + p.num_selected for p in plans] == [197, 99, 148, 197]
  assert [p.stage for p in plans] == [0, 1, 2, 3]
  for stage in (1, 2, 3):
    assert plans[stage] == _plan(DEIT_S, 196, stage)


def test_plan_is_hashable_and_normalises_lists():
  plan = toe.make_plan(196, epoch=0, **dict(DEIT_S, expansion_epochs=[0, 100, 200],
                                            keep_rates=[0.5, 0.75, 1.0]))
  assert plan == _plan(DEIT_S, 196, 1) and hash(plan) == hash(_plan(DEIT_S, 196, 1))
  by_hand = ToEPlan(1, True, list(plan.seeds), list(plan.adds), 98, 196)
  assert by_hand == plan and hash(by_hand) == hash(plan)


@pytest.mark.parametrize(
    "fields",
    [
        (1, True, (0, 4), (1,), 4, 8),  # S != seeds + adds
        (1, True, (4, 0), (1,), 3, 8),  # seeds not ascending
        (1, True, (0, 8), (1,), 3, 8),  # seed out of range
        (1, True, (), (2,), 2, 8),  # no seeds
        (0, False, (), (), 7, 8),  # inactive keeps every patch
    ],
)
def test_inconsistent_plan_is_rejected(fields):
  with pytest.raises(ValueError, match="ToEPlan"):
    ToEPlan(*fields)


@pytest.mark.parametrize(
    "overrides,field,allowed",
    [
        (dict(keep_rates=(0.5, 0.5, 1.0)), "keep_rates", r"\(0, 1\]"),
        (dict(keep_rates=(0.5, 0.75, 1.5)), "keep_rates", r"\(0, 1\]"),
        (dict(keep_rates=(0.0, 0.75, 1.0), init_rate=0.0), "keep_rates", r"\(0, 1\]"),
        (dict(keep_rates=(), expansion_epochs=()), "keep_rates", "at least one"),
        (dict(init_rate=0.0), "init_rate", r"\(0, 0.5\]"),
        (dict(init_rate=0.6), "init_rate", r"\(0, 0.5\]"),
        (dict(init_rate=0.004), "init_rate", "1 / num_patches"),  # int(196 * 0.004) = 0 seeds
        (dict(substeps=0), "substeps", ">= 1"),
        (dict(substeps=1.5), "substeps", ">= 1"),
        (dict(expansion_epochs=(0, 200, 100)), "expansion_epochs", "non-decreasing"),
        (dict(expansion_epochs=(0, 100)), "expansion_epochs", "one start epoch per keep rate"),
        (dict(epoch=-1), "epoch", ">= 0"),
        (dict(num_patches=0), "num_patches", ">= 1"),
    ],
)
def test_invalid_schedule_names_the_argument(overrides, field, allowed):
  kwargs = dict(DEIT_S, epoch=0, num_patches=196)
  kwargs.update(overrides)
  with pytest.raises(ValueError, match=f"^{field}:.*{allowed}"):
    toe.make_plan(**kwargs)


def test_equal_init_and_first_rate_is_allowed():
  plan = toe.make_plan(196, epoch=0, **dict(DEIT_S, init_rate=0.5))
  assert plan.adds == (0, 0) and plan.num_selected == 98


# --------------------------------------------------------------------------------------------
# expand_tokens against the reference.


def _random_tokens(seed, batch, num_patches, width):
  return np.random.default_rng(seed).normal(size=(batch, 1 + num_patches, width))


def _smooth_tokens(seed, batch, num_patches, width, noise=0.05):
  """Per channel a random low-frequency plane wave over the sqrt(P) x sqrt(P) grid, plus a
  per-image offset and noise: neighbouring patches are similar, as after a real block 0."""
  rng = np.random.default_rng(seed)
  side = int(round(num_patches**0.5))
  rows, cols = np.divmod(np.arange(num_patches), side)
  freq = rng.uniform(-1.5, 1.5, size=(batch, 2, width))
  phase = rng.uniform(0, 2 * np.pi, size=(batch, 1, width))
  angle = 2 * np.pi * (rows[:, None] * freq[:, :1] + cols[:, None] * freq[:, 1:]) / side
  patches = np.cos(angle + phase) + 0.3 * rng.normal(size=(batch, 1, width))
  patches += noise * rng.normal(size=patches.shape)
  cls = rng.normal(size=(batch, 1, width))
  return np.concatenate([cls, patches], axis=1)


INPUTS = {"random": _random_tokens, "smooth": _smooth_tokens}
# (config, P, stage): the released schedules, a final rate < 1 with k = 3, empty sub-steps.
CASES = [
    (DEIT_S, 196, 1),
    (DEIT_S, 196, 2),
    (LVVIT_S, 196, 2),
    (EFFICIENTTRAIN, 64, 2),
    (dict(expansion_epochs=(0, 1), keep_rates=(0.5, 0.8), init_rate=0.25, substeps=3), 64, 2),
    (dict(expansion_epochs=(0,), keep_rates=(0.5,), init_rate=0.25, substeps=5), 16, 1),
]
CASE_IDS = ["deit_s_1", "deit_s_2", "lvvit_s_2", "efficienttrain_p64_2", "final_rate_0.8_k3",
            "empty_substeps"]


def _check_against_reference(x, plan, out, out_index, *, rtol, atol):
  want, want_index, _, margin = toe_reference.expand_tokens(x, plan.seeds, plan.adds)
  assert out.shape == want.shape and out_index.dtype == jnp.int32
  np.testing.assert_array_equal(out_index, want_index)
  np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
  return margin


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("config,num_patches,stage", CASES, ids=CASE_IDS)
def test_matches_reference_in_float64(config, num_patches, stage, kind):
  plan = _plan(config, num_patches, stage)
  x = INPUTS[kind](stage + num_patches, 2, num_patches, 6)
  with jax.enable_x64(True):
    out, out_index = expand_jit(jnp.asarray(x, jnp.float64), plan, precision=HIGHEST)
    assert out.dtype == jnp.float64
    out, out_index = np.asarray(out), np.asarray(out_index)
  _check_against_reference(x, plan, out, out_index, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kind,seed,config,num_patches,stage",
    [
        ("smooth", 6, DEIT_S, 196, 1),
        ("smooth", 3, LVVIT_S, 196, 2),
        ("random", 0, DEIT_S, 196, 2),
        ("random", 1, EFFICIENTTRAIN, 64, 2),
    ],
)
def test_matches_reference_in_float32_with_highest_precision(
    kind, seed, config, num_patches, stage
):
  plan = _plan(config, num_patches, stage)
  x = INPUTS[kind](seed, 2, num_patches, 8).astype(np.float32)
  out, out_index = expand_jit(x, plan, precision=HIGHEST)
  assert out.dtype == jnp.float32
  margin = _check_against_reference(x, plan, out, out_index, rtol=1e-5, atol=1e-6)
  # Seeds picked so that every decision had room for float32's ~1e-7 similarity error.
  assert margin > 1e-5


def test_ties_go_to_the_earlier_unselected_entry_and_the_first_host():
  # Seeds 0 and 4 point along e1. Patches 1, 3, 6 point along e2 (score 0), 2, 5, 7 along e1
  # (score 1). Sub-step 1 adds 1, 3 and leaves [6, 2, 5, 7]; then every score is 1 and the
  # list order decides: 6, 2. Patches 5 and 7 match slots 0, 1 and 5 equally: slot 0.
  e1, e2 = [1.0, 0.0], [0.0, 1.0]
  patches = np.array([e1, e2, e1, e2, e1, e1, e2, e1]) * np.arange(1, 9)[:, None]
  x = np.concatenate([[[[3.0, 3.0]]], patches[None]], axis=1).astype(np.float32)
  plan = toe.make_plan(8, epoch=0, expansion_epochs=(0,), keep_rates=(0.75,), init_rate=0.25,
                       substeps=2)
  assert plan.seeds == (0, 4) and plan.adds == (2, 2)
  out, out_index = toe.expand_tokens(x, plan)
  np.testing.assert_array_equal(out_index, [[0, 1, 5, 2, 4, 7, 3]])
  np.testing.assert_allclose(out[0, 1], (patches[0] + patches[5] + patches[7]) / 3)
  np.testing.assert_array_equal(out[0, 2:], patches[[4, 1, 3, 6, 2]])
  _check_against_reference(x, plan, out, out_index, rtol=1e-6, atol=0)


def test_unmerged_tokens_are_copied_and_cls_is_untouched():
  plan = _plan(DEIT_S, 196, 1)
  x = _smooth_tokens(0, 2, 196, 6).astype(np.float32)
  out, out_index = expand_jit(x, plan)
  _, _, sizes, _ = toe_reference.expand_tokens(x, plan.seeds, plan.adds)
  assert out.shape == (2, 99, 6) and out_index.shape == (2, 99)
  np.testing.assert_array_equal(out[:, 0], x[:, 0])
  alone = sizes == 1
  assert alone.any() and not alone.all()
  gathered = np.take_along_axis(x, np.asarray(out_index)[:, :, None], axis=1)
  np.testing.assert_array_equal(np.asarray(out)[:, 1:][alone], gathered[:, 1:][alone])
  # Each patch appears once: either selected or merged.
  assert sizes.sum(axis=1).tolist() == [196, 196]


def test_inactive_plan_returns_input_and_identity_index():
  x = _random_tokens(0, 2, 196, 4).astype(np.float32)
  for plan in (toe.make_plan(196, epoch=200, **DEIT_S), toe.make_plan(196, epoch=0, **YOLOS_S)):
    out, out_index = expand_jit(x, plan)
    np.testing.assert_array_equal(out, x)
    assert out_index.dtype == jnp.int32
    np.testing.assert_array_equal(out_index, np.broadcast_to(np.arange(197), (2, 197)))


def test_input_errors():
  plan = _plan(DEIT_S, 196, 1)
  with pytest.raises(ValueError, match="plan.num_patches = 196"):
    toe.expand_tokens(jnp.zeros((2, 65, 4)), plan)


def test_low_precision_input_keeps_its_dtype():
  plan = _plan(EFFICIENTTRAIN, 64, 1)
  x = jnp.asarray(_random_tokens(4, 2, 64, 8), jnp.bfloat16)
  out, out_index = expand_jit(x, plan, precision=HIGHEST)
  assert out.dtype == jnp.bfloat16
  want, want_index = expand_jit(x.astype(jnp.float32), plan, precision=HIGHEST)
  np.testing.assert_array_equal(out_index, want_index)
  # Both merge the same bfloat16 values in float32 (agreeing to ~1e-7); the bfloat16 run then
  # rounds once, to nearest: by <= 2^-8 of |x| (seen 3.9e-3 of it); tolerance 2^-7 of |x|.
  np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=2.0 ** -7, atol=0)


# --------------------------------------------------------------------------------------------
# Gradients and compilation.


@pytest.mark.slow
def test_gradient_is_the_slot_cotangent_over_the_group_size():
  plan = _plan(LVVIT_S, 196, 1)
  x = _smooth_tokens(5, 2, 196, 4).astype(np.float32)
  cotangent = np.random.default_rng(6).normal(size=(2, 1 + plan.num_selected, 4))
  grad = jax.grad(lambda x: jnp.sum(toe.expand_tokens(x, plan)[0] * cotangent))(x)
  for b in range(2):
    selected, remaining, hosts, _ = toe_reference.select(x[b, 1:], plan.seeds, plan.adds)
    slot_of = {p: j for j, p in enumerate(selected)}
    slot_of.update({u: host for u, host in zip(remaining, hosts)})
    sizes = np.bincount(list(slot_of.values()), minlength=len(selected))
    # The float64 cotangent enters as float32 (2^-24 relative); a mean's gradient divides it
    # once more (another 2^-24): rtol 1e-6 and 1e-5 hold on any machine.
    np.testing.assert_allclose(grad[b, 0], cotangent[b, 0], rtol=1e-6)
    for p in range(196):
      j = slot_of[p]
      np.testing.assert_allclose(grad[b, 1 + p], cotangent[b, 1 + j] / sizes[j], rtol=1e-5)


@pytest.mark.slow
def test_no_gradient_through_the_selection():
  plan = _plan(DEIT_S, 64, 2)
  x = _random_tokens(7, 2, 64, 5).astype(np.float32)
  weights = np.random.default_rng(8).normal(size=(2, 1 + plan.num_selected, 5)).astype(np.float32)
  groups = []  # (B, S, P) membership, fixed outside the differentiated function
  for b in range(2):
    selected, remaining, hosts, _ = toe_reference.select(x[b, 1:], plan.seeds, plan.adds)
    member = np.zeros((len(selected), 64), np.float32)
    member[np.arange(len(selected)), selected] = 1
    member[hosts, remaining] = 1
    groups.append(member)
  groups = np.stack(groups)

  def fixed_index_loss(x):  # the same outputs with the selection frozen as constants
    merged = jnp.einsum("bsp,bpc->bsc", groups, x[:, 1:]) / groups.sum(-1, keepdims=True)
    out = jnp.concatenate([x[:, :1], merged], axis=1)
    return jnp.sum(jnp.sin(out) * weights)

  def loss(x):
    return jnp.sum(jnp.sin(toe.expand_tokens(x, plan)[0]) * weights)

  # The same means, sines and a sum of 2 * 49 * 5 terms, computed two ways in float32:
  # ~sqrt(490) * 2^-24 ~ 1.3e-6 of the terms' size (seen exact); other groups change it O(1).
  np.testing.assert_allclose(loss(x), fixed_index_loss(x), rtol=1e-5)
  # Each gradient entry is one term, weight * cos / group size: a few ulps (seen 3e-8).
  np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(fixed_index_loss)(x), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_jit_compiles_once_per_plan_and_matches_eager():
  plans = [_plan(DEIT_S, 64, 1), _plan(DEIT_S, 64, 2)]
  xs = [_smooth_tokens(seed, 2, 64, 4).astype(np.float32) for seed in (10, 11)]
  eager = {(i, j): toe.expand_tokens(x, plan) for i, plan in enumerate(plans)
           for j, x in enumerate(xs)}
  counted = trace_counter(toe.expand_tokens)
  jitted = jax.jit(counted, static_argnames="plan")
  for i, plan in enumerate(plans):
    for j, x in enumerate(xs):
      out, out_index = jitted(x, plan)
      np.testing.assert_array_equal(out_index, eager[i, j][1])
      # Group means, summed in whatever order each compilation picks: s * 2^-24 * max|x| at
      # most for s <= 160 members, within 1e-5 * max|x| (seen exact); a wrong merge is O(1).
      np.testing.assert_allclose(out, eager[i, j][0], rtol=0, atol=1e-5 * np.abs(x).max())
  jitted(xs[0], _plan(DEIT_S, 64, 1))  # an equal plan built anew hits the cache
  assert len(counted.calls) == 2  # one trace, so one compile, per plan
