"""A sweep's results (SWEEP_DIR/results.json, which skipvit_jax/tools/sweep/runner.py writes) as rows and
tables: finished runs, the value a run gave a config field, the accuracy-speed Pareto front, and
a run's evaluation history from its metrics.jsonl."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Fields of a sweep's per-run row (skipvit_jax/tools/sweep/runner.py writes SWEEP_DIR/results.json).
ACCURACY = "top1"  # eval top-1 with the run's routing
ACCURACY_ALL_TOKENS = "top1_all_tokens"
SPEEDUP = "speedup_measured"  # steady training images/s over the dense run's (same seed)
IDEAL_SPEEDUP = "speedup_ideal"  # the FLOP model's, over the whole run
FINISHED = "done"  # the status of a run that finished
# Config overrides whose effect the sweep notebook plots, with their axis labels.
SWEEP_PARAMETERS = {
    "routing.drop_layers": "drop layer(s)",
    "routing.drop_ratios": "drop ratio(s)",
    "routing.return_layer": "return layer",
}



def load_sweep_results(sweep_dir: str) -> list[dict]:
  """The per-run rows of SWEEP_DIR/results.json (every run and seed, failed ones included),
  each with its "overrides" as {config field: value}, tuple values as tuples."""
  with open(os.path.join(sweep_dir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  return [{**row, "overrides": {field: tuple(value) if isinstance(value, list) else value
                                for field, value in row["overrides"].items()}}
          for row in results["runs"]]


def completed_runs(records: Sequence[Mapping], *keys: str) -> list[Mapping]:
  """The finished runs that have a finite number under every one of `keys`."""
  return [
      r for r in records
      if r.get("status") == FINISHED
      and all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)
  ]


def eval_history(run_dir: str, key: str) -> tuple[np.ndarray, np.ndarray]:
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
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for record in map(json.loads, f):
      if record.get("train/epoch"):
        steps_per_epoch = record["step"] / record["train/epoch"]
      if key in record and record[key] is not None:
        by_step[record["step"]] = record[key]
  if by_step and steps_per_epoch is None:
    raise ValueError(f"{run_dir}: no training record gives the steps per epoch")
  steps = sorted(by_step)
  return (np.array(steps, np.float64) / (steps_per_epoch or 1.0),
          np.array([by_step[s] for s in steps], np.float64))


def sweep_parameter(record: Mapping, name: str) -> Any:
  """A run's override of the config field `name` (e.g. "routing.drop_layers"), or None where
  the run keeps its base config's value."""
  return record["overrides"].get(name)


def parameter_label(value: Any) -> str:
  """An override value as an axis label: (4, 7) -> "4,7", 0.55 -> "0.55", None -> "base"."""
  if isinstance(value, tuple):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "-"
  return "base" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def runs_table(rows: Sequence[Mapping], *, accuracy: str = ACCURACY) -> str:
  """A plain-text table of sweep rows: name, seed, status, accuracy (%), measured and ideal
  speedup, and the overrides (or the base config where there are none)."""
  lines = [f"{'run':<16}{'seed':>5}  {'status':<11}{'top-1 %':>8}{'speedup':>9}{'ideal':>7}  config"]
  for r in rows:
    top1, speedup, ideal = r.get(accuracy), r.get(SPEEDUP), r.get(IDEAL_SPEEDUP)
    overrides = " ".join(f"{k}={parameter_label(v)}" for k, v in r["overrides"].items())
    lines.append(
        f"{r['name']:<16}{r['seed']:>5}  {r['status']:<11}"
        f"{'-' if top1 is None else f'{100 * top1:.1f}':>8}"
        f"{'-' if speedup is None else f'{speedup:.2f}x':>9}"
        f"{'-' if ideal is None else f'{ideal:.2f}x':>7}  {overrides or r['base']}")
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
