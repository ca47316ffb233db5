"""Small splits held in memory: the same examples as their data source, read-only, size-capped."""

import numpy as np
import pytest

from skipvit_jax.data import fashion_mnist, in_memory, pipeline
from tests.test_fashion_mnist import _data_config, _garments, _write_source


class _ListSource:
  """A random-access source with [i] only (no batch read), like a user's own."""

  def __init__(self, examples):
    self._examples = examples

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


def _examples(count: int) -> list[dict]:
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (4, 4, 1), dtype=np.uint8), "label": int(i % 7)}
          for i in range(count)]


def test_every_example_reads_back_equal_across_read_chunks():
  examples = _examples(in_memory._READ_CHUNK + 5)  # a second, partial chunk
  source = in_memory.load(_ListSource(examples))
  assert isinstance(source, in_memory.InMemorySource) and len(source) == len(examples)
  for i in (0, 1, in_memory._READ_CHUNK - 1, in_memory._READ_CHUNK, len(examples) - 1):
    np.testing.assert_array_equal(source[i]["image"], examples[i]["image"])
    assert source[i]["image"].dtype == np.uint8 and source[i]["label"] == examples[i]["label"]
  assert source.nbytes == len(examples) * (16 + 8)


class _CountingSource(_ListSource):
  reads = 0

  def __getitem__(self, index):
    self.reads += 1
    return super().__getitem__(index)


def test_the_split_is_read_on_first_access_only():
  source = _CountingSource(_examples(10))
  held = in_memory.load(source)
  assert source.reads == 1 and len(held) == 10  # the size check's one example
  held[3], held[7]
  assert source.reads == 11  # then the whole split, once


def test_examples_are_read_only():
  source = in_memory.load(_ListSource(_examples(3)))
  with pytest.raises(ValueError, match="read-only"):
    source[1]["image"][0, 0, 0] = 7


def test_a_split_over_the_byte_limit_stays_on_disk():
  big = _ListSource(_examples(10))
  assert in_memory.load(big, max_bytes=10 * 24 - 1) is big
  assert isinstance(in_memory.load(big, max_bytes=10 * 24), in_memory.InMemorySource)
  empty = _ListSource([])
  assert in_memory.load(empty) is empty


def test_fashion_mnist_splits_are_in_memory_and_equal_the_data_source(tmp_path):
  source_dir = _write_source(tmp_path / "idx", _garments(20, 1), _garments(8, 2))
  sources = pipeline.load_sources(_data_config(tmp_path / "tfds", source_dir))
  on_disk = fashion_mnist.prepare(str(tmp_path / "tfds"), source_dir).as_data_source()
  for split, held in (("train", sources.train), ("test", sources.eval)):
    assert isinstance(held, in_memory.InMemorySource)
    for i in range(len(on_disk[split])):
      expected, got = on_disk[split][i], held[i]
      assert expected.keys() == got.keys()
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
        assert np.asarray(got[key]).dtype.kind == np.asarray(expected[key]).dtype.kind


def test_config_can_keep_the_splits_on_disk(tmp_path):
  source_dir = _write_source(tmp_path / "idx", _garments(20, 1), _garments(8, 2))
  sources = pipeline.load_sources(_data_config(tmp_path / "tfds", source_dir, in_memory=False))
  assert not isinstance(sources.train, in_memory.InMemorySource)
  assert not isinstance(sources.eval, in_memory.InMemorySource)
  assert len(sources.train) == 20 and sources.train[3]["label"] == _garments(20, 1)[1][3]


@pytest.mark.parametrize("augmentation", [
    pipeline.Augmentation(random_translate=2), pipeline.Augmentation(on_device=True)])
@pytest.mark.parametrize("hosts", [1, 2])
def test_batches_read_as_one_equal_the_per_example_path(augmentation, hosts):
  """A split in memory is read a batch at a time (no per-example Python but the flip's and
  shift's draws); the batches equal the per-example path's, on every host, from any step."""
  examples = [dict(e, image=np.repeat(e["image"], 2, axis=0)) for e in _examples(40)]  # (8, 4, 1)
  info = pipeline.DatasetInfo("list", 7, 40, 0, has_object_masks=False, fixed_size=True)
  kwargs = dict(global_batch=8, image_size=4, seed=3, start_step=2, total_steps=9,
                process_count=hosts, num_threads=2, augmentation=augmentation, repeats=2)
  for host in range(hosts):
    per_example = list(pipeline.train_batches(_ListSource(examples), info, process_index=host,
                                              **kwargs))
    batched = list(pipeline.train_batches(in_memory.InMemorySource(_ListSource(examples)), info,
                                          process_index=host, **kwargs))
    assert len(batched) == len(per_example) == 7
    for ours, theirs in zip(batched, per_example):
      assert ours.keys() == theirs.keys()
      for key in ours:
        assert ours[key].dtype == theirs[key].dtype
        np.testing.assert_array_equal(ours[key], theirs[key])
