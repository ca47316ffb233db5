"""Runs a sweep: trains each (seed, run) of a sweep file in its own subprocess, one after
another, seed by seed, records every attempt in its run dir, and rewrites the results after
each run.

  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_synthetic.py \
      --sweep_dir /tmp/table1
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/table1_imagenet.py --sweep_dir $DIR \
      --override data.data_dir=$TFDS_DATA_DIR --seeds 0,1,2 --timeout 172800
  python -m skipvit_jax.tools.sweep --sweep configs/sweeps/reproduction_fashion_mnist.py \
      --sweep_dir docs/reproduction/fashion_mnist --only dense,6-55-11   # these runs first

The sweep file format and each run's command line are in spec.py; the command line's
`--override field=value` ones come after a run's own overrides (they win: use them to point at
data or shrink every run). Besides the trainer's files (metrics.jsonl, config.json,
checkpoints/), a run dir holds `sweep_log.txt` (the subprocess's output, every attempt
appended), `sweep_run.json` (command, status, error, attempts and wall time summed over
attempts) and, once the run finished, `done.json` (schema.py names them). Rerunning the sweep
skips finished runs and reruns the others: an interrupted run resumes from its latest
checkpoint (the trainer does that), a failed one is retried. A run stopped by SIGTERM from
outside (exit status 143, after its checkpoint) is recorded as incomplete. A run that exits
with another non-zero status or outlasts --timeout (it gets SIGTERM, which makes the trainer
checkpoint, then SIGKILL after --grace_period seconds) is recorded as failed with the end of
its log, and the sweep goes on. Stopping the sweep itself (Ctrl-C, SIGTERM) stops the run in
progress the same way.

A sweep holds SWEEP_DIR/sweep.lock while it runs, and each trainer its run dir's run.lock
(skipvit_jax/runtime/workdir_lock.py): a second sweep on the same directory stops at once with
one line naming the first; a run whose dir a hand-started trainer holds fails with that line,
and the next sweep retries it.

After every run, SWEEP_DIR/results.{csv,json,md} are rewritten from the run dirs
(results.py), so an interrupted sweep still leaves its tables.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import app, logging
from absl.flags import argparse_flags

from skipvit_jax.runtime import workdir_lock
from skipvit_jax.tools.sweep import results, schema, spec
from skipvit_jax.train import stopping
from skipvit_jax.train.throughput import format_duration

ERROR_LINES = 20  # log lines kept as a failed run's error
TERMINATE_GRACE_S = 120.0  # default --grace_period: after SIGTERM, time to checkpoint


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


def run_one(run: spec.SweepRun, run_dir: str | os.PathLike, *,
            overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
            env: Mapping[str, str] | None = None, grace: float = TERMINATE_GRACE_S) -> dict:
  """Trains `run` in `run_dir` once (resuming whatever is there); returns its sweep_run.json.

  Wall time is measured around the subprocess and added to the run's total even when the
  sweep itself is interrupted (Ctrl-C, SIGTERM), which also stops the subprocess."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  cmd = spec.command(run, run_dir.resolve(), overrides)
  state = schema.read_json(run_dir / schema.RUN_FILE) or {"attempts": 0, "wall_time_s": 0.0}
  state.update(command=cmd, status=schema.RUNNING, error="", attempts=state["attempts"] + 1)
  schema.write_json(run_dir / schema.RUN_FILE, state)
  with open(run_dir / schema.LOG_FILE, "a", encoding="utf-8") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {state['attempts']}: "
              f"{shlex.join(cmd)}\n")
    log.flush()
    offset = log.tell()
    start = time.monotonic()
    state["status"] = schema.INCOMPLETE  # unless the subprocess gets to finish below
    try:
      process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=spec.CONFIG_ROOT, env={**os.environ, **(env or {})})
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
        state["status"] = (schema.DONE if results.trainer_finished(run_dir)
                           else schema.INCOMPLETE)
      else:
        reason = f"timed out after {timeout:g} s" if timed_out else f"exit status {returncode}"
        state.update(status=schema.FAILED,
                     error=f"{reason}\n{_log_tail(run_dir / schema.LOG_FILE, offset)}")
    finally:
      state["wall_time_s"] += time.monotonic() - start
      schema.write_json(run_dir / schema.RUN_FILE, state)
  if state["status"] == schema.DONE:
    schema.write_json(run_dir / schema.DONE_FILE,
                      {"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "config_args": spec.config_args(run, overrides)})
  return state


def run_sweep(sweep: spec.Sweep, sweep_dir: str | os.PathLike, *,
              overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
              env: Mapping[str, str] | None = None, only: Collection[str] | None = None,
              grace: float = TERMINATE_GRACE_S) -> list[dict]:
  """Runs every unfinished run of `sweep` in turn (with `only`, those of these names), rewriting
  the results files, which list every run, after each; returns the result rows. Holds
  SWEEP_DIR/sweep.lock throughout: a second sweep on the directory raises WorkdirInUse (each
  run's trainer locks its own run dir too)."""
  sweep_dir = Path(sweep_dir)
  if only is not None and (unknown := set(only) - {run.name for run in sweep.runs}):
    raise ValueError(f"--only: no run named {sorted(unknown)} in {sweep.path}")
  with workdir_lock.DirectoryLock(sweep_dir, name="sweep"):
    return _run_sweep(sweep, sweep_dir, overrides=overrides, timeout=timeout, env=env,
                      only=only, grace=grace)


def _run_sweep(sweep: spec.Sweep, sweep_dir: Path, *, overrides: Mapping[str, Any] | None,
               timeout: float | None, env: Mapping[str, str] | None,
               only: Collection[str] | None, grace: float) -> list[dict]:
  for i, run in enumerate(sweep.runs, 1):
    if only is not None and run.name not in only:
      continue
    run_dir = sweep_dir / run.dir_name
    done = schema.read_json(run_dir / schema.DONE_FILE)
    if done is not None:
      if done["config_args"] != spec.config_args(run, overrides):
        logging.warning("%s finished with other flags than the sweep now gives (%s); delete the "
                        "directory to rerun it", run_dir, done["config_args"])
      logging.info("[%d/%d] %s: finished before, skipped", i, len(sweep.runs), run.dir_name)
      continue
    logging.info("[%d/%d] %s: running, log in %s", i, len(sweep.runs), run.dir_name,
                 run_dir / schema.LOG_FILE)
    try:
      state = run_one(run, run_dir, overrides=overrides, timeout=timeout, env=env, grace=grace)
    finally:  # an interrupted sweep still leaves its tables
      results.write_results(sweep, sweep_dir, overrides)
    logging.info("[%d/%d] %s: %s after %s%s", i, len(sweep.runs), run.dir_name, state["status"],
                 format_duration(state["wall_time_s"]),
                 f"\n{state['error']}" if state["status"] == schema.FAILED else "")
  return results.write_results(sweep, sweep_dir, overrides)


# --------------------------------------------------------------------------------------------
# Command line (tools/sweep/__main__.py).


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
  sweep = spec.load_sweep(args.sweep, seeds)
  overrides = _parse_overrides(args.override)
  for run in sweep.runs:  # reject a bad override or config before training anything
    spec.build_config(spec.config_args(run, overrides))
  try:
    run_sweep(sweep, args.sweep_dir, overrides=overrides, timeout=args.timeout,
              only=args.only.split(",") if args.only else None, grace=args.grace_period)
  except KeyboardInterrupt:
    logging.warning("interrupted; rerun the same command to resume")
    sys.exit(130)
  except workdir_lock.WorkdirInUse as e:
    sys.exit(f"error: {e}")
  print((Path(args.sweep_dir) / schema.RESULTS_MD).read_text(encoding="utf-8"))

