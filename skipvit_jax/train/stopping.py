"""Stopping a run cleanly: SIGTERM (a scheduler's pre-emption, `kill`) asks the trainer to
checkpoint the last completed step and return; and a fault injector, so that tests can stop a
real run at an exact point.

What a SIGTERM costs, at most: the training step in flight (or, at a phase's first step, its
compilation), one evaluation batch (an evaluation stops between batches and is not recorded),
and one checkpoint write, after any asynchronous write in flight. The process then exits with
EXIT_PREEMPTED; rerunning the same command resumes from that checkpoint.

Fault injection: `SKIPVIT_FAULT=<signal>@<point>:<step>` (e.g. "SIGKILL@save:4") makes the
trainer send itself `signal` when it reaches `point` at `step`:
  step  right after the step's computation is dispatched (so the signal arrives mid-step);
  eval  after the first batch of the evaluation at that step;
  save  right after the asynchronous checkpoint write of that step has started.
"""

from __future__ import annotations

import os
import signal

EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM
FAULT_ENV = "SKIPVIT_FAULT"
FAULT_POINTS = ("step", "eval", "save")


class StopRequest:
  """While active (a `with` block), SIGTERM sets `requested` instead of ending the process."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "StopRequest":
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def parse_fault(spec: str) -> tuple[signal.Signals, str, int] | None:
  """"SIGTERM@eval:8" -> (SIGTERM, "eval", 8); "" -> None."""
  if not spec:
    return None
  try:
    name, rest = spec.split("@")
    point, step = rest.split(":")
    fault = (signal.Signals[name], point, int(step))
  except (KeyError, ValueError):
    fault = None
  if fault is None or fault[1] not in FAULT_POINTS:
    raise ValueError(f"{FAULT_ENV}={spec!r}: expected <signal>@<point>:<step> with point in "
                     f"{FAULT_POINTS}, e.g. SIGKILL@save:4")
  return fault


class FaultInjector:
  """Sends this process the signal `SKIPVIT_FAULT` names at its point and step (once)."""

  def __init__(self, spec: str | None = None):
    self._fault = parse_fault(os.environ.get(FAULT_ENV, "") if spec is None else spec)

  def at(self, point: str, step: int) -> None:
    if self._fault is not None and self._fault[1:] == (point, step):
      fault, self._fault = self._fault, None
      os.kill(os.getpid(), fault[0])
