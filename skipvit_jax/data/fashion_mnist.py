"""Fashion-MNIST from its four original idx files, offline, as a TFDS array_record dataset.

Fashion-MNIST (Zalando, MIT licence): 70,000 real 28 x 28 grayscale photographs of clothing,
10 classes, 60,000 train / 10,000 test. Debian packages the original files:

  apt-get install dataset-fashion-mnist     # -> /usr/share/datasets/fashion-mnist/

`prepare(data_dir, source_dir)` reads `train-images-idx3-ubyte.gz` and its three siblings
(gzip or not) once into `data_dir/skipvit_fashion_mnist/<version>/` (array_record, read with
`builder.as_data_source(split)`); neither step needs TensorFlow or the network. Each example
holds the image (28, 28, 1) uint8, its label, and an object mask: the pixels brighter than
`MASK_THRESHOLD`. The garments sit on an exactly black ground, so the mask is the garment's
silhouette, and kept-object recall (the fraction of the patches touching the garment that a
drop layer keeps) is measured on real images as on the synthetic ones.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot")
IMAGE_SIZE = 28
NUM_TRAIN = 60_000  # the published split sizes; the trainer plans its run with them
# Object pixels: brighter than 10 of 255. The pixels at 1..10 are the faint anti-aliased rim
# of a garment, whose patches the brighter pixels next to it already mark (docs/datasets.md
# gives the shares of each).
MASK_THRESHOLD = 10
# Split -> (images file, labels file), the names the dataset's authors publish.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08  # the idx format's type code for unsigned bytes


class IdxFormatError(ValueError):
  """An idx file that is truncated, malformed, or not of the expected kind."""


def parse_idx(data: bytes, *, name: str = "idx data") -> np.ndarray:
  """The array an idx file holds (http://yann.lecun.com/exdb/mnist/, "file formats").

  Layout: two zero bytes, a type code (0x08 = uint8, the only one Fashion-MNIST uses), the
  number of dimensions d, then d big-endian uint32 sizes, then the values in row-major order.

  Args:
    data: the file's bytes, already decompressed.
    name: what to call the data in error messages (its path).

  Returns:
    uint8 array of the stored shape. Raises IdxFormatError on any inconsistency.
  """
  if len(data) < 4:
    raise IdxFormatError(f"{name}: {len(data)} bytes, too short for an idx header")
  if data[0] != 0 or data[1] != 0:
    raise IdxFormatError(
        f"{name}: not an idx file (magic number {data[:4].hex()}; an idx file starts with two "
        "zero bytes)")
  if data[2] != _UBYTE:
    raise IdxFormatError(f"{name}: idx type code {data[2]:#04x}; only unsigned bytes (0x08) "
                         "are supported")
  ndim = data[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(data) < header:
    raise IdxFormatError(f"{name}: header of {ndim} dimensions is missing or truncated")
  shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
  expected = header + int(np.prod(shape))
  if len(data) != expected:
    raise IdxFormatError(
        f"{name}: holds {len(data)} bytes, but its header declares shape {shape}, which "
        f"needs {expected} ({'truncated' if len(data) < expected else 'trailing bytes'})")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _source_path(source_dir: str, stem: str) -> str | None:
  for path in (os.path.join(source_dir, stem + ".gz"), os.path.join(source_dir, stem)):
    if os.path.isfile(path):
      return path
  return None


def missing_files(source_dir: str) -> list[str]:
  """The idx files (by their published names, .gz) that `source_dir` lacks."""
  return [stem + ".gz" for pair in FILES.values() for stem in pair
          if _source_path(source_dir, stem) is None]


def read_idx(path: str) -> np.ndarray:
  """An idx file from disk, gzip-compressed (by its .gz name) or not."""
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except (OSError, EOFError) as e:  # a damaged gzip stream: BadGzipFile, EOFError
    raise IdxFormatError(f"{path}: cannot be read as {'gzip' if path.endswith('.gz') else 'a file'}"
                         f" ({e})") from None
  return parse_idx(data, name=path)


def read_split(source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,) uint8) of "train" or "test"."""
  images_stem, labels_stem = FILES[split]
  images_path, labels_path = (_source_path(source_dir, stem) for stem in (images_stem, labels_stem))
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise IdxFormatError(f"{images_path}: expected images of shape (N, 28, 28), got "
                         f"{images.shape}")
  if labels.ndim != 1 or len(labels) != len(images):
    raise IdxFormatError(f"{labels_path}: expected {len(images)} labels (one per image in "
                         f"{images_path}), got shape {labels.shape}")
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise IdxFormatError(f"{labels_path}: label {labels.max()} is not one of the "
                         f"{len(CLASS_NAMES)} classes")
  return images, labels


def object_mask(image: np.ndarray) -> np.ndarray:
  """image: (..., H, W[, 1]) uint8 -> (..., H, W) uint8, 1 where brighter than MASK_THRESHOLD."""
  if image.shape[-1] == 1:
    image = image[..., 0]
  return (image > MASK_THRESHOLD).astype(np.uint8)


class SkipvitFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local idx files; registered with TFDS as "skipvit_fashion_mnist"
  (TFDS's own "fashion_mnist" downloads).

  The constructor takes `source_dir`, where the four idx files are; it is read only when the
  dataset is generated.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the original idx files; object masks at > 10 / 255."}
  # As the synthetic builder: no checksum files beside this module.
  code_path = None

  def __init__(self, *, source_dir: str = DEBIAN_DIR, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = IMAGE_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.ZLIB),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        # Example i of a split is image i of its idx file, as everyone else numbers them.
        disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # nothing is downloaded
    return {split: self._generate_examples(*read_split(self._source_dir, split))
            for split in FILES}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray
                         ) -> Iterator[tuple[int, dict]]:
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "mask": object_mask(image), "label": int(label)}


def prepare(data_dir: str, source_dir: str = DEBIAN_DIR) -> SkipvitFashionMnist:
  """The prepared builder, generated from `source_dir`'s idx files on first use.

  Raises FileNotFoundError naming the missing files when the dataset is not prepared yet and
  `source_dir` lacks any of them, and IdxFormatError when one is damaged.
  """
  builder = SkipvitFashionMnist(source_dir=source_dir, data_dir=data_dir,
                                file_format="array_record")
  if not builder.is_prepared():
    missing = missing_files(source_dir)
    if missing:
      raise FileNotFoundError(
          f"Fashion-MNIST: {source_dir} lacks {', '.join(missing)}. Install the files with "
          f"`{INSTALL_HINT}` (they go to {DEBIAN_DIR}), or point config.data.source_dir at a "
          "directory holding the four original idx files.")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
