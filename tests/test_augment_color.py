"""skipvit_jax.augment.color against the PIL reference, data/randaugment.apply_op.

color.py reproduces Pillow's integer and float32 arithmetic (see its docstring), so every op is
checked pixel for pixel, not within a grey level. The functions are jitted once at the batch
shape most tests share, so each test costs PIL calls rather than compiles.
"""

import jax
import numpy as np
import pytest
from PIL import Image

from skipvit_jax.augment import color
from skipvit_jax.data import randaugment as ra

HEIGHT, WIDTH = 32, 48
MAGNITUDES = (0, 5, 9, 10)

point_ops = jax.jit(color.point_ops)
blend_ops = jax.jit(color.blend_ops)


def _photo(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
  """(H, W, 3) uint8: smooth noise upsampled bicubically, plus a little pixel noise."""
  channels = []
  for _ in range(3):
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
    channels.append(np.asarray(Image.fromarray(coarse, "F").resize((width, height),
                                                                   Image.Resampling.BICUBIC)))
  image = np.stack(channels, -1) + rng.normal(0, 3, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _images() -> np.ndarray:
  """(8, H, W, 3) uint8: photo-like and random images, and the histogram edge cases."""
  rng = np.random.default_rng(0)
  photo = [_photo(rng) for _ in range(5)]
  noise = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  narrow = rng.integers(60, 90, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  # Constant red; two-valued green, {0, 25}, which Pillow's AutoContrast maps to {0, 254};
  # full-range blue.
  edges = photo[4].copy()
  edges[..., 0] = 77
  edges[..., 1] = np.where(rng.random((HEIGHT, WIDTH)) < 0.3, 25, 0)
  edges[0, 0, 2], edges[0, 1, 2] = 0, 255
  few = photo[3] // 64 * 64 + 3  # a handful of values per channel
  return np.stack([photo[0], photo[1], noise, narrow, edges, few, photo[2], photo[3]])


IMAGES = _images()
BATCH = IMAGES.shape[0]


def _args(name: str) -> list[float]:
  """BATCH arguments for op `name`: level_to_arg's at MAGNITUDES for timm's op and its
  Increasing variant, in turn (0 for the ops without one)."""
  rng = np.random.default_rng(1)  # the Increasing enhancements' random sign
  args = [ra.level_to_arg(rng, variant, m) for variant in (name, f"{name}Increasing")
          for m in MAGNITUDES]
  args = [a for a in args if a is not None] or [0]
  return [args[i % len(args)] for i in range(BATCH)]


def _reference(images: np.ndarray, names: list[str | None], args: list[float]) -> np.ndarray:
  return np.stack([image if name is None else ra.apply_op(image, name, arg)
                   for image, name, arg in zip(images, names, args)])


@pytest.mark.parametrize("name", color.POINT_OPS)
def test_point_op_matches_pil(name):
  args = _args(name)
  op = np.full(BATCH, color.POINT_OPS.index(name), np.int32)
  got = point_ops(IMAGES, op, np.asarray(args, np.float32))
  np.testing.assert_array_equal(got, _reference(IMAGES, [name] * BATCH, args))


@pytest.mark.parametrize("name", color.BLEND_OPS)
def test_blend_op_matches_pil(name):
  factors = _args(name)
  op = np.full(BATCH, color.BLEND_OPS.index(name), np.int32)
  got = blend_ops(IMAGES, op, np.asarray(factors, np.float32))
  np.testing.assert_array_equal(got, _reference(IMAGES, [name] * BATCH, factors))


def test_blend_rounds_as_pillow_at_many_factors():
  # Pillow rounds factor * (image - degenerate) to float32 before adding the degenerate image;
  # a fused multiply-add would not, and would move about one pixel in 10**4 by one level.
  rng = np.random.default_rng(2)
  for _ in range(12):
    images = rng.integers(0, 256, IMAGES.shape, dtype=np.uint8)
    op = rng.integers(0, len(color.BLEND_OPS), BATCH).astype(np.int32)
    factors = rng.uniform(0, 2, BATCH).astype(np.float32)
    names = [color.BLEND_OPS[i] for i in op]
    np.testing.assert_array_equal(blend_ops(images, op, factors),
                                  _reference(images, names, factors.tolist()))


def test_mixed_batch_equals_each_image_alone():
  # Each image its own op, and -1 with an argument another family would pass (ignored).
  point = np.asarray([0, 1, 2, 3, 4, 5, -1, 1], np.int32)
  point_args = np.asarray([0, 0, 0, 2, 128, 99, -27.5, 0], np.float32)
  blend = np.asarray([0, 1, 2, 3, -1, 3, 0, -1], np.int32)
  factors = np.asarray([0.19, 1.45, 1.9, 0.55, np.nan, 1.81, 1.0, 0.3], np.float32)
  got_point = np.asarray(point_ops(IMAGES, point, point_args))
  got_blend = np.asarray(blend_ops(IMAGES, blend, factors))
  for i in range(BATCH):
    alone = slice(i, i + 1)
    np.testing.assert_array_equal(got_point[alone],
                                  point_ops(IMAGES[alone], point[alone], point_args[alone]))
    np.testing.assert_array_equal(got_blend[alone],
                                  blend_ops(IMAGES[alone], blend[alone], factors[alone]))
  np.testing.assert_array_equal(got_point, _reference(
      IMAGES, [color.POINT_OPS[i] if i >= 0 else None for i in point], point_args.astype(int)))
  np.testing.assert_array_equal(got_blend, _reference(
      IMAGES, [color.BLEND_OPS[i] if i >= 0 else None for i in blend], factors.tolist()))


def test_nothing_to_do_leaves_the_batch_unchanged():
  none = np.full(BATCH, -1, np.int32)
  garbage = np.full(BATCH, np.nan, np.float32)
  np.testing.assert_array_equal(point_ops(IMAGES, none, garbage), IMAGES)
  np.testing.assert_array_equal(blend_ops(IMAGES, none, garbage), IMAGES)


def test_one_compile_for_any_ops():
  rng = np.random.default_rng(3)
  args = np.ones(BATCH, np.float32)
  for fn, count in ((point_ops, len(color.POINT_OPS)), (blend_ops, len(color.BLEND_OPS))):
    fn(IMAGES, np.zeros(BATCH, np.int32), args)
    compiled = fn._cache_size()
    for _ in range(3):
      fn(IMAGES, rng.integers(-1, count, BATCH).astype(np.int32), args)
    assert fn._cache_size() == compiled


def _check_autocontrast(pairs: list[tuple[int, int]]):
  """Each (lo, hi) pair, with every value between, in a channel of its own."""
  pairs = pairs + pairs[:-len(pairs) % 3]  # a whole number of 3-channel images
  images = np.empty((len(pairs) // 3, 1, 256, 3), np.uint8)
  for k, (lo, hi) in enumerate(pairs):
    images[k // 3, 0, :, k % 3] = np.resize(np.arange(lo, hi + 1), 256)
  op = np.zeros(images.shape[0], np.int32)
  got = point_ops(images, op, np.zeros(images.shape[0], np.float32))
  np.testing.assert_array_equal(got, _reference(images, ["AutoContrast"] * len(images),
                                                [None] * len(images)))


# Pillow's double arithmetic maps some exact integers one level down (see color.py): about one
# (lo, hi) pair in five has such a value.
ALL_PAIRS = [(lo, hi) for lo in range(256) for hi in range(lo, 256)]


def test_autocontrast_ranges():
  rng = np.random.default_rng(5)
  sample = [ALL_PAIRS[i] for i in rng.choice(len(ALL_PAIRS), 1500, replace=False)]
  _check_autocontrast(sample + [(0, hi) for hi in range(256)] + [(lo, 255) for lo in range(255)])


@pytest.mark.slow
def test_autocontrast_every_range():
  _check_autocontrast(ALL_PAIRS)


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (3, 3)])
def test_small_images(size):
  # Equalize's step is 0 below 256 pixels (the identity); SMOOTH keeps an image under 3 pixels
  # on a side, and all of a 3x3 image but its centre.
  rng = np.random.default_rng(4)
  images = np.stack([_photo(rng, *size), _photo(rng, *size),
                     rng.integers(0, 256, (*size, 3), dtype=np.uint8)])
  for fn, ops in ((point_ops, color.POINT_OPS), (blend_ops, color.BLEND_OPS)):
    for index, name in enumerate(ops):
      args = _args(name)[-len(images):]
      op = np.full(len(images), index, np.int32)
      np.testing.assert_array_equal(fn(images, op, np.asarray(args, np.float32)),
                                    _reference(images, [name] * len(images), args))
