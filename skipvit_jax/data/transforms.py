"""Per-example image preprocessing on the host (numpy, OpenCV), deterministic given an rng.

Training follows DeiT: random-resized crop (scale 0.08-1, aspect 3/4-4/3, bicubic), horizontal
flip, normalisation. Evaluation: resize the shorter side to image_size / 0.875, centre crop.
The synthetic dataset is already at its training resolution: flips only, so its object
masks stay aligned for evaluation.

Decoding. Datasets stored as JPEG (ImageNet) reach the loader as the encoded bytes, and the
crop is drawn from the header's size before decoding. `decode` reads a JPEG with
libjpeg-turbo through simplejpeg: the library and settings PIL uses (the accurate integer
IDCT, smooth chroma upsampling), so the same pixels, without PIL's conversion into its own
image and the copy out of it that TFDS's decoder makes. PNGs and CMYK JPEGs go through PIL.

Resizing. `resize` is bicubic and antialiased on downscale, as DeiT's is: torchvision's
RandomResizedCrop on a PIL image calls PIL's resize, which stretches its bicubic kernel
(a = -0.5) by the downscale factor, so each output pixel averages all the input pixels it
covers. OpenCV's INTER_CUBIC alone is not antialiased (a fixed 4 x 4 taps: fine detail
aliases into moire on downscale), and INTER_AREA is a box filter, blurrier than bicubic. So
each downscaled axis is first low-pass filtered with PIL's stretched kernel, sampled on the
pixel grid, then resampled with INTER_CUBIC. That is PIL's antialiasing at a fraction of its
cost (OpenCV vectorises both passes, PIL's resampling is scalar), within a couple of levels of
PIL's output on average (the cubic's a is -0.75 and the filtered image is rounded to uint8;
tests/test_host_pipeline.py bounds it). Evaluation's resize is the same. The costs of each
choice: BENCHMARKS.md, "CPU: input pipeline".
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from skipvit_jax.augment import policy

# The loader already runs one image per thread on every core; OpenCV's own thread pool inside
# each resize would only contend with it.
cv2.setNumThreads(1)

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels
_JPEG_MAGIC = b"\xff\xd8"
# JPEG colour spaces that libjpeg-turbo turns into RGB as PIL does; CMYK and YCCK go through
# PIL, whose conversion of them libjpeg-turbo's does not match exactly.
_TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")

IMAGENET_MEAN = np.array(policy.IMAGENET_MEAN_FRACTION, np.float32) * 255
IMAGENET_STD = np.array(policy.IMAGENET_STD_FRACTION, np.float32) * 255
HALF = np.full(3, 127.5, np.float32)  # maps [0, 255] to [-1, 1]


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """image: (H, W, 3) uint8 -> float32 (H, W, 3)."""
  return (image.astype(np.float32) - mean) / std


def random_flip(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def random_translate(rng: np.random.Generator, image: np.ndarray, max_shift: int) -> np.ndarray:
  """Shift (H, W, C) by up to max_shift pixels along each axis (uniform), same shape out.

  The padded random crop of the CIFAR recipes, padding with the edge pixels rather than zeros
  so a background that is not black (the synthetic clutter) is not framed by a black border.
  """
  if max_shift == 0:
    return image
  dy, dx = (int(d) for d in rng.integers(-max_shift, max_shift + 1, size=2))
  padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
  height, width = image.shape[:2]
  top, left = max_shift - dy, max_shift - dx  # content moves by (+dy, +dx)
  return padded[top:top + height, left:left + width]


def is_encoded(image) -> bool:
  """Whether `image` is an encoded file (bytes, as a data source read without decoding gives)."""
  return isinstance(image, bytes)


def image_shape(data: bytes) -> tuple[int, int]:
  """(height, width) of an encoded image, from its header alone."""
  if data[:2] == _JPEG_MAGIC:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return height, width
  width, height = Image.open(io.BytesIO(data)).size
  return height, width


def decode(data: bytes) -> np.ndarray:
  """An encoded image -> (H, W, 3) uint8 RGB (grey copied to the three channels)."""
  if data[:2] == _JPEG_MAGIC and simplejpeg.decode_jpeg_header(data)[2] in _TURBO_COLORSPACES:
    # Not strict: like PIL, decode what a file with a recoverable defect holds (a few
    # ImageNet files have extraneous bytes before a marker).
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


def decoded(image: np.ndarray | bytes) -> np.ndarray:
  """`decode` of an encoded image; an array as it is."""
  return decode(image) if is_encoded(image) else image


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
  """Inception-style crop of a (height, width) image, torchvision's algorithm -> Box."""
  area = height * width
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  # Fall back to a centre crop at the clamped aspect ratio.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _antialias_kernel(factor: float) -> np.ndarray:
  """PIL's bicubic kernel (a = -0.5) stretched by a downscale `factor` > 1, sampled at integer
  offsets and normalised: (2r + 1,) float32."""
  radius = math.ceil(2 * factor - 0.5)  # the taps strictly inside the support |x| < 2 factor
  x = np.abs(np.arange(-radius, radius + 1, dtype=np.float64) / factor)
  a = -0.5
  weights = np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                     np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
  return (weights / weights.sum()).astype(np.float32)


_IDENTITY = np.ones(1, np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (height, width, 3) uint8, bicubic, antialiased on downscale (see the
  module docstring). `image` may be a view, e.g. a crop of a larger array."""
  x_factor, y_factor = image.shape[1] / width, image.shape[0] / height
  if x_factor > 1 or y_factor > 1:
    image = cv2.sepFilter2D(
        image, -1, _antialias_kernel(x_factor) if x_factor > 1 else _IDENTITY,
        _antialias_kernel(y_factor) if y_factor > 1 else _IDENTITY,
        borderType=cv2.BORDER_REPLICATE)  # the crop's own edge, as cropping first does
  return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


def random_resized_crop(
    rng: np.random.Generator,
    image: np.ndarray | bytes,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """random_resized_crop_box of a decoded (H, W, 3) uint8 image or an encoded one (decoded
  after the draw, which needs only its size), resized to (size, size, 3) uint8."""
  shape = image_shape(image) if is_encoded(image) else image.shape[:2]
  top, left, h, w = random_resized_crop_box(rng, *shape, scale, ratio)
  if is_encoded(image):
    image = decode(image)
  return resize(image[top:top + h, left:left + w], size, size)


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """(H, W, 3) uint8: shorter side resized to size / crop_fraction, then the centre
  (size, size, 3) uint8."""
  height, width = image.shape[:2]
  resize_to = int(round(size / crop_fraction))
  scale = resize_to / min(height, width)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  resized = resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]


def random_erasing(
    rng: np.random.Generator,
    image: np.ndarray,
    probability: float = 0.25,
    area: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
  """timm's RandomErasing(mode='pixel', max_count=1) on one normalised image (DeiT: p = 0.25).

  image: (H, W, C) float32 -> a new (H, W, C) float32 array. With the given probability, up to
  10 tries for a box of `area` times the image area and height/width in `ratio`; the first
  that fits strictly inside the image is filled with per-pixel, per-channel N(0, 1) noise (the
  normalised image's own scale). timm 1.0.29, timm/data/random_erasing.py.
  """
  out = np.array(image, copy=True)
  if rng.random() > probability:
    return out
  height, width, channels = image.shape
  for _ in range(10):
    target_area = rng.uniform(*area) * (height * width)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < width and h < height:
      top = int(rng.integers(0, height - h + 1))  # timm's random.randint: both ends included
      left = int(rng.integers(0, width - w + 1))
      out[top:top + h, left:left + w] = rng.standard_normal((h, w, channels), np.float32)
      break
  return out
