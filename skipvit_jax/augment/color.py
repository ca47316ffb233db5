"""RandAugment's photometric ops on uint8 batches, each image with its own op, matching Pillow.

timm applies these through PIL (data/randaugment.py, the reference); here they follow Pillow
13.0.0's arithmetic, read in PIL/ImageOps.py, ImageEnhance.py, ImageStat.py and ImageFilter.py
and in the C sources libImaging/Convert.c, Filter.c, Blend.c and _imaging.c (`_point`). The
results equal Pillow's pixel for pixel.

Two batched functions cover the ten ops, each taking a per-image op index (-1: unchanged):

- `point_ops` (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd): every one is a
  per-channel 256-entry table, so each image gets a (3, 256) table, chosen among the candidates
  by selects over 256 entries, and the batch is mapped through its tables with one gather per
  pixel.
- `blend_ops` (Color, Contrast, Brightness, Sharpness): every one is
  `Image.blend(degenerate, image, factor)`, so each image's degenerate image is chosen (grey,
  its mean grey, black or smoothed) and the batch is blended once.

A per-image `lax.switch` under `vmap` would instead run every branch over the whole batch. The
two costly intermediates, the histograms (AutoContrast, Equalize) and the smoothed image
(Sharpness), are computed by a loop over only the images that use them, so they cost in
proportion to those images; a batch in which no image has an op of the family is returned as
it is. The functions take whole batches: under `vmap` those loops and skips would run for every
image.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

POINT_OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd")
BLEND_OPS = ("Color", "Contrast", "Brightness", "Sharpness")

_AUTOCONTRAST, _EQUALIZE, _INVERT, _POSTERIZE, _SOLARIZE, _SOLARIZE_ADD = range(6)
_COLOR, _CONTRAST, _BRIGHTNESS, _SHARPNESS = range(4)


def _over_needed(fn: Callable[[jax.Array], jax.Array], needed: jax.Array, images: jax.Array,
                 out: jax.Array) -> jax.Array:
  """`out` with out[b] = fn(images[b]) wherever needed[b], looping over those images only.

  needed: (B,) bool; images: (B, H, W, 3) uint8; out: (B, ...) -> (B, ...), as out.
  """
  order = jnp.nonzero(needed, size=needed.shape[0])[0]  # the needed images' indices first
  body = lambda k, out: out.at[order[k]].set(fn(images[order[k]]))
  return lax.fori_loop(0, needed.sum(), body, out)


# --------------------------------------------------------------------------------------------
# Point ops: one lookup table per image and channel.


def _histogram(image: jax.Array) -> jax.Array:
  """image: (H, W, 3) uint8 -> (3, 256) int32 counts, Pillow's `Image.histogram()`."""
  bins = image.astype(jnp.int32) + 256 * jnp.arange(3, dtype=jnp.int32)  # (H, W, 3)
  return jnp.zeros(3 * 256, jnp.int32).at[bins.reshape(-1)].add(1).reshape(3, 256)


@functools.cache
def _autocontrast_low_keys() -> np.ndarray:
  """Where Pillow's AutoContrast table is one below the exact floor(255 (ix - lo) / (hi - lo)).

  ImageOps.autocontrast computes `int(ix * scale + offset)` with `scale = 255.0 / (hi - lo)`
  and `offset = -lo * scale` in double precision. Off the integers of the exact quotient the
  double lands on the exact floor (the quotient is at least 1 / 255 away from an integer); on
  them, the roundings of scale, product and sum leave it just below the integer in 12094 of the
  (lo, hi, ix) cases, 4852 of them mapping hi itself to 254. float32 arithmetic misses a
  different set, so the cases are found here by replaying the doubles in numpy, which rounds
  each operation as Python does. Returns the sorted keys (lo * 256 + hi) * 256 + ix, int32.
  """
  keys = []
  for span in range(1, 256):
    steps = np.arange(1, span + 1)
    steps = steps[(255 * steps) % span == 0]  # ix - lo where the exact quotient is an integer
    lo = np.arange(256 - span)[:, None]
    ix = lo + steps
    scale = 255.0 / span
    low = np.trunc(ix * scale + -lo * scale) < (255 * steps) // span
    keys.append(((lo * 256 + lo + span) * 256 + ix)[low])
  return np.sort(np.concatenate(keys)).astype(np.int32)


def _autocontrast_tables(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """ImageOps.autocontrast's tables. lo, hi: (B, 3) int32, the least and greatest value of
  each channel -> (B, 3, 256) int32, the identity for a constant channel."""
  ix = jnp.arange(256, dtype=jnp.int32)
  lo, hi = lo[..., None], hi[..., None]
  span = jnp.maximum(hi - lo, 1)
  exact = jnp.clip((255 * (ix - lo)) // span, 0, 255)
  keys = jnp.asarray(_autocontrast_low_keys())
  key = (lo * 256 + hi) * 256 + ix
  found = keys[jnp.clip(jnp.searchsorted(keys, key), 0, keys.shape[0] - 1)] == key
  return jnp.where(hi > lo, exact - found.astype(jnp.int32), ix)


def _equalize_tables(hist: jax.Array, hi: jax.Array, distinct: jax.Array) -> jax.Array:
  """ImageOps.equalize's tables (integer arithmetic there too). hist: (B, 3, 256) int32; hi:
  (B, 3) int32, each channel's greatest value; distinct: (B, 3) bool, whether the channel has
  two values or more -> (B, 3, 256) int32, before clipping to 255."""
  ix = jnp.arange(256, dtype=jnp.int32)
  last = jnp.take_along_axis(hist, hi[..., None], axis=-1)  # count of the greatest value
  step = (hist.sum(-1, keepdims=True) - last) // 255
  below = jnp.cumsum(hist, axis=-1) - hist  # pixels under each value
  table = (step // 2 + below) // jnp.maximum(step, 1)
  return jnp.where(distinct[..., None] & (step > 0), table, ix)


def point_ops(images: jax.Array, op: jax.Array, arg: jax.Array) -> jax.Array:
  """Each image's point op, as data/randaugment.apply_op does it.

  images: (B, H, W, 3) uint8.
  op: (B,) int32, an index into POINT_OPS, or -1 to leave the image unchanged.
  arg: (B,) float32, the op's argument as data/randaugment.level_to_arg gives it: bits kept
    for Posterize, the threshold for Solarize, the amount added for SolarizeAdd (integers);
    ignored by the other ops.
  Returns (B, H, W, 3) uint8.
  """
  images, op, arg = jnp.asarray(images), jnp.asarray(op), jnp.asarray(arg)
  batch = images.shape[0]
  ix = jnp.arange(256, dtype=jnp.int32)
  op = op[:, None, None]  # (B, 1, 1), against the (B, 3, 256) tables
  arg = arg[:, None, None]
  # Pillow's histograms are 256 bins per channel; the extremes come from the same counts.
  needed = (op[:, 0, 0] == _AUTOCONTRAST) | (op[:, 0, 0] == _EQUALIZE)
  hist = _over_needed(_histogram, needed, images, jnp.zeros((batch, 3, 256), jnp.int32))
  present = hist > 0
  lo = jnp.argmax(present, axis=-1).astype(jnp.int32)  # (B, 3)
  hi = 255 - jnp.argmax(present[..., ::-1], axis=-1).astype(jnp.int32)
  # The arguments are integers. Clipping before the conversion keeps the arguments of another
  # family's ops, which images outside this one bring along, from overflowing int32.
  bits = jnp.clip(arg, 0, 8).astype(jnp.int32)
  add = jnp.clip(arg, -256, 256).astype(jnp.int32)
  candidates = {
      _AUTOCONTRAST: lambda: _autocontrast_tables(lo, hi),
      _EQUALIZE: lambda: _equalize_tables(hist, hi, hi > lo),
      _INVERT: lambda: 255 - ix,
      _POSTERIZE: lambda: ix & ~((1 << (8 - bits)) - 1),  # 0 bits keeps nothing (black)
      _SOLARIZE: lambda: jnp.where(ix < arg, ix, 255 - ix),
      _SOLARIZE_ADD: lambda: jnp.where(ix < 128, jnp.minimum(255, ix + add), ix),
  }
  tables = jnp.broadcast_to(ix, (batch, 3, 256))  # -1: the identity
  for index, table in candidates.items():
    tables = jnp.where(op == index, table(), tables)
  # Pillow's point() clips entries to 0..255: Equalize's exceed 255 at a channel's top values.
  tables = jnp.clip(tables, 0, 255).astype(jnp.uint8)
  rows = 256 * (3 * jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
                + jnp.arange(3, dtype=jnp.int32))  # (B, 1, 1, 3)
  # The cond skips a batch with nothing to do; it also hands the gather finished tables, where
  # XLA would otherwise fuse the tables' arithmetic into the gather and redo it per pixel.
  look_up = lambda tables, images: tables.reshape(-1)[rows + images.astype(jnp.int32)]
  return lax.cond(jnp.any(op >= 0), look_up, lambda tables, images: images, tables, images)


# --------------------------------------------------------------------------------------------
# Blend ops: one degenerate image per image, one blend.


def _grey(images: jax.Array) -> jax.Array:
  """Pillow's RGB -> "L" (Convert.c, rgb2l): ITU-R 601-2 luma in 16-bit fixed point.

  images: (..., 3) uint8 -> (...) int32.
  """
  x = images.astype(jnp.int32)
  return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _smooth(image: jax.Array) -> jax.Array:
  """ImageFilter.SMOOTH: the 3x3 kernel (1 1 1, 1 5 1, 1 1 1) / 13 inside, border pixels kept.

  Filter.c sums float32 products plus 0.5 and truncates. For an integer weighted sum S,
  S / 13 + 0.5 is never within 1 / 26 of an integer, far beyond the float error, so the integer
  floor((S + 6) / 13) equals Pillow's result. An image under 3 pixels on a side has only border
  pixels, which is also Pillow's rule (it returns a copy).
  image: (H, W, 3) uint8 -> (H, W, 3) uint8.
  """
  x = image.astype(jnp.int32)
  rows = x[:-2] + x[1:-1] + x[2:]
  weighted = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4 * x[1:-1, 1:-1]
  return image.at[1:-1, 1:-1].set(((weighted + 6) // 13).astype(jnp.uint8))


def _split(factor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """factor = high + low exactly, high keeping 15 significant bits and low the other 9."""
  bits = lax.bitcast_convert_type(factor, jnp.uint32) & jnp.uint32(0xFFFFFE00)
  high = lax.bitcast_convert_type(bits, jnp.float32)
  return high, factor - high


def blend_ops(images: jax.Array, op: jax.Array, factor: jax.Array) -> jax.Array:
  """Each image's ImageEnhance op, as data/randaugment.apply_op does it.

  images: (B, H, W, 3) uint8.
  op: (B,) int32, an index into BLEND_OPS, or -1 to leave the image unchanged.
  factor: (B,) float32, the enhancement factor (PIL ImageEnhance's; 1 leaves the image as it
    is); ignored where op is -1.
  Returns (B, H, W, 3) uint8.

  Pillow blends as `degenerate + factor * (image - degenerate)` in float32 and truncates to
  uint8 (Blend.c), clipping to 0..255 when factor is outside [0, 1] (within it no clip is
  needed). Images under 2**22 pixels keep the integer sums below 2**31.
  """
  images, op, factor = jnp.asarray(images), jnp.asarray(op), jnp.asarray(factor)
  op4 = op[:, None, None, None]  # (B, 1, 1, 1)

  def blend(images):
    height, width = images.shape[1:3]
    grey = _grey(images)  # (B, H, W)
    # ImageEnhance.Contrast: int(mean + 0.5) of the grey image, as an exact integer floor.
    pixels = height * width
    mean = (2 * grey.sum((1, 2)) + pixels) // (2 * pixels)  # (B,)
    degenerate = jnp.where(op4 == _COLOR, grey[..., None],
                           jnp.where(op4 == _CONTRAST, mean[:, None, None, None], 0))
    degenerate = jnp.broadcast_to(degenerate.astype(jnp.uint8), images.shape)
    degenerate = _over_needed(_smooth, op == _SHARPNESS, images, degenerate).astype(jnp.float32)
    scale = jnp.where(op4 >= 0, factor[:, None, None, None], 1.0)  # 1: the image itself
    difference = images.astype(jnp.float32) - degenerate
    # Pillow rounds the product to float32 before adding. A compiler may fuse multiply and add
    # into one FMA (XLA on CPU does), which skips that rounding and can move a pixel one level;
    # the halves of the split factor give exact products, so fused or not the sum rounds once,
    # to the rounded product.
    high, low = _split(scale)
    blended = degenerate + (high * difference + low * difference)
    return jnp.clip(blended, 0, 255).astype(jnp.uint8)

  return lax.cond(jnp.any(op >= 0), blend, lambda images: images, images)
