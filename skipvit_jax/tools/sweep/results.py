"""A sweep's results: one row per run dir, read back from the run's records, so they can be
rebuilt at any time, and written to SWEEP_DIR/results.{csv,json,md}; results.json read back.

A row (fields: schema.py) holds the run's eval top-1 routed and with all tokens and, per drop
layer, the kept-object recall and keep ratio, all from its last evaluation; its steady
training throughput (the last recorded, which is the final attempt's) and its ratio to the
dense run of the same seed; the whole-run FLOP-ideal speedup; wall time and attempts from
the runner's record; the number of evaluated examples. results.json adds the mean ± std over
seeds per run name (stats.py); results.md shows both (tables.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skipvit_jax.tools.sweep import schema, spec, stats, tables
from skipvit_jax.train.metrics import read_metrics

# The trainer's metrics a row is read from.
_FINISHED = "train/finished"  # in the trainer's last record, once the run is over
_EVAL_TOP1 = "eval/top1"
_PER_LAYER = re.compile(rf"eval/(({schema.KEPT_OBJECT_RECALL}|{schema.KEEP_RATIO})_\d+)")


@dataclasses.dataclass
class SweepResults:
  """SWEEP_DIR/results.json: the fields are its keys, in file order."""
  sweep: str  # the sweep file
  dense: str | None  # the throughput and top-1 reference run
  overrides: dict[str, str]  # the sweep-wide overrides, as flags give them
  runs: list[dict]  # one row per run dir, seed-major
  mean_std_over_seeds: list[dict]  # stats.aggregate(runs, dense)


def trainer_finished(run_dir: str | os.PathLike) -> bool:
  """Whether the trainer recorded that the run in `run_dir` is over."""
  return any(_FINISHED in record for record in read_metrics(run_dir, missing_ok=True))


def collect_run(run: spec.SweepRun, run_dir: str | os.PathLike) -> dict[str, Any]:
  """One result row from a run dir; status DONE, FAILED, INCOMPLETE or PENDING (schema.py)."""
  run_dir = Path(run_dir)
  state = schema.read_json(run_dir / schema.RUN_FILE) or {}
  if (run_dir / schema.DONE_FILE).exists():
    status = schema.DONE
  elif not state:
    status = schema.PENDING
  else:
    status = schema.FAILED if state["status"] == schema.FAILED else schema.INCOMPLETE
  latest: dict[str, Any] = {}
  last_eval: dict[str, Any] = {}
  for record in read_metrics(run_dir, missing_ok=True):
    latest.update(record)
    if _EVAL_TOP1 in record:
      last_eval = record
  per_layer = {match[1]: value for key, value in sorted(last_eval.items())
               if (match := _PER_LAYER.fullmatch(key))}
  return {
      schema.NAME: run.name, schema.SEED: run.seed, schema.BASE: run.base,
      # As data, as results.json holds it (tuples as lists); the tables format it.
      schema.OVERRIDES: {k: list(v) if isinstance(v, tuple) else v
                         for k, v in run.overrides.items()},
      schema.STATUS: status,
      schema.TOP1: last_eval.get(_EVAL_TOP1),
      schema.TOP1_ALL_TOKENS: last_eval.get("eval/top1_all_tokens", last_eval.get(_EVAL_TOP1)),
      **per_layer,
      schema.IMAGES_PER_SEC: latest.get("train/steady_images_per_sec"),
      schema.SPEEDUP: None,  # needs the dense row: add_speedups
      schema.IDEAL_SPEEDUP: latest.get("flops/run_ideal_speedup"),
      schema.WALL_TIME: state.get("wall_time_s"),
      schema.ATTEMPTS: state.get("attempts", 0),
      schema.NUM_EXAMPLES: last_eval.get("eval/num_examples"),
      schema.RUN_DIR: run_dir.name,
      schema.ERROR: state.get("error", ""),
  }


def add_speedups(rows: list[dict], dense: str | None) -> None:
  """Sets each row's SPEEDUP: its throughput over the finished dense run's of the same seed,
  or over the mean of the dense seeds that finished when that one did not."""
  reference = {r[schema.SEED]: r[schema.IMAGES_PER_SEC] for r in rows
               if r[schema.NAME] == dense and r[schema.STATUS] == schema.DONE
               and r[schema.IMAGES_PER_SEC]}
  fallback = statistics.fmean(reference.values()) if reference else None
  for row in rows:
    ref = reference.get(row[schema.SEED], fallback)
    rate = row[schema.IMAGES_PER_SEC]
    row[schema.SPEEDUP] = rate / ref if rate and ref else None


def write_results(sweep: spec.Sweep, sweep_dir: str | os.PathLike,
                  overrides: Mapping[str, Any] | None = None) -> list[dict]:
  """Collects every run of `sweep` from `sweep_dir` into results.csv, results.json and
  results.md there (`overrides`: the sweep-wide ones, which the runs were given); returns the
  rows."""
  sweep_dir = Path(sweep_dir)
  sweep_dir.mkdir(parents=True, exist_ok=True)
  rows = [collect_run(run, sweep_dir / run.dir_name) for run in sweep.runs]
  add_speedups(rows, sweep.dense)
  means = stats.aggregate(rows, sweep.dense)
  with open(sweep_dir / schema.RESULTS_CSV, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=schema.columns(rows), restval="")
    writer.writeheader()
    writer.writerows({k: "" if v is None else spec.overrides_text(v) if k == schema.OVERRIDES
                      else v for k, v in row.items()} for row in rows)
  schema.write_json(sweep_dir / schema.RESULTS_JSON, dataclasses.asdict(SweepResults(
      sweep=sweep.path, dense=sweep.dense,
      overrides={k: spec.format_value(v) for k, v in (overrides or {}).items()},
      runs=rows, mean_std_over_seeds=means)))
  (sweep_dir / schema.RESULTS_MD).write_text(tables.markdown(sweep, rows, means, overrides),
                                             encoding="utf-8")
  return rows


def read_results(sweep_dir: str | os.PathLike) -> SweepResults:
  """SWEEP_DIR/results.json as write_results wrote it, except that each row's overrides hold
  tuples where the file has lists (the Python values the sweep file gave)."""
  with open(Path(sweep_dir) / schema.RESULTS_JSON, encoding="utf-8") as f:
    results = SweepResults(**json.load(f))
  for row in results.runs:
    row[schema.OVERRIDES] = {field: tuple(value) if isinstance(value, list) else value
                             for field, value in row[schema.OVERRIDES].items()}
  return results


def finished_rows(rows: Sequence[Mapping[str, Any]], *fields: str) -> list[Mapping[str, Any]]:
  """The rows of finished runs that have a finite number under every one of `fields`."""
  return [r for r in rows
          if r.get(schema.STATUS) == schema.DONE
          and all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in fields)]
