"""A run's metrics: `WORKDIR/metrics.jsonl` (one JSON record per write: "step" and the metrics
of that step) and TensorBoard event files (written by tensorboardX: no TensorFlow needed).
Only process 0 writes. `read_metrics` is the one reader of the file."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax

METRICS_FILE = "metrics.jsonl"


def metrics_path(workdir: str | os.PathLike) -> str:
  return os.path.join(workdir, METRICS_FILE)


def read_metrics(workdir: str | os.PathLike, *, missing_ok: bool = False) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl in the order they were written (a resumed run's
  repeated steps included), non-finite values as floats again. With `missing_ok`, a workdir
  without the file (a run that never started) has no records."""
  path = metrics_path(workdir)
  if missing_ok and not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [{name: float(value) if isinstance(value, str) else value
             for name, value in json.loads(line).items()}
            for line in f if line.strip()]


class MetricWriter:
  """Appends metric records to WORKDIR/metrics.jsonl and TensorBoard; see the module docstring."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      # Appending keeps the history of an interrupted run when it resumes.
      self._jsonl = open(metrics_path(workdir), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter

      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    # JSON has no NaN or infinity: they are written as strings, which read_metrics turns back.
    for name, value in metrics.items():
      value = float(value)
      record[name] = value if math.isfinite(value) else str(value)
      self._tensorboard.add_scalar(name, value, int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, name: str, text: str) -> None:
    if self._enabled:
      self._tensorboard.add_text(name, text, int(step))

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()
