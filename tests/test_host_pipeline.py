"""The host's part of the input pipeline: decoding, the random-resized crop and its resize, and
the uint8 crops it hands the device when the augmentation runs there (Augmentation.on_device)."""

import io
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import common
from skipvit_jax.data import pipeline, transforms

SIZE = 64
MEAN, STD = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """(height, width, 3) uint8 with a photo's mix: smooth colour, hard edges and fine texture
  (which a resize that does not antialias turns into aliasing)."""
  coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
  image[height // 3:, : width // 2] //= 2  # a hard edge
  image += rng.integers(-40, 41, (height, width, 1), dtype=np.int16)  # grain
  return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, mode: str = "RGB", quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def _old_crop_box(rng: np.random.Generator, height: int, width: int,
                  scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """The draws of the crop as the float pipeline made them (torchvision's algorithm), which a
  run's (seed, step, slot) must keep mapping to the same box."""
  area = height * width
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _pil_crop(image: np.ndarray, box, size: int) -> np.ndarray:
  """The float pipeline's crop and resize: PIL's antialiased bicubic of the cropped pixels."""
  top, left, h, w = box
  return np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize(
      (size, size), Image.BICUBIC))


@pytest.mark.parametrize("shape", [(75, 100), (100, 75), (30, 200), (200, 30), (50, 50)])
def test_the_crop_box_draws_are_the_float_pipelines(shape):
  # (30, 200) and (200, 30) fall back to the centre crop for some seeds.
  for seed in range(200):
    new, old = np.random.default_rng(seed), np.random.default_rng(seed)
    assert transforms.random_resized_crop_box(new, *shape) == _old_crop_box(old, *shape)
    assert new.random() == old.random()  # the draws after the crop (the flip) are unchanged


def test_the_device_paths_crop_is_the_float_pipelines_crop():
  """normalize(the on-device uint8 crop) against the float pipeline's output without
  augmentation (its crop, flipped where its draw said so), for the same (seed, step, slot).

  Tolerance: 2 levels of 255 on average (about 1.2 on this grainy photo) and 99.9% of values
  within 12. The box is the same; only the resize differs: OpenCV's prefilter and INTER_CUBIC
  (a = -0.75) against PIL's stretched bicubic (a = -0.5), and the prefiltered image rounded to
  uint8. Both average over the pixels an output pixel covers, so the photo's fine grain does
  not alias (test_the_resize_antialiases_as_pils_does checks that alone)."""
  rng = np.random.default_rng(0)
  photos = [_photo(rng, *shape) for shape in [(75, 100), (100, 75), (120, 160), (48, 64)] * 3]
  source = [{"image": _jpeg(p), "label": i} for i, p in enumerate(photos)]
  info = pipeline.DatasetInfo("photos", 12, len(source), 0, has_object_masks=False)
  errors = []
  for slot, example in enumerate(source):
    seed = [7, 3, slot]  # (seed, step, slot), as train_batches seeds each example
    device = pipeline._preprocess(example, np.random.default_rng(seed), info, image_size=SIZE,
                                  augmentation=pipeline.Augmentation(on_device=True))
    host = pipeline._preprocess(example, np.random.default_rng(seed), info, image_size=SIZE)
    assert device["image"].dtype == np.uint8 and device["image"].shape == (SIZE, SIZE, 3)
    assert device["label"] == host["label"] == slot
    replay = np.random.default_rng(seed)
    decoded = np.asarray(Image.open(io.BytesIO(example["image"])).convert("RGB"))
    box = _old_crop_box(replay, *decoded.shape[:2])
    flip = replay.random() < 0.5
    before = transforms.normalize(_pil_crop(decoded, box, SIZE), MEAN, STD)
    if flip:
      before = before[:, ::-1]
    np.testing.assert_array_equal(  # the host path is the device path's crop, flipped, normalised
        host["image"], transforms.normalize(device["image"][:, ::-1] if flip else device["image"],
                                            MEAN, STD))
    errors.append(np.abs(transforms.normalize(device["image"][:, ::-1] if flip
                                              else device["image"], MEAN, STD) - before) * STD)
  errors = np.stack(errors)
  assert errors.mean() < 2 and np.percentile(errors, 99.9) <= 12, (
      errors.mean(), np.percentile(errors, 99.9))


def test_the_resize_antialiases_as_pils_does():
  """One-pixel stripes downscaled 2.3x: PIL's bicubic averages them to an even grey; so must
  transforms.resize, where a plain 4-tap bicubic samples them into a moire."""
  stripes = np.zeros((230, 230, 3), np.uint8)
  stripes[:, ::2] = 255
  ours = transforms.resize(stripes, 100, 100).astype(np.float64)
  pil = np.asarray(Image.fromarray(stripes).resize((100, 100), Image.BICUBIC), np.float64)
  inner = (slice(4, -4), slice(4, -4))  # the edge columns see the stripes' replicated border
  assert pil[inner].std() < 4
  assert ours[inner].std() < 4 and abs(ours[inner].mean() - pil[inner].mean()) < 2


def test_the_decoder_gives_pils_pixels():
  """transforms.decode against PIL's decode: the same libjpeg-turbo with its accurate integer
  IDCT and smooth chroma upsampling in both, so equal here; 1 level of tolerance leaves room
  for the two wheels' library versions to round their SIMD colour conversion differently.
  Grey JPEGs come out as three equal channels; CMYK JPEGs and PNGs are decoded by PIL."""
  rng = np.random.default_rng(1)
  photo = _photo(rng, 45, 70)
  for data in [_jpeg(photo), _jpeg(photo, quality=75), _jpeg(photo, "L"), _jpeg(photo, "CMYK")]:
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
    decoded = transforms.decode(data)
    assert decoded.dtype == np.uint8 and decoded.shape == (45, 70, 3)
    assert transforms.image_shape(data) == (45, 70)
    assert np.abs(decoded - expected).max() <= 1
  png = io.BytesIO()
  Image.fromarray(photo).save(png, format="PNG")
  np.testing.assert_array_equal(transforms.decode(png.getvalue()), photo)
  assert transforms.image_shape(png.getvalue()) == (45, 70)


@pytest.mark.parametrize("stored", ["jpeg", "array"])
def test_imagenet_style_examples_reach_the_device_as_uint8_crops(stored):
  rng = np.random.default_rng(2)
  photos = [_photo(rng, 60, 80) for _ in range(8)]
  source = [{"image": _jpeg(p) if stored == "jpeg" else p, "label": i}
            for i, p in enumerate(photos)]
  info = pipeline.DatasetInfo("photos", 8, len(source), 0, has_object_masks=False)
  augmentation = pipeline.Augmentation("rand-m9-mstd0.5-inc1", random_erase=0.25,
                                       on_device=True)
  batch = next(pipeline.train_batches(
      source, info, global_batch=4, image_size=SIZE, seed=0, start_step=0, total_steps=1,
      num_threads=2, augmentation=augmentation))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, SIZE, SIZE, 3)
  assert batch["label"].dtype == np.int32


@pytest.mark.parametrize("channels", [1, 3])
def test_fixed_size_examples_reach_the_device_unchanged(channels):
  """The synthetic data and Fashion-MNIST are stored at the training size: the host neither
  crops nor flips them; grey is copied to three channels."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)
  info = pipeline.DatasetInfo("stored", 10, 1, 1, has_object_masks=False, fixed_size=True)
  out = pipeline._preprocess(
      {"image": image, "label": 4}, np.random.default_rng(0), info, image_size=SIZE,
      augmentation=pipeline.Augmentation(random_translate=4, on_device=True))
  assert out["image"].dtype == np.uint8 and out["label"].dtype == np.int32
  np.testing.assert_array_equal(out["image"], np.broadcast_to(image, (SIZE, SIZE, 3)))


class SkipvitEncodedPhotos(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset whose images are a tfds.features.Image (JPEG), as ImageNet's are."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # no checksum files beside this module

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

  def _generate_examples(self, count: int):
    rng = np.random.default_rng(count)
    for i in range(count):  # encoded bytes: TFDS would need TensorFlow to encode an array
      yield i, {"image": io.BytesIO(_jpeg(_photo(rng, 40 + i, 50))), "label": i % 3}


def test_a_tfds_image_feature_is_read_encoded_and_decoded_by_the_loader(tmp_path):
  builder = SkipvitEncodedPhotos(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = common.base_config().data
  config.update({"name": builder.name, "data_dir": str(tmp_path), "image_size": SIZE,
                 "train_split": "train", "eval_split": "test"})
  sources = pipeline.load_sources(config)
  example = sources.train[1]
  assert isinstance(example["image"], bytes)
  assert transforms.decode(example["image"]).shape[1:] == (50, 3)
  evaluation = next(pipeline.eval_batches(sources.eval, sources.info, global_batch=2,
                                          image_size=SIZE, num_threads=1))
  assert evaluation["image"].shape == (2, SIZE, SIZE, 3)
  assert evaluation["image"].dtype == np.float32
