"""Training phases: drop warm-up, ToE stages, and the whole-run FLOP model."""

import pytest

from skipvit_jax.models import flops
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.train import phases as phases_lib

ROW = RoutingConfig((6,), (0.55,), 11)
DEIT_S_TOE = phases_lib.ToESchedule((0, 100, 200), (0.5, 0.75, 1.0), 0.25, 2)


def _summary(phases):
  return [(p.name, p.start_step, p.end_step, 1 + p.toe.num_selected if p.toe else None)
          for p in phases]


def test_drop_warmup_gives_two_phases():
  phases = phases_lib.make_phases(routing=ROW, drop_warmup_steps=30, total_steps=100)
  assert _summary(phases) == [("drop_warmup", 0, 30, None), ("routed", 30, 100, None)]
  assert not phases[0].routing.routes and phases[1].routing == ROW
  assert phases_lib.phase_at(phases, 29).name == "drop_warmup"
  assert phases_lib.phase_at(phases, 30).name == "routed"
  with pytest.raises(ValueError, match="outside the schedule"):
    phases_lib.phase_at(phases, 100)


def test_dense_and_no_warmup_are_single_phases():
  assert _summary(phases_lib.make_phases(routing=RoutingConfig(), drop_warmup_steps=5,
                                       total_steps=10)) == [("dense", 0, 10, None)]
  assert _summary(phases_lib.make_phases(routing=ROW, drop_warmup_steps=0,
                                       total_steps=10)) == [("routed", 0, 10, None)]


def test_toe_deit_s_stages_switch_at_their_epochs():
  phases = phases_lib.make_phases(routing=RoutingConfig(), drop_warmup_steps=0, total_steps=3000,
                                toe=DEIT_S_TOE, steps_per_epoch=10, num_patches=196)
  assert _summary(phases) == [
      ("toe_stage1", 0, 1000, 99), ("toe_stage2", 1000, 2000, 148),
      ("toe_stage3", 2000, 3000, None),
  ]


def test_toe_and_drop_warmup_intersect():
  phases = phases_lib.make_phases(routing=ROW, drop_warmup_steps=150, total_steps=3000,
                                toe=DEIT_S_TOE, steps_per_epoch=10, num_patches=196)
  assert _summary(phases) == [
      ("toe_stage1+drop_warmup", 0, 150, 99), ("toe_stage1+routed", 150, 1000, 99),
      ("toe_stage2+routed", 1000, 2000, 148), ("toe_stage3+routed", 2000, 3000, None),
  ]
  assert len({p.key for p in phases}) == 4


def test_toe_stage_zero_before_the_first_stage_is_plain():
  yolos = phases_lib.ToESchedule((5, 50, 100), (0.5, 0.75, 1.0), 0.25, 2)
  phases = phases_lib.make_phases(routing=RoutingConfig(), drop_warmup_steps=0, total_steps=60,
                                toe=yolos, steps_per_epoch=1, num_patches=196)
  assert _summary(phases) == [("toe_stage0", 0, 5, None), ("toe_stage1", 5, 50, 99),
                              ("toe_stage2", 50, 60, 148)]


def test_deit_s_toe_whole_run_ideal_speedup_is_about_1_31():
  phases = phases_lib.make_phases(routing=RoutingConfig(), drop_warmup_steps=0, total_steps=300,
                                toe=DEIT_S_TOE, steps_per_epoch=1, num_patches=196)
  per_stage = [flops.ideal_speedup("S/16", image_size=224, num_classes=1000, toe=p.toe)
               for p in phases]
  assert [round(s, 2) for s in per_stage] == [1.88, 1.31, 1.0]
  run = flops.schedule_speedup("S/16", image_size=224, num_classes=1000, phases=phases)
  assert round(run, 2) == 1.31
  # The spec's own cost ratios: 0.53 / 0.76 / 1.00 of the dense forward.
  assert [round(1 / s, 2) for s in per_stage] == [0.53, 0.76, 1.0]
