"""What a sweep directory holds, named once: its files, the fields of a result row and of a run
name's mean over seeds, the run statuses, and how its JSON records are read and written.

  SWEEP_DIR/<name>_seed<k>/   one run dir per (run, seed): the trainer's workdir (metrics.jsonl,
                              config.json, checkpoints/) plus RUN_FILE, DONE_FILE, LOG_FILE
  SWEEP_DIR/results.{csv,json,md}   one row per run dir (results.py writes them)

The runner writes the run records, results.py reads them back into rows, stats.py and
tables.py summarise the rows, and the notebooks and docs/figures.py read results.json through
results.py: all of them use these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A run dir's records, besides the trainer's own files.
RUN_FILE = "sweep_run.json"  # command, status, error, attempts, wall time over attempts
DONE_FILE = "done.json"  # written once the trainer recorded that it finished
LOG_FILE = "sweep_log.txt"  # the subprocess's output, every attempt appended
# The sweep dir's tables.
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

# Run statuses. A result row's status is one of DONE, FAILED, INCOMPLETE (started, not
# finished: interrupted or still running) and PENDING (never started); RUN_FILE also records
# RUNNING while the subprocess runs.
DONE = "done"
FAILED = "failed"
INCOMPLETE = "incomplete"
PENDING = "pending"
RUNNING = "running"

# A result row's fields (results.collect_run builds the row).
NAME = "name"
SEED = "seed"
BASE = "base"  # base config, ":arg" included
OVERRIDES = "overrides"  # {dotted config field: value}
STATUS = "status"
TOP1 = "top1"  # the last evaluation's top-1 with the run's routing
TOP1_ALL_TOKENS = "top1_all_tokens"  # the same network evaluated on every token
IMAGES_PER_SEC = "images_per_sec"  # steady training throughput
SPEEDUP = "speedup_measured"  # IMAGES_PER_SEC over the dense run's (same seed)
IDEAL_SPEEDUP = "speedup_ideal"  # the FLOP model's, over the whole run
WALL_TIME = "wall_time_s"  # summed over attempts
ATTEMPTS = "attempts"
NUM_EXAMPLES = "num_examples"  # evaluated examples
RUN_DIR = "run_dir"  # the run dir's name inside the sweep dir
ERROR = "error"  # a failed run's reason and the end of its log
# Per drop layer i (synthetic data only): kept-object recall and the keep ratio, which is the
# recall of a router that keeps patches at random.
KEPT_OBJECT_RECALL = "kept_object_recall"
KEEP_RATIO = "keep_ratio"


def kept_object_recall(layer: int) -> str:
  """The row field of the kept-object recall at the `layer`-th drop layer (0-based)."""
  return f"{KEPT_OBJECT_RECALL}_{layer}"


def keep_ratio(layer: int) -> str:
  """The row field of the keep ratio at the `layer`-th drop layer (0-based)."""
  return f"{KEEP_RATIO}_{layer}"


# A run name's mean over seeds (stats.aggregate): NAME, SEEDS (how many finished), and per
# metric column mean_field(c), std_field(c); with a dense run, vs_dense_field(c) for the
# PAIRED columns holds the paired difference (stats.paired_difference).
SEEDS = "seeds"


def mean_field(column: str) -> str:
  return f"{column}_mean"


def std_field(column: str) -> str:
  return f"{column}_std"


def vs_dense_field(column: str) -> str:
  return f"{column}_vs_dense"


# Column order of results.csv: the per-layer fields go between _HEAD and _TAIL, by layer.
_HEAD = (NAME, SEED, BASE, OVERRIDES, STATUS, TOP1, TOP1_ALL_TOKENS)
_TAIL = (IMAGES_PER_SEC, SPEEDUP, IDEAL_SPEEDUP, WALL_TIME, ATTEMPTS, NUM_EXAMPLES, RUN_DIR,
         ERROR)
# The numeric columns summarised over seeds, besides the kept-object recalls.
_METRICS = (TOP1, TOP1_ALL_TOKENS, IMAGES_PER_SEC, SPEEDUP, IDEAL_SPEEDUP, WALL_TIME)


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every field of `rows`, in table order: recall then keep ratio, layer by layer."""
  per_layer = sorted({key for row in rows for key in row if key not in _HEAD + _TAIL},
                     key=lambda k: (int(k.rsplit("_", 1)[1]), k.startswith(KEEP_RATIO)))
  return [*_HEAD, *per_layer, *_TAIL]


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """The columns of `rows` that stats.aggregate summarises over seeds, in table order."""
  return [c for c in columns(rows) if c in _METRICS or c.startswith(KEPT_OBJECT_RECALL)]


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in `path`, or None where there is no such file."""
  path = Path(path)
  if not path.exists():
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes `value` to `path` as indented JSON, replacing the file atomically: a sweep killed
  meanwhile leaves the old file or the new one, never half of one."""
  path = Path(path)
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)
