"""skipvit_jax.models.routing against the plain-numpy reference, and RoutingConfig validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skipvit_jax.models import routing
from skipvit_jax.models.routing import RoutingConfig
from tests.support import reference


def _random_tokens(seed, batch=3, num_patches=20, width=5):
  return np.random.default_rng(seed).normal(size=(batch, 1 + num_patches, width)).astype(np.float32)


@pytest.mark.parametrize("batch,n,heads,d", [(2, 17, 3, 8), (1, 65, 2, 16), (4, 197, 6, 4)])
def test_cls_attention_scores_match_reference(batch, n, heads, d):
  rng = np.random.default_rng(n)
  q = rng.normal(size=(batch, n, heads, d)).astype(np.float32)
  k = rng.normal(size=(batch, n, heads, d)).astype(np.float32)
  got = jax.jit(routing.cls_attention_scores)(q, k)
  assert got.shape == (batch, n - 1) and got.dtype == jnp.float32
  # float32 softmax over N <= 197 keys of d-term logits (|logit| < ~10), against float64:
  # relative ~ (|logit| + sqrt(N)) * 2^-24 ~ 1.5e-6 at most (seen 2.5e-8 absolute on ~1e-2).
  np.testing.assert_allclose(got, reference.cls_attention_scores(q, k), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("num_keep", [1, 7, 19, 20])
@pytest.mark.parametrize("ties", [False, True])
def test_split_tokens_indices_and_values_match_reference(num_keep, ties):
  x = _random_tokens(num_keep)
  rng = np.random.default_rng(100 + num_keep)
  if ties:  # only four distinct values: most ranks are decided by position
    scores = rng.integers(0, 4, size=(3, 20)).astype(np.float32) / 4
  else:
    scores = rng.random((3, 20)).astype(np.float32)
  kept, keep_idx, dropped, drop_idx = jax.jit(routing.split_tokens, static_argnums=2)(
      x, scores, num_keep
  )
  want_keep, want_drop = reference.split_indices(scores, num_keep)
  assert keep_idx.dtype == jnp.int32 and drop_idx.dtype == jnp.int32
  np.testing.assert_array_equal(keep_idx, want_keep)
  np.testing.assert_array_equal(drop_idx, want_drop)
  for b in range(3):
    np.testing.assert_array_equal(kept[b, 0], x[b, 0])
    np.testing.assert_array_equal(kept[b, 1:], x[b, 1 + want_keep[b]])
    np.testing.assert_array_equal(dropped[b], x[b, 1 + want_drop[b]])


def test_split_tokens_tie_goes_to_lower_position():
  x = _random_tokens(0, batch=1, num_patches=6)
  scores = np.array([[0.1, 0.5, 0.2, 0.5, 0.5, 0.0]], np.float32)
  _, keep_idx, _, drop_idx = routing.split_tokens(x, scores, 2)
  np.testing.assert_array_equal(keep_idx, [[1, 3]])
  np.testing.assert_array_equal(drop_idx, [[0, 2, 4, 5]])


@pytest.mark.parametrize("num_keep", [1, 9, 20])
def test_restore_inverts_split_exactly(num_keep):
  x = _random_tokens(1)
  scores = np.random.default_rng(2).random((3, 20)).astype(np.float32)
  kept, keep_idx, dropped, drop_idx = routing.split_tokens(x, scores, num_keep)
  restored = jax.jit(routing.restore_tokens)(kept, keep_idx, dropped, drop_idx)
  np.testing.assert_array_equal(restored, x)


def test_restore_puts_transformed_kept_tokens_at_their_positions():
  x = _random_tokens(3)
  scores = np.random.default_rng(4).random((3, 20)).astype(np.float32)
  kept, keep_idx, dropped, drop_idx = routing.split_tokens(x, scores, 8)
  restored = np.asarray(routing.restore_tokens(kept * 2.0, keep_idx, dropped, drop_idx))
  for b in range(3):
    keep = set(np.asarray(keep_idx[b]).tolist())
    for pos in range(20):
      factor = 2.0 if pos in keep else 1.0
      np.testing.assert_array_equal(restored[b, 1 + pos], factor * x[b, 1 + pos])
  np.testing.assert_array_equal(restored[:, 0], 2.0 * x[:, 0])


def test_two_stage_split_restores_in_original_order():
  x = _random_tokens(5)
  rng = np.random.default_rng(6)
  kept1, k1, dropped1, d1 = routing.split_tokens(x, rng.random((3, 20)).astype(np.float32), 14)
  kept2, k2, dropped2, d2 = routing.split_tokens(kept1, rng.random((3, 14)).astype(np.float32), 9)
  back = routing.restore_tokens(routing.restore_tokens(kept2, k2, dropped2, d2), k1, dropped1, d1)
  np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("normalize", [False, True])
def test_fuse_tokens_matches_reference(normalize):
  rng = np.random.default_rng(7)
  dropped = rng.normal(size=(2, 11, 6)).astype(np.float32)
  weights = rng.random((2, 11)).astype(np.float32) * 0.05
  got = routing.fuse_tokens(dropped, weights, normalize=normalize)
  assert got.shape == (2, 1, 6)
  # float32 weighted sums of 11 terms (|term| < 0.2), against float64: ~11 * 2^-24 * 0.2 ~ 1e-7
  # at most, mostly far less (seen 9e-8 with one-ulp input noise).
  np.testing.assert_allclose(got, reference.fuse(dropped, weights, normalize), rtol=1e-5, atol=1e-7)


def test_route_fused_appends_the_weighted_sum_of_dropped_tokens():
  x = _random_tokens(8)
  scores = np.random.default_rng(9).random((3, 20)).astype(np.float32)
  config = RoutingConfig((1,), (0.5,), mode="fused")
  stage = config.plan(depth=2, num_patches=20).stages[0]
  out, split = routing.route(x, scores, stage, config)
  assert out.shape == (3, 1 + 10 + 1, 5)
  weights = np.take_along_axis(scores, np.asarray(split.drop_idx), axis=1)
  # float32 sums of 10 terms of size <= 3 against float64: <= 10 * 2^-24 * 3 ~ 2e-6 (seen 2e-7).
  np.testing.assert_allclose(
      out[:, -1:], reference.fuse(np.asarray(split.dropped), weights), rtol=1e-5, atol=1e-6
  )


def test_ranking_gets_no_gradient_but_values_do():
  x = _random_tokens(10)
  scores = np.random.default_rng(11).random((3, 20)).astype(np.float32)
  weights = np.random.default_rng(12).normal(size=(3, 13, 5)).astype(np.float32)

  def loss(x, scores):
    kept, _, dropped, _ = routing.split_tokens(x, scores, 12)
    return jnp.sum(kept * weights) + jnp.sum(dropped**2)

  grad_x, grad_scores = jax.grad(loss, argnums=(0, 1))(x, scores)
  np.testing.assert_array_equal(grad_scores, np.zeros_like(scores))
  keep, drop = reference.split_indices(scores, 12)
  for b in range(3):  # a gather's gradient copies the cotangent, and 2x is exact: no rounding
    np.testing.assert_allclose(grad_x[b, 0], weights[b, 0])
    np.testing.assert_allclose(grad_x[b, 1 + keep[b]], weights[b, 1:])
    np.testing.assert_allclose(grad_x[b, 1 + drop[b]], 2 * x[b, 1 + drop[b]])


# --------------------------------------------------------------------------------------------
# RoutingConfig: plans and validation.


def test_plan_counts_single_and_two_stage():
  (stage,) = RoutingConfig((6,), (0.55,), 11).plan(12, 196).stages
  assert (stage.layer, stage.num_present, stage.num_keep, stage.num_drop) == (6, 196, 89, 107)
  present = RoutingConfig((4, 7), (0.3, 0.3), 10).plan(12, 196).stages
  assert [(s.num_present, s.num_keep) for s in present] == [(196, 138), (138, 97)]
  original = RoutingConfig((4, 7), (0.3, 0.3), 10, ratio_of="original").plan(12, 196).stages
  assert [(s.num_present, s.num_keep) for s in original] == [(196, 138), (138, 80)]
  # 0.29 * 100 is 28.999999999999996 in floating point; 29 tokens are meant.
  assert RoutingConfig((1,), (0.29,), 2).plan(2, 100).stages[0].num_drop == 29


def test_plan_tokens_per_layer():
  tokens = RoutingConfig((6,), (0.55,), 11).plan(12, 196).tokens_per_layer()
  assert tokens == ((197, 197),) * 5 + ((197, 90),) + ((90, 90),) * 4 + ((197, 197),) * 2
  tokens = RoutingConfig((6,), (0.45,), mode="fused", drop_point="block_input").plan(12, 196)
  assert tokens.tokens_per_layer() == ((197, 197),) * 5 + ((1 + 108 + 1, 110),) * 7


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(drop_layers=(13,), drop_ratios=(0.5,), return_layer=14), "drop_layers"),
        (dict(drop_layers=(0,), drop_ratios=(0.5,), return_layer=3), "drop_layers"),
        (dict(drop_layers=(7, 4), drop_ratios=(0.3, 0.3), return_layer=10), "drop_layers"),
        (dict(drop_layers=(4, 4), drop_ratios=(0.3, 0.3), return_layer=10), "drop_layers"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=6), "return_layer"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=4), "return_layer"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=13), "return_layer"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,)), "return_layer"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=9, mode="fused"), "return_layer"),
        (dict(drop_layers=(), drop_ratios=(), return_layer=9), "return_layer"),
        (dict(drop_layers=(6,), drop_ratios=(1.0,), return_layer=9), "drop_ratios"),
        (dict(drop_layers=(6,), drop_ratios=(-0.1,), return_layer=9), "drop_ratios"),
        (dict(drop_layers=(6,), drop_ratios=(0.5, 0.5), return_layer=9), "drop_ratios"),
        (dict(drop_layers=(2, 3), drop_ratios=(0.6, 0.6), return_layer=4, ratio_of="original"),
         "drop_ratios"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=9, mode="skipp"), "mode"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=9, drop_point="x"), "drop_point"),
        (dict(drop_layers=(6,), drop_ratios=(0.5,), return_layer=9, ratio_of="x"), "ratio_of"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=f"RoutingConfig.{field}"):
    RoutingConfig(**kwargs).plan(depth=12, num_patches=196)


def test_error_message_gives_allowed_values():
  with pytest.raises(ValueError, match=r"7\.\.12"):
    RoutingConfig((6,), (0.5,), 5).plan(12, 196)
  with pytest.raises(ValueError, match=r"1\.\.12"):
    RoutingConfig((13,), (0.5,), 14).plan(12, 196)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    RoutingConfig((6,), (1.5,), 9)


def test_config_accepts_lists_and_is_hashable():
  config = RoutingConfig([6], [0.55], 11)
  assert config == RoutingConfig((6,), (0.55,), 11)
  assert hash(config) == hash(RoutingConfig((6,), (0.55,), 11))


def test_paper_rows_by_name():
  assert RoutingConfig.from_paper_row("6-55-11") == RoutingConfig((6,), (0.55,), 11)
  assert RoutingConfig.from_paper_row("4.7-30.30-10") == RoutingConfig((4, 7), (0.3, 0.3), 10)
  assert RoutingConfig.from_paper_row("6-45-fused") == RoutingConfig((6,), (0.45,), mode="fused")
  with pytest.raises(ValueError, match="paper row"):
    RoutingConfig.from_paper_row("6-55")
