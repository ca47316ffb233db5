"""The training recipe's pieces: weight decay by name, top-k with ties, the EMA, gradient
accumulation, rematerialisation and repeated augmentation's data order."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import remat_memory
from skipvit_jax import ViT
from skipvit_jax.data import pipeline
from skipvit_jax.runtime import parallel
from skipvit_jax.train import evaluate, optim
from skipvit_jax.train import step as step_lib
from tests.support.jax_testing import assert_grads_close

AXIS = parallel.AXIS


def _abstract_params(model: ViT):
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False)["params"])


def _flat_names(tree) -> dict[str, object]:
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --------------------------------------------------------------------------------------------
# Weight decay


def test_weight_decay_mask_of_vit_s16_is_exactly_the_kernels():
  params = _abstract_params(ViT(variant="S/16", num_classes=1000))
  mask = _flat_names(optim.weight_decay_mask(params))
  # DeiT/timm: decay every weight matrix (and the patch convolution), nothing else.
  expected = {"embedding/kernel", "head/kernel"}
  for i in range(12):
    block = f"Transformer/encoderblock_{i}"
    expected |= {f"{block}/MultiHeadDotProductAttention_1/{p}/kernel"
                 for p in ("query", "key", "value", "out")}
    expected |= {f"{block}/MlpBlock_3/Dense_{j}/kernel" for j in (0, 1)}
  assert {name for name, decays in mask.items() if decays} == expected
  assert len(expected) == 2 + 12 * 6
  # The leaves a rule by rank got wrong: (heads, head_dim) biases, and cls / pos_embedding.
  shapes = _flat_names(params)
  assert shapes["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/bias"].ndim == 2
  assert not mask["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/bias"]
  assert not mask["cls"] and not mask["Transformer/posembed_input/pos_embedding"]


# --------------------------------------------------------------------------------------------
# Top-k


def _numpy_in_top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Reference for distinct logits: the label is among the k largest."""
  return np.array([label in np.argsort(-row)[:k] for row, label in zip(logits, labels)])


def test_in_top_k_matches_numpy_on_distinct_logits():
  rng = np.random.default_rng(0)
  logits = rng.permutation(64 * 10).reshape(64, 10).astype(np.float32)  # no ties
  labels = rng.integers(0, 10, 64)
  for k in (1, 3, 5):
    np.testing.assert_array_equal(evaluate.in_top_k(jnp.asarray(logits), jnp.asarray(labels), k),
                                  _numpy_in_top_k(logits, labels, k))


def test_in_top_k_counts_ties_and_nan_as_wrong():
  labels = jnp.array([0, 3, 2, 1])
  logits = jnp.array([
      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all equal
      [1.0, 2.0, 3.0, 3.0, 0.0, 0.0],  # label tied for first
      [0.0, 0.0, jnp.nan, 0.0, 0.0, 0.0],  # NaN at the label
      [0.0, 5.0, jnp.nan, 0.0, 0.0, 0.0],  # NaN elsewhere, label highest of the rest
  ])
  np.testing.assert_array_equal(evaluate.in_top_k(logits, labels, 1), [False] * 4)
  # Label 3 ties one class (index 2) and two classes score less: in the top 2, as 2 others
  # would have to be >= it to push it out.
  np.testing.assert_array_equal(evaluate.in_top_k(logits, labels, 2), [False, True, False, False])


def test_eval_step_of_a_fresh_model_scores_zero():
  """A fresh ViT's head is zero: every logit is equal, which used to score 100%."""
  model = ViT(variant="Te/4", num_classes=10, image_size=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  batch = parallel.shard({"image": np.random.default_rng(1).normal(size=(8, 32, 32, 3)),
                          "label": np.arange(8) % 10, "valid": np.ones(8, np.float32)})
  step = jax.pmap(lambda p, b: evaluate.eval_step(p, b, model=model, with_recall=False),
                  axis_name=AXIS)
  sums = parallel.unreplicate(step(parallel.replicate(params), batch))
  assert float(sums["count"]) == 8 and float(sums["top1"]) == 0 and float(sums["top5"]) == 0


# --------------------------------------------------------------------------------------------
# The training step: EMA, accumulation, remat


def _step_fn(model: ViT, optimizer, **kwargs):
  return jax.pmap(
      lambda state, batch: step_lib.train_step(
          state, batch, model=model, optimizer=optimizer, learning_rate=lambda step: 1e-3,
          regularization=step_lib.Regularization(), seed=0, **kwargs),
      axis_name=AXIS)


def _batch(size: int, seed: int = 1) -> dict:
  """A global batch of `size` random images, sharded over the devices."""
  rng = np.random.default_rng(seed)
  return parallel.shard({"image": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
                         "label": rng.integers(0, 10, size).astype(np.int32)})


@pytest.mark.slow
def test_ema_equals_the_closed_form_average_of_the_trajectory():
  model = ViT(variant="Te/4", num_classes=10, image_size=32)
  optimizer = optax.adamw(1e-2, weight_decay=0.05, mask=optim.weight_decay_mask)
  decay, steps = 0.8, 6
  state = parallel.replicate(step_lib.init_state(model, optimizer, 0, ema=True))
  step = _step_fn(model, optimizer, ema_decay=decay)
  trajectory = [parallel.unreplicate(state.params)]
  for i in range(steps):
    state, _ = step(state, _batch(8, seed=i))
    trajectory.append(parallel.unreplicate(state.params))
  # ema_n = decay^n p_0 + (1 - decay) sum_{i=1..n} decay^(n - i) p_i, in float64.
  weights = [decay ** steps] + [(1 - decay) * decay ** (steps - i) for i in range(1, steps + 1)]
  expected = jax.tree.map(
      lambda *ps: sum(w * np.asarray(p, np.float64) for w, p in zip(weights, ps)), *trajectory)
  ema = parallel.unreplicate(state.ema_params)
  for name, value in _flat_names(expected).items():
    np.testing.assert_allclose(_flat_names(ema)[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
  # The average really lags: it is not the last parameters.
  assert not np.allclose(_flat_names(ema)["head/kernel"],
                         _flat_names(trajectory[-1])["head/kernel"])


@pytest.mark.slow
def test_accumulated_micro_batches_give_the_update_of_one_large_batch():
  model = ViT(variant="Te/4", num_classes=10, image_size=32)
  optimizer = optax.sgd(0.5)  # plain SGD: the update is the gradient itself, scaled
  initial = step_lib.init_state(model, optimizer, 0)
  # A non-zero head, so every parameter gets a gradient from the first step.
  head = initial.params["head"]
  initial = initial.replace(params={**initial.params, "head": {
      **head, "kernel": jax.random.normal(jax.random.key(2), head["kernel"].shape) * 0.1}})
  batch = _batch(16)
  one, _ = _step_fn(model, optimizer)(parallel.replicate(initial), batch)
  accumulated, _ = _step_fn(model, optimizer, grad_accum_steps=4)(
      parallel.replicate(initial), batch)
  one, accumulated = map(parallel.unreplicate, (one.params, accumulated.params))
  # The gradient summed in another order (4 micro-batch means of 4): float32 rounding of
  # sums over <= 4 * 65 token rows through 12 blocks and back, ~sqrt(24 * 260) * 2^-24 ~ 5e-6
  # of the largest update in the block (a key bias's update is 0 up to rounding, so not of
  # the entry), plus one rounding of each parameter, 2^-24 of it. Tolerance 1e-4 of the
  # block's largest update and 2^-22 of the entry; an update summed wrong (not averaged over
  # the micro-batches, one left out) is off by O(1) of it.
  update = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - np.asarray(old), one,
                        initial.params)
  assert_grads_close(accumulated, one, 1e-4, scale=update, rtol=2.0 ** -22)
  moved = 0
  for name, value in _flat_names(one).items():
    moved += not np.array_equal(value, _flat_names(initial.params)[name])
  assert moved == len(_flat_names(one))  # every parameter was updated


def _loss_fn(model: ViT, images: jax.Array, labels: jax.Array):
  def loss(params):
    logits, _ = model.apply({"params": params}, images, train=True,
                            rngs={"dropout": jax.random.key(3)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss


@pytest.mark.slow
def test_remat_keeps_loss_and_gradients():
  kwargs = dict(variant="Te/4", num_classes=10, image_size=32, stochastic_depth=0.2,
                dropout_rate=0.1)
  plain, remat = ViT(**kwargs), ViT(**kwargs, remat=True)
  params = plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  batch = _batch(16)
  images, labels = (x.reshape((-1,) + x.shape[2:]) for x in (batch["image"], batch["label"]))
  results = [jax.value_and_grad(_loss_fn(m, images, labels))(params) for m in (plain, remat)]
  (loss, grads), (remat_loss, remat_grads) = results
  # float32 sums recomputed in another order, over <= B*N = 1040 token rows or <= 128
  # features through 12 blocks and back: ~sqrt(24 * 1040) * 2^-24 ~ 1e-5 of the size of the
  # terms summed (for the loss, of the logits, |logit| ~ 10 against a loss ~ 7). Tolerance
  # 1e-4 of the loss and of the largest gradient in each block (the key bias's gradient is 0
  # up to rounding: no relative tolerance holds for it); recomputing with other dropout masks
  # or stochastic-depth draws would move both by O(1) of them.
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-4)
  assert_grads_close(remat_grads, grads, 1e-4)


@pytest.mark.slow
def test_remat_shrinks_the_compiled_training_steps_temporaries():
  """XLA's memory analysis of the benchmark's (the trainer's) compiled step; on a CPU compiled
  with remat's optimisation barriers kept, as GPU compilers keep them (remat_memory's
  docstring)."""
  report = remat_memory.main(["--variant=Te/4", "--image_size=32", "--num_classes=10",
                              "--batch_size=16", "--dtype=float32", "--configs=dense"])
  [row] = report["results"]
  assert row["temp_mib_remat"] < 0.5 * row["temp_mib"], row
  assert row["step_memory_mib_remat"] < row["step_memory_mib"], row


# --------------------------------------------------------------------------------------------
# Repeated augmentation: the order of examples


def _global_batches(num_examples: int, global_batch: int, repeats: int, steps: int,
                    process_count: int = 1) -> list[list[int]]:
  """Example indices of each global batch, in slot order, joined over hosts."""
  hosts = [pipeline._TrainIndices(num_examples, global_batch, h, process_count, seed=5,
                                  total_steps=steps, repeats=repeats)
           for h in range(process_count)]
  batches = []
  for step in range(steps):
    batch = []
    for indices in hosts:
      items = [indices[step * indices.host_batch + i] for i in range(indices.host_batch)]
      assert [s for s, _, _ in items] == [step] * indices.host_batch
      batch.extend(items)
    assert [slot for _, slot, _ in batch] == list(range(global_batch))
    batches.append([index for _, _, index in batch])
  return batches


def test_repeated_augmentation_shows_each_image_three_times_per_batch():
  num_examples, global_batch, repeats = 120, 24, 3
  steps_per_epoch = num_examples // global_batch  # 5: an epoch keeps its length
  batches = _global_batches(num_examples, global_batch, repeats, 3 * steps_per_epoch,
                            process_count=2)
  for batch in batches:
    counts = collections.Counter(batch)
    assert set(counts.values()) == {3} and len(counts) == 8
    assert batch[:8] * 3 == batch  # copies 8 slots apart: on different devices and hosts
  epochs = [sum(batches[e * 5:(e + 1) * 5], []) for e in range(3)]
  # An epoch shows a third of the examples, three times each; three epochs show them all.
  for epoch in epochs:
    assert len(set(epoch)) == num_examples // 3
  assert collections.Counter(sum(epochs, [])) == {i: 3 for i in range(num_examples)}
  # The next window of three epochs is a new permutation.
  later = _global_batches(num_examples, global_batch, repeats, 4 * steps_per_epoch)
  assert later[15] != later[0] and later[:15] == batches


def test_one_repeat_keeps_the_plain_epoch_order():
  batches = _global_batches(100, 20, 1, 10)
  for epoch in range(2):
    permutation = np.random.default_rng([5, epoch]).permutation(100)
    assert sum(batches[epoch * 5:(epoch + 1) * 5], []) == permutation.tolist()


def test_repeats_must_divide_the_batch():
  with pytest.raises(ValueError, match="repeated_augmentations"):
    pipeline._TrainIndices(100, 20, 0, 1, seed=0, total_steps=5, repeats=3)


def _photo_source(num_examples: int, size: int = 40) -> list[dict]:
  """ImageNet-like examples (not the synthetic dataset: crop, flip, RandAugment, erasing all
  apply); the label is the example's index."""
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8), "label": i}
          for i in range(num_examples)]


def test_repeated_copies_are_augmented_differently_and_resume_exactly():
  source = _photo_source(24)
  info = pipeline.DatasetInfo("photos", 24, len(source), 0, has_object_masks=False)
  augmentation = pipeline.Augmentation("rand-m9-mstd0.5-inc1", random_erase=0.25)
  batches = lambda start_step: pipeline.train_batches(
      source, info, global_batch=12, image_size=32, seed=3, start_step=start_step,
      total_steps=4, num_threads=2, augmentation=augmentation, repeats=3)
  straight = list(batches(0))
  for batch in straight:
    labels, images = batch["label"], batch["image"]
    np.testing.assert_array_equal(labels, np.tile(labels[:4], 3))  # copies 4 slots apart
    for slot in range(4):
      copies = images[slot::4]  # the three copies of one example
      for a in range(3):
        for b in range(a + 1, 3):
          assert not np.allclose(copies[a], copies[b]), (labels[slot], a, b)
  for a, b in zip(straight[2:], batches(2)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
