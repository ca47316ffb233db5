"""Per-example image preprocessing on the host (numpy + PIL), deterministic given an rng.

Training follows DeiT: random-resized crop (scale 0.08-1, aspect 3/4-4/3, bicubic), horizontal
flip, normalisation. Evaluation: resize the shorter side to image_size / 0.875, centre crop.
The synthetic dataset is already at its training resolution: flips only, so its object
masks stay aligned for evaluation.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
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


def random_resized_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """Inception-style crop (torchvision's algorithm), resized to (size, size) bicubic."""
  height, width = image.shape[:2]
  area = height * width
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      break
  else:  # fall back to a centre crop at the clamped aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
      h, w = height, int(round(height * ratio[1]))
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  crop = image[top:top + h, left:left + w]
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  height, width = image.shape[:2]
  resize = int(round(size / crop_fraction))
  scale = resize / min(height, width)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
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
