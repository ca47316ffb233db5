"""timm's RandAugment policy: the spec string, the op lists and the magnitude scale.

Read from timm 1.0.29.dev0 (pytorch-image-models aa4b585, timm/data/auto_augment.py). Shared by
the device ops (augment/batch.py) and the host-side PIL reference (data/randaugment.py), which
the device ops are tested against.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

# timm's op lists, in timm's order (the index drawn for an op depends on it).
OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
# Posterize, Solarize and the enhancements reparametrised so that a larger magnitude is a
# stronger change (timm's `_RAND_INCREASING_TRANSFORMS`, chosen by `inc1`).
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)

IMAGENET_FILL = (124, 116, 104)  # timm: round(255 * IMAGENET_DEFAULT_MEAN)
# timm's IMAGENET_DEFAULT_MEAN and _STD, in 0..1; transforms.py scales them to 0..255.
IMAGENET_MEAN_FRACTION = (0.485, 0.456, 0.406)
IMAGENET_STD_FRACTION = (0.229, 0.224, 0.225)
LEVEL_DENOM = 10.0  # magnitude 10 is each op's full-strength argument


@dataclasses.dataclass(frozen=True)
class RandAugmentOptions:
  """What a timm spec string sets; the defaults are timm's for an empty spec ("rand")."""

  num_ops: int = 2  # n: ops drawn per image, with replacement
  magnitude: float = 10  # m: on timm's 0..10 scale
  magnitude_std: float = 0.0  # mstd: per-op N(m, mstd) noise; math.inf draws U(0, m) instead
  magnitude_max: float = 10  # mmax: sampled magnitudes are clipped to [0, mmax]
  prob: float = 0.5  # p: each drawn op is applied with this probability
  increasing: bool = False  # inc: INCREASING_OPS instead of OPS

  def __post_init__(self):
    for field, ok in (("num_ops", self.num_ops >= 0), ("magnitude", self.magnitude >= 0),
                      ("magnitude_std", self.magnitude_std >= 0),
                      ("magnitude_max", self.magnitude_max > 0), ("prob", 0 <= self.prob <= 1)):
      if not ok:
        raise ValueError(f"RandAugment {field}={getattr(self, field)} is out of range")

  @property
  def ops(self) -> tuple[str, ...]:
    return INCREASING_OPS if self.increasing else OPS


# Spec key -> (field, parser). mstd > 100 means uniform sampling, as in timm.
_SPEC_KEYS: dict[str, tuple[str, Callable[[str], float]]] = {
    "n": ("num_ops", int),
    "m": ("magnitude", int),
    "mstd": ("magnitude_std", lambda v: math.inf if float(v) > 100 else float(v)),
    "mmax": ("magnitude_max", int),
    "p": ("prob", float),
    "inc": ("increasing", lambda v: bool(int(v))),
}


def parse_rand_augment(spec: str) -> RandAugmentOptions:
  """timm's RandAugment spec, e.g. "rand-m9-mstd0.5-inc1" (DeiT) -> options.

  Sections after "rand" are a key and a number, in any order. Unlike timm, which skips or
  asserts on them, an unknown or malformed section raises ValueError naming it; and `inc0` turns
  the increasing set off (timm's `bool("0")` would turn it on).
  """
  name, *sections = spec.split("-")
  if name != "rand":
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand'")
  values = {}
  for section in sections:
    match = re.fullmatch(r"(\D+)(\d.*)", section)
    if match is None or match.group(1) not in _SPEC_KEYS:
      raise ValueError(f"unknown section {section!r} in RandAugment spec {spec!r}; "
                       f"expected one of {sorted(_SPEC_KEYS)} followed by a number")
    field, parse = _SPEC_KEYS[match.group(1)]
    try:
      values[field] = parse(match.group(2))
    except ValueError:
      raise ValueError(f"bad value in section {section!r} of RandAugment spec {spec!r}") from None
  return RandAugmentOptions(**values)


DEIT = parse_rand_augment("rand-m9-mstd0.5-inc1")
