"""Orbax checkpoints of the train state in `workdir/checkpoints`, keeping the latest k.

A checkpoint holds the step, parameters, optimizer state (and the parameter EMA when kept). The
RNG and the data position are functions of (seed, step) (see loop.py), so the step restores
them too. Writes are asynchronous and atomic (orbax writes a temporary directory and renames it
when complete), so a process killed mid-write leaves the previous checkpoints intact.

Restoring takes the newest checkpoint that restores. A damaged one (a truncated or missing file)
is set aside as `<step>.damaged` with a warning naming the step, and the one before is tried;
when none restores, `CheckpointError` says so and how to start over. The log gets one line per
save and per restore: orbax's own INFO lines are filtered out (its warnings and errors are not).
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored."""


class _QuietOrbax(std_logging.Filter):
  """Drops INFO and DEBUG records logged from orbax's modules (tens of lines per save)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_orbax_logs() -> None:
  """Filters orbax's INFO lines out of absl's log (idempotent)."""
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())


class Checkpoints:
  """The run's checkpoint directory; a context manager that waits for writes and closes."""

  def __init__(self, workdir: str, *, keep: int):
    if keep < 1:
      raise ValueError(f"config.keep_checkpoints: must be >= 1, got {keep}")
    quiet_orbax_logs()
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, like: Any) -> Any | None:
    """The newest restorable checkpoint, in the structure of `like` (host arrays); None when
    there is no checkpoint. Damaged newer ones are set aside (see the module docstring)."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(like))
      except Exception as e:  # orbax and tensorstore raise many kinds on damaged files
        failures.append((step, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        continue
      for damaged, reason in failures:
        aside = self._set_aside(damaged)
        logging.warning("checkpoint at step %d is damaged (%s); set aside as %s, resuming from "
                        "step %d instead", damaged, reason[:300], aside, step)
      if failures:
        self._manager.reload()
      logging.info("restored the checkpoint at step %d from %s", step, self.directory)
      return state
    if failures:
      raise CheckpointError(
          f"None of the checkpoints in {self.directory} can be restored: "
          + "; ".join(f"step {s}: {reason[:200]}" for s, reason in failures)
          + ". The run cannot resume from them. To start over from step 0, move the "
          f"checkpoints directory aside (mv {self.directory} {self.directory}.unusable) and "
          "rerun the same command; metrics.jsonl keeps the earlier history.")
    return None

  def _set_aside(self, step: int) -> str:
    source = os.path.join(self.directory, str(step))
    target = f"{source}.damaged"
    suffix = 1
    while os.path.exists(target):
      target, suffix = f"{source}.damaged{suffix}", suffix + 1
    os.rename(source, target)
    return target

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous write; a later save, wait() or close() waits for it."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    logging.info("saving the checkpoint at step %d", step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
