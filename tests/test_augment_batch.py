"""skipvit_jax.augment.batch: the device's flip, shift, RandAugment draws, normalisation and
random erasing, against the host path's numpy/PIL implementations of the same transforms.

The draws come from JAX keys, not numpy generators, so the two paths agree in distribution,
not draw for draw: sampled quantities are compared with the reference's own samples or the
stated distribution by tests whose false-alarm rate is below 1e-4 at the fixed seeds used.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from skipvit_jax.augment import batch, policy
from skipvit_jax.data import randaugment as ra
from skipvit_jax.data import transforms
from tests.support.jax_testing import count_compilations

P_MIN = 1e-4  # the smallest p-value a test accepts


def _photo(batch_size: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """(B, H, W, 3) uint8 photo-like images: smooth colour fields (bicubic-upsampled noise)
  plus fine noise."""
  rng = np.random.default_rng(seed)
  smooth = np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (4, 5, 3), np.uint8))
                                .resize((width, height), Image.BICUBIC), np.float32)
                     for _ in range(batch_size)])
  return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)

# --------------------------------------------------------------------------------------------
# RandAugment's draws.


class _Coin:
  """A stand-in generator for level_to_arg whose only draw decides the sign."""

  def __init__(self, negate: bool):
    self._value = 0.9 if negate else 0.1  # timm negates when random() > 0.5

  def random(self) -> float:
    return self._value


@pytest.mark.parametrize("negate", [False, True])
def test_op_arguments_match_the_reference(negate):
  levels = np.array([0.0, 0.3, 2.5, 4.99, 5.0, 7.3, 9.0, 9.6, 10.0], np.float32)
  args = np.asarray(batch._op_args(jnp.asarray(levels), jnp.full(levels.shape, negate), 0.45))
  for column, name in enumerate(batch._ARG_OPS):
    expected = [ra.level_to_arg(_Coin(negate), name, float(level)) or 0.0 for level in levels]
    # float32 arithmetic on the levels (a few roundings, |arg| <= 256) against Python floats:
    # ~1e-7 relative (seen 7e-8: 1.9e-6 on 30).
    np.testing.assert_allclose(args[:, column], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def _plan(options: policy.RandAugmentOptions, batch_size: int, seed: int = 0):
  plan = jax.jit(batch.sample_plan, static_argnums=(1, 2))(jax.random.key(seed), batch_size,
                                                            options)
  return np.asarray(plan.op), np.asarray(plan.magnitude), np.asarray(plan.arg)


def test_op_choice_is_uniform_and_each_op_applied_with_probability_half():
  op, _, _ = _plan(policy.DEIT, 40_000)
  assert op.shape == (2, 40_000)
  applied = op >= 0
  # Two-sided binomial test of "applied" at p = 0.5, per layer.
  for layer in applied:
    assert stats.binomtest(int(layer.sum()), layer.size, 0.5).pvalue > P_MIN
  counts = np.bincount(op[applied], minlength=15)
  assert stats.chisquare(counts).pvalue > P_MIN  # uniform over the 15 ops
  # The layers draw independently: the pair of ops is uniform over 15 x 15.
  both = applied.all(axis=0)
  pairs = np.bincount(op[0, both] * 15 + op[1, both], minlength=225)
  assert stats.chisquare(pairs).pvalue > P_MIN


def test_op_choice_matches_the_reference_sampler():
  rng = np.random.default_rng(0)
  reference = [name for _ in range(10_000) for name, _ in ra.sample_ops(rng, policy.DEIT)]
  op, _, _ = _plan(policy.DEIT, 10_000, seed=1)
  device = [policy.DEIT.ops[i] for i in op[op >= 0]]
  table = np.array([[reference.count(name) for name in policy.DEIT.ops],
                    [device.count(name) for name in policy.DEIT.ops]])
  assert stats.chi2_contingency(table).pvalue > P_MIN


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m7-mstd101", "rand-m10-n1"])
def test_magnitudes_follow_the_clipped_distribution(spec):
  options = policy.parse_rand_augment(spec)
  _, magnitude, _ = _plan(options, 20_000)
  magnitude = magnitude.ravel()
  rng = np.random.default_rng(0)
  reference = np.array([ra.sample_magnitude(rng, options) for _ in range(magnitude.size)])
  assert (magnitude >= 0).all() and (magnitude <= options.magnitude_max).all()
  if options.magnitude_std == 0:
    np.testing.assert_array_equal(magnitude, options.magnitude)
    return
  assert stats.ks_2samp(magnitude, reference).pvalue > P_MIN
  # The mass clipped to the top, N(9, 0.5) > 10 for DeiT's: 2.3%.
  top = np.mean(magnitude == options.magnitude_max)
  expected = np.mean(reference == options.magnitude_max)
  assert abs(top - expected) < 5 * math.sqrt(expected * (1 - expected) / magnitude.size) + 1e-9


def test_skipped_ops_and_arguments_in_the_plan():
  op, magnitude, arg = _plan(policy.DEIT, 4000)
  names = np.array(policy.DEIT.ops)
  for layer in range(2):
    for i in np.flatnonzero(op[layer] >= 0)[:400]:
      name = names[op[layer, i]]
      level = float(magnitude[layer, i])
      choices = {ra.level_to_arg(_Coin(n), name, level) or 0.0 for n in (False, True)}
      assert min(abs(arg[layer, i] - c) for c in choices) < 1e-5, (name, level, arg[layer, i])


# --------------------------------------------------------------------------------------------
# Flip, shift, normalisation.


MEAN, STD = (124.0, 116.0, 104.0), (58.4, 57.1, 57.4)


def test_flip_and_normalisation_match_the_host_transforms():
  images = _photo(256, 6, 7)
  augmentation = batch.DeviceAugmentation(mean=MEAN, std=STD)
  out = np.asarray(jax.jit(batch.augment_batch, static_argnums=2)(
      jax.random.key(3), jnp.asarray(images), augmentation))
  mean, std = np.float32(MEAN), np.float32(STD)
  plain = np.stack([transforms.normalize(image, mean, std) for image in images])
  flipped = np.stack([transforms.normalize(image[:, ::-1], mean, std) for image in images])
  # XLA may divide by multiplying with 1 / std: two roundings, within 2 ulp of |x| <= 2.5.
  close = lambda a, b: (np.abs(a - b) <= 5e-7).reshape(256, -1).all(1)
  is_plain, is_flipped = close(out, plain), close(out, flipped)
  assert (is_plain ^ is_flipped).all()  # one or the other
  assert stats.binomtest(int(is_flipped.sum()), 256, 0.5).pvalue > P_MIN


def test_translate_is_a_uniform_edge_padded_shift():
  height, width, max_shift = 9, 11, 2
  image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
  images = jnp.asarray(np.broadcast_to(image, (2000, height, width, 3)))
  out = np.asarray(jax.jit(batch.random_translate, static_argnums=2)(
      jax.random.key(0), images, max_shift))
  counts = {}
  for shifted in out:
    matches = [(dy, dx) for dy in range(-max_shift - 1, max_shift + 2)
               for dx in range(-max_shift - 1, max_shift + 2)
               if np.array_equal(shifted, _edge_shift(image, dy, dx))]
    assert len(matches) == 1
    counts[matches[0]] = counts.get(matches[0], 0) + 1
  assert set(counts) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
  assert stats.chisquare(list(counts.values())).pvalue > P_MIN


def _edge_shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """transforms.random_translate's result for the shift (dy, dx)."""
  height, width = image.shape[:2]
  rows = np.clip(np.arange(height) - dy, 0, height - 1)
  cols = np.clip(np.arange(width) - dx, 0, width - 1)
  return image[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------
# Random erasing.


def _device_boxes(probability: float, height: int, width: int, draws: int, seed: int = 0):
  """(erased flags, boxes (top, left, h, w), noise) of erasing `draws` constant images."""
  images = jnp.full((draws, height, width, 3), 7.0, jnp.float32)
  out = np.asarray(jax.jit(batch.random_erasing, static_argnums=2)(
      jax.random.key(seed), images, probability))
  changed = (out != 7.0).any(-1)
  flags, boxes, noise = changed.reshape(draws, -1).any(1), [], []
  for image, mask in zip(out[flags], changed[flags]):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert mask.sum() == h * w and (image[top:top + h, left:left + w] != 7).all()
    boxes.append((top, left, h, w))
    noise.append(image[top:top + h, left:left + w])
  return flags, np.array(boxes), noise


def _reference_boxes(probability: float, height: int, width: int, draws: int):
  image = np.full((height, width, 3), 7.0, np.float32)
  rng = np.random.default_rng(0)
  flags, boxes = [], []
  for _ in range(draws):
    changed = (transforms.random_erasing(rng, image, probability=probability) != 7).any(-1)
    flags.append(changed.any())
    if changed.any():
      rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
      boxes.append((rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
  return np.array(flags), np.array(boxes)


def test_erasing_probability():
  flags, _, _ = _device_boxes(0.25, 20, 16, 4000)
  assert stats.binomtest(int(flags.sum()), flags.size, 0.25).pvalue > P_MIN
  assert not _device_boxes(0.0, 20, 16, 50)[0].any()


def test_erasing_boxes_are_distributed_as_the_reference_draws_them():
  height, width = 24, 32
  _, boxes, _ = _device_boxes(1.0, height, width, 3000)
  _, reference = _reference_boxes(1.0, height, width, 3000)
  top, left, h, w = boxes.T
  ref_top, ref_left, ref_h, ref_w = reference.T
  for name, ours, theirs in (("area", h * w, ref_h * ref_w), ("aspect", h / w, ref_h / ref_w),
                             ("centre y", top + h / 2, ref_top + ref_h / 2),
                             ("centre x", left + w / 2, ref_left + ref_w / 2)):
    assert stats.ks_2samp(ours, theirs).pvalue > P_MIN, name
  assert (h < height).all() and (w < width).all()
  assert (top == 0).any() and (top + h == height).any()  # both ends of randint reached


@pytest.mark.parametrize("probability", [1.0, 0.3])  # every image, or only the erased ones
def test_erasing_noise_is_fresh_standard_normal_per_pixel_channel_and_image(probability):
  _, _, noise = _device_boxes(probability, 16, 16, int(400 / probability))
  values = np.concatenate([n.ravel() for n in noise])
  assert values.size > 20_000
  assert stats.kstest(values, "norm").pvalue > P_MIN
  assert len(np.unique(values)) > 0.99 * values.size  # no value reused across images or boxes
  # Neighbouring pixels and channels are uncorrelated.
  pairs = np.concatenate([np.stack([n[:, :-1].ravel(), n[:, 1:].ravel()], 1) for n in noise])
  assert abs(np.corrcoef(pairs.T)[0, 1]) < 0.03


# --------------------------------------------------------------------------------------------
# The whole batch function.


def test_augment_batch_is_a_function_of_the_key_and_compiles_once():
  images = jnp.asarray(_photo(8, 16, 16))
  augmentation = batch.DeviceAugmentation(mean=MEAN, std=STD, rand_augment=policy.DEIT,
                                          random_erase=0.25, random_translate=2)
  run = jax.jit(batch.augment_batch, static_argnums=2)
  with count_compilations("augment_batch") as compiles:
    outs = [np.asarray(run(jax.random.key(seed), images, augmentation)) for seed in (0, 1, 0)]
  np.testing.assert_array_equal(outs[0], outs[2])
  assert not np.array_equal(outs[0], outs[1])
  assert outs[0].dtype == np.float32 and outs[0].shape == (8, 16, 16, 3)
  assert compiles[0] == 1


def test_rand_augment_applies_each_image_its_own_ops_as_pil_does():
  """Each image through the plan's ops, one layer after another, against the PIL reference:
  elementwise ops within a grey level, warps within the tolerance tests/test_augment_geometry
  states; here checked as a mean absolute difference below one grey level per image."""
  images = _photo(24, 20, 28, seed=5)
  options = policy.RandAugmentOptions(num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.8,
                                      increasing=True)
  plan = batch.sample_plan(jax.random.key(2), len(images), options)
  fill = jnp.asarray(policy.IMAGENET_FILL, jnp.uint8)
  out = np.asarray(jax.jit(batch.rand_augment)(jnp.asarray(images), plan, fill))
  op, arg = np.asarray(plan.op), np.asarray(plan.arg)
  for i, image in enumerate(images):
    expected = image
    for layer in range(options.num_ops):
      if op[layer, i] >= 0:
        expected = ra.apply_op(expected, options.ops[op[layer, i]], _pil_arg(
            options.ops[op[layer, i]], float(arg[layer, i])))
    difference = np.abs(out[i].astype(int) - expected.astype(int))
    assert difference.mean() < 1.0, (i, [options.ops[o] for o in op[:, i] if o >= 0])


def _pil_arg(name: str, arg: float):
  """The argument as the reference passes it to PIL: ints for the lookup-table ops."""
  if name.removesuffix("Increasing") in ("Posterize", "Solarize", "SolarizeAdd"):
    return int(arg)
  return None if name in ("AutoContrast", "Equalize", "Invert") else arg


@pytest.mark.parametrize("needed_fraction", [0.1, 0.9])  # within the slots, and past them
def test_a_stage_on_the_needed_images_only_equals_it_on_all(needed_fraction):
  images = jnp.asarray(_photo(64, 4, 5))
  shift = jnp.arange(64, dtype=jnp.uint8)
  needed = jax.random.bernoulli(jax.random.key(0), needed_fraction, (64,))
  add = lambda images, shift: images + shift[:, None, None, None]
  out = jax.jit(batch._where_needed, static_argnums=(0, 2))(add, needed, 0.15, images, shift)
  expected = jnp.where(needed[:, None, None, None], add(images, shift), images)
  np.testing.assert_array_equal(out, expected)
  assert batch._capacity(64, 0.15) < 64
