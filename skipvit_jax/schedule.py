"""Training phases: which token layout each step trains with.

A phase is a run of consecutive steps that share one static token layout, so it is one
compiled train step. SkipViT's drop warm-up gives two phases (all tokens, then routed).
The trainer asks `phase_at(phases, step)`; phases are decided on the host from the config,
never from data, and a resumed run lands in the right phase from its step alone.
"""

from __future__ import annotations

import dataclasses

from skipvit_jax.routing import RoutingConfig


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  start_step: int  # first step of the phase
  end_step: int  # one past its last step
  routing: RoutingConfig  # the model's routing during the phase

  @property
  def key(self) -> tuple:
    """Phases with equal keys share one compiled step."""
    return (self.routing,)


def make_phases(
    *, routing: RoutingConfig, drop_warmup_steps: int, total_steps: int
) -> tuple[Phase, ...]:
  """Warm-up with all tokens for `drop_warmup_steps`, then `routing` until `total_steps`."""
  if total_steps < 1:
    raise ValueError(f"total training steps must be >= 1, got {total_steps}")
  if drop_warmup_steps < 0:
    raise ValueError(f"drop_warmup_steps must be >= 0, got {drop_warmup_steps}")
  if not routing.routes:
    return (Phase("dense", 0, total_steps, routing),)
  warmup_end = min(drop_warmup_steps, total_steps)
  phases = []
  if warmup_end > 0:
    phases.append(Phase("drop_warmup", 0, warmup_end, RoutingConfig()))
  if warmup_end < total_steps:
    phases.append(Phase("routed", warmup_end, total_steps, routing))
  return tuple(phases)


def phase_at(phases: tuple[Phase, ...], step: int) -> Phase:
  for phase in phases:
    if phase.start_step <= step < phase.end_step:
      return phase
  raise ValueError(f"step {step} is outside the schedule 0..{phases[-1].end_step - 1}")
