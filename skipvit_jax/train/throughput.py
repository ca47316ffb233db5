"""Training throughput over steady steps only: a phase's first step (which compiles) and the
pauses for evaluation and checkpoints are left out, so images/s measures the training step."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


def format_duration(seconds: float) -> str:
  """3725 -> "1h02m"; 95 -> "1m35s"."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ThroughputMeter:
  """Images per second, per log window and over the whole run."""

  def __init__(self, images_per_step: int, clock=time.perf_counter):
    self._images_per_step = images_per_step
    self._clock = clock
    self._steady_images = 0
    self._steady_seconds = 0.0
    self.restart()

  def restart(self) -> None:
    """Starts a new window now (after a compilation, whose time must not count)."""
    self._start = self._clock()
    self._excluded = 0.0
    self._timed_steps = 0

  def step_done(self, *, timed: bool = True) -> None:
    self._timed_steps += int(timed)

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside (evaluation, checkpointing) is not training time."""
    start = self._clock()
    try:
      yield
    finally:
      self._excluded += self._clock() - start

  def window_rate(self) -> float | None:
    """Images/s of the timed steps since the last call (None if there were none); the window
    restarts."""
    rate = None
    if self._timed_steps:
      seconds = self._clock() - self._start - self._excluded
      images = self._timed_steps * self._images_per_step
      self._steady_images += images
      self._steady_seconds += seconds
      rate = images / seconds
    self.restart()
    return rate

  @property
  def steady_rate(self) -> float | None:
    """Images/s over every window read so far."""
    return self._steady_images / self._steady_seconds if self._steady_seconds > 0 else None

  def seconds_for(self, steps: int) -> float:
    """The time `steps` more steps take at the steady rate (0 before any window was read)."""
    rate = self.steady_rate
    return steps * self._images_per_step / rate if rate else 0.0
