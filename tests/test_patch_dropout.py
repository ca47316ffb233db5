"""PatchDropout (RoutingConfig.patch_keep_rate): a uniformly random subset of the patch tokens
at the input in training, a function of (seed, step); every token at evaluation."""

import math

import jax
import numpy as np
import pytest

from configs import fashion_mnist
from skipvit_jax.models import flops, routing
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.tome import ToMeConfig
from skipvit_jax.models.vit import ViT
from skipvit_jax.train import phases, validation
from skipvit_jax.train import step as step_lib
from tests.support import fashion_flops, tome_reference
from tests.support.jax_testing import trace_counter

HALF = RoutingConfig(patch_keep_rate=0.5)  # 49 patches: keeps floor(24.5) = 24
IMAGES = jax.random.normal(jax.random.key(0), (4, 28, 28, 3))


def _model(routing=HALF):
  return ViT("Te/4", num_classes=5, image_size=28, routing=routing)


PARAMS = _model(RoutingConfig()).init(jax.random.key(1), IMAGES[:1], train=False)["params"]
PARAMS = {**PARAMS, "head": {**PARAMS["head"], "kernel": jax.random.normal(
    jax.random.key(2), PARAMS["head"]["kernel"].shape)}}  # not zero: logits to compare


def _train(routing, seed, step):
  """(logits, aux) of training step `step` of a run seeded `seed` (device 0's streams)."""
  rngs = step_lib.step_rngs(seed, step, 0)
  return _model(routing).apply({"params": PARAMS}, IMAGES, train=True,
                               rngs={"dropout": rngs["dropout"], "routing": rngs["routing"]})


_keep_idx = jax.jit(lambda seed, step: _train(HALF, seed, step)[1]["patch_dropout"]["keep_idx"])


def test_keeps_the_planned_count_at_the_input_and_all_tokens_at_evaluation():
  model = _model()
  assert routing.patch_dropout_count(49, 0.5) == 24 and routing.patch_dropout_count(100, 0.29) == 29
  assert model.token_plan(train=True).tokens_per_layer() == ((25, 25),) * 12
  assert model.token_plan(train=False).tokens_per_layer() == ((50, 50),) * 12
  keep_idx = np.asarray(_keep_idx(0, 0))
  assert keep_idx.shape == (4, 24) and (np.diff(keep_idx, axis=1) > 0).all()  # ascending
  # Evaluation: every token, the dense model's logits.
  logits, aux = jax.jit(lambda p: model.apply({"params": p}, IMAGES, train=False))(PARAMS)
  dense, _ = jax.jit(lambda p: _model(RoutingConfig()).apply({"params": p}, IMAGES,
                                                             train=False))(PARAMS)
  assert "patch_dropout" not in aux and aux["token_positions"][0].shape == (4, 49)
  np.testing.assert_array_equal(logits, dense)
  assert not HALF.routes and HALF.reduces  # evaluation is dense; training reduces


def test_training_forward_is_a_vit_on_the_kept_tokens():
  logits, aux = jax.jit(lambda: _train(HALF, 0, 5))()
  keep_idx = np.asarray(aux["patch_dropout"]["keep_idx"])
  np.testing.assert_array_equal(aux["token_positions"][0], keep_idx)
  with jax.default_matmul_precision("highest"):
    logits, _ = jax.jit(lambda: _train(HALF, 0, 5))()
  want, _, groups = tome_reference.vit_forward(PARAMS, IMAGES, patch_size=4, merges=(0,) * 12,
                                               keep_idx=keep_idx)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)  # 12 float32 blocks vs f64
  assert ((groups >= 0).sum(axis=1) == 24).all()


def test_the_kept_set_is_a_function_of_seed_and_step():
  step0, again, step1, seed1 = (np.asarray(_keep_idx(seed, step))
                                for seed, step in ((0, 0), (0, 0), (0, 1), (1, 0)))
  np.testing.assert_array_equal(step0, again)
  assert not np.array_equal(step0, step1) and not np.array_equal(step0, seed1)
  assert len({row.tobytes() for row in step0}) == 4  # every example its own subset


def test_the_kept_set_is_uniform():
  # 500 steps x 4 examples = 2000 draws of 24 of 49 positions, in one compiled program.
  draws = np.asarray(jax.jit(jax.vmap(lambda step: _keep_idx(7, step)))(np.arange(500)))
  counts = np.bincount(draws.ravel(), minlength=49)
  n, p = draws.shape[0] * draws.shape[1], 24 / 49
  assert counts.sum() == n * 24  # exactly 24 kept every time
  # Each position is kept in Binomial(n, p) of the draws: 6 standard deviations is a bound a
  # uniform draw crosses with probability ~1e-7 over the 49 positions (and the seed is fixed).
  sd = math.sqrt(n * p * (1 - p))
  assert np.abs(counts - n * p).max() < 6 * sd
  # The positions' squared deviations add up as a chi-square of mean 49 (sd ~ sqrt(2 * 49)).
  statistic = (((counts - n * p) / sd) ** 2).sum()
  assert statistic < 49 + 6 * math.sqrt(2 * 49)
  # Pairs too: two given positions are kept together with probability p (23 / 48).
  kept = draws.reshape(n, 24)
  together = ((kept == 0).any(axis=1) & (kept == 48).any(axis=1)).mean()
  assert abs(together - p * 23 / 48) < 6 * math.sqrt(p * 23 / 48 / n)


def test_one_compilation_across_steps():
  counted = trace_counter(lambda params, step: _train(HALF, 0, step)[0].sum())
  grad = jax.jit(jax.grad(counted))
  for step in range(3):
    grads = grad(PARAMS, step)
  assert len(counted.calls) == 1
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_drop_layers_rank_within_the_kept_tokens_and_tome_merges_them():
  row = RoutingConfig((6,), (0.55,), 11, patch_keep_rate=0.5)
  assert row.plan(12, 49, train=True).stages[0].num_keep == 24 - math.floor(0.55 * 24)  # 11
  assert row.plan(12, 49, train=False).stages[0].num_keep == 49 - 26  # 23: as without it
  _, aux = jax.jit(lambda: _train(row, 0, 0))()
  kept = np.asarray(aux["patch_dropout"]["keep_idx"])
  positions = np.asarray(aux["routing"][0]["kept_positions"])
  assert positions.shape == (4, 11)
  assert all(set(positions[b]) <= set(kept[b]) for b in range(4))
  np.testing.assert_array_equal(aux["token_positions"][10], kept)  # restored before layer 11
  both = RoutingConfig(patch_keep_rate=0.5, tome=ToMeConfig(r=3))
  _, aux = jax.jit(lambda: _train(both, 0, 0))()
  groups = np.asarray(aux["tome"]["merge_groups"])
  assert ((groups >= 0).sum(axis=1) == 24).all() and (aux["tome"]["sizes"].sum(axis=1) == 25).all()


def test_drop_warmup_trains_on_all_tokens_first():
  got = phases.make_phases(routing=HALF, drop_warmup_steps=4, total_steps=10)
  assert [(p.name, p.routing) for p in got] == [("drop_warmup", RoutingConfig()),
                                                ("routed", HALF)]


def test_flops_and_the_keep_rate_matching_6_55_11_on_fashion_mnist():
  macs = flops.forward_macs("Te/4", image_size=28, num_classes=5, routing=HALF)
  dims = _model().dims
  assert macs.blocks == (flops.block_macs(25, 25, dims.width, dims.mlp_dim),) * 12
  assert flops.forward_macs("Te/4", image_size=28, num_classes=5, routing=HALF,
                            train=False).blocks == flops.forward_macs(
                                "Te/4", image_size=28, num_classes=5).blocks
  target, run = fashion_flops.target_6_55_11()
  rate, speedup = flops.patch_keep_for_speedup(target, "Te/4", **run)
  every = {k: flops.run_speedup("Te/4", routing=RoutingConfig(patch_keep_rate=k / 49), **run)
           for k in range(1, 50)}
  assert abs(speedup - target) == min(abs(s - target) for s in every.values())
  assert routing.patch_dropout_count(49, rate) == 40  # configs/fashion_mnist.py's 0.82 keeps 40
  matched = fashion_mnist.get_config("patch_keep=0.82")
  assert routing.patch_dropout_count(49, matched.patch_dropout.keep_rate) == 40
  validation.check_config(matched)


def test_config_is_validated():
  for value, message in ((0.0, "config.patch_dropout.keep_rate: must be a number > 0"),
                         (0.01, "keeps none of the 49 patches")):
    config = fashion_mnist.get_config("patch_keep=0.82")
    config.patch_dropout.keep_rate = value
    with pytest.raises(validation.ConfigError, match=message):
      validation.check_config(config)
  with pytest.raises(validation.ConfigError, match="config.toe.enabled: ToE does not combine"):
    validation.check_config(fashion_mnist.get_config("patch_keep=0.82,toe"))
  with pytest.raises(ValueError, match="RoutingConfig.patch_keep_rate"):
    RoutingConfig(patch_keep_rate=1.5)
