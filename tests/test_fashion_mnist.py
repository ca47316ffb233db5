"""Fashion-MNIST from idx files: the reader, the builder, the masks, and a short training run."""

import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest

from configs import fashion_mnist as fashion_mnist_config
from skipvit_jax.data import fashion_mnist, pipeline
from skipvit_jax.train import evaluate, loop

REAL_FILES = fashion_mnist.DEBIAN_DIR
HAVE_REAL_FILES = not fashion_mnist.missing_files(REAL_FILES)
needs_real_files = pytest.mark.skipif(
    not HAVE_REAL_FILES,
    reason=f"Fashion-MNIST is not installed in {REAL_FILES} (`{fashion_mnist.INSTALL_HINT}`)")


def _idx_bytes(array: np.ndarray) -> bytes:
  """An idx file written from the format's definition: 0, 0, type 0x08, ndim, sizes, data."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _write_source(directory, train: tuple, test: tuple, *, compress: bool = True) -> str:
  """Writes the four files of ((images, labels) train, (images, labels) test)."""
  os.makedirs(directory, exist_ok=True)
  for split, (images, labels) in (("train", train), ("test", test)):
    for stem, array in zip(fashion_mnist.FILES[split], (images, labels)):
      data = _idx_bytes(array)
      if compress:
        with gzip.open(os.path.join(directory, stem + ".gz"), "wb") as f:
          f.write(data)
      else:
        with open(os.path.join(directory, stem), "wb") as f:
          f.write(data)
  return str(directory)


def _garments(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels): a bright rectangle of random size and place on black, a faint rim."""
  rng = np.random.default_rng(seed)
  images = np.zeros((count, 28, 28), np.uint8)
  for image in images:
    top, left = rng.integers(0, 14, 2)
    h, w = rng.integers(6, 14, 2)
    image[top:top + h, left:left + w] = rng.integers(40, 256, (h, w))
    image[top + h, left:left + w] = 5  # below the mask threshold
  return images, rng.integers(0, 10, count).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The idx reader.


def test_parse_idx_reads_header_and_values():
  labels = np.array([3, 1, 4, 1, 5], np.uint8)
  np.testing.assert_array_equal(fashion_mnist.parse_idx(_idx_bytes(labels)), labels)
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  # Hand-written: magic 0x00000803, sizes 2, 3, 4 big-endian, then the 24 bytes.
  data = bytes.fromhex("00000803" "00000002" "00000003" "00000004") + bytes(range(24))
  assert data == _idx_bytes(images)
  parsed = fashion_mnist.parse_idx(data)
  assert parsed.shape == (2, 3, 4) and parsed.dtype == np.uint8
  np.testing.assert_array_equal(parsed, images)


@pytest.mark.parametrize("data,message", [
    (b"", "too short"),
    (bytes.fromhex("1f8b0803"), "not an idx file"),  # a gzip stream handed over undecoded
    (bytes.fromhex("00000d01") + b"\0\0\0\1" + b"\0" * 4, "type code 0x0d"),  # float32
    (bytes.fromhex("00000803") + b"\0\0\0\2", "truncated"),  # sizes cut short
    (bytes.fromhex("00000800"), "missing"),  # zero dimensions
    (_idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100], "truncated"),
    (_idx_bytes(np.zeros((4,), np.uint8)) + b"\0", "trailing bytes"),
])
def test_parse_idx_rejects_malformed_data(data, message):
  with pytest.raises(fashion_mnist.IdxFormatError, match=message):
    fashion_mnist.parse_idx(data, name="some-file")


def test_read_idx_names_a_damaged_gzip_file(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-30])
  with pytest.raises(fashion_mnist.IdxFormatError, match=str(path)):
    fashion_mnist.read_idx(str(path))


def test_read_split_checks_shapes_and_counts(tmp_path):
  images, labels = _garments(6, 0)
  source = _write_source(tmp_path / "bad_count", (images, labels[:5]), (images, labels))
  with pytest.raises(fashion_mnist.IdxFormatError, match="expected 6 labels"):
    fashion_mnist.read_split(source, "train")
  small = np.zeros((6, 27, 28), np.uint8)
  source = _write_source(tmp_path / "bad_shape", (small, labels), (images, labels))
  with pytest.raises(fashion_mnist.IdxFormatError, match=r"\(N, 28, 28\)"):
    fashion_mnist.read_split(source, "train")
  source = _write_source(tmp_path / "bad_label", (images, labels + 10), (images, labels))
  with pytest.raises(fashion_mnist.IdxFormatError, match="not one of the 10 classes"):
    fashion_mnist.read_split(source, "train")


# --------------------------------------------------------------------------------------------
# Masks and kept-object recall.


def test_object_mask_and_patch_overlap_on_a_hand_made_image():
  image = np.zeros((28, 28, 1), np.uint8)
  image[4:12, 8:10, 0] = 200  # a bar over patches (1, 2) and (2, 2) of the 7 x 7 grid (p=4)
  image[20, 20, 0] = fashion_mnist.MASK_THRESHOLD  # at the threshold: not object
  image[27, 0, 0] = fashion_mnist.MASK_THRESHOLD + 1  # just above it: object, patch (6, 0)
  mask = fashion_mnist.object_mask(image)
  assert mask.shape == (28, 28) and mask.dtype == np.uint8
  assert mask.sum() == 8 * 2 + 1 and mask[27, 0] == 1 and mask[20, 20] == 0
  on_object = np.asarray(evaluate.patch_overlap(mask[None], 4))[0]
  assert sorted(np.flatnonzero(on_object)) == [1 * 7 + 2, 2 * 7 + 2, 6 * 7 + 0]
  # Kept-object recall of a hand-picked keep set: two of the three object patches kept.
  kept = np.zeros(49, bool)
  kept[[1 * 7 + 2, 6 * 7 + 0, 0]] = True
  assert (kept & on_object).sum() / on_object.sum() == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# The builder and the data config.


def _data_config(data_dir, source_dir, **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": "fashion_mnist", "data_dir": str(data_dir),
                                    "source_dir": str(source_dir), "image_size": 28,
                                    **overrides})


@pytest.mark.parametrize("compress", [True, False])
def test_builder_prepares_a_tiny_idx_fixture_once(tmp_path, compress, monkeypatch):
  train, test = _garments(20, 1), _garments(8, 2)
  source = _write_source(tmp_path / "idx", train, test, compress=compress)
  sources = pipeline.load_sources(_data_config(tmp_path / "tfds", source))
  assert (sources.info.num_train, sources.info.num_eval, sources.info.num_classes) == (20, 8, 10)
  assert sources.info.has_object_masks and sources.info.fixed_size
  for split_source, (images, labels) in ((sources.train, train), (sources.eval, test)):
    for i in range(len(labels)):
      example = split_source[i]
      np.testing.assert_array_equal(example["image"][..., 0], images[i])
      np.testing.assert_array_equal(example["mask"], (images[i] > 10).astype(np.uint8))
      assert example["label"] == labels[i]
  # Prepared once: a second load reads the prepared files, not the idx files.
  monkeypatch.setattr(fashion_mnist, "read_split", None)
  assert pipeline.load_sources(_data_config(tmp_path / "tfds", source)).info.num_train == 20


def test_batches_are_three_channel_in_minus_one_to_one_with_masks(tmp_path):
  test_images, _ = _garments(8, 4)
  source = _write_source(tmp_path / "idx", _garments(16, 3), (test_images, _garments(8, 4)[1]))
  sources = pipeline.load_sources(_data_config(tmp_path / "tfds", source))
  batch = next(pipeline.eval_batches(sources.eval, sources.info, global_batch=8, image_size=28,
                                     num_threads=1))
  assert batch["image"].shape == (8, 28, 28, 3) and batch["mask"].shape == (8, 28, 28)
  for channel in range(3):  # grey in every channel, 0..255 to [-1, 1]: <= 2 roundings of |x| <= 1
    np.testing.assert_allclose(batch["image"][..., channel], test_images / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(batch["mask"], test_images > fashion_mnist.MASK_THRESHOLD)
  train = next(pipeline.train_batches(sources.train, sources.info, global_batch=8, image_size=28,
                                      seed=0, start_step=0, total_steps=1, num_threads=1))
  assert train["image"].shape == (8, 28, 28, 3) and "mask" not in train


def test_missing_files_name_the_package_and_the_field(tmp_path):
  source = _write_source(tmp_path / "idx", _garments(4, 0), _garments(4, 1))
  os.remove(os.path.join(source, "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(ValueError) as error:
    pipeline.load_sources(_data_config(tmp_path / "tfds", source))
  message = str(error.value)
  assert "apt-get install dataset-fashion-mnist" in message
  assert "config.data.source_dir" in message and "t10k-labels-idx1-ubyte.gz" in message


def test_a_damaged_file_gives_a_clear_error(tmp_path):
  source = _write_source(tmp_path / "idx", _garments(4, 0), _garments(4, 1))
  path = os.path.join(source, "train-images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x04" * 3 + b"\x00" * 10)  # 4x4x4, 10 bytes
  with pytest.raises(ValueError, match="damaged.*truncated"):
    pipeline.load_sources(_data_config(tmp_path / "tfds", source))


def test_other_image_sizes_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="config.data.image_size.*28 px"):
    pipeline.load_sources(_data_config(tmp_path, tmp_path, image_size=32))


@needs_real_files
@pytest.mark.slow
def test_the_builder_prepares_the_real_files(tmp_path):
  images, labels = fashion_mnist.read_split(REAL_FILES, "test")
  assert images.shape == (10_000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
  assert 0.4 < fashion_mnist.object_mask(images).mean() < 0.55  # garments cover about half
  sources = pipeline.load_sources(_data_config(tmp_path, REAL_FILES))
  assert (sources.info.num_train, sources.info.num_eval) == (60_000, 10_000)
  for i in (0, 1234, 9999):
    np.testing.assert_array_equal(sources.eval[i]["image"][..., 0], images[i])
    assert sources.eval[i]["label"] == labels[i]
  assert np.bincount([sources.train[i]["label"] for i in range(0, 60_000, 60)],
                     minlength=10).min() > 70  # every class in the train split


@needs_real_files
@pytest.mark.slow
def test_a_short_training_run_learns_the_real_images(tmp_path):
  # configs/fashion_mnist.py's 6-55-11 row shrunk to 200 steps of batch 64 on 7 px patches
  # (16 patches): about a minute on 2 cores, against 6 epochs of 4 px patches for the recipe.
  config = fashion_mnist_config.get_config("row=6-55-11,warmup=0.05")
  config.data.data_dir = str(tmp_path / "tfds")
  config.model.variant = "Te/7"
  config.batch_size = 64
  config.num_train_steps = 200
  config.optimizer.warmup_epochs = 0.05
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.step == 200
  metrics = result.eval_metrics
  assert metrics["eval/num_examples"] == 10_000  # the whole test split
  assert metrics["eval/top1"] > 0.5  # chance: 0.1
  assert metrics["eval/keep_ratio_0"] == 0.5  # floor(0.55 * 16) = 8 of 16 patches dropped
  assert 0.0 < metrics["eval/kept_object_recall_0"] <= 1.0
