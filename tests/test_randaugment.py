"""skipvit_jax.data.randaugment, transforms.random_erasing (timm's semantics) and
transforms.random_translate.

Every op is checked against a numpy reference written from the formula (PIL's, for the ops
timm defines through PIL), on small fixed images; unless stated, exactly, pixel for pixel.
"""

import math

import numpy as np
import pytest
from PIL import Image

from skipvit_jax.augment import policy
from skipvit_jax.data import pipeline, transforms
from skipvit_jax.data import randaugment as ra

FILL = ra.IMAGENET_FILL
NEAREST = Image.Resampling.NEAREST


def _image(height: int = 37, width: int = 45) -> np.ndarray:
  """(H, W, 3) uint8: smooth ramps plus noise, each channel over part of 0..255 only, so that
  autocontrast and equalize have work to do. Non-square, to catch mixed-up axes."""
  rng = np.random.default_rng(7)
  yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
  noise = rng.normal(0, 12, (3, height, width))
  channels = (40 + 150 * xx + noise[0], 90 + 60 * np.sin(6 * yy) + noise[1],
              20 + 90 * xx * yy + noise[2])
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


IMAGE = _image()


# --------------------------------------------------------------------------------------------
# Photometric ops against numpy.


def _luma(image: np.ndarray) -> np.ndarray:
  """PIL's "L": ITU-R 601-2, L = R 299/1000 + G 587/1000 + B 114/1000, which Pillow evaluates
  in 16-bit fixed point with rounding (0.299 * 65536 = 19595, ...). The /1000 integer form
  rounds differently for ~0.05% of colours, so the reference uses Pillow's constants."""
  x = image.astype(np.int64)
  return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16)


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
  """PIL's Image.blend: degenerate + factor (image - degenerate) in C float (float32),
  truncated to uint8 after clipping to [0, 255]."""
  a, b = degenerate.astype(np.float32), image.astype(np.float32)
  return np.clip(np.trunc(a + np.float32(factor) * (b - a)), 0, 255).astype(np.uint8)


def _smooth(image: np.ndarray) -> np.ndarray:
  """PIL's SMOOTH filter: [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded half up; PIL leaves
  the one-pixel border unfiltered."""
  x = image.astype(np.float64)
  h, w = x.shape[:2]
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64)
  total = sum(kernel[i, j] * x[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3))
  out = x.copy()
  out[1:-1, 1:-1] = np.floor(total / 13 + 0.5)
  return out.astype(np.uint8)


def _autocontrast(image: np.ndarray) -> np.ndarray:
  """ImageOps.autocontrast(cutoff=0) per channel: lo..hi stretched to 0..255 via
  int(v * scale + offset), offset = -lo * scale (PIL's arithmetic, so ties truncate alike)."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    x = image[..., c]
    lo, hi = int(x.min()), int(x.max())
    if hi <= lo:
      out[..., c] = x
      continue
    scale = 255.0 / (hi - lo)
    out[..., c] = np.clip(np.trunc(x * scale + (-lo * scale)), 0, 255)
  return out


def _equalize(image: np.ndarray) -> np.ndarray:
  """ImageOps.equalize per channel: step = (pixels - count of the top occupied level) // 255;
  lut[i] = (step // 2 + pixels below level i) // step, which Image.point clips to 255."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    x = image[..., c]
    hist = np.bincount(x.ravel(), minlength=256)
    occupied = hist[hist > 0]
    step = (occupied.sum() - occupied[-1]) // 255
    if len(occupied) <= 1 or step == 0:
      out[..., c] = x
      continue
    below = np.concatenate([[0], np.cumsum(hist)[:-1]])
    out[..., c] = np.minimum((step // 2 + below) // step, 255)[x]
  return out


def _posterize(image: np.ndarray, bits: int) -> np.ndarray:
  return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _solarize(image: np.ndarray, threshold: int) -> np.ndarray:
  return np.where(image >= threshold, 255 - image, image)


def _solarize_add(image: np.ndarray, add: int) -> np.ndarray:
  return np.where(image < 128, np.minimum(image.astype(np.int64) + add, 255), image)


def _mean_luma_image(image: np.ndarray) -> np.ndarray:
  mean = int(_luma(image).mean() + 0.5)  # ImageEnhance.Contrast: rounded mean grey level
  return np.full_like(image, mean)


def _grey(image: np.ndarray) -> np.ndarray:
  return np.repeat(_luma(image)[..., None], 3, -1).astype(np.uint8)


PHOTOMETRIC_CASES = [
    ("Invert", None, lambda x: 255 - x),
    ("AutoContrast", None, _autocontrast),
    ("Equalize", None, _equalize),
    *[("Posterize", bits, lambda x, b=bits: _posterize(x, b)) for bits in (1, 3, 4, 7)],
    *[("Solarize", t, lambda x, t=t: _solarize(x, t)) for t in (0, 26, 128, 200, 256)],
    *[("SolarizeAdd", a, lambda x, a=a: _solarize_add(x, a)) for a in (0, 55, 110)],
    *[("Brightness", f, lambda x, f=f: _blend(np.zeros_like(x), x, f)) for f in (0.1, 0.55, 1.9)],
    *[("Color", f, lambda x, f=f: _blend(_grey(x), x, f)) for f in (0.1, 0.55, 1.0, 1.9)],
    *[("Contrast", f, lambda x, f=f: _blend(_mean_luma_image(x), x, f))
      for f in (0.1, 0.55, 1.45, 1.9)],
    *[("Sharpness", f, lambda x, f=f: _blend(_smooth(x), x, f)) for f in (0.1, 0.55, 1.45, 1.9)],
]


@pytest.mark.parametrize("name,arg,reference", PHOTOMETRIC_CASES,
                         ids=[f"{n}-{a}" for n, a, _ in PHOTOMETRIC_CASES])
def test_photometric_op_matches_numpy_reference(name, arg, reference):
  out = ra.apply_op(IMAGE, name, arg)
  expected = reference(IMAGE)
  assert out.shape == IMAGE.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, expected)


def test_reference_image_exercises_the_ops():
  """The fixed image is one on which the ops above do change pixels."""
  for name, arg in [("AutoContrast", None), ("Equalize", None), ("Sharpness", 1.9),
                    ("Contrast", 0.1), ("Color", 0.1), ("Posterize", 4)]:
    assert (ra.apply_op(IMAGE, name, arg) != IMAGE).mean() > 0.3, name


def test_posterize_edges_keep_timm_and_old_pillow_behaviour():
  # 8 bits: timm returns the image; 0 bits (PosterizeIncreasing at magnitude 10): black.
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "Posterize", 8), IMAGE)
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "PosterizeIncreasing", 0),
                                np.zeros_like(IMAGE))


def test_increasing_ops_run_their_base_op():
  for name, arg in [("PosterizeIncreasing", 2), ("SolarizeIncreasing", 100),
                    ("ColorIncreasing", 0.3), ("ContrastIncreasing", 1.7),
                    ("BrightnessIncreasing", 0.4), ("SharpnessIncreasing", 1.8)]:
    base = name.removesuffix("Increasing")
    np.testing.assert_array_equal(ra.apply_op(IMAGE, name, arg), ra.apply_op(IMAGE, base, arg))


# --------------------------------------------------------------------------------------------
# Geometric ops against numpy.


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
  """out[y, x] = image[y + dy, x + dx], FILL where that is outside the image."""
  h, w = image.shape[:2]
  out = np.empty_like(image)
  out[:] = FILL
  src = image[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
  out[max(-dy, 0):max(-dy, 0) + src.shape[0], max(-dx, 0):max(-dx, 0) + src.shape[1]] = src
  return out


def _affine_nearest(image: np.ndarray, matrix) -> np.ndarray:
  """PIL's AFFINE with NEAREST: output pixel centre (x + .5, y + .5) maps to input
  (a x + b y + c, d x + e y + f), which reads pixel floor() of it, or FILL outside."""
  a, b, c, d, e, f = matrix
  h, w = image.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w] + 0.5
  x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
  xi, yi = np.floor(x_in).astype(int), np.floor(y_in).astype(int)
  inside = (x_in >= 0) & (xi < w) & (y_in >= 0) & (yi < h)
  out = np.empty_like(image)
  out[:] = FILL
  out[inside] = image[yi[inside], xi[inside]]
  return out


@pytest.mark.parametrize("pixels", [5, -7, 20, -1])
def test_translate_by_whole_pixels_is_a_shift_with_fill(pixels):
  """Relative translation: a fraction of the width (X) or height (Y), bicubic as DeiT; at whole
  pixels bicubic samples pixel centres, so the result is an exact shift. Positive moves the
  content left / up (PIL's affine reads input x + shift)."""
  h, w = IMAGE.shape[:2]
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "TranslateXRel", pixels / w),
                                _shift(IMAGE, pixels, 0))
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "TranslateYRel", pixels / h),
                                _shift(IMAGE, 0, pixels))


@pytest.mark.parametrize("degrees,quarter_turns", [(90, 1), (-90, 3), (180, 2), (270, 3)])
def test_rotate_right_angles_on_a_square_image_is_rot90(degrees, quarter_turns):
  square = np.ascontiguousarray(IMAGE[:37, :37])
  np.testing.assert_array_equal(ra.apply_op(square, "Rotate", degrees),
                                np.rot90(square, quarter_turns))  # counter-clockwise


@pytest.mark.parametrize("factor", [0.25, -0.3, 0.17, -0.123])
def test_shear_matches_inverse_mapping(factor):
  # Exact: a shear's sample points are accumulated and floored alike in PIL and here.
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "ShearX", factor, resample=NEAREST),
                                _affine_nearest(IMAGE, (1, factor, 0, 0, 1, 0)))
  np.testing.assert_array_equal(ra.apply_op(IMAGE, "ShearY", factor, resample=NEAREST),
                                _affine_nearest(IMAGE, (1, 0, 0, factor, 1, 0)))


@pytest.mark.parametrize("degrees", [17.0, -30.0, 23.4])
def test_rotate_matches_inverse_mapping_about_the_centre(degrees):
  """Counter-clockwise about (W/2, H/2), FILL outside. PIL steps the sample point across a row
  by increments, so points that land within rounding of a pixel edge may floor to the
  neighbour: allow 0.5% of pixels (3 of 1665 differ at 17 degrees)."""
  h, w = IMAGE.shape[:2]
  t = -math.radians(degrees)
  a, b, d, e = math.cos(t), math.sin(t), -math.sin(t), math.cos(t)
  matrix = (a, b, w / 2 - a * w / 2 - b * h / 2, d, e, h / 2 - d * w / 2 - e * h / 2)
  out = ra.apply_op(IMAGE, "Rotate", degrees, resample=NEAREST)
  expected = _affine_nearest(IMAGE, matrix)
  assert (out != expected).any(-1).mean() <= 0.005
  assert (expected == FILL).all(-1).mean() > 0.05  # the corners were filled


def test_geometric_ops_fill_with_the_given_colour():
  out = ra.apply_op(IMAGE, "TranslateXRel", 0.45, fill=(1, 2, 3))
  shift = 0.45 * IMAGE.shape[1]
  filled = out[:, -int(shift):]
  np.testing.assert_array_equal(filled, np.broadcast_to((1, 2, 3), filled.shape))


# --------------------------------------------------------------------------------------------
# Magnitudes and arguments.


@pytest.mark.parametrize("name,level,expected", [
    ("Rotate", 9, [-27.0, 27.0]), ("ShearX", 9, [-0.27, 0.27]), ("ShearY", 5, [-0.15, 0.15]),
    ("TranslateXRel", 9, [-0.405, 0.405]), ("TranslateYRel", 10, [-0.45, 0.45]),
    ("Posterize", 9, [3]), ("PosterizeIncreasing", 9, [1]), ("PosterizeIncreasing", 10, [0]),
    ("PosterizeIncreasing", 0, [4]), ("Solarize", 9, [230]), ("SolarizeIncreasing", 9, [26]),
    ("SolarizeIncreasing", 0, [256]), ("SolarizeAdd", 9, [99]), ("SolarizeAdd", 10, [110]),
    ("Color", 9, [1.72]), ("Sharpness", 0, [0.1]),
    ("ContrastIncreasing", 9, [0.19, 1.81]), ("BrightnessIncreasing", 10, [0.1, 1.9]),
    ("SharpnessIncreasing", 0, [1.0]),
])
def test_level_to_arg_values(name, level, expected):
  """timm's mappings at fixed levels; the signed ones take both signs over a few draws."""
  args = {ra.level_to_arg(np.random.default_rng(s), name, level) for s in range(40)}
  assert sorted(args) == pytest.approx(expected)


def test_ops_without_argument():
  for name in ("AutoContrast", "Equalize", "Invert"):
    assert ra.level_to_arg(np.random.default_rng(0), name, 9) is None


def test_sampled_magnitudes_stay_in_range():
  rng = np.random.default_rng(0)
  for m in range(11):
    options = policy.RandAugmentOptions(magnitude=m, magnitude_std=0.5)
    mags = np.array([ra.sample_magnitude(rng, options) for _ in range(400)])
    assert mags.min() >= 0 and mags.max() <= 10
    assert abs(np.median(mags) - m) < 0.1  # clipping moves the mean at 0 and 10, not the median
    assert mags.std() > (0.2 if m in (0, 10) else 0.4)  # the noise is there
  at_ten = [ra.sample_magnitude(rng, policy.RandAugmentOptions(magnitude=10, magnitude_std=0.5))
            for _ in range(400)]
  assert 0.4 < np.mean(np.array(at_ten) == 10) < 0.6  # half the draws clip to exactly 10
  uniform = policy.RandAugmentOptions(magnitude=8, magnitude_std=math.inf)
  mags = np.array([ra.sample_magnitude(rng, uniform) for _ in range(2000)])
  assert mags.min() >= 0 and mags.max() <= 8 and abs(mags.mean() - 4) < 0.25
  wide = policy.RandAugmentOptions(magnitude=15, magnitude_std=0.5, magnitude_max=20)
  assert min(ra.sample_magnitude(rng, wide) for _ in range(50)) > 10


def test_sampled_arguments_stay_in_timm_ranges():
  rng = np.random.default_rng(1)
  bounds = {"Rotate": (-30, 30), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3),
            "TranslateXRel": (-0.45, 0.45), "TranslateYRel": (-0.45, 0.45),
            "PosterizeIncreasing": (0, 4), "SolarizeIncreasing": (0, 256), "SolarizeAdd": (0, 110),
            "ColorIncreasing": (0.1, 1.9), "ContrastIncreasing": (0.1, 1.9),
            "BrightnessIncreasing": (0.1, 1.9), "SharpnessIncreasing": (0.1, 1.9)}
  seen = {name: [] for name in bounds}
  for m in range(11):
    options = policy.RandAugmentOptions(magnitude=m, magnitude_std=0.5, increasing=True)
    for _ in range(60):
      for name in bounds:
        seen[name].append(ra.level_to_arg(rng, name, ra.sample_magnitude(rng, options)))
  for name, (lo, hi) in bounds.items():
    args = np.array(seen[name])
    assert lo - 1e-9 <= args.min() and args.max() <= hi + 1e-9, name
    assert args.max() - args.min() > 0.8 * (hi - lo), name  # the whole range is reached
  assert all(isinstance(a, int) for a in seen["PosterizeIncreasing"] + seen["SolarizeAdd"])


# --------------------------------------------------------------------------------------------
# The op draw and the whole transform.


def test_op_choice_is_uniform_and_half_the_ops_are_applied():
  rng = np.random.default_rng(2)
  draws = 6000
  counts = dict.fromkeys(policy.INCREASING_OPS, 0)
  for _ in range(draws):
    for name, _ in ra.sample_ops(rng, policy.DEIT):
      counts[name] += 1
  applied = sum(counts.values())
  # Binomial(12000, 0.5): sd 55. Each op: ~400 of 6000 with sd ~19.
  assert abs(applied - draws) < 300
  assert min(counts.values()) > 300 and max(counts.values()) < 500, counts


def test_op_sets_follow_the_inc_flag():
  rng = np.random.default_rng(3)
  plain = {n for _ in range(500) for n, _ in ra.sample_ops(rng, policy.RandAugmentOptions())}
  increasing = {n for _ in range(500) for n, _ in ra.sample_ops(rng, policy.DEIT)}
  assert plain == set(policy.OPS) and increasing == set(policy.INCREASING_OPS)
  always = policy.RandAugmentOptions(num_ops=3, prob=1.0)
  assert all(len(ra.sample_ops(rng, always)) == 3 for _ in range(50))
  assert ra.sample_ops(rng, policy.RandAugmentOptions(num_ops=0)) == []


def test_rand_augment_is_deterministic_given_the_generator():
  image = _image(64, 64)
  outs = [ra.rand_augment(np.random.default_rng((5, 0, s)), image) for s in range(12)]
  again = [ra.rand_augment(np.random.default_rng((5, 0, s)), image) for s in range(12)]
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) >= 8  # 1/4 of draws apply no op, so a few repeats of the input
  assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(image, _image(64, 64))  # the input is untouched


def test_rand_augment_applies_the_sampled_plan():
  image = _image(48, 40)
  for seed in range(6):
    plan = ra.sample_ops(np.random.default_rng(seed), policy.DEIT)
    expected = image
    for name, arg in plan:
      expected = ra.apply_op(expected, name, arg)
    np.testing.assert_array_equal(ra.rand_augment(np.random.default_rng(seed), image), expected)


# --------------------------------------------------------------------------------------------
# Random erasing.


def _erased_boxes(probability: float, height: int, width: int, draws: int, seed: int = 0):
  """Erases a constant image `draws` times -> (erased flags, boxes (top, left, h, w), noise)."""
  image = np.full((height, width, 3), 7.0, np.float32)  # N(0, 1) never gives exactly 7
  rng = np.random.default_rng(seed)
  flags, boxes, noise = [], [], []
  for _ in range(draws):
    out = transforms.random_erasing(rng, image, probability=probability)
    changed = (out != image).any(-1)
    flags.append(changed.any())
    if changed.any():
      rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
      top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
      # One rectangle, changed in every channel, and nothing else.
      assert changed.sum() == h * w and (out[top:top + h, left:left + w] != 7).all()
      boxes.append((top, left, h, w))
      noise.append(out[top:top + h, left:left + w].ravel())
  np.testing.assert_array_equal(image, 7.0)
  return np.array(flags), np.array(boxes), np.concatenate(noise) if noise else np.empty(0)


def test_random_erasing_probability():
  flags, _, _ = _erased_boxes(0.25, 32, 24, 3000)
  assert 0.22 < flags.mean() < 0.28  # sd 0.008
  assert not _erased_boxes(0.0, 32, 24, 100)[0].any()


def test_random_erasing_box_areas_and_aspects():
  height, width = 48, 64
  _, boxes, _ = _erased_boxes(1.0, height, width, 1000)
  assert len(boxes) >= 990  # 10 tries nearly always find a box that fits
  h, w = boxes[:, 2], boxes[:, 3]
  area = height * width
  slack = (h + w) / 2 + 0.25  # h and w are each rounded to the nearest pixel
  assert (h * w >= 0.02 * area - slack).all() and (h * w <= area / 3 + slack).all()
  assert (h < height).all() and (w < width).all()
  fraction = h * w / area
  assert fraction.min() < 0.04 and fraction.max() > 0.3  # area ~ U(0.02, 1/3)
  aspect = h / w  # timm: h = sqrt(area * aspect), aspect log-uniform in [0.3, 1/0.3]
  assert aspect.min() < 0.4 and aspect.max() > 2.5
  assert (aspect >= 0.3 * 0.7).all() and (aspect <= 1 / 0.3 / 0.7).all()  # rounding slack


def test_random_erasing_noise_is_standard_normal_per_pixel_and_channel():
  _, _, noise = _erased_boxes(1.0, 32, 32, 200)
  assert noise.size > 10000
  assert abs(noise.mean()) < 0.03 and abs(noise.std() - 1) < 0.03
  assert len(np.unique(noise)) > 0.99 * noise.size  # fresh draws, not a per-box colour


def test_random_erasing_placement_covers_the_image():
  height, width = 20, 16
  _, boxes, _ = _erased_boxes(1.0, height, width, 1500, seed=1)
  top, left, h, w = boxes.T
  cy, cx = top + h / 2, left + w / 2
  assert abs(cy.mean() - height / 2) < 0.5 and abs(cx.mean() - width / 2) < 0.5
  assert 0.3 < np.mean(cy < height / 2) < 0.7 and 0.3 < np.mean(cx < width / 2) < 0.7
  # timm's randint includes both ends: boxes touch every edge.
  assert (top == 0).any() and (left == 0).any()
  assert (top + h == height).any() and (left + w == width).any()


def test_random_erasing_returns_a_new_array_and_is_deterministic():
  image = np.random.default_rng(0).normal(size=(24, 24, 3)).astype(np.float32)
  copy = image.copy()
  for seed in range(8):
    out = transforms.random_erasing(np.random.default_rng(seed), image, probability=0.5)
    again = transforms.random_erasing(np.random.default_rng(seed), image, probability=0.5)
    np.testing.assert_array_equal(out, again)
    assert out.dtype == np.float32 and not np.shares_memory(out, image)
  np.testing.assert_array_equal(image, copy)


# Random translation.


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """The spec pixel by pixel: out[y, x] = image[y - dy, x - dx], coordinates clamped to the
  image (edge padding)."""
  height, width = image.shape[:2]
  rows = np.clip(np.arange(height) - dy, 0, height - 1)
  cols = np.clip(np.arange(width) - dx, 0, width - 1)
  return image[rows[:, None], cols[None, :]]


def _translations(max_shift: int, draws: int, image: np.ndarray) -> list[tuple[int, int]]:
  """The (dy, dx) of each of `draws` translations of `image`, found by matching the spec."""
  rng = np.random.default_rng(3)
  candidates = [(dy, dx) for dy in range(-max_shift - 1, max_shift + 2)
                for dx in range(-max_shift - 1, max_shift + 2)]
  shifts = []
  for _ in range(draws):
    out = transforms.random_translate(rng, image, max_shift)
    assert out.shape == image.shape and out.dtype == image.dtype
    matches = [c for c in candidates if np.array_equal(out, _shifted(image, *c))]
    assert len(matches) == 1, matches  # a noise image: exactly one shift explains the output
    shifts.append(matches[0])
  return shifts


def test_random_translate_is_a_uniform_edge_padded_shift():
  image = _image(11, 9)
  shifts = _translations(2, 1000, image)
  counts = {s: shifts.count(s) for s in set(shifts)}
  assert set(counts) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
  assert min(counts.values()) > 20 and max(counts.values()) < 65  # 40 each expected, sd 6


def test_random_translate_off_is_the_identity_and_draws_nothing():
  image = _image()
  rng = np.random.default_rng(5)
  assert transforms.random_translate(rng, image, 0) is image
  assert rng.random() == np.random.default_rng(5).random()  # recipes without it are unchanged


def test_random_translate_in_the_training_preprocessing():
  """Fashion-MNIST-like: the stored (28, 28, 1) image comes out shifted, eval untouched."""
  info = pipeline.DatasetInfo("fashion_like", 10, 1, 1, has_object_masks=False, fixed_size=True)
  image = np.zeros((28, 28, 1), np.uint8)
  image[10:14, 12:16] = 200  # symmetric under the flip, which comes first
  example = {"image": image, "label": 3}
  augmentation = pipeline.Augmentation(random_translate=4)
  centres = set()
  for seed in range(40):
    out = pipeline._preprocess(example, np.random.default_rng(seed), info, image_size=28,
                               augmentation=augmentation)["image"]
    rows, cols = np.nonzero(out[..., 0] > 0)
    assert len(rows) == 16 and np.ptp(rows) == np.ptp(cols) == 3  # the block, whole
    centres.add((rows.min() - 10, cols.min() - 12))
  assert all(max(abs(dy), abs(dx)) <= 4 for dy, dx in centres) and len(centres) > 15
  evaluated = pipeline._preprocess(example, None, info, image_size=28)["image"]
  np.testing.assert_array_equal(evaluated[..., 0] > 0, image[..., 0] > 0)


# --------------------------------------------------------------------------------------------
# The spec parser.


def test_parse_deit_spec():
  options = policy.parse_rand_augment("rand-m9-mstd0.5-inc1")
  assert options == policy.RandAugmentOptions(num_ops=2, magnitude=9, magnitude_std=0.5,
                                          magnitude_max=10, prob=0.5, increasing=True)
  assert options == policy.DEIT == policy.parse_rand_augment("rand-inc1-mstd0.5-m9")
  assert options.ops == policy.INCREASING_OPS


def test_parse_other_keys_and_defaults():
  assert policy.parse_rand_augment("rand") == policy.RandAugmentOptions()
  options = policy.parse_rand_augment("rand-n3-m7-p0.7-mmax20-mstd101-inc0")
  assert (options.num_ops, options.magnitude, options.prob, options.magnitude_max) == \
      (3, 7, 0.7, 20)
  assert options.magnitude_std == math.inf and not options.increasing


@pytest.mark.parametrize("spec,bad_part", [
    ("", "''"), ("aug-m9", "aug-m9"), ("rand-x9", "x9"), ("rand-m", "'m'"),
    ("rand-mfoo", "mfoo"), ("rand-m9.5", "m9.5"), ("rand-tweights", "tweights"),
    ("rand-m9--inc1", "''"), ("rand-p1.5", "prob"),
])
def test_parse_rejects_bad_specs(spec, bad_part):
  with pytest.raises(ValueError, match=bad_part.replace(".", r"\.")):
    policy.parse_rand_augment(spec)
