"""RandAugment's geometric ops on the device: one bicubic affine warp per image.

Rotate, ShearX, ShearY, TranslateXRel and TranslateYRel are all PIL affine transforms, so a
batch in which each image has its own op becomes one warp with a per-image matrix (identity for
images whose op is skipped). `op_matrices` builds the matrices as data/randaugment.py's PIL calls
do; `affine` resamples as Pillow's `Image.transform(..., AFFINE, resample=BICUBIC, fillcolor=fill)`
does, following Pillow 13's src/libImaging/Geometry.c (`affine_transform`, `bicubic_filter32RGB`
and its BICUBIC macros; read at 13.0.0.dev0, tested against the installed 13.0.0):
  - output pixel (x, y) samples the input at (a x' + b y' + c, d x' + e y' + f), where
    x' = x + 0.5, y' = y + 0.5 are pixel centres;
  - a sample outside [0, W) x [0, H) is the fill colour;
  - otherwise the 4x4 neighbourhood around (sx - 0.5, sy - 0.5), with rows and columns clamped
    to the image, is filtered by the cubic convolution kernel with a = -1 (not Resample.c's
    a = -0.5), first along x then along y;
  - the result is clipped to [0, 255] and truncated (not rounded) to uint8.

Pillow computes in double precision, this module in float32. Where the exact filtered value is
an integer, which for small-integer pixel differences is common, rounding alone decides whether
it truncates to that integer or the one below, in Pillow as here; and a sample within float32
rounding of the border may be filled in one and not the other. tests/test_augment_geometry.py
therefore allows up to 2% of pixels to differ, by one grey level except at the fill border.

There is no branch that skips the warp when no image needs one: with DeiT's policy an image
needs it with probability 1/6 per RandAugment layer (5 of 15 ops, applied half the time), so a
batch of 64 would skip with probability (5/6)^64 ~ 1e-5.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def op_matrices(op: jax.Array, arg: jax.Array, height: int, width: int) -> jax.Array:
  """PIL affine coefficients for each image's geometric op.

  op: (B,) int32, an index into GEOMETRIC_OPS or -1 for none (the identity).
  arg: (B,) float32, as data/randaugment.level_to_arg gives it: degrees counter-clockwise for
    Rotate, the shear factor for Shear*, the fraction of the width/height for Translate*Rel.
  Returns (B, 6) float32 (a, b, c, d, e, f): output pixel (x, y) samples the input at
  (a x + b y + c, d x + e y + f). Rotate's is Pillow's Image.rotate matrix (about the centre
  (width / 2, height / 2), no expand).
  """
  arg = jnp.asarray(arg, jnp.float32)
  one, zero = jnp.ones_like(arg), jnp.zeros_like(arg)
  # Image.rotate maps back from the output by the rotation of -angle about the centre.
  theta = -arg * (math.pi / 180)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2, height / 2
  candidates = jnp.stack([  # (B, 1 + len(GEOMETRIC_OPS), 6); row 0 is the identity
      jnp.stack([one, zero, zero, zero, one, zero], -1),
      jnp.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], -1),
      jnp.stack([one, arg, zero, zero, one, zero], -1),
      jnp.stack([one, zero, zero, arg, one, zero], -1),
      jnp.stack([one, zero, arg * width, zero, one, zero], -1),
      jnp.stack([one, zero, zero, zero, one, arg * height], -1),
  ], 1)
  row = jnp.asarray(op, jnp.int32) + 1
  return jnp.take_along_axis(candidates, row[:, None, None], axis=1)[:, 0]


def _cubic(v1: jax.Array, v2: jax.Array, v3: jax.Array, v4: jax.Array,
           d: jax.Array) -> jax.Array:
  """Geometry.c's BICUBIC macro: the a = -1 cubic through v1..v4 at v2 + d, d in [0, 1).

  The difference form is exact for a constant v1..v4 (p2 = p3 = p4 = 0), which weights summing
  to one in float32 are not: truncation would turn 99.99999 into 99 on a flat region.
  """
  p2 = v3 - v1
  p3 = 2 * (v1 - v2) + v3 - v4
  p4 = v2 - v1 + v4 - v3
  return v2 + d * (p2 + d * (p3 + d * p4))


def affine(images: jax.Array, matrices: jax.Array, fill: jax.Array) -> jax.Array:
  """Bicubic affine warp of each image by its own matrix, as Pillow's Image.transform.

  images: (B, H, W, 3) uint8. matrices: (B, 6) float32, as op_matrices gives them.
  fill: (3,) uint8-valued colour for output pixels that sample outside the input.
  Returns (B, H, W, 3) uint8; an identity matrix returns its image unchanged.
  """
  batch, height, width, channels = images.shape
  m = jnp.asarray(matrices, jnp.float32)[:, :, None, None]  # (B, 6, 1, 1)
  x = jnp.arange(width, dtype=jnp.float32) + 0.5  # pixel centres, as affine_transform
  y = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  sx = m[:, 0] * x + m[:, 1] * y + m[:, 2]  # (B, H, W)
  sy = m[:, 3] * x + m[:, 4] * y + m[:, 5]
  inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
  fx, fy = jnp.floor(sx - 0.5), jnp.floor(sy - 0.5)
  dx, dy = (sx - 0.5 - fx)[..., None], (sy - 0.5 - fy)[..., None]  # (B, H, W, 1) in [0, 1)
  ix, iy = fx.astype(jnp.int32), fy.astype(jnp.int32)

  # One gather per tap from the flattened batch: 16 single-pixel reads that XLA fuses with the
  # filter, which measured faster than reading 4x4 or 1x4 windows from an edge-padded copy.
  # Clamping each tap's column and row is Geometry.c's XCLIP/YCLIP (its `v2 = v1` for rows
  # past the edge is the same clamp); it also keeps outside samples, later filled, in bounds.
  flat = images.reshape(batch * height * width, channels)
  dims = lax.GatherDimensionNumbers(offset_dims=(3,), collapsed_slice_dims=(0,),
                                    start_index_map=(0,))
  take = lambda index: lax.gather(
      flat, index[..., None], dims, (1, channels),
      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS).astype(jnp.float32)  # (B, H, W, C)
  image_start = (height * width) * jnp.arange(batch, dtype=jnp.int32)[:, None, None]
  cols = [jnp.clip(ix + i, 0, width - 1) for i in range(-1, 3)]
  rows = []
  for j in range(-1, 3):
    start = image_start + width * jnp.clip(iy + j, 0, height - 1)
    rows.append(_cubic(*(take(start + col) for col in cols), dx))
  value = _cubic(*rows, dy)  # (B, H, W, C)
  value = jnp.floor(jnp.clip(value, 0, 255)).astype(jnp.uint8)
  return jnp.where(inside[..., None], value, jnp.asarray(fill).astype(jnp.uint8))
