"""skipvit_jax.augment.geometry against the PIL reference, data.randaugment.apply_op.

Tolerance (test_ops_match_pil): Pillow samples and filters in double precision, geometry.py in
float32, and the filtered value is truncated to uint8. A value that is an integer in exact
arithmetic (common: at a shift of 0.4 px the cubic's weights are multiples of 1/125, and smooth
regions have small-integer pixel differences) lands either side of it by rounding alone, in
Pillow as in float32. Measured on these cases: all differences are one grey level, on at most
1.35% of an image's pixels (224x224, TranslateXRel 0.225: a 50.4 px shift), under 0.06% for
rotations and shears. So: at most 2% of pixels differ, by one level. A sample within float32
rounding of the image border may be filled in one and not the other; none occurs here, but a
few such pixels are allowed. Each of these mistakes fails the test (checked by making it): the
cubic with a = -0.5 instead of -1, pixel corners instead of centres (a half-pixel shift), the
wrong rotation sign, rotating about ((W - 1) / 2, (H - 1) / 2), rounding instead of truncating
(54% of pixels differ), wrapping instead of clipping, zero instead of edge clamping, the
inside test half a pixel off, and the kernel as four weights summing to one (flat regions come
out a level low: 17% of pixels differ).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from skipvit_jax.augment import geometry
from skipvit_jax.augment.policy import IMAGENET_FILL
from skipvit_jax.data import randaugment as ra
from tests.support.jax_testing import trace_counter

MAGNITUDES = (0, 5, 9, 10)
MAX_DIFFERING = 0.02  # of an image's pixels: off by one grey level
MAX_BORDER = 4  # pixels per image over one level, where exactly one side is the fill colour


class _Sign:
  """Stands in for level_to_arg's generator: decides its random sign, nothing else."""

  def __init__(self, negative: bool):
    self.negative = negative

  def random(self) -> float:
    return 1.0 if self.negative else 0.0


def _cases() -> list[tuple[str, float]]:
  """Each op at each magnitude with both signs, as level_to_arg gives the argument."""
  return [(name, ra.level_to_arg(_Sign(negative), name, magnitude))
          for name in geometry.GEOMETRIC_OPS for magnitude in MAGNITUDES
          for negative in (False, True)]


def _photo(height: int, width: int, seed: int) -> np.ndarray:
  """(H, W, 3) uint8: smooth colour noise (a grid 8x coarser, linearly upsampled) with fine
  grain, plus sharp edges: black and white bars side by side (where the cubic overshoots past 0
  and 255) and a saturated disc."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3))
  upsample = lambda n, size: np.stack(
      [np.interp(np.linspace(0, n - 1, size), np.arange(n), e) for e in np.eye(n)], 1)
  image = np.einsum("yi,ijc,xj->yxc", upsample(coarse.shape[0], height), coarse,
                    upsample(coarse.shape[1], width), optimize=True)
  image += rng.normal(0, 3, image.shape)
  yy, xx = np.mgrid[0:height, 0:width]
  image[(xx >= width // 4) & (xx < width // 3)] = 0
  image[(xx >= width // 3) & (xx < width // 2)] = 255
  disc = (yy - height / 2) ** 2 + (xx - 2 * width / 3) ** 2 < (min(height, width) / 5) ** 2
  image[disc] = (250, 20, 40)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _warp_batch(images: jax.Array, op: jax.Array, arg: jax.Array) -> jax.Array:
  """images: (B, H, W, 3) uint8; op: (B,) int32; arg: (B,) float32 -> (B, H, W, 3) uint8."""
  matrices = geometry.op_matrices(op, arg, images.shape[1], images.shape[2])
  return geometry.affine(images, matrices, jnp.array(IMAGENET_FILL, jnp.uint8))


_traced = trace_counter(_warp_batch)
_warp = jax.jit(_traced)


def _run(images: np.ndarray, cases: list[tuple[str | None, float]]) -> np.ndarray:
  """One call for the batch; a case's op name None is no op."""
  op = np.array([geometry.GEOMETRIC_OPS.index(name) if name else -1 for name, _ in cases],
                np.int32)
  arg = np.array([arg for _, arg in cases], np.float32)
  return np.asarray(_warp(images, op, arg))


def _is_fill(image: np.ndarray) -> np.ndarray:
  return (image == IMAGENET_FILL).all(-1)


@pytest.mark.parametrize("height,width", [(33, 47), (224, 224)])
def test_ops_match_pil(height, width):
  cases = _cases()
  images = np.stack([_photo(height, width, seed) for seed in range(len(cases))])
  out = _run(images, cases)
  for image, warped, (name, arg) in zip(images, out, cases):
    expected = ra.apply_op(image, name, arg)
    diff = np.abs(warped.astype(int) - expected).max(-1)  # (H, W)
    border = _is_fill(warped) != _is_fill(expected)
    where = f"{name}({arg:+.3f}) at {height}x{width}"
    assert (diff > 0).mean() <= MAX_DIFFERING, f"{where}: {(diff > 0).mean():.2%} differ"
    assert (diff[~border] <= 1).all(), f"{where}: off by up to {diff[~border].max()}"
    assert border.sum() <= MAX_BORDER, f"{where}: {border.sum()} pixels filled in one only"


@pytest.mark.parametrize("name,arg", [("Rotate", 17.0), ("ShearX", -0.2), ("TranslateXRel", 0.1),
                                      ("TranslateYRel", -0.3)])
def test_op_matrices_are_pils(name, arg, monkeypatch):
  """The coefficients Image.rotate and randaugment's transform calls pass to Image.transform."""
  passed = []
  transform = Image.Image.transform

  def recording(self, size, method, data, *args, **kwargs):
    passed.append(data)
    return transform(self, size, method, data, *args, **kwargs)

  monkeypatch.setattr(Image.Image, "transform", recording)
  ra.apply_op(_photo(33, 47, 0), name, arg)
  op = jnp.array([geometry.GEOMETRIC_OPS.index(name)], jnp.int32)
  matrix = geometry.op_matrices(op, jnp.array([arg], jnp.float32), 33, 47)[0]
  # float32 trigonometry and offsets against PIL's float64: entries |m| < 8 (ulp <= 4.8e-7),
  # each a few roundings: ~2e-6 at most (seen 5.3e-7 on every ISA).
  np.testing.assert_allclose(matrix, passed[0], atol=1e-5)


def test_identity_is_exact():
  """op -1 and magnitude 0 return the input bit for bit, full-range noise included."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 33, 47, 3), dtype=np.uint8)
  out = _run(images, [(None, 0.0), (None, 5.0), ("Rotate", 0.0), ("ShearY", -0.0),
                      ("TranslateXRel", 0.0), ("TranslateYRel", 0.0)])
  np.testing.assert_array_equal(out, images)


def test_mixed_batch_equals_per_example_and_compiles_once():
  cases = [("Rotate", -27.0), (None, 0.0), ("ShearX", 0.15), ("TranslateYRel", 0.405),
           ("ShearY", -0.3), ("TranslateXRel", -0.225)]
  images = np.stack([_photo(33, 47, seed) for seed in range(len(cases))])
  out = _run(images, cases)
  traces = len(_traced.calls)
  np.testing.assert_array_equal(_run(images[::-1], cases[::-1]), out[::-1])
  np.testing.assert_array_equal(_run(images, [(None, 0.0)] * len(cases)), images)
  assert len(_traced.calls) == traces  # other op arrays, same program
  for image, warped, case in zip(images, out, cases):
    np.testing.assert_array_equal(warped, _run(image[None], [case])[0])
