"""Shapes on a plain dark ground: the embedded, offline default dataset.

Every image holds exactly one object whose class is its *shape* (circle, square, ...),
drawn upright in one flat colour at a random position and scale on a flat, dark ground of a
random grey tint. The colour is drawn independently of the class, and so is the object's area,
so neither colour nor size tells the class: a model has to look at the shape. The object covers
a minority of the image (`AREA_FRACTION`), which is what makes token routing pay off: most
patches are background a good [CLS] query can skip. Each example also stores the object's
pixel mask, so the trainer can measure how many object patches a drop layer kept
(`evaluate.patch_overlap`).

The difficulty is set for minutes of CPU training of a 12-layer ViT of width 32 (the default
config): rotated shapes and distractor blobs (version 1.1.0) and a textured ground (1.2.0)
each held that model far below what it reaches on upright shapes alone on a flat ground, so
version 1.3.0 draws upright shapes, no blobs, on a flat ground of a random dark grey (a black
ground would be easier still: its level never varies). The runs behind each step:
docs/results.md, "Earlier versions".

Rendering is pure numpy and deterministic: example `i` of a split is rendered from
`np.random.default_rng((seed, split_stream, i))`, so train and test come from disjoint
random streams and an example does not depend on generation order.

The TFDS builder `skipvit_shapes` writes array_record files and is read with
`builder.as_data_source(split)`; neither needs TensorFlow nor the network. Typical use:

  builder = synthetic.prepare("/tmp/tfds")           # generates once, then reuses
  train = builder.as_data_source("train")            # train[i]: image, mask, label
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ("circle", "ring", "square", "triangle", "star", "cross", "crescent", "ell")
NUM_CLASSES = len(CLASS_NAMES)

# The object's pixel count over S * S: drawn uniformly in this range and guaranteed after
# rasterisation (poses whose pixel count falls outside are redrawn).
AREA_FRACTION = (0.08, 0.20)

IMAGE_SIZE_RANGE = (32, 224)

# Random-stream ids: test examples are never a re-draw of train examples.
SPLIT_STREAMS = {"train": 0, "test": 1}

# Shapes are defined in unit coordinates and all fit inside the unit disc, so a shape
# drawn with scale s (pixels per unit) fits in the image when its centre is s away from
# every edge.
_Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(vertices: np.ndarray) -> _Inside:
  """Even-odd point-in-polygon test for `vertices`: (V, 2)."""
  x0, y0 = vertices[:, 0], vertices[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)

  def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, v = u[..., None], v[..., None]  # broadcast against the V edges
    straddles = (y0 > v) != (y1 > v)
    with np.errstate(divide="ignore", invalid="ignore"):
      x_cross = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
    return (np.count_nonzero(straddles & (u < x_cross), axis=-1) % 2) == 1

  return inside


def _regular_star(points: int, inner: float) -> np.ndarray:
  """(2 * points, 2) vertices alternating between radius 1 and `inner`."""
  angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
  radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
  return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _triangle_vertices() -> np.ndarray:
  angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


# A thick "L": two 0.8-wide arms of length 1.6 meeting at a right angle.
_ELL = np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.0], [0.0, 0.0], [0.0, 0.8], [-0.8, 0.8]])

# Thick enough to survive 32-px rasterisation: at the smallest area the ring's band, the
# cross's arms and the crescent's belly are all >= 2 pixels wide.
_SHAPES: dict[str, _Inside] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "square": lambda u, v: (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7),
    "triangle": _polygon(_triangle_vertices()),
    "star": _polygon(_regular_star(5, 0.45)),
    "cross": lambda u, v: ((np.abs(u) <= 0.95) & (np.abs(v) <= 0.3))
    | ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.75**2),
    "ell": _polygon(_ELL),
}


@functools.cache
def _unit_areas() -> np.ndarray:
  """(NUM_CLASSES,) area of each shape at scale 1, by dense sampling of [-1, 1]^2."""
  n = 1024
  grid = (np.arange(n) + 0.5) / n * 2.0 - 1.0
  u, v = np.meshgrid(grid, grid)
  return np.array([_SHAPES[name](u, v).mean() * 4.0 for name in CLASS_NAMES])


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB; inputs in [0, 1], output (..., 3) in [0, 1]."""
  k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
  return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _vivid_colours(rng: np.random.Generator, hues: np.ndarray) -> np.ndarray:
  """(N, 3) uint8 saturated colours, brighter than any background."""
  sat = rng.uniform(0.55, 1.0, size=hues.shape)
  val = rng.uniform(0.6, 1.0, size=hues.shape)
  return np.round(_hsv_to_rgb(hues, sat, val) * 255.0).astype(np.uint8)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
  """(S, S, 3) float32 flat dark ground: a grey level with a slight per-channel tint.

  Dark on purpose: every object is brighter than its surroundings, so figure and ground
  separate by luminance. On a mid-grey ground a 12-layer ViT of width 32 needs far more
  than a CPU-minutes budget before it starts to learn (tried: flat mid-grey, 300 steps of
  batch 128, still at chance). Flat on purpose: a textured ground cost 10 points of top-1
  (the module docstring's measurements).
  """
  grey = rng.uniform(25.0, 65.0) + rng.normal(0.0, 5.0, size=3)  # (3,)
  return np.broadcast_to(grey.astype(np.float32), (size, size, 3))


def _object_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
  """(S, S) bool: shape `label` at a random pose, area within AREA_FRACTION of the image."""
  lo, hi = AREA_FRACTION[0] * size * size, AREA_FRACTION[1] * size * size
  while True:
    # Scale from the target area, so the object's size says nothing about its class.
    scale = size * np.sqrt(rng.uniform(*AREA_FRACTION) / _unit_areas()[label])
    cx, cy = rng.uniform(scale, size - scale, size=2)
    # Shapes fit in the unit disc: only pixels in the pose's bounding box can be inside.
    x0, x1 = int(cx - scale), min(int(np.ceil(cx + scale)), size)
    y0, y1 = int(cy - scale), min(int(np.ceil(cy + scale)), size)
    # Inverse pose: pixel centre -> unit shape coordinates (upright: no rotation).
    u = (np.arange(x0, x1)[None, :] + 0.5 - cx) / scale
    v = (np.arange(y0, y1)[:, None] + 0.5 - cy) / scale
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = _SHAPES[CLASS_NAMES[label]](u, v)
    if lo <= np.count_nonzero(mask) <= hi:
      return mask


def render_example(
    rng: np.random.Generator, image_size: int, *, ground: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
  """Renders one shape-on-ground example.

  Args:
    rng: the example's random generator; the output is a function of its state.
    image_size: S, the image side in pixels.
    ground: draw the tinted ground; with False the object is drawn on black from the same
      random draws, which is how tests check that the mask is exactly the object.

  Returns:
    image: (S, S, 3) uint8; the object's pixels all have one flat colour.
    mask: (S, S) uint8, 1 exactly on the object's pixels.
    label: int in [0, NUM_CLASSES), an index into CLASS_NAMES.
  """
  # The object is drawn from the generator first, so ground=False reproduces it exactly.
  label = int(rng.integers(NUM_CLASSES))
  mask = _object_mask(rng, label, image_size)
  colour = _vivid_colours(rng, np.array([rng.uniform()]))[0]
  image = np.zeros((image_size, image_size, 3), np.uint8)
  if ground:
    image = np.clip(np.round(_ground(rng, image_size)), 0, 255).astype(np.uint8)
  image[mask] = colour
  return image, mask.astype(np.uint8), label


@dataclasses.dataclass(kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
  """One parameter set of the dataset; its name encodes all of them (see `config_name`)."""

  image_size: int = 32
  num_train: int = 20_000
  num_test: int = 2_000
  seed: int = 0


# (num_train, num_test) per predefined size; 224 keeps fewer examples (0.55 GB on disk).
_DEFAULT_COUNTS = {32: (20_000, 2_000), 64: (20_000, 2_000), 224: (5_000, 1_000)}
_NAME_RE = re.compile(r"s(\d+)_train(\d+)_test(\d+)_seed(\d+)")


def config_name(image_size: int, num_train: int, num_test: int, seed: int) -> str:
  """"s32" for a size's default counts and seed 0, else e.g. "s32_train50_test20_seed3"."""
  if seed == 0 and _DEFAULT_COUNTS.get(image_size) == (num_train, num_test):
    return f"s{image_size}"
  return f"s{image_size}_train{num_train}_test{num_test}_seed{seed}"


def _make_config(image_size: int, num_train: int, num_test: int, seed: int) -> ShapesConfig:
  if not IMAGE_SIZE_RANGE[0] <= image_size <= IMAGE_SIZE_RANGE[1]:
    raise ValueError(f"image_size must be in {IMAGE_SIZE_RANGE}, got {image_size}")
  if num_train < 1 or num_test < 1 or seed < 0:
    raise ValueError(
        f"need num_train, num_test >= 1 and seed >= 0, got {num_train}, {num_test}, {seed}"
    )
  return ShapesConfig(
      name=config_name(image_size, num_train, num_test, seed),
      description=f"{image_size}px images, {num_train} train / {num_test} test, seed {seed}.",
      image_size=image_size,
      num_train=num_train,
      num_test=num_test,
      seed=seed,
  )


class SkipvitShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes on a dark ground, generated locally; registered with TFDS as "skipvit_shapes".

  Any config name that `config_name` can produce is accepted, so
  `tfds.builder("skipvit_shapes/s48_train100_test10_seed1", data_dir=...)` works, and
  every parameter set gets its own directory `data_dir/skipvit_shapes/<name>/<version>`.
  """

  # Bump whenever render_example's output changes: prepared data is cached by version.
  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.3.0": "A flat dark ground instead of a textured one: 10 points more top-1 in 4 epochs.",
      "1.2.0": "Upright shapes, no distractor blobs: learnable in CPU minutes.",
      "1.1.0": "Dark, low-contrast ground; smaller, fewer blobs.",
      "1.0.0": "First release.",
  }
  BUILDER_CONFIGS = [_make_config(size, *counts, 0) for size, counts in _DEFAULT_COUNTS.items()]
  DEFAULT_CONFIG_NAME = "s32"
  # TFDS looks for checksum files next to a builder's module; there are none here, and
  # the lookup needs the `importlib_resources` backport, which this project does not use.
  code_path = None

  @classmethod
  def get_builder_config(
      cls, name: str, version: str | tfds.core.Version | None = None
  ) -> tfds.core.BuilderConfig | None:
    if config := super().get_builder_config(name, version):
      return config
    if match := _NAME_RE.fullmatch(name):
      return _make_config(*(int(group) for group in match.groups()))
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict(
            {
                # Raw bytes: Encoding.NONE would store every uint8 as an int64.
                "image": tfds.features.Tensor(
                    shape=(size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                ),
                "mask": tfds.features.Tensor(
                    shape=(size, size), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                ),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }
        ),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train),
        "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for index in range(count):
      rng = np.random.default_rng((config.seed, SPLIT_STREAMS[split], index))
      image, mask, label = render_example(rng, config.image_size)
      yield index, {"image": image, "mask": mask, "label": label}


def prepare(
    data_dir: str,
    *,
    image_size: int = 32,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> SkipvitShapes:
  """Returns the prepared builder for one parameter set, generating it on first use.

  Generation is offline and writes array_record files under
  `data_dir/skipvit_shapes/<config_name(...)>/<VERSION>/`; when that directory exists
  this is a no-op. Read with `builder.as_data_source("train")` (no TensorFlow needed).

  Args:
    data_dir: TFDS data directory, the cache root.
    image_size: S, the image side in pixels, in IMAGE_SIZE_RANGE.
    num_train, num_test: split sizes; None takes the size's default (20k / 2k for 32 and
      64, 5k / 1k for 224, else 20k / 2k).
    seed: dataset seed; different seeds give independent datasets.
  """
  default_train, default_test = _DEFAULT_COUNTS.get(image_size, _DEFAULT_COUNTS[32])
  name = config_name(
      image_size,
      default_train if num_train is None else num_train,
      default_test if num_test is None else num_test,
      seed,
  )
  builder = SkipvitShapes(config=name, data_dir=data_dir, file_format="array_record")
  # Never look for a hosted copy on GCS (current TFDS has that lookup switched off; say so
  # explicitly so a future default cannot reach the network).
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return builder
