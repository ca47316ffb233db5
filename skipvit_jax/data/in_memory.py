"""A small dataset split held in memory as arrays, read once from its data source.

Reading one example from a TFDS array_record data source is Python work (record read,
protobuf parse, feature decode), most of it holding Python's lock. With a small model, whose
training step is short, the loader threads' share of every step competes with the thread that
dispatches the steps, on the same cores. The project's own datasets (the synthetic one,
Fashion-MNIST) are small, so their splits are read once, on first access, in batches, into one
array per feature; `source[i]` is then an array index and returns the values the data source
would have, so training and evaluation see exactly the same data. What it saves, and what the
arrays take: BENCHMARKS.md, "Fashion-MNIST held in memory or read record by record".
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

# A split larger than this stays on disk, read example by example (a synthetic dataset
# generated at ImageNet's resolution can run to tens of GiB).
MAX_BYTES = 2 * 2**30
_READ_CHUNK = 4096  # examples decoded per read: bounds the list of dicts held while stacking


class InMemorySource:
  """Random access over a split read, on first access, into one stacked array per feature:
  len() and [i] -> dict. Opening a dataset only for its info or a few eval examples (notebooks,
  inspect_run) therefore reads nothing; the first loader thread to ask reads the split."""

  def __init__(self, source):
    self._source = source
    self._length = len(source)
    self._features: dict[str, np.ndarray] | None = None
    self._lock = threading.Lock()  # grain's loader threads ask at once

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {k: v[index] for k, v in self._arrays().items()}

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    """One read-only array per feature, examples along the first axis."""
    return self._arrays()

  @property
  def nbytes(self) -> int:
    return sum(v.nbytes for v in self._arrays().values())

  def _arrays(self) -> dict[str, np.ndarray]:
    if self._features is None:
      with self._lock:
        if self._features is None:
          self._features = _read_all(self._source)
    return self._features


def _example_bytes(source) -> int:
  """The decoded size of one example of `source`, in bytes."""
  return sum(np.asarray(v).nbytes for v in source[0].values())


def load(source, max_bytes: int = MAX_BYTES):
  """`source` as an InMemorySource, or `source` itself when it would take more than
  `max_bytes` (judged by its first example) or is empty."""
  if len(source) == 0 or _example_bytes(source) * len(source) > max_bytes:
    return source
  return InMemorySource(source)


def _read_all(source) -> dict[str, np.ndarray]:
  """Every example of `source`, one read-only array per feature."""
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(source), _READ_CHUNK):
    examples = _read(source, range(start, min(start + _READ_CHUNK, len(source))))
    for key in examples[0]:
      chunks.setdefault(key, []).append(np.stack([np.asarray(e[key]) for e in examples]))
  features = {k: np.concatenate(v) for k, v in chunks.items()}
  for array in features.values():
    array.setflags(write=False)  # examples are views: an in-place transform must fail loudly
  return features


def _read(source, indices: range) -> list[dict]:
  # TFDS data sources read a batch in one call, cheaper per example than one by one.
  if hasattr(source, "__getitems__"):
    return source.__getitems__(list(indices))
  return [source[i] for i in indices]
