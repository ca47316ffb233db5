"""skipvit_jax.data.synthetic: the renderer, patch overlap, and the offline TFDS builder."""

import hashlib
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from skipvit_jax.data import synthetic
from skipvit_jax.train import evaluate

# Tiny splits keep each TFDS preparation under a second.
NUM_TRAIN, NUM_TEST, SEED = 50, 20, 3


def _render(seed: int, index: int, size: int, **kwargs):
  return synthetic.render_example(np.random.default_rng((seed, 0, index)), size, **kwargs)


def _digest(example: dict) -> bytes:
  """A hash of one decoded example, for comparing sets of examples across orders."""
  h = hashlib.sha256()
  for key in ("image", "mask", "label"):
    h.update(np.ascontiguousarray(example[key]).tobytes())
  return h.digest()


def test_classes_are_named_and_counted():
  assert 6 <= synthetic.NUM_CLASSES <= 10
  assert synthetic.NUM_CLASSES == len(set(synthetic.CLASS_NAMES))


@pytest.mark.parametrize("size", [32, 48, 224])
def test_render_example_shapes_dtypes_and_determinism(size):
  image, mask, label = _render(0, 7, size)
  assert image.shape == (size, size, 3) and image.dtype == np.uint8
  assert mask.shape == (size, size) and mask.dtype == np.uint8
  assert set(np.unique(mask)) == {0, 1}
  assert isinstance(label, int) and 0 <= label < synthetic.NUM_CLASSES
  again = _render(0, 7, size)
  np.testing.assert_array_equal(image, again[0])
  np.testing.assert_array_equal(mask, again[1])
  assert label == again[2]


@pytest.mark.parametrize("size", [32, 64])
def test_mask_is_exactly_the_flat_coloured_object(size):
  for index in range(60):
    image, mask, label = _render(1, index, size)
    alone, alone_mask, alone_label = _render(1, index, size, ground=False)
    on = mask.astype(bool)
    # The same draws without the ground give the same object, and nothing but the object.
    assert alone_label == label
    np.testing.assert_array_equal(alone_mask, mask)
    np.testing.assert_array_equal(alone.any(axis=-1), on)
    np.testing.assert_array_equal(image[on], alone[on])
    # One flat colour under the mask.
    assert len(np.unique(image[on], axis=0)) == 1


@pytest.mark.parametrize("size", [32, 64])
def test_object_area_is_a_minority_within_bounds(size):
  lo, hi = synthetic.AREA_FRACTION
  assert 0 < lo < hi <= 0.25
  labels = set()
  for index in range(200):
    _, mask, label = _render(2, index, size)
    assert lo <= mask.mean() <= hi
    labels.add(label)
  assert labels == set(range(synthetic.NUM_CLASSES))


def test_colour_and_area_do_not_reveal_the_class():
  # Held-out nearest-class-mean accuracy on the object's colour (or area) stays near
  # chance, and per-class mean colours sit close to the overall mean.
  examples = [_render(4, index, 32) for index in range(1600)]
  labels = np.array([label for _, _, label in examples])
  colour = np.array([image[mask == 1].mean(axis=0) for image, mask, _ in examples])  # (N, 3)
  area = np.array([[mask.mean()] for _, mask, _ in examples])  # (N, 1)
  train = np.arange(len(examples)) < len(examples) // 2
  chance = 1.0 / synthetic.NUM_CLASSES
  for feature in (colour, area):
    centroids = np.stack(
        [feature[train & (labels == c)].mean(axis=0) for c in range(synthetic.NUM_CLASSES)]
    )
    distance = ((feature[~train, None] - centroids) ** 2).sum(axis=-1)
    accuracy = np.mean(distance.argmin(axis=-1) == labels[~train])
    assert accuracy < chance + 0.06, accuracy
  class_means = np.stack(
      [colour[labels == c].mean(axis=0) for c in range(synthetic.NUM_CLASSES)]
  )
  assert np.abs(class_means - colour.mean(axis=0)).max() < 20.0  # of a 0..255 range


def test_patch_object_overlap_on_a_hand_made_mask():
  mask = np.zeros((8, 8), np.uint8)
  mask[1, 6] = 1  # patch row 0, column 1
  mask[5:7, 0:2] = 1  # patch row 1, column 0
  expected = np.array([False, True, True, False])
  np.testing.assert_array_equal(evaluate.patch_overlap(mask, 4), expected)
  np.testing.assert_array_equal(evaluate.patch_overlap(jnp.asarray(mask), 4), expected)
  batch = np.stack([mask, np.zeros_like(mask), np.ones_like(mask)])  # (3, 8, 8)
  np.testing.assert_array_equal(
      evaluate.patch_overlap(batch, 4), [expected, [False] * 4, [True] * 4]
  )
  np.testing.assert_array_equal(evaluate.patch_overlap(mask, 1), mask.reshape(-1) == 1)
  with pytest.raises(ValueError, match="divisible"):
    evaluate.patch_overlap(mask, 3)


def test_patch_object_overlap_covers_the_rendered_object():
  _, mask, _ = _render(5, 0, 32)
  overlap = evaluate.patch_overlap(mask, 4)  # (64,)
  covered = np.kron(overlap.reshape(8, 8), np.ones((4, 4), bool))  # (32, 32)
  assert overlap.any() and not overlap.all()
  assert not (mask.astype(bool) & ~covered).any()


def test_config_names_round_trip():
  assert synthetic.config_name(32, 20_000, 2_000, 0) == "s32"
  name = synthetic.config_name(48, NUM_TRAIN, NUM_TEST, SEED)
  assert name == "s48_train50_test20_seed3"
  config = synthetic.SkipvitShapes.get_builder_config(name)
  assert (config.image_size, config.num_train, config.num_test, config.seed) == (48, 50, 20, 3)
  assert synthetic.SkipvitShapes.get_builder_config("s48") is None
  with pytest.raises(ValueError, match="image_size"):
    synthetic.prepare("/nonexistent", image_size=16)


@pytest.fixture(scope="module")
def prepared_twice(tmp_path_factory):
  """The same parameters prepared into two data dirs, with the network switched off."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access in an offline test")

  with pytest.MonkeyPatch.context() as patch:
    for target in (socket, socket.socket):
      for name in ("create_connection", "getaddrinfo", "connect", "connect_ex"):
        if hasattr(target, name):
          patch.setattr(target, name, refuse)
    with pytest.raises(OSError, match="offline"):  # the guard itself works
      socket.create_connection(("localhost", 80))
    attempts.clear()
    builders = [
        synthetic.prepare(
            str(tmp_path_factory.mktemp(f"tfds{i}")),
            image_size=48,
            num_train=NUM_TRAIN,
            num_test=NUM_TEST,
            seed=SEED,
        )
        for i in range(2)
    ]
  return builders, attempts


def test_prepare_is_offline_and_readable(prepared_twice):
  builders, attempts = prepared_twice
  assert attempts == []
  builder = builders[0]
  version = synthetic.SkipvitShapes.VERSION
  assert builder.info.full_name == f"skipvit_shapes/s48_train50_test20_seed3/{version}"
  train, test = builder.as_data_source("train"), builder.as_data_source("test")
  assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST)
  example = train[0]
  assert example["image"].shape == (48, 48, 3) and example["image"].dtype == np.uint8
  assert example["mask"].shape == (48, 48) and example["mask"].dtype == np.uint8
  assert builder.info.features["label"].names == list(synthetic.CLASS_NAMES)


def test_prepare_is_deterministic_and_matches_the_renderer(prepared_twice):
  builders, _ = prepared_twice
  for split, stream, count in (("train", 0, NUM_TRAIN), ("test", 1, NUM_TEST)):
    first, second = (b.as_data_source(split) for b in builders)
    for index in range(count):
      a, b = first[index], second[index]
      for key in ("image", "mask", "label"):
        np.testing.assert_array_equal(a[key], b[key])
    # Order aside, the split holds exactly examples 0..count-1 of its random stream.
    rendered = set()
    for i in range(count):
      image, mask, label = synthetic.render_example(np.random.default_rng((SEED, stream, i)), 48)
      rendered.add(_digest({"image": image, "mask": mask, "label": label}))
    assert {_digest(first[i]) for i in range(count)} == rendered


def test_train_and_test_do_not_overlap(prepared_twice):
  builder = prepared_twice[0][0]
  train, test = builder.as_data_source("train"), builder.as_data_source("test")
  train_images = {train[i]["image"].tobytes() for i in range(len(train))}
  assert not any(test[i]["image"].tobytes() in train_images for i in range(len(test)))


def test_prepare_reuses_an_existing_dataset(prepared_twice, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("regenerated an already prepared dataset")

  monkeypatch.setattr(synthetic, "render_example", fail)
  builder = prepared_twice[0][0]
  again = synthetic.prepare(
      builder.data_dir_root, image_size=48, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=SEED
  )
  assert again.data_dir == builder.data_dir


def test_data_package_imports_without_the_data_stack():
  code = "import sys, skipvit_jax.data; assert 'tensorflow_datasets' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
