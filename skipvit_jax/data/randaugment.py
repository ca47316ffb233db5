"""RandAugment on the host (numpy + PIL), following timm's `rand_augment_transform`: the
reference the device ops (skipvit_jax/augment/) are tested against, and the host path's
augmentation (config.data.augment_on = "host").

Read from timm 1.0.29.dev0 (pytorch-image-models aa4b585, timm/data/auto_augment.py and
timm/data/transforms_factory.py). DeiT trains with `--aa rand-m9-mstd0.5-inc1`: per image, 2
ops drawn uniformly with replacement from the 15 "increasing" ops; each is applied with
probability 0.5 at a magnitude drawn from N(9, 0.5) and clipped to [0, 10]. The ops are timm's
PIL calls, with the hparams timm's `transforms_imagenet_train` passes at DeiT's settings:
  - fill: the ImageNet mean in 0..255, (124, 116, 104), for pixels the geometric ops uncover;
  - resample: bicubic (DeiT's `--train-interpolation`) for Rotate, Shear*, Translate*Rel;
  - translate: TranslateXRel/YRel shift by up to `translate_pct` = 0.45 of the width/height
    (timm's default; the `translate_const` = int(0.45 * size) timm also passes is read only by
    the absolute TranslateX/Y ops, which neither of timm's RandAugment op sets contains).

Randomness comes from a np.random.Generator, drawn in timm's order (ops; then per op: apply?,
magnitude, sign), so the output is a function of the generator state. One departure: Pillow >= 13
rejects `ImageOps.posterize(img, 0)`, which PosterizeIncreasing asks for at magnitude 10; we
apply Pillow's own mask formula, which at 0 bits gives the black image older Pillow (and so
DeiT) produced.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from skipvit_jax.augment.policy import DEIT, IMAGENET_FILL, LEVEL_DENOM, RandAugmentOptions

# --------------------------------------------------------------------------------------------
# Magnitudes and op arguments.


def sample_magnitude(rng: np.random.Generator, options: RandAugmentOptions) -> float:
  """One op application's magnitude (timm's AugmentOp), in [0, magnitude_max]."""
  magnitude = options.magnitude
  if options.magnitude_std == math.inf:
    magnitude = rng.uniform(0, magnitude)
  elif options.magnitude_std > 0:
    magnitude = rng.normal(magnitude, options.magnitude_std)
  return max(0.0, min(magnitude, options.magnitude_max))


def _signed(rng: np.random.Generator, value: float) -> float:
  return -value if rng.random() > 0.5 else value  # timm's _randomly_negate


def _enhance(rng: np.random.Generator, level: float, _: float) -> float:
  return (level / LEVEL_DENOM) * 1.8 + 0.1  # [0.1, 1.9], 1 = unchanged


def _enhance_increasing(rng: np.random.Generator, level: float, _: float) -> float:
  return max(0.1, 1.0 + _signed(rng, (level / LEVEL_DENOM) * 0.9))  # away from 1 either way


# Op -> (rng, level, translate_pct) -> the op's argument; the arithmetic is timm's, term by term.
_LEVEL_TO_ARG: dict[str, Callable[[np.random.Generator, float, float], float]] = {
    "Rotate": lambda rng, level, _: _signed(rng, (level / LEVEL_DENOM) * 30.0),  # degrees
    "Posterize": lambda rng, level, _: int((level / LEVEL_DENOM) * 4),  # bits kept
    "PosterizeIncreasing": lambda rng, level, _: 4 - int((level / LEVEL_DENOM) * 4),
    "Solarize": lambda rng, level, _: min(256, int((level / LEVEL_DENOM) * 256)),  # threshold
    "SolarizeIncreasing": lambda rng, level, _: 256 - min(256, int((level / LEVEL_DENOM) * 256)),
    "SolarizeAdd": lambda rng, level, _: min(128, int((level / LEVEL_DENOM) * 110)),
    "ShearX": lambda rng, level, _: _signed(rng, (level / LEVEL_DENOM) * 0.3),
    "ShearY": lambda rng, level, _: _signed(rng, (level / LEVEL_DENOM) * 0.3),
    "TranslateXRel": lambda rng, level, pct: _signed(rng, (level / LEVEL_DENOM) * pct),
    "TranslateYRel": lambda rng, level, pct: _signed(rng, (level / LEVEL_DENOM) * pct),
    **{name: _enhance for name in ("Color", "Contrast", "Brightness", "Sharpness")},
    **{f"{name}Increasing": _enhance_increasing
       for name in ("Color", "Contrast", "Brightness", "Sharpness")},
}


def level_to_arg(rng: np.random.Generator, name: str, level: float, *,
                 translate_pct: float = 0.45) -> float | None:
  """The argument op `name` takes at magnitude `level`; None for the ops without one."""
  fn = _LEVEL_TO_ARG.get(name)
  return None if fn is None else fn(rng, level, translate_pct)


def sample_ops(rng: np.random.Generator, options: RandAugmentOptions = DEIT, *,
               translate_pct: float = 0.45) -> list[tuple[str, float | None]]:
  """The (op, argument) pairs to apply to one image, in order; skipped ops are left out."""
  ops = options.ops
  chosen = rng.choice(len(ops), size=options.num_ops)  # with replacement, as timm
  applied = []
  for index in chosen:
    if options.prob < 1.0 and rng.random() > options.prob:
      continue
    magnitude = sample_magnitude(rng, options)
    applied.append((ops[index], level_to_arg(rng, ops[index], magnitude,
                                             translate_pct=translate_pct)))
  return applied


# --------------------------------------------------------------------------------------------
# The ops, on PIL images (timm's calls).


def _posterize(image: Image.Image, bits: int) -> Image.Image:
  if bits >= 8:
    return image
  mask = ~(2 ** (8 - bits) - 1)  # Pillow's formula; 0 bits keeps nothing (see the docstring)
  return image.point([i & mask for i in range(256)] * len(image.getbands()))


def _solarize_add(image: Image.Image, add: int) -> Image.Image:
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return image.point(lut * len(image.getbands()))


_PHOTOMETRIC: dict[str, Callable[[Image.Image, float | None], Image.Image]] = {
    "AutoContrast": lambda image, _: ImageOps.autocontrast(image),
    "Equalize": lambda image, _: ImageOps.equalize(image),
    "Invert": lambda image, _: ImageOps.invert(image),
    "Posterize": _posterize,
    "Solarize": ImageOps.solarize,
    "SolarizeAdd": _solarize_add,
    "Color": lambda image, factor: ImageEnhance.Color(image).enhance(factor),
    "Contrast": lambda image, factor: ImageEnhance.Contrast(image).enhance(factor),
    "Brightness": lambda image, factor: ImageEnhance.Brightness(image).enhance(factor),
    "Sharpness": lambda image, factor: ImageEnhance.Sharpness(image).enhance(factor),
}


def _apply(image: Image.Image, name: str, arg: float | None, fill: tuple[int, int, int],
           resample: Image.Resampling) -> Image.Image:
  base = name.removesuffix("Increasing")  # the Increasing ops differ only in their arguments
  if base in _PHOTOMETRIC:
    return _PHOTOMETRIC[base](image, arg)
  if base == "Rotate":
    return image.rotate(arg, resample=resample, fillcolor=fill)  # counter-clockwise, centred
  width, height = image.size
  # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
  matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
            "TranslateXRel": (1, 0, arg * width, 0, 1, 0),
            "TranslateYRel": (1, 0, 0, 0, 1, arg * height)}[base]
  return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample,
                         fillcolor=fill)


def apply_op(image: np.ndarray, name: str, arg: float | None, *,
             fill: tuple[int, int, int] = IMAGENET_FILL,
             resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
  """One op with a given argument (see level_to_arg). image: (H, W, 3) uint8 -> same."""
  return np.asarray(_apply(Image.fromarray(image), name, arg, fill, resample))


def rand_augment(rng: np.random.Generator, image: np.ndarray,
                 options: RandAugmentOptions = DEIT, *,
                 fill: tuple[int, int, int] = IMAGENET_FILL, translate_pct: float = 0.45,
                 resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
  """image: (H, W, 3) uint8 -> (H, W, 3) uint8, RandAugment'ed as timm does.

  fill, translate_pct and resample are timm's hparams (see the module docstring): the dataset
  mean in 0..255, the largest shift as a fraction of the side, and the geometric ops' filter.
  """
  plan = sample_ops(rng, options, translate_pct=translate_pct)
  if not plan:
    return image
  pil = Image.fromarray(image)
  for name, arg in plan:
    pil = _apply(pil, name, arg, fill, resample)
  return np.asarray(pil)
