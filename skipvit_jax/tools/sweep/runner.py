"""Sweeps: train a list of config overrides over a base config, one workdir per run, and
tabulate accuracy against speed.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_synthetic.py --sweep_dir /tmp/table1
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_imagenet.py --sweep_dir $DIR \
      --override data.data_dir=$TFDS_DATA_DIR --seeds 0,1,2 --timeout 172800
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/reproduction_fashion_mnist.py \
      --sweep_dir docs/reproduction/fashion_mnist --only dense,6-55-11   # these runs first

A sweep file (configs/sweeps/*.py) is a Python module:

  BASE = "configs/default.py:baseline"  # config file (in the `configs` package's root), ":arg"
  RUNS = [                               # or a function runs() returning the list
      {"name": "dense"},
      {"name": "6-55-11", "overrides": {"routing.drop_layers": (6,), "routing.drop_ratios": (0.55,),
                                        "routing.return_layer": 11, "drop_warmup_epochs": 1.0}},
      {"name": "toe", "base": "configs/default.py:toe,baseline"},  # a run's own base config
      {"name": "6-45-fused", "overrides": {...}, "seeds": (0, 1)},  # this run's own seeds
  ]
  DENSE = "dense"  # optional (default: the run named "dense"): the throughput reference
  SEEDS = (0,)     # optional (default (0,)); --seeds 0,1,2 replaces it and every run's seeds

Override keys are dotted config fields (configs/common.py lists them all); values are Python
values (tuples for tuple fields). Run names are file-name safe and unique.

Each (seed, run) trains in its own subprocess, one after another, seed by seed, in the
directory that holds the installed `configs` package (the repository root, in a checkout):

  python -m skipvit_jax --config BASE --workdir SWEEP_DIR/<name>_seed<k> --config.seed=<k> \
      --config.<field>=<value> ...

with the run's overrides, then the command line's `--override field=value` ones (they win: use
them to point at data or shrink every run). Besides main.py's files (metrics.jsonl,
config.json, checkpoints/), a run dir holds `sweep_log.txt` (the subprocess's output, every
attempt appended), `sweep_run.json` (command, status, error, attempts and wall time summed over
attempts) and, once the run finished, `done.json`. Rerunning the sweep skips finished runs and
reruns the others: an interrupted run resumes from its latest checkpoint (the trainer does
that), a failed one is retried. A run stopped by SIGTERM from outside (exit status 143, after
its checkpoint) is recorded as incomplete. A run that exits with another non-zero status or
outlasts --timeout (it gets SIGTERM, which makes the trainer checkpoint, then SIGKILL after
--grace_period seconds) is recorded as failed with the end of its log, and the sweep goes on.
Stopping the sweep itself (Ctrl-C, SIGTERM) stops the run in progress the same way.

After every run, SWEEP_DIR/results.{csv,json,md} are rewritten from the run dirs: per run its
eval top-1 routed and with all tokens, kept-object recall per drop layer (synthetic data),
steady training throughput and its ratio to the dense run of the same seed, the whole-run
FLOP-ideal speedup, wall time and the number of evaluated examples; results.md adds mean ± std
over seeds when the sweep has several.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags, logging
from absl.flags import argparse_flags
from ml_collections import config_flags

import configs
from skipvit_jax.train import stopping
from skipvit_jax.train.throughput import format_duration

# Base configs are named relative to the directory holding the `configs` package: the
# repository root in a checkout, site-packages in an installed wheel. Runs start there.
CONFIG_ROOT = Path(configs.__file__).resolve().parents[1]
RUN_FILE = "sweep_run.json"
DONE_FILE = "done.json"
LOG_FILE = "sweep_log.txt"
ERROR_LINES = 20  # log lines kept as a failed run's error
TERMINATE_GRACE_S = 120.0  # default --grace_period: after SIGTERM, time to checkpoint
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_RUN_KEYS = {"name", "overrides", "base", "seeds"}


@dataclasses.dataclass
class Run:
  """One training run of a sweep: a named set of overrides at one seed."""
  name: str
  seed: int
  base: str  # config file with an optional ":arg", relative to the repository root
  overrides: dict[str, Any]  # dotted config field -> Python value

  @property
  def dir_name(self) -> str:
    # Always suffixed, so adding seeds later keeps the existing run dirs.
    return f"{self.name}_seed{self.seed}"


@dataclasses.dataclass
class Sweep:
  """A loaded sweep file, expanded over its seeds."""
  path: str
  runs: list[Run]  # every (seed, run), seed-major: one seed's table completes first
  dense: str | None  # name of the throughput reference run


# --------------------------------------------------------------------------------------------
# Loading sweeps and building command lines: pure, no training.


def load_sweep(path: str | os.PathLike, seeds: Sequence[int] | None = None) -> Sweep:
  """Reads a sweep file (format: this module's docstring); `seeds` replaces its SEEDS."""
  spec = importlib.util.spec_from_file_location(f"sweep_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  entries = module.runs() if hasattr(module, "runs") else module.RUNS
  base = getattr(module, "BASE", None)
  names = [entry.get("name") for entry in entries]
  for entry in entries:
    unknown = set(entry) - _RUN_KEYS
    if unknown:
      raise ValueError(f"{path}: run {entry.get('name')!r} has unknown keys {sorted(unknown)}")
    if not isinstance(entry.get("name"), str) or not _NAME.fullmatch(entry["name"]):
      raise ValueError(f"{path}: run name {entry.get('name')!r} is not a file-name-safe string")
    if "seed" in entry.get("overrides", {}):
      raise ValueError(f"{path}: run {entry['name']!r} overrides seed; use SEEDS or --seeds")
    if entry.get("base", base) is None:
      raise ValueError(f"{path}: run {entry['name']!r} has no base config and there is no BASE")
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: run names repeat: {names}")
  dense = getattr(module, "DENSE", "dense" if "dense" in names else None)
  if dense is not None and dense not in names:
    raise ValueError(f"{path}: DENSE = {dense!r} is not a run name")
  default_seeds = tuple(getattr(module, "SEEDS", (0,)))
  # Extra seeds only where differences are small: a run's "seeds" replaces SEEDS for it.
  run_seeds = [tuple(entry.get("seeds", default_seeds)) if seeds is None else tuple(seeds)
               for entry in entries]
  runs = [Run(name=entry["name"], seed=int(seed), base=entry.get("base", base),
              overrides=dict(entry.get("overrides", {})))
          for seed in sorted(set().union(*run_seeds))
          for entry, own in zip(entries, run_seeds) if seed in own]
  return Sweep(path=str(path), runs=runs, dense=dense)


def overrides_text(overrides: Mapping[str, Any]) -> str:
  """{"routing.drop_layers": (6,)} -> "routing.drop_layers=(6,)": overrides as a table shows them."""
  return " ".join(f"{k}={format_value(tuple(v) if isinstance(v, list) else v)}"
                  for k, v in overrides.items())


def format_value(value: Any) -> str:
  """A Python value as ml_collections' config flags parse it: `(6,)`, `true`, `0.55`."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def config_args(run: Run, overrides: Mapping[str, Any] | None = None) -> list[str]:
  """The trainer's config flags for `run`: --config=BASE, the seed, its overrides, then
  `overrides`.

  BASE stays relative to CONFIG_ROOT, where the trainer runs, so that a finished run's recorded
  flags (done.json) match in any checkout or installation. One flag per field: config flags
  concatenate repeated tuple flags instead of replacing."""
  if "seed" in (overrides or {}):
    raise ValueError("override seed: use the sweep's SEEDS or --seeds")
  merged = {"seed": run.seed, **run.overrides, **(overrides or {})}
  return [f"--config={run.base}",
          *(f"--config.{field}={format_value(value)}" for field, value in merged.items())]


def build_config(args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config the trainer builds from these flags, parsed the same way (ml_collections
  config flags), without training: an unknown field or a badly typed value raises here."""
  # The config file is relative to CONFIG_ROOT, which need not be this process's cwd.
  argv = ["skipvit_jax", *(f"--config={CONFIG_ROOT / arg.partition('=')[2]}"
                           if arg.startswith("--config=") else arg for arg in args)]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def command(run: Run, workdir: str | os.PathLike,
            overrides: Mapping[str, Any] | None = None) -> list[str]:
  """The subprocess that trains `run` in `workdir`."""
  return [sys.executable, "-m", "skipvit_jax", *config_args(run, overrides),
          f"--workdir={workdir}"]


# --------------------------------------------------------------------------------------------
# Running.


def _read_json(path: Path) -> dict | None:
  if not path.exists():
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: Path, value: Any) -> None:
  tmp = path.with_suffix(".tmp")  # replace atomically: a killed sweep leaves no half file
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _stop(process: subprocess.Popen, grace: float) -> None:
  """SIGTERM (the trainer checkpoints and returns), then SIGKILL after `grace` seconds."""
  process.terminate()
  try:
    process.wait(grace)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


def _log_tail(path: Path, offset: int, lines: int = ERROR_LINES) -> str:
  """The last `lines` lines written to the log after `offset`."""
  with open(path, "rb") as f:
    f.seek(max(offset, f.seek(0, os.SEEK_END) - 64 * 1024))
    text = f.read().decode("utf-8", errors="replace")
  return "\n".join(text.rstrip().splitlines()[-lines:])


def run_one(run: Run, run_dir: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            grace: float = TERMINATE_GRACE_S) -> dict:
  """Trains `run` in `run_dir` once (resuming whatever is there); returns its sweep_run.json.

  Wall time is measured around the subprocess and added to the run's total even when the
  sweep itself is interrupted (Ctrl-C, SIGTERM), which also stops the subprocess."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  cmd = command(run, run_dir.resolve(), overrides)
  state = _read_json(run_dir / RUN_FILE) or {"attempts": 0, "wall_time_s": 0.0}
  state.update(command=cmd, status="running", error="",
               attempts=state["attempts"] + 1)
  _write_json(run_dir / RUN_FILE, state)
  with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {state['attempts']}: "
              f"{shlex.join(cmd)}\n")
    log.flush()
    offset = log.tell()
    start = time.monotonic()
    state["status"] = "incomplete"  # unless the subprocess gets to finish below
    try:
      process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=CONFIG_ROOT,
                                 env={**os.environ, **(env or {})})
      try:
        returncode, timed_out = process.wait(timeout), False
      except subprocess.TimeoutExpired:
        _stop(process, grace)
        returncode, timed_out = process.returncode, True
      except BaseException:
        _stop(process, grace)
        raise
      if returncode in (0, stopping.EXIT_PREEMPTED) and not timed_out:
        # EXIT_PREEMPTED: a SIGTERM from a scheduler (the trainer checkpointed and stopped);
        # only the trainer's own completion record means the run is over.
        state["status"] = "done" if _trainer_finished(run_dir) else "incomplete"
      else:
        reason = f"timed out after {timeout:g} s" if timed_out else f"exit status {returncode}"
        state.update(status="failed", error=f"{reason}\n{_log_tail(run_dir / LOG_FILE, offset)}")
    finally:
      state["wall_time_s"] += time.monotonic() - start
      _write_json(run_dir / RUN_FILE, state)
  if state["status"] == "done":
    _write_json(run_dir / DONE_FILE, {"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "config_args": config_args(run, overrides)})
  return state


def run_sweep(sweep: Sweep, sweep_dir: str | os.PathLike, *,
              overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
              env: Mapping[str, str] | None = None, only: Collection[str] | None = None,
              grace: float = TERMINATE_GRACE_S) -> list[dict]:
  """Runs every unfinished run of `sweep` in turn (with `only`, those of these names), rewriting
  the results files, which list every run, after each; returns the result rows."""
  sweep_dir = Path(sweep_dir)
  if only is not None and (unknown := set(only) - {run.name for run in sweep.runs}):
    raise ValueError(f"--only: no run named {sorted(unknown)} in {sweep.path}")
  for i, run in enumerate(sweep.runs, 1):
    if only is not None and run.name not in only:
      continue
    run_dir = sweep_dir / run.dir_name
    done = _read_json(run_dir / DONE_FILE)
    if done is not None:
      if done["config_args"] != config_args(run, overrides):
        logging.warning("%s finished with other flags than the sweep now gives (%s); delete the "
                        "directory to rerun it", run_dir, done["config_args"])
      logging.info("[%d/%d] %s: finished before, skipped", i, len(sweep.runs), run.dir_name)
      continue
    logging.info("[%d/%d] %s: running, log in %s", i, len(sweep.runs), run.dir_name,
                 run_dir / LOG_FILE)
    try:
      state = run_one(run, run_dir, overrides=overrides, timeout=timeout, env=env, grace=grace)
    finally:  # an interrupted sweep still leaves its tables
      write_results(sweep, sweep_dir, overrides)
    logging.info("[%d/%d] %s: %s after %s%s", i, len(sweep.runs), run.dir_name, state["status"],
                 format_duration(state["wall_time_s"]),
                 f"\n{state['error']}" if state["status"] == "failed" else "")
  return write_results(sweep, sweep_dir, overrides)


# --------------------------------------------------------------------------------------------
# Results: read back from the run dirs, so they can be rebuilt at any time.

# Numeric result columns, in table order; kept_object_recall_<i> / keep_ratio_<i> (one per
# drop layer) go after top1_all_tokens.
_HEAD = ("name", "seed", "base", "overrides", "status", "top1", "top1_all_tokens")
_TAIL = ("images_per_sec", "speedup_measured", "speedup_ideal", "wall_time_s", "attempts",
         "num_examples", "run_dir", "error")


def _trainer_finished(run_dir: Path) -> bool:
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return False
  with open(path, encoding="utf-8") as f:
    return any("train/finished" in json.loads(line) for line in f)


def collect_run(run: Run, run_dir: str | os.PathLike) -> dict:
  """One result row from a run dir: status "done", "failed", "incomplete" (started, not
  finished: interrupted or still running) or "pending" (never started). Metrics are the last
  evaluation's and the last recorded throughput (that of the final attempt)."""
  run_dir = Path(run_dir)
  state = _read_json(run_dir / RUN_FILE) or {}
  if (run_dir / DONE_FILE).exists():
    status = "done"
  elif not state:
    status = "pending"
  else:
    status = "failed" if state["status"] == "failed" else "incomplete"
  latest: dict[str, Any] = {}
  last_eval: dict[str, Any] = {}
  if (run_dir / "metrics.jsonl").exists():
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
      for record in map(json.loads, f):
        latest.update(record)
        if "eval/top1" in record:
          last_eval = record
  per_layer = {key[len("eval/"):]: value for key, value in sorted(last_eval.items())
               if re.fullmatch(r"eval/(kept_object_recall|keep_ratio)_\d+", key)}
  return {
      "name": run.name, "seed": run.seed, "base": run.base,
      # As data, as results.json holds it (tuples as lists); the tables format it.
      "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in run.overrides.items()},
      "status": status,
      "top1": last_eval.get("eval/top1"),
      "top1_all_tokens": last_eval.get("eval/top1_all_tokens", last_eval.get("eval/top1")),
      **per_layer,
      "images_per_sec": latest.get("train/steady_images_per_sec"),
      "speedup_measured": None,  # needs the dense row: add_speedups
      "speedup_ideal": latest.get("flops/run_ideal_speedup"),
      "wall_time_s": state.get("wall_time_s"),
      "attempts": state.get("attempts", 0),
      "num_examples": last_eval.get("eval/num_examples"),
      "run_dir": run_dir.name,  # inside the sweep dir
      "error": state.get("error", ""),
  }


def add_speedups(rows: list[dict], dense: str | None) -> None:
  """Sets each row's speedup_measured: its throughput over the finished dense run's of the
  same seed, or over the mean of the dense seeds that finished when that one did not."""
  reference = {r["seed"]: r["images_per_sec"] for r in rows
               if r["name"] == dense and r["status"] == "done" and r["images_per_sec"]}
  fallback = statistics.fmean(reference.values()) if reference else None
  for row in rows:
    ref = reference.get(row["seed"], fallback)
    row["speedup_measured"] = row["images_per_sec"] / ref if row["images_per_sec"] and ref else None


def _columns(rows: list[dict]) -> list[str]:
  per_layer = sorted({key for row in rows for key in row if key not in _HEAD + _TAIL},
                     key=lambda k: (int(k.rsplit("_", 1)[1]), k.startswith("keep_ratio")))
  return [*_HEAD, *per_layer, *_TAIL]


def _metric_columns(rows: list[dict]) -> list[str]:
  numeric = {"top1", "top1_all_tokens", "images_per_sec", "speedup_measured", "speedup_ideal",
             "wall_time_s"}
  return [c for c in _columns(rows) if c in numeric or c.startswith("kept_object_recall")]


# Student's t quantile t_{0.975, df}: the 95% interval of a mean of df + 1 paired differences.
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
          9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
# Differences to the dense run of the same seed, for these columns.
_PAIRED = ("top1", "top1_all_tokens")


def t_975(df: int) -> float:
  """t_{0.975} with df degrees of freedom (the nearest tabulated df at or below; 1.96 past 30)."""
  if df < 1:
    raise ValueError(f"need df >= 1, got {df}")
  return _T_975[max(d for d in _T_975 if d <= df)] if df <= 30 else 1.96


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]
                      ) -> dict[str, float | int | None]:
  """Mean of values[seed] - reference[seed] over the seeds both have, with the half-width of
  its 95% t interval (None with fewer than two pairs)."""
  diffs = [values[seed] - reference[seed] for seed in values if seed in reference]
  if not diffs:
    return {"mean": None, "ci95": None, "pairs": 0}
  ci = (t_975(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        if len(diffs) > 1 else None)
  return {"mean": statistics.fmean(diffs), "ci95": ci, "pairs": len(diffs)}


def seed_values(rows: list[dict], name: str, column: str) -> dict[int, float]:
  """{seed: column} over the finished runs called `name` that report `column`."""
  return {r["seed"]: r[column] for r in rows
          if r["name"] == name and r["status"] == "done" and r.get(column) is not None}


def aggregate(rows: list[dict], dense: str | None = None) -> list[dict]:
  """Mean and sample std over seeds of every metric, per run name (finished runs only); with
  `dense`, also each top-1's paired difference to the dense run of the same seed
  (`<column>_vs_dense`: mean, 95% half-width, pairs)."""
  reference = {column: seed_values(rows, dense, column) for column in _PAIRED} if dense else {}
  out = []
  for name in dict.fromkeys(r["name"] for r in rows):
    finished = [r for r in rows if r["name"] == name and r["status"] == "done"]
    entry = {"name": name, "seeds": len(finished)}
    for column in _metric_columns(rows):
      values = [r[column] for r in finished if r.get(column) is not None]
      entry[f"{column}_mean"] = statistics.fmean(values) if values else None
      entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
    if dense and name != dense:
      for column in _PAIRED:
        entry[f"{column}_vs_dense"] = paired_difference(seed_values(rows, name, column),
                                                        reference[column])
    out.append(entry)
  return out


def _fmt(column: str, value: Any) -> str:
  """A cell of results.md."""
  if value is None:
    return "-"
  if column.startswith("top1"):
    return f"{100 * value:.1f}"
  if column.startswith("speedup"):
    return f"{value:.2f}x"
  if column == "wall_time_s":
    return format_duration(value)
  if column == "images_per_sec":
    return f"{value:.0f}"
  if column.startswith(("kept_object_recall", "keep_ratio")):
    return f"{value:.3f}"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def _markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]


_TITLES = {
    "top1": "top-1 %", "top1_all_tokens": "top-1 all tokens %", "images_per_sec": "train img/s",
    "speedup_measured": "measured speedup", "speedup_ideal": "FLOP-ideal speedup",
    "wall_time_s": "wall", "num_examples": "eval examples",
}


def _recall_cell(row: dict, layers: list[str]) -> str:
  """"0.753 (0.453)": recall at each drop layer with its keep ratio, a random choice's recall."""
  cells = []
  for key in layers:
    if row.get(key) is not None:
      ratio = row.get(key.replace("kept_object_recall", "keep_ratio"))
      cells.append(f"{_fmt(key, row[key])} ({_fmt(key, ratio)})")
  return " / ".join(cells) or "-"


def _mean_std_cell(column: str, entry: dict) -> str:
  mean, std = entry[f"{column}_mean"], entry[f"{column}_std"]
  if mean is None:
    return "-"
  return _fmt(column, mean) if std is None else f"{_fmt(column, mean)} ± {_fmt(column, std)}"


def _paired_cell(difference: dict | None) -> str:
  """"+0.4 ± 0.9 (3)": mean paired difference in points of top-1, 95% half-width, pairs."""
  if not difference or difference["mean"] is None:
    return "-"
  mean = f"{100 * difference['mean']:+.1f}"
  if difference["ci95"] is None:
    return f"{mean} ({difference['pairs']})"
  return f"{mean} ± {100 * difference['ci95']:.1f} ({difference['pairs']})"


def markdown(sweep: Sweep, rows: list[dict], overrides: Mapping[str, Any] | None = None) -> str:
  """results.md: the per-run table, mean ± std over seeds (several seeds only), failures."""
  recall = [c for c in _columns(rows) if c.startswith("kept_object_recall")]
  show_base = len({r["base"] for r in rows}) > 1
  lines = [f"# Sweep {sweep.path}", ""]
  if overrides:
    every = " ".join(f"`{k}={format_value(v)}`" for k, v in overrides.items())
    lines += [f"Every run: {every}", ""]
  metrics = ["top1", "top1_all_tokens", "images_per_sec", "speedup_measured", "speedup_ideal",
             "wall_time_s", "num_examples"]
  header = ["run", "seed", "status", *(_TITLES[c] for c in metrics),
            "kept-object recall (keep ratio)",
            *(["base"] if show_base else []), "overrides"]
  cells = [[r["name"], str(r["seed"]), r["status"], *(_fmt(c, r[c]) for c in metrics),
            _recall_cell(r, recall), *([r["base"]] if show_base else []),
            overrides_text(r["overrides"]) or "-"]
           for r in rows]
  lines += _markdown_table(header, cells)
  if len({r["seed"] for r in rows}) > 1:
    columns = _metric_columns(rows)
    paired = [c for c in _PAIRED if sweep.dense]
    cells = [[a["name"], str(a["seeds"]), *(_mean_std_cell(c, a) for c in columns),
              *(_paired_cell(a.get(f"{c}_vs_dense")) for c in paired)]
             for a in aggregate(rows, sweep.dense)]
    titles = [_TITLES.get(c, c.replace("kept_object_recall_", "kept-object recall "))
              for c in columns]
    titles += [f"{_TITLES[c]} - dense, same seed (95% CI)" for c in paired]
    lines += ["", "## Mean ± std over seeds", "",
              *_markdown_table(["run", "seeds", *titles], cells)]
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    lines += ["", "## Failed runs"]
    for r in failed:
      lines += ["", f"{r['name']} seed {r['seed']} ({r['run_dir']}):", "", "```", r["error"], "```"]
  return "\n".join(lines) + "\n"


def write_results(sweep: Sweep, sweep_dir: str | os.PathLike,
                  overrides: Mapping[str, Any] | None = None) -> list[dict]:
  """Collects every run of `sweep` from `sweep_dir` into results.csv, results.json and
  results.md there; returns the rows."""
  sweep_dir = Path(sweep_dir)
  sweep_dir.mkdir(parents=True, exist_ok=True)
  rows = [collect_run(run, sweep_dir / run.dir_name) for run in sweep.runs]
  add_speedups(rows, sweep.dense)
  columns = _columns(rows)
  with open(sweep_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows({k: "" if v is None else overrides_text(v) if k == "overrides" else v
                      for k, v in row.items()} for row in rows)
  _write_json(sweep_dir / "results.json", {
      "sweep": sweep.path, "dense": sweep.dense,
      "overrides": {k: format_value(v) for k, v in (overrides or {}).items()},
      "runs": rows, "mean_std_over_seeds": aggregate(rows, sweep.dense),
  })
  (sweep_dir / "results.md").write_text(markdown(sweep, rows, overrides), encoding="utf-8")
  return rows


# --------------------------------------------------------------------------------------------
# Command line.


def parse_flags(argv: list[str]) -> argparse.Namespace:
  # absl's argparse parser also takes absl's own flags (--verbosity, ...).
  parser = argparse_flags.ArgumentParser(prog="python -m skipvit_jax.tools.sweep",
                                         description=__doc__.split("\n\n")[0])
  parser.add_argument("--sweep", required=True,
                      help="sweep file, e.g. configs/sweeps/table1_synthetic.py")
  parser.add_argument("--sweep_dir", required=True, help="one subdirectory per run, plus results.*")
  parser.add_argument("--seeds", help="comma-separated seeds, replacing the sweep file's SEEDS")
  parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                      help="config override for every run (repeatable), e.g. data.data_dir=/x")
  parser.add_argument("--timeout", type=float, help="seconds per run attempt (default: none)")
  parser.add_argument("--grace_period", type=float, default=TERMINATE_GRACE_S,
                      help="seconds a stopped run (timeout, Ctrl-C, SIGTERM) gets to write its "
                           "checkpoint after SIGTERM before it is killed")
  parser.add_argument("--only", help="comma-separated run names: run only these now (e.g. the "
                                     "runs one claim needs, over every seed, first)")
  return parser.parse_args(argv[1:])


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
  overrides = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or not field:
      raise app.UsageError(f"--override {item!r}: expected FIELD=VALUE")
    overrides[field] = value
  return overrides


def _interrupt(signum, frame) -> None:
  del signum, frame
  raise KeyboardInterrupt("SIGTERM")  # unwinds through run_one: records time, stops the run


def main(args: argparse.Namespace) -> None:
  logging.set_verbosity(logging.INFO)
  signal.signal(signal.SIGTERM, _interrupt)
  seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
  sweep = load_sweep(args.sweep, seeds)
  overrides = _parse_overrides(args.override)
  for run in sweep.runs:  # reject a bad override or config before training anything
    build_config(config_args(run, overrides))
  try:
    run_sweep(sweep, args.sweep_dir, overrides=overrides, timeout=args.timeout,
              only=args.only.split(",") if args.only else None, grace=args.grace_period)
  except KeyboardInterrupt:
    logging.warning("interrupted; rerun the same command to resume")
    sys.exit(130)
  print((Path(args.sweep_dir) / "results.md").read_text(encoding="utf-8"))

