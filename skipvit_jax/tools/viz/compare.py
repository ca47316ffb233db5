"""Runs compared, as the numbers and labels the sweep plots draw (no matplotlib): the accuracy-
speed Pareto front, each run's value of a swept config field and its axis label, a plain-text
table of result rows, and a metric over a run's evaluations.

The rows are a sweep's results (tools/sweep/results.py reads them from SWEEP_DIR/results.json;
their fields are named in tools/sweep/schema.py); a run's history comes from its metrics.jsonl.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skipvit_jax.tools.sweep import schema
from skipvit_jax.train.metrics import read_metrics

# Config overrides whose effect the sweep notebook plots, with their axis labels.
SWEEP_PARAMETERS = {
    "routing.drop_layers": "drop layer(s)",
    "routing.drop_ratios": "drop ratio(s)",
    "routing.return_layer": "return layer",
}


def eval_history(run_dir: str | os.PathLike, key: str) -> tuple[np.ndarray, np.ndarray]:
  """One metric over a run's evaluations, from RUN_DIR/metrics.jsonl.

  Args:
    run_dir: a trainer workdir (a sweep's run dir is one).
    key: an evaluation metric, e.g. "eval/kept_object_recall_0" or "eval/top1".

  Returns:
    (epochs, values): (E,) float64 each, one entry per evaluation that recorded `key`, in
    step order; an evaluation's epoch is its step over the run's steps per epoch (from the
    training records' "train/epoch"). A resumed run's repeated evaluation keeps the last.
  """
  by_step: dict[int, float] = {}
  steps_per_epoch = None
  for record in read_metrics(run_dir):
    if record.get("train/epoch"):
      steps_per_epoch = record["step"] / record["train/epoch"]
    if key in record and record[key] is not None:
      by_step[record["step"]] = record[key]
  if by_step and steps_per_epoch is None:
    raise ValueError(f"{run_dir}: no training record gives the steps per epoch")
  steps = sorted(by_step)
  return (np.array(steps, np.float64) / (steps_per_epoch or 1.0),
          np.array([by_step[s] for s in steps], np.float64))


def sweep_parameter(row: Mapping[str, Any], name: str) -> Any:
  """A run's override of the config field `name` (e.g. "routing.drop_layers"), or None where
  the run keeps its base config's value."""
  return row[schema.OVERRIDES].get(name)


def parameter_label(value: Any) -> str:
  """An override value as an axis label: (4, 7) -> "4,7", 0.55 -> "0.55", None -> "base"."""
  if isinstance(value, tuple):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "-"
  return "base" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def runs_table(rows: Sequence[Mapping[str, Any]], *, accuracy: str = schema.TOP1) -> str:
  """A plain-text table of result rows: name, seed, status, `accuracy` (%), measured and
  ideal speedup, and the overrides (or the base config where there are none)."""
  header = f"{'run':<16}{'seed':>5}  {'status':<11}{'top-1 %':>8}{'speedup':>9}{'ideal':>7}"
  lines = [f"{header}  config"]
  for r in rows:
    top1, speedup, ideal = r.get(accuracy), r.get(schema.SPEEDUP), r.get(schema.IDEAL_SPEEDUP)
    overrides = " ".join(f"{k}={parameter_label(v)}" for k, v in r[schema.OVERRIDES].items())
    lines.append(
        f"{r[schema.NAME]:<16}{r[schema.SEED]:>5}  {r[schema.STATUS]:<11}"
        f"{'-' if top1 is None else f'{100 * top1:.1f}':>8}"
        f"{'-' if speedup is None else f'{speedup:.2f}x':>9}"
        f"{'-' if ideal is None else f'{ideal:.2f}x':>7}  {overrides or r[schema.BASE]}")
  return "\n".join(lines)


def pareto_front(points: np.ndarray) -> np.ndarray:
  """The points no other point beats in both coordinates (both maximised).

  Args:
    points: (N, 2), e.g. (speedup, accuracy) per run.

  Returns:
    (K,) int indices of the non-dominated points, by ascending first coordinate. A point is
    dominated when another is >= in both coordinates and > in one; equal points are all kept.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"points must be (N, 2), got {points.shape}")
  # Sweep from the largest x down: a point is on the front when its y beats every y seen at
  # a strictly larger x, and ties the best y of its own x.
  order = np.lexsort((-points[:, 1], -points[:, 0]))  # x descending, then y descending
  front, best_y = [], -np.inf
  for _, group in itertools.groupby(order, key=lambda j: points[j, 0]):
    group = list(group)
    top = points[group[0], 1]
    if top > best_y:
      front += [j for j in group if points[j, 1] == top]
      best_y = top
  return np.array(sorted(front, key=lambda j: points[j, 0]), dtype=np.int64)
