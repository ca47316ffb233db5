"""A tiny dataset in ImageNet's TFDS format, built locally: JPEG-encoded photos of varying size
and aspect, a ClassLabel, "train" and "validation" splits, array_record files.

Registered with TFDS as "imagenet_like" when imported, so a config names it as it would name
"imagenet2012" (`config.data.name`), and the trainer reads it through the same code path.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_CLASSES = 10
SPLITS = {"train": 64, "validation": 20}


class ImagenetLike(tfds.core.GeneratorBasedBuilder):
  """Smooth random colour fields stored as JPEG, sides 40-80 px; the label is random."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # no checksum files next to this module (see data/synthetic.py)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, count) for split, count in SPLITS.items()}

  def _generate_examples(self, split: str, count: int):
    rng = np.random.default_rng(list(SPLITS).index(split))
    for index in range(count):
      width, height = (int(side) for side in rng.integers(40, 81, size=2))
      coarse = rng.integers(0, 256, (3, 4, 3), np.uint8)
      image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
      encoded = io.BytesIO()
      image.save(encoded, format="JPEG", quality=90)  # TFDS encodes arrays only with TensorFlow
      yield index, {"image": encoded.getvalue(), "label": int(rng.integers(NUM_CLASSES))}


def prepare(data_dir: str) -> ImagenetLike:
  """Builds the dataset under data_dir (once) and returns its builder."""
  builder = ImagenetLike(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
