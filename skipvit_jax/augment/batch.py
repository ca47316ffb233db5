"""One device's training augmentation, inside the compiled step: DeiT's per-image transforms.

The host hands over the random-resized crop in uint8 (data/pipeline.py with
`Augmentation(on_device=True)`); `augment_batch` then applies, per image and in timm's order,
the horizontal flip, the padded-crop shift (`random_translate`, for the fixed-size datasets),
RandAugment, normalisation and random erasing. Its randomness comes from one key, the step's
"augment" stream (train/step.py: fold_in(seed, step), then the device), so a run stays a
function of (seed, step) and resumes bitwise.

RandAugment draws its ops per image, but a per-image `lax.switch` under `vmap` becomes a select
over all fifteen branches, each over the whole batch. Instead each of the `num_ops` layers runs
three batched stages whose per-image parameters make them the identity where the image's op is
of another family: a per-channel lookup table (color.point_ops: AutoContrast, Equalize, Invert,
Posterize, Solarize, SolarizeAdd), a blend with a degenerate image (color.blend_ops: Color,
Contrast, Brightness, Sharpness), and a bicubic affine warp (geometry.affine: Rotate, Shear*,
Translate*Rel). An image goes through exactly one non-identity stage per layer, each rounding to
uint8 as PIL does, so the result is that of the op alone. The PIL implementation
(data/randaugment.py) is the reference the ops are tested against.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from skipvit_jax.augment import color, geometry, policy

_ERASE_TRIES = 10  # timm's RandomErasing: up to 10 boxes drawn until one fits


@dataclasses.dataclass(frozen=True)
class DeviceAugmentation:
  """What augment_batch does; hashable, so a step function can close over it."""

  mean: tuple[float, float, float]  # per channel, in 0..255: normalisation's (x - mean) / std
  std: tuple[float, float, float]
  flip: bool = True  # horizontal flip with probability 0.5
  random_translate: int = 0  # largest shift in pixels along each axis, edge-padded; 0 = off
  rand_augment: policy.RandAugmentOptions | None = None  # None = off
  translate_pct: float = 0.45  # TranslateXRel/YRel's largest shift, a fraction of the side
  random_erase: float = 0.0  # probability of erasing one box with N(0, 1) noise (pixel mode)

  @property
  def fill(self) -> jax.Array:
    """The colour the warps uncover: the normalisation mean in 0..255, as timm's img_mean."""
    return jnp.asarray([int(round(m)) for m in self.mean], jnp.uint8)


def augment_batch(key: jax.Array, images: jax.Array,
                  augmentation: DeviceAugmentation) -> jax.Array:
  """images: (B, H, W, 3) uint8 -> (B, H, W, 3) float32, augmented and normalised."""
  key_flip, key_translate, key_ops, key_erase = jax.random.split(key, 4)
  batch = images.shape[0]
  if augmentation.flip:
    flip = jax.random.bernoulli(key_flip, 0.5, (batch,))
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if augmentation.random_translate:
    images = random_translate(key_translate, images, augmentation.random_translate)
  if augmentation.rand_augment is not None and augmentation.rand_augment.num_ops:
    plan = sample_plan(key_ops, batch, augmentation.rand_augment,
                       translate_pct=augmentation.translate_pct)
    images = rand_augment(images, plan, augmentation.fill)
  mean = jnp.asarray(augmentation.mean, jnp.float32)
  std = jnp.asarray(augmentation.std, jnp.float32)
  normalized = (images.astype(jnp.float32) - mean) / std
  if augmentation.random_erase > 0:
    normalized = random_erasing(key_erase, normalized, augmentation.random_erase)
  return normalized


def random_translate(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each (H, W) image by its own uniform (dy, dx) in [-max_shift, max_shift], padding
  with the edge pixels (transforms.random_translate's semantics). images: (B, H, W, C)."""
  batch, height, width, channels = images.shape
  shifts = jax.random.randint(key, (batch, 2), -max_shift, max_shift + 1)
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = jnp.pad(images, pad, mode="edge")
  starts = max_shift - shifts  # content moves by (+dy, +dx)
  crop = lambda image, start: jax.lax.dynamic_slice(
      image, (start[0], start[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, starts)


# --------------------------------------------------------------------------------------------
# RandAugment.


@dataclasses.dataclass(frozen=True)
class RandAugmentPlan:
  """The ops drawn for a batch, one row per layer (the `num_ops` ops applied in turn).

  op: (L, B) int32, index into the options' op list, or -1 where the layer skips the image
  (probability 1 - prob); magnitude: (L, B) float32, after noise and clipping; arg: (L, B)
  float32, the op's argument at that magnitude (data/randaugment.level_to_arg's)."""

  ops: tuple[str, ...]
  prob: float  # the chance that a layer applies its op
  op: jax.Array
  magnitude: jax.Array
  arg: jax.Array


jax.tree_util.register_dataclass(RandAugmentPlan, data_fields=["op", "magnitude", "arg"],
                                 meta_fields=["ops", "prob"])


def sample_plan(key: jax.Array, batch: int, options: policy.RandAugmentOptions, *,
                translate_pct: float = 0.45) -> RandAugmentPlan:
  """Draws each image's ops as timm's RandAugment does: `num_ops` ops uniformly with
  replacement, each applied with probability `prob` at a magnitude from N(m, mstd) (U(0, m)
  for mstd = inf) clipped to [0, mmax], its sign (for the signed ops) a fair coin."""
  shape = (options.num_ops, batch)
  key_op, key_apply, key_magnitude, key_sign = jax.random.split(key, 4)
  op = jax.random.randint(key_op, shape, 0, len(options.ops))
  if options.prob < 1.0:
    applied = jax.random.uniform(key_apply, shape) < options.prob
    op = jnp.where(applied, op, -1)
  magnitude = jnp.full(shape, options.magnitude, jnp.float32)
  if options.magnitude_std == math.inf:
    magnitude = jax.random.uniform(key_magnitude, shape, maxval=options.magnitude)
  elif options.magnitude_std > 0:
    magnitude += options.magnitude_std * jax.random.normal(key_magnitude, shape)
  magnitude = jnp.clip(magnitude, 0.0, options.magnitude_max)
  negate = jax.random.bernoulli(key_sign, 0.5, shape)
  args = _op_args(magnitude, negate, translate_pct)[..., _columns(options.ops)]  # (L, B, ops)
  arg = jnp.take_along_axis(args, jnp.maximum(op, 0)[..., None], axis=-1)[..., 0]
  return RandAugmentPlan(options.ops, options.prob, op, magnitude, arg)


# Each op's argument at magnitude `level` (0..10) with `sign` +-1, as data/randaugment.py's
# _LEVEL_TO_ARG computes it: timm's arithmetic, with int() on a non-negative value a floor.
_ARG_OPS = policy.OPS + tuple(name for name in policy.INCREASING_OPS if name not in policy.OPS)


def _columns(ops: tuple[str, ...]) -> np.ndarray:
  return np.asarray([_ARG_OPS.index(name) for name in ops])


def _op_args(level: jax.Array, negate: jax.Array, translate_pct: float) -> jax.Array:
  """level, negate: (...) -> (..., len(_ARG_OPS)) float32, column i op _ARG_OPS[i]'s argument."""
  frac = level / policy.LEVEL_DENOM
  sign = jnp.where(negate, -1.0, 1.0)
  enhance = frac * 1.8 + 0.1
  enhance_increasing = jnp.maximum(0.1, 1.0 + sign * frac * 0.9)
  solarize = jnp.minimum(256.0, jnp.floor(frac * 256))
  zero = jnp.zeros_like(level)
  by_name = {
      "AutoContrast": zero, "Equalize": zero, "Invert": zero,
      "Rotate": sign * frac * 30.0,
      "Posterize": jnp.floor(frac * 4), "PosterizeIncreasing": 4 - jnp.floor(frac * 4),
      "Solarize": solarize, "SolarizeIncreasing": 256 - solarize,
      "SolarizeAdd": jnp.minimum(128.0, jnp.floor(frac * 110)),
      "ShearX": sign * frac * 0.3, "ShearY": sign * frac * 0.3,
      "TranslateXRel": sign * frac * translate_pct, "TranslateYRel": sign * frac * translate_pct,
      **{name: enhance for name in ("Color", "Contrast", "Brightness", "Sharpness")},
      **{f"{name}Increasing": enhance_increasing
         for name in ("Color", "Contrast", "Brightness", "Sharpness")},
  }
  return jnp.stack([by_name[name] for name in _ARG_OPS], axis=-1)


def _family_codes(ops: tuple[str, ...], family: tuple[str, ...]) -> np.ndarray:
  """For each op of `ops` (and a final -1 for "skipped"), its index in `family`, else -1."""
  bases = [name.removesuffix("Increasing") for name in ops]
  return np.asarray([family.index(b) if b in family else -1 for b in bases] + [-1], np.int32)


def rand_augment(images: jax.Array, plan: RandAugmentPlan, fill: jax.Array) -> jax.Array:
  """Applies a plan's layers in turn. images: (B, H, W, 3) uint8 -> same; fill: (3,) uint8."""
  height, width = images.shape[1:3]
  point = jnp.asarray(_family_codes(plan.ops, color.POINT_OPS))
  blend = jnp.asarray(_family_codes(plan.ops, color.BLEND_OPS))
  warp = jnp.asarray(_family_codes(plan.ops, geometry.GEOMETRIC_OPS))
  # The warp costs most, and only a sixth of the images need one per layer (DeiT's policy).
  warp_fraction = plan.prob * np.mean(_family_codes(plan.ops, geometry.GEOMETRIC_OPS)[:-1] >= 0)
  warp_images = lambda images, matrices: geometry.affine(images, matrices, fill)
  for layer in range(plan.op.shape[0]):
    op, arg = plan.op[layer], plan.arg[layer]  # -1 indexes the codes' final "skipped" entry
    images = color.point_ops(images, point[op], arg)
    images = color.blend_ops(images, blend[op], arg)
    matrices = geometry.op_matrices(warp[op], arg, height, width)
    images = _where_needed(warp_images, warp[op] >= 0, warp_fraction, images, matrices)
  return images


def _capacity(batch: int, fraction: float) -> int:
  """Slots for the images a stage applies to, when each does with probability `fraction`: the
  mean plus four standard deviations, so that more are needed in under 1e-4 of the batches."""
  spread = 4 * math.sqrt(batch * fraction * (1 - fraction))
  return max(1, min(batch, math.ceil(batch * fraction + spread)))


def _where_needed(fn, needed: jax.Array, fraction: float, images: jax.Array,
                  *per_image: jax.Array) -> jax.Array:
  """images, with fn(images, *per_image) in place of those where `needed`, computed for those
  images only: gathered into _capacity(B, fraction) slots, or, in a batch that needs more, for
  the whole batch. fn maps (n, ...) arrays to (n, H, W, C) images, image by image.
  needed: (B,) bool; images: (B, H, W, C); per_image: (B, ...) each."""
  batch = images.shape[0]
  capacity = _capacity(batch, fraction)

  def all_of_them(images):
    return jnp.where(needed[:, None, None, None], fn(images, *per_image), images)

  if capacity == batch:
    return all_of_them(images)

  def few(images):
    slots = jnp.argsort(~needed, stable=True)[:capacity]  # the needed images first, no repeats
    done = fn(images[slots], *(x[slots] for x in per_image))
    return images.at[slots].set(jnp.where(needed[slots][:, None, None, None], done,
                                          images[slots]))

  return jax.lax.cond(needed.sum() <= capacity, few, all_of_them, images)


# --------------------------------------------------------------------------------------------
# Random erasing.


def random_erasing(key: jax.Array, images: jax.Array, probability: float,
                   area: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> jax.Array:
  """timm's RandomErasing(mode="pixel", max_count=1) per image (transforms.random_erasing's
  semantics): with `probability`, the first of up to 10 drawn boxes that fits strictly inside
  the image is filled with N(0, 1) noise. images: (B, H, W, C) float32, normalised -> same."""
  batch, height, width, channels = images.shape
  key_apply, key_area, key_ratio, key_top, key_left, key_noise = jax.random.split(key, 6)
  tries = (batch, _ERASE_TRIES)
  target_area = jax.random.uniform(key_area, tries, minval=area[0], maxval=area[1])
  aspect = jnp.exp(jax.random.uniform(key_ratio, tries, minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  box_h = jnp.round(jnp.sqrt(target_area * height * width * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(target_area * height * width / aspect)).astype(jnp.int32)
  fits = (box_w < width) & (box_h < height)
  first = jnp.argmax(fits, axis=1)[:, None]
  box_h = jnp.take_along_axis(box_h, first, axis=1)[:, 0]  # (B,)
  box_w = jnp.take_along_axis(box_w, first, axis=1)[:, 0]
  erase = (jax.random.uniform(key_apply, (batch,)) < probability) & fits.any(axis=1)
  top = jax.random.randint(key_top, (batch,), 0, height - box_h + 1)  # both ends included
  left = jax.random.randint(key_left, (batch,), 0, width - box_w + 1)
  # Noise only for the largest box there can be, not the whole image: a box is under a third of
  # the image plus rounding (each side rounded up by at most half a pixel), and pixel (y, x) of
  # the box takes value (y - top) * w + (x - left) of its image's draw. Still fresh N(0, 1) per
  # pixel, channel and image, for a third of the cost of drawing every pixel; and drawn only for
  # the images erased (_where_needed).
  max_box = math.ceil(height * width * area[1] + (height + width) / 2 + 1)

  def fill_box(images, top, left, box_h, box_w):
    n = images.shape[0]
    noise = jax.random.normal(jax.random.fold_in(key_noise, n), (n, max_box, channels),
                              images.dtype)
    rows = jnp.arange(height)[None, :, None] - top[:, None, None]  # (n, H, 1), in the box
    cols = jnp.arange(width)[None, None, :] - left[:, None, None]  # (n, 1, W)
    inside = ((rows >= 0) & (rows < box_h[:, None, None]) & (cols >= 0)
              & (cols < box_w[:, None, None]))  # (n, H, W)
    index = jnp.where(inside, rows * box_w[:, None, None] + cols, 0)
    box_noise = jnp.take_along_axis(noise, index.reshape(n, -1, 1), axis=1)
    return jnp.where(inside[..., None], box_noise.reshape(images.shape), images)

  return _where_needed(fill_box, erase, probability, images, top, left, box_h, box_w)
