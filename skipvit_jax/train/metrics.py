"""Metrics to `workdir/metrics.jsonl` (one JSON record per write) and TensorBoard event files
(written by tensorboardX: no TensorFlow needed). Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      # Appending keeps the history of an interrupted run when it resumes.
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
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
