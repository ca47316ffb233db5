"""RoutingConfig(score="random"): the random-subset control for [CLS]-attention routing."""

import functools

import jax
import numpy as np
import optax
import pytest

from skipvit_jax import RoutingConfig, ViT
from skipvit_jax.runtime import parallel
from skipvit_jax.train import step as step_lib
from tests.support.jax_testing import trace_counter

ROW = RoutingConfig.from_paper_row("6-55-11")
RANDOM = RoutingConfig(ROW.drop_layers, ROW.drop_ratios, ROW.return_layer, score="random")
IMAGES = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))


def _model(routing: RoutingConfig) -> ViT:
  return ViT(variant="Te/4", num_classes=10, image_size=32, routing=routing)


PARAMS = _model(RoutingConfig()).init(jax.random.key(1), IMAGES[:1], train=False)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _eval_keep_idx(routing: RoutingConfig) -> jax.Array:
  """keep_idx (B, K) of the drop layer in evaluation (no "routing" RNG stream)."""
  _, aux = _model(routing).apply({"params": PARAMS}, IMAGES, train=False)
  return aux["routing"][0]["keep_idx"]


@jax.jit
def _train_keep_idx(seed, step) -> jax.Array:
  """keep_idx (B, K) of the random router in training step `step` of a run seeded `seed`."""
  rngs = step_lib.step_rngs(seed, step, 0)
  _, aux = _model(RANDOM).apply({"params": PARAMS}, IMAGES, train=True,
                                rngs={"dropout": rngs["dropout"], "routing": rngs["routing"]})
  return aux["routing"][0]["keep_idx"]


def test_random_keeps_as_many_tokens_as_the_attention_router():
  attention, random = np.asarray(_eval_keep_idx(ROW)), np.asarray(_eval_keep_idx(RANDOM))
  assert attention.shape == random.shape == (4, 64 - 35)  # 55% of 64 dropped
  assert (np.diff(random, axis=1) > 0).all()  # distinct positions, ascending
  assert (_model(RANDOM).routing_plan.tokens_per_layer()
          == _model(ROW).routing_plan.tokens_per_layer())
  assert not np.array_equal(attention, random)


def test_random_subsets_are_a_function_of_seed_and_step():
  step0, again, step1 = (np.asarray(_train_keep_idx(0, step)) for step in (0, 0, 1))
  np.testing.assert_array_equal(step0, again)
  assert not np.array_equal(step0, step1)
  assert not np.array_equal(step0, _train_keep_idx(1, 0))
  assert len({row.tobytes() for row in step0}) == 4  # every example its own subset
  # Evaluation has no "routing" stream: a fixed subset per example slot, every time.
  np.testing.assert_array_equal(_eval_keep_idx(RANDOM), _eval_keep_idx(RANDOM))


def test_random_subsets_are_uniform():
  counts = np.zeros(64)
  steps = 250
  for step in range(steps):
    np.add.at(counts, np.asarray(_train_keep_idx(3, step)).ravel(), 1)
  frequency = counts / (steps * 4)  # each position's share of the draws that kept it
  # Kept with probability 29/64 = 0.453; sd over 1000 draws ~0.016, so 5 sd is 0.08.
  assert abs(frequency.mean() - 29 / 64) < 1e-9
  assert np.abs(frequency - 29 / 64).max() < 0.08


@pytest.mark.slow
def test_random_routing_trains_in_one_compiled_step_with_new_subsets_each_step():
  model = _model(RANDOM)
  optimizer = optax.adamw(1e-3)
  state = parallel.replicate(step_lib.init_state(_model(RoutingConfig()), optimizer, 0))
  counted_step = trace_counter(step_lib.train_step)
  step = jax.pmap(lambda s, b: counted_step(
      s, b, model=model, optimizer=optimizer, learning_rate=lambda c: 1e-3,
      regularization=step_lib.Regularization(), seed=0), axis_name=parallel.AXIS)
  batch = parallel.shard({"image": np.asarray(IMAGES), "label": np.arange(4) % 10})
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(parallel.unreplicate(metrics)["loss"]))
  assert len(counted_step.calls) == 1  # traced, so compiled, once
  assert np.isfinite(losses).all()


def test_random_score_is_refused_with_the_fused_token():
  with pytest.raises(ValueError, match="RoutingConfig.score"):
    RoutingConfig((6,), (0.45,), mode="fused", score="random")
  with pytest.raises(ValueError, match="RoutingConfig.score.*'cls_attention', 'random'"):
    RoutingConfig((6,), (0.45,), 11, score="attention")
