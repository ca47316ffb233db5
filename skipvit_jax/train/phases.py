"""Training phases: which token layout each step trains with.

A phase is a run of consecutive steps that share one static token layout, so it is one
compiled train step. The drop warm-up splits training in two (all tokens, then routed: SkipViT's
drop layers, ToMe's merging and PatchDropout alike);
ToE's stages split it at their start epochs (e.g. 99, 148, then 197 tokens for DeiT-S). The
phases are the intersection of both. The trainer asks `phase_at(phases, step)`; phases are
decided on the host from the config, never from data, and a resumed run lands in the right
phase from its step alone.
"""

from __future__ import annotations

import dataclasses
import math

from skipvit_jax.models import toe as toe_lib
from skipvit_jax.models.routing import RoutingConfig


@dataclasses.dataclass(frozen=True)
class ToESchedule:
  """ToE's stage schedule (see skipvit_jax/models/toe.py); epochs are 0-based."""

  expansion_epochs: tuple[float, ...]  # epoch at which each stage starts (may be fractional)
  keep_rates: tuple[float, ...]  # kept fraction of patch tokens per stage
  init_rate: float  # seed rate r0
  substeps: int  # expansion sub-steps per stage

  def plan(self, num_patches: int, epoch: int) -> toe_lib.ToEPlan | None:
    """The plan at `epoch`, or None where ToE is off (before the first stage, last stage)."""
    plan = toe_lib.make_plan(
        num_patches, expansion_epochs=self.expansion_epochs, keep_rates=self.keep_rates,
        init_rate=self.init_rate, substeps=self.substeps, epoch=epoch,
    )
    return plan if plan.active else None


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  start_step: int  # first step of the phase
  end_step: int  # one past its last step
  routing: RoutingConfig  # the model's routing during the phase (drop layers, ToMe, PatchDropout)
  toe: toe_lib.ToEPlan | None = None  # ToE's reduction during the phase (None: off)

  @property
  def key(self) -> tuple:
    """Phases with equal keys share one compiled step."""
    return (self.routing, self.toe)


def make_phases(
    *,
    routing: RoutingConfig,
    drop_warmup_steps: int,
    total_steps: int,
    toe: ToESchedule | None = None,
    steps_per_epoch: int = 1,
    num_patches: int = 0,
) -> tuple[Phase, ...]:
  """All tokens for `drop_warmup_steps`, then `routing` (whatever it reduces: drop layers, ToMe,
  PatchDropout); ToE stages switch at their epochs."""
  if total_steps < 1:
    raise ValueError(f"total training steps must be >= 1, got {total_steps}")
  if drop_warmup_steps < 0:
    raise ValueError(f"drop_warmup_steps must be >= 0, got {drop_warmup_steps}")
  warmup_end = drop_warmup_steps if routing.reduces else 0
  starts = {0, warmup_end}
  if toe is not None:
    # A stage starting mid-epoch (fine-tuning schedules) starts at the first step at or after it.
    starts |= {math.ceil(epoch * steps_per_epoch - 1e-9) for epoch in toe.expansion_epochs}
  starts = sorted(s for s in starts if s < total_steps)

  phases: list[Phase] = []
  for start, end in zip(starts, starts[1:] + [total_steps]):
    warming_up = start < warmup_end
    phase_routing = RoutingConfig() if warming_up else routing
    epoch = start / steps_per_epoch
    plan = toe.plan(num_patches, epoch) if toe is not None else None
    parts = [f"toe_stage{toe_lib.stage_at(toe.expansion_epochs, epoch)}"] if toe is not None else []
    if routing.reduces:
      parts.append("drop_warmup" if warming_up else "routed")
    phase = Phase("+".join(parts) or "dense", start, end, phase_routing, plan)
    if phases and phases[-1].key == phase.key:
      phases[-1] = dataclasses.replace(phases[-1], end_step=end)
    else:
      phases.append(phase)
  return tuple(phases)


def phase_at(phases: tuple[Phase, ...], step: int) -> Phase:
  for phase in phases:
    if phase.start_step <= step < phase.end_step:
      return phase
  raise ValueError(f"step {step} is outside the schedule 0..{phases[-1].end_step - 1}")
