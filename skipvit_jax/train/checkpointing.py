"""Orbax checkpoints of the train state in `workdir/checkpoints`, keeping the latest k.

A checkpoint holds the step, parameters, optimizer state (and the parameter EMA when kept). The
RNG and the data position are functions of (seed, step) (see loop.py), so the step restores
them too. Writes are asynchronous and atomic (orbax writes a temporary directory and renames it
when complete), so a process killed mid-write leaves the previous checkpoints intact.

A write runs in this module's own background thread (orbax's synchronous writer within it), so
its outcome is in hand: `check()`, which the trainer calls after every step, raises
CheckpointWriteError as soon as a write has failed, naming the step, the reason in one line (no
space left on device, permission denied, ...) and the last checkpoint that is intact, which a
rerun resumes from. The failed write's partial directory is removed, giving back its space.

Restoring takes the newest checkpoint that restores. A damaged one (a truncated or missing file)
is set aside as `<step>.damaged` with a warning naming the step, and the one before is tried;
when none restores, `CheckpointError` says so and how to start over. The log gets one line per
save and per restore: orbax's own INFO lines are filtered out (its warnings and errors are not).
"""

from __future__ import annotations

import concurrent.futures
import glob
import logging as std_logging
import os
import re
import shutil
import sys
import traceback
from typing import Any, Callable

import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the message says why and what is intact."""


def failure_reason(error: BaseException) -> str:
  """One line for why a write failed: the OS's words for the first errno found in the
  exception's chain (tensorstore reports it as os_error_code='28' in its message), else the
  first line of the innermost message."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  for e in chain:
    code = e.errno if isinstance(e, OSError) and e.errno else None
    if code is None and (match := re.search(r"os_error_code='?(\d+)", str(e))):
      code = int(match.group(1))
    if code is not None:
      return os.strerror(code).lower()
  text = str(chain[-1]).strip()
  return f"{type(chain[-1]).__name__}: {text.splitlines()[0][:200] if text else ''}"


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO and DEBUG records (tens of lines per save), and its records of an
  exception in one of its threads: writes and restores run in this module's hands, which
  report the same exception once (see the module docstring)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    return record.levelno >= std_logging.WARNING and not record.exc_info


def _closed_loop_callback(error: BaseException | None) -> bool:
  """Whether `error` is tensorstore calling back into the event loop of a write that already
  failed: one such traceback per array still in flight, printed by the interpreter."""
  frames = traceback.extract_tb(getattr(error, "__traceback__", None))
  return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
          and all(f"{os.sep}asyncio{os.sep}" in frame.filename for frame in frames))


def _skip_closed_loop_callbacks(hook_name: str, error_of: Callable[..., Any]) -> None:
  """Wraps `sys.<hook_name>` so that it drops the errors `_closed_loop_callback` names;
  `error_of` picks the error out of the hook's arguments (idempotent)."""
  shown = getattr(sys, hook_name)
  if getattr(shown, "skips_closed_loop_callbacks", False):
    return

  def hook(*args):
    if not _closed_loop_callback(error_of(*args)):
      shown(*args)

  hook.skips_closed_loop_callbacks = True
  setattr(sys, hook_name, hook)


def quiet_orbax_logs() -> None:
  """Filters orbax's chatter out of absl's log, and the closed-loop callbacks of a failed
  write out of the interpreter's error output (both of its hooks; idempotent)."""
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())
  _skip_closed_loop_callbacks("excepthook", lambda kind, error, tb: error)
  _skip_closed_loop_callbacks("unraisablehook", lambda unraisable: unraisable.exc_value)


class Checkpoints:
  """The run's checkpoint directory; a context manager that waits for writes and closes."""

  def __init__(self, workdir: str, *, keep: int):
    if keep < 1:
      raise ValueError(f"config.keep_checkpoints: must be >= 1, got {keep}")
    quiet_orbax_logs()
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
    self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
    self._writing: tuple[int, concurrent.futures.Future] | None = None  # (step, its write)

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    try:
      self.close()
    except CheckpointWriteError as error:
      if exc is None:
        raise
      logging.error("%s", error)  # the run is already stopping with another error

  def latest_step(self) -> int | None:
    self.wait()
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
    """Starts writing `state` (host arrays, not to be changed until the write ends) in the
    background, after the write before it; raises CheckpointWriteError if that one failed."""
    self.wait()
    self._writing = (step, self._writer.submit(
        self._manager.save, step, args=ocp.args.StandardSave(state), force=True))
    logging.info("saving the checkpoint at step %d", step)

  def check(self) -> None:
    """Raises CheckpointWriteError if the last write has ended in failure; never waits."""
    if self._writing is not None and self._writing[1].done():
      self.wait()

  def wait(self) -> None:
    """Waits for the last write; raises CheckpointWriteError if it failed."""
    if self._writing is None:
      return
    (step, write), self._writing = self._writing, None
    error = write.exception()
    if error is not None:
      raise self._write_failed(step, error) from error

  def _write_failed(self, step: int, error: BaseException) -> CheckpointWriteError:
    for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)  # its space back; a read-only one stays
    self._manager.reload()
    intact = [s for s in self._manager.all_steps() if s != step]
    if intact:
      resume = (f"The checkpoint at step {max(intact)} is intact: once that is fixed, rerunning "
                f"the same command resumes from it.")
    else:
      resume = "No earlier checkpoint exists: once that is fixed, rerunning starts over."
    logging.vlog(1, "the failed write: %s", "".join(traceback.format_exception(error)))
    return CheckpointWriteError(f"could not write the checkpoint at step {step} in "
                                f"{self.directory}: {failure_reason(error)}. {resume}")

  def close(self) -> None:
    """Waits for the last write (raising CheckpointWriteError if it failed) and closes."""
    try:
      self.wait()
    finally:
      self._writer.shutdown()
      self._manager.close()
