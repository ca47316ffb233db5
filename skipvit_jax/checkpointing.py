"""Orbax checkpoints of the train state in `workdir/checkpoints`, keeping the latest k.

A checkpoint holds the step, parameters and optimizer state. The RNG and the data position are
functions of (seed, step) (see train.py), so the step restores them too.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, workdir: str, *, keep: int):
    if keep < 1:
      raise ValueError(f"config.keep_checkpoints: must be >= 1, got {keep}")
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, like: Any) -> Any | None:
    """The latest checkpoint restored into the structure of `like` (host arrays), or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    return self._manager.restore(step, args=ocp.args.StandardRestore(like))

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; a later save or close() waits for it."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
