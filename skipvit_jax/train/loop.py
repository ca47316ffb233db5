"""The trainer: `train_and_evaluate(config, workdir)`.

Data parallel with `jax.pmap` over the local devices (gradients averaged with `pmean` over
every device of every host). Each training phase (see phases.py) is one compiled step,
compiled when the phase is first reached. The RNG of step s is `fold_in(key(seed), s)`
(step.py) and the data order is a function of (seed, step) (data/pipeline.py), so
restoring the step from a checkpoint restores the RNG and the data position with it.

Nothing is lost but the steps since the last checkpoint: SIGTERM checkpoints the last completed
step and returns with `preempted` set (main.py then exits with stopping.EXIT_PREEMPTED); a kill
leaves the previous checkpoints intact (checkpointing.py); a non-finite loss stops the run with
the last finite state checkpointed. Rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from skipvit_jax.models import flops, pretrained
from skipvit_jax.runtime import distributed, parallel
from skipvit_jax.train import checkpointing, evaluate, optim, phases as phases_lib, step as step_lib, stopping, validation
from skipvit_jax.data import pipeline
from skipvit_jax.train.metrics import MetricWriter
from skipvit_jax.models.vit import ViT
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.train.throughput import ThroughputMeter, format_duration
# The config -> model and schedule builders, here where the trainer's users look for them.
from skipvit_jax.train.validation import (build_model, routing_config, toe_schedule,  # pylint: disable=unused-import
                                    total_train_steps)

AXIS = parallel.AXIS


class NonFiniteError(FloatingPointError):
  """Raised when a step produces a NaN/inf loss or gradient."""


# --------------------------------------------------------------------------------------------
# The run's plan: model, phases and optimizer, from a validated config.


def training_phases(config: ml_collections.ConfigDict, model: ViT, steps_per_epoch: int,
                    total_steps: int) -> tuple[phases_lib.Phase, ...]:
  """The run's training phases (drop warm-up, routing, ToE stages), each one compiled step."""
  return phases_lib.make_phases(
      routing=model.routing, total_steps=total_steps,
      drop_warmup_steps=int(round(config.drop_warmup_epochs * steps_per_epoch)),
      toe=toe_schedule(config, model.num_patches), steps_per_epoch=steps_per_epoch,
      num_patches=model.num_patches,
  )


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, learning-rate schedule) of the run."""
  learning_rate = optim.learning_rate_schedule(
      base_lr=config.optimizer.lr, warmup_lr=config.optimizer.warmup_lr,
      warmup_steps=int(round(config.optimizer.warmup_epochs * steps_per_epoch)),
      total_steps=total_steps, min_lr=config.optimizer.min_lr,
  )
  return optim.make_optimizer(config.optimizer, learning_rate), learning_rate


def per_device_train_step(config: ml_collections.ConfigDict, model: ViT,
                          optimizer: optax.GradientTransformation,
                          learning_rate: optax.Schedule) -> Callable:
  """`step_lib.train_step` bound to one phase's model: what the trainer pmaps over the
  axis `AXIS` (and what tests/test_cuda_lowering.py lowers for GPUs)."""
  regularization = step_lib.Regularization(
      label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
      cutmix_alpha=config.cutmix_alpha, mix_switch_prob=config.mix_switch_prob,
  )
  return functools.partial(
      step_lib.train_step, model=model, optimizer=optimizer, learning_rate=learning_rate,
      regularization=regularization, seed=config.seed,
      grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
  )


def initial_state(config: ml_collections.ConfigDict, model: ViT,
                  optimizer: optax.GradientTransformation) -> step_lib.TrainState:
  """The run's fresh state: parameters from key(config.seed) (they do not depend on routing or
  ToE), the optimizer's state, and the EMA when config.ema_decay > 0. Also the template a
  checkpoint of the run restores into."""
  return step_lib.init_state(model.clone(routing=RoutingConfig(), toe=None), optimizer,
                                  config.seed, ema=config.ema_decay > 0)


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """Everything about a run that the config and the dataset decide, before any compilation."""
  model: ViT  # with the config's routing, without ToE (what evaluation runs)
  steps_per_epoch: int
  total_steps: int
  phases: tuple[phases_lib.Phase, ...]
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, info: pipeline.DatasetInfo) -> "RunPlan":
    model = build_model(config, info.num_classes)
    steps_per_epoch, total_steps, phases = validation.check_run_length(config, model,
                                                                       info.num_train)
    optimizer, learning_rate = make_optimizer(config, steps_per_epoch, total_steps)
    return cls(model, steps_per_epoch, total_steps, phases, optimizer, learning_rate)

  @property
  def flop_args(self) -> dict:
    """The model's arguments to the skipvit_jax.models.flops functions, besides its variant."""
    return dict(image_size=self.model.image_size, num_classes=self.model.num_classes,
                stem=self.model.stem)

  def log(self, config: ml_collections.ConfigDict, info: pipeline.DatasetInfo) -> float:
    """Logs the config, devices, data and each phase's cost; returns the whole-run FLOP-ideal
    speedup."""
    model, flop_args = self.model, self.flop_args
    run_speedup = flops.schedule_speedup(model.variant, phases=self.phases, **flop_args)
    logging.info("config:\n%s", config)
    logging.info("devices: %d (%d per process, %d processes), kind %s", jax.device_count(),
                 jax.local_device_count(), jax.process_count(), jax.devices()[0].device_kind)
    logging.info("data: %s, %d train / %d eval examples, %d steps per epoch, %d steps",
                 info.name, info.num_train, info.num_eval, self.steps_per_epoch, self.total_steps)
    for phase in self.phases:
      macs = flops.forward_macs(model.variant, routing=phase.routing, toe=phase.toe, **flop_args)
      logging.info(
          "phase %-22s steps %d..%d: %.4f GMACs per image forward, FLOP-ideal speedup %.3fx",
          phase.name, phase.start_step, phase.end_step - 1, macs.total / 1e9,
          flops.ideal_speedup(model.variant, routing=phase.routing, toe=phase.toe, **flop_args))
    logging.info("routing %s; whole-run FLOP-ideal speedup %.3fx", model.routing, run_speedup)
    return run_speedup


# --------------------------------------------------------------------------------------------
# Resuming.

# The fields a resumed run must share with the run that wrote the workdir (config.json): what
# the parameters, the token layouts and the data order depend on. Where and how fast data is
# read may change.
RESUME_FIELDS = ("seed", "model", "routing", "drop_warmup_epochs", "toe", "data", "batch_size",
                 "grad_accum_steps")
RESUME_FREE = ("data.data_dir", "data.source_dir", "data.num_threads", "data.in_memory")
# Fields added after workdirs were first written, with the value every earlier run had: an old
# config.json without them describes the same run.
ADDED_FIELDS = {"model.stem": "patch"}


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """"field: saved -> now" for every RESUME_FIELDS leaf that differs."""
  def leaves(tree, prefix=""):
    if isinstance(tree, dict):
      for key, value in tree.items():
        yield from leaves(value, f"{prefix}{key}.")
    else:
      yield prefix[:-1], tree

  current = json.loads(config.to_json())  # as config.json has it: tuples are lists
  now = {**ADDED_FIELDS, **dict(leaves({k: current[k] for k in RESUME_FIELDS if k in current}))}
  before = {**ADDED_FIELDS, **dict(leaves({k: saved[k] for k in RESUME_FIELDS if k in saved}))}
  return [f"{name}: {before.get(name, '(absent)')!r} -> {now.get(name, '(absent)')!r}"
          for name in sorted(set(now) | set(before))
          if name not in RESUME_FREE and now.get(name) != before.get(name)]


def restore_or_initialise(config: ml_collections.ConfigDict, plan: RunPlan,
                          checkpoints: checkpointing.Checkpoints,
                          workdir: str) -> step_lib.TrainState:
  """The latest restorable checkpoint (its config must match, see RESUME_FIELDS), else the
  parameters of config.init_from, else fresh ones."""
  state = initial_state(config, plan.model, plan.optimizer)
  config_path = os.path.join(workdir, "config.json")
  if checkpoints.latest_step() is not None and os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      changed = resume_differences(json.load(f), config)
    if changed and not config.allow_resume_with_changes:
      raise ValueError(
          f"config: {workdir} holds a run with other settings than this config's, so resuming "
          f"it would not continue that run: {'; '.join(changed)}. Use another --workdir, or set "
          "config.allow_resume_with_changes=True to resume anyway.")
    if changed:
      logging.warning("resuming with changed settings (allowed): %s", "; ".join(changed))
  restored = checkpoints.restore_latest(jax.device_get(state))
  if restored is not None:
    if config.init_from:
      logging.info("resuming, so config.init_from is not used")
    return restored
  if config.init_from:
    params = pretrained.load(config.init_from, plan.model)  # logs what it resized or re-initialised
    logging.info("initialised the parameters from %s", config.init_from)
    return state.replace(params=params,
                         ema_params=params if state.ema_params is not None else None)
  return state


# --------------------------------------------------------------------------------------------
# The parts of the loop.


class PhaseSteps:
  """One compiled (pmapped) train step per phase layout, compiled when first needed."""

  def __init__(self, config: ml_collections.ConfigDict, plan: RunPlan):
    self._config, self._plan = config, plan
    self._steps: dict[tuple, Any] = {}

  def __call__(self, phase: phases_lib.Phase) -> tuple[Callable, bool]:
    """(the phase's step, whether this call created it: its first run compiles)."""
    if phase.key in self._steps:
      return self._steps[phase.key], False
    model = self._plan.model.clone(routing=phase.routing, toe=phase.toe)
    self._steps[phase.key] = jax.pmap(
        per_device_train_step(self._config, model, self._plan.optimizer, self._plan.learning_rate),
        axis_name=AXIS, donate_argnums=(0,))
    return self._steps[phase.key], True


class Progress:
  """The training log: the loss averaged between log lines, throughput, norms. A step's
  metrics are read one step late, so the host never waits for the device in between."""

  def __init__(self, writer: MetricWriter, meter: ThroughputMeter, *, log_every: int,
               total_steps: int, steps_per_epoch: int):
    self._writer, self._meter = writer, meter
    self._log_every, self._total, self._per_epoch = log_every, total_steps, steps_per_epoch
    self._pending = None  # (step, metrics) of the last dispatched step
    self._loss, self._steps = 0.0, 0

  def dispatched(self, step: int, metrics: dict, *, compiled: bool) -> None:
    """Step `step` was dispatched; with `compiled`, it compiled first: wait, time from now."""
    self.flush()
    self._pending = (step, metrics)
    if compiled:
      jax.block_until_ready(metrics)
      logging.info("compiled the train step at step %d", step)
      self._meter.restart()
      self.flush(timed=False)

  def flush(self, *, timed: bool = True) -> None:
    """Reads the pending step's metrics; raises NonFiniteError if it was not applied."""
    if self._pending is None:
      return
    (step, metrics), self._pending = self._pending, None
    metrics = parallel.unreplicate(metrics)
    if not metrics["finite"]:
      raise NonFiniteError(step, float(metrics["loss"]), float(metrics["grad_norm"]))
    self._meter.step_done(timed=timed)
    self._loss, self._steps = self._loss + float(metrics["loss"]), self._steps + 1
    if step % self._log_every and step != self._total:
      return
    record = {
        "train/loss": self._loss / self._steps,
        "train/learning_rate": float(metrics["learning_rate"]),
        "train/grad_norm": float(metrics["grad_norm"]),
        "train/param_norm": float(metrics["param_norm"]),
        "train/epoch": step / self._per_epoch,
    }
    rate = self._meter.window_rate()
    if rate is not None:
      record["train/images_per_sec"] = rate
    eta = format_duration(self._meter.seconds_for(self._total - step))
    logging.info("step %d/%d  epoch %.2f  loss %.4f  lr %.2e  img/s %s  ETA %s", step,
                 self._total, record["train/epoch"], record["train/loss"],
                 record["train/learning_rate"], "n/a" if rate is None else f"{rate:.1f}", eta)
    self._writer.write(step, record)
    self._loss, self._steps = 0.0, 0


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient; the last finite state is checkpointed."""

  def __init__(self, step: int, loss: float, grad_norm: float):
    self.step = step
    super().__init__(f"step {step}: loss or gradient is not finite (loss={loss}, "
                     f"grad_norm={grad_norm}); stopping. Neither this step's update nor a later "
                     f"one was applied: the checkpoint at step {step - 1} holds the last finite "
                     "state.")


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  step: int  # the step training stopped at
  eval_metrics: dict[str, float]  # the last evaluation's ("eval/top1", ...)
  params: Any  # this process's final parameters, numpy
  preempted: bool = False  # stopped by SIGTERM: rerun to resume


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one."""
  distributed.use_cpu_devices(config.num_cpu_devices)
  distributed.maybe_initialize()
  config = validation.check_config(config)  # before any data is generated or compiled
  sources = pipeline.load_sources(config.data)
  info = sources.info
  plan = RunPlan.build(config, info)  # the run length against the dataset's size
  run_speedup = plan.log(config, info)

  with contextlib.ExitStack() as exits:  # closes checkpoints and metric files on every exit
    checkpoints = exits.enter_context(checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints))
    state = restore_or_initialise(config, plan, checkpoints, workdir)
    start_step = int(state.step)
    writer = exits.enter_context(contextlib.closing(MetricWriter(workdir)))
    if jax.process_index() == 0:  # what produced this workdir, for notebooks and sweeps
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=1))
    if start_step == 0:
      writer.write_text(0, "config", str(config))
      writer.write(0, {"flops/ideal_speedup": flops.ideal_speedup(
          plan.model.variant, routing=plan.model.routing, **plan.flop_args),
                       "flops/run_ideal_speedup": run_speedup})
    stop = exits.enter_context(stopping.StopRequest())
    faults = stopping.FaultInjector()
    steps = PhaseSteps(config, plan)
    evaluator = evaluate.Evaluator(model=plan.model, sources=sources,
                                   global_batch=config.eval_batch_size,
                                   num_threads=config.data.num_threads,
                                   sparse_toe=config.toe.sparse_eval)
    meter = ThroughputMeter(config.batch_size)
    progress = Progress(writer, meter, log_every=config.log_every_steps,
                        total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch)
    batches = pipeline.train_batches(
        sources.train, info, global_batch=config.batch_size, image_size=plan.model.image_size,
        seed=config.seed, start_step=start_step, total_steps=plan.total_steps,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=config.data.num_threads, augmentation=pipeline.Augmentation(
            config.data.rand_augment, config.data.random_erase,
            int(config.data.random_translate)),
        repeats=config.data.repeated_augmentations)
    eval_every = max(int(round(config.eval_every_epochs * plan.steps_per_epoch)), 1)
    stop_after = config.stop_after_step if config.stop_after_step >= 0 else plan.total_steps

    # ---- the loop
    state = parallel.replicate(state)
    applied = parallel.replicate(np.bool_(True))  # False from the first non-finite step on
    step, final_eval, eval_missing = start_step, {}, False

    def evaluate_now(toe) -> bool:
      """Evaluates and records; False when a SIGTERM cut the evaluation short."""
      nonlocal final_eval
      results = evaluator(state, toe, lambda: (faults.at("eval", step), stop.requested)[1])
      if results is None:
        return False
      final_eval = results
      writer.write(step, results)
      logging.info("eval at step %d: %s", step,
                   json.dumps({k: round(v, 4) for k, v in results.items()}))
      return True

    if start_step == plan.total_steps:  # resumed at the end: the final evaluation may be missing
      eval_missing = not evaluate_now(plan.phases[-1].toe)
    try:
      while step < plan.total_steps:
        phase = phases_lib.phase_at(plan.phases, step)
        step_fn, compiles = steps(phase)
        state, metrics = step_fn(state, parallel.shard(next(batches)), applied)
        applied, step = metrics["finite"], step + 1
        faults.at("step", step)
        progress.dispatched(step, metrics, compiled=compiles)
        due_eval = step % eval_every == 0 or step == plan.total_steps
        due_save = step % config.checkpoint_every_steps == 0 or step == plan.total_steps
        if due_eval or due_save or step >= stop_after or stop.requested:
          progress.flush()
          with meter.paused():
            if due_eval and not stop.requested:
              eval_missing = not evaluate_now(phase.toe)
            if due_save or step >= stop_after or stop.requested:
              checkpoints.save(step, parallel.unreplicate(state))
              faults.at("save", step)
        if step >= stop_after or stop.requested:
          break
    except NonFiniteError as error:
      # The state holds the last finite step's values: no later update was applied.
      if checkpoints.latest_step() != error.step - 1:
        checkpoints.save(error.step - 1, parallel.unreplicate(state).replace(step=error.step - 1))
      raise

    preempted = stop.requested and (step < plan.total_steps or eval_missing)
    if step < plan.total_steps or preempted:
      logging.info("stopping at step %d %s; rerun to resume", step,
                   "on SIGTERM" if preempted else "as config.stop_after_step asks")
    final = {"train/finished": 1.0} if step == plan.total_steps and not preempted else {}
    if meter.steady_rate is not None:
      final["train/steady_images_per_sec"] = meter.steady_rate
      logging.info("steady-state training throughput: %.1f images/s", meter.steady_rate)
    if final:
      writer.write(step, final)
  return TrainResult(step, final_eval, parallel.unreplicate(state.params), preempted)
