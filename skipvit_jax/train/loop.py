"""The trainer: `train_and_evaluate(config, workdir)`.

config -> plan -> data -> model -> loss -> update -> metrics: validation.py checks the config,
plan.py builds the run from it (model, phases, optimizer, step counts), data/pipeline.py feeds
it, step.py is the compiled step (loss and update), metrics.py and evaluate.py record it. This
module holds only the loop and its parts.

Data parallel with `jax.pmap` over the local devices (gradients averaged with `pmean` over
every device of every host). Each training phase (see phases.py) is one compiled step,
compiled when the phase is first reached. The RNG of step s is `fold_in(key(seed), s)`
(step.py) and the data order is a function of (seed, step) (data/pipeline.py), so
restoring the step from a checkpoint restores the RNG and the data position with it.

Nothing is lost but the steps since the last checkpoint: SIGTERM checkpoints the last completed
step and returns with `preempted` set (main.py then exits with stopping.EXIT_PREEMPTED); a kill
leaves the previous checkpoints intact (checkpointing.py); a checkpoint that cannot be written
(a full disk) stops the run at the next step with CheckpointWriteError, naming the intact one;
a non-finite loss stops the run with the last finite state checkpointed. Rerunning the same
command resumes. The workdir is locked for the run (runtime/workdir_lock.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from skipvit_jax.data import pipeline
from skipvit_jax.models import flops, pretrained
from skipvit_jax.runtime import distributed, parallel, workdir_lock
from skipvit_jax.train import checkpointing, evaluate, resume, stopping, validation
from skipvit_jax.train import phases as phases_lib
from skipvit_jax.train import plan as plan_lib
from skipvit_jax.train import step as step_lib
from skipvit_jax.train.metrics import MetricWriter, read_metrics
from skipvit_jax.train.throughput import ThroughputMeter, format_duration


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient; the last finite state is checkpointed."""

  def __init__(self, step: int, loss: float, grad_norm: float):
    self.step = step
    super().__init__(f"step {step}: loss or gradient is not finite (loss={loss}, "
                     f"grad_norm={grad_norm}); stopping. Neither this step's update nor a later "
                     f"one was applied: the checkpoint at step {step - 1} holds the last finite "
                     "state.")


# --------------------------------------------------------------------------------------------
# The parts of the loop.


def restore_or_initialise(config: ml_collections.ConfigDict, plan: plan_lib.RunPlan,
                          checkpoints: checkpointing.Checkpoints,
                          workdir: str) -> step_lib.TrainState:
  """The latest restorable checkpoint (of the same run: resume.check_same_run), else the
  parameters of config.init_from, else fresh ones."""
  state = plan_lib.initial_state(config, plan.model, plan.optimizer)
  if checkpoints.latest_step() is not None:
    resume.check_same_run(config, workdir)
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


def recorded_evaluation(workdir: str, step: int) -> dict[str, float] | None:
  """The evaluation metrics.jsonl holds at `step`; None when there is none (a SIGTERM cut it
  short). Process 0's file decides for every process, as evaluating is collective."""
  records = read_metrics(workdir, missing_ok=True)
  recorded = {name: value for record in records if record["step"] == step
              for name, value in record.items() if name.startswith("eval")}
  if jax.process_count() > 1:
    return recorded if multihost_utils.broadcast_one_to_all(bool(recorded)) else None
  return recorded or None


class PhaseSteps:
  """One compiled (pmapped) train step per phase layout, compiled when first needed."""

  def __init__(self, config: ml_collections.ConfigDict, plan: plan_lib.RunPlan):
    self._config, self._plan = config, plan
    self._steps: dict[tuple, Any] = {}

  def __call__(self, phase: phases_lib.Phase) -> tuple[Callable, bool]:
    """(the phase's step, whether this call created it: its first run compiles)."""
    if phase.key in self._steps:
      return self._steps[phase.key], False
    model = self._plan.model.clone(routing=phase.routing, toe=phase.toe)
    self._steps[phase.key] = jax.pmap(
        plan_lib.per_device_train_step(self._config, model, self._plan.optimizer,
                                       self._plan.learning_rate, self._plan.augmentation),
        axis_name=parallel.AXIS, donate_argnums=(0,))
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


# --------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  step: int  # the step training stopped at
  eval_metrics: dict[str, float]  # the last evaluation's ("eval/top1", ...)
  params: Any  # this process's final parameters, numpy
  preempted: bool = False  # stopped by SIGTERM: rerun to resume


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one.
  Raises workdir_lock.WorkdirInUse, before reading data, when another run holds `workdir`."""
  distributed.use_cpu_devices(config.num_cpu_devices)
  distributed.maybe_initialize()
  config = validation.check_config(config)  # before any data is generated or anything compiles
  with workdir_lock.hold_for_run(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  try:
    sources = pipeline.load_sources(config.data)
  except ValueError as e:  # a dataset it cannot open, the config field named
    raise validation.ConfigError(str(e)) from None
  info = sources.info
  validation.check_run_length(config, info.num_train)  # now that the dataset's size is known
  plan = plan_lib.RunPlan.build(config, info)
  run_speedup = plan.log(config, info)

  with contextlib.ExitStack() as exits:  # closes checkpoints and metric files on every exit
    checkpoints = exits.enter_context(checkpointing.Checkpoints(workdir,
                                                                keep=config.keep_checkpoints))
    state = restore_or_initialise(config, plan, checkpoints, workdir)
    start_step = int(state.step)
    writer = exits.enter_context(contextlib.closing(MetricWriter(workdir)))
    if jax.process_index() == 0:
      resume.write_config(config, workdir)
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
        num_threads=config.data.num_threads, augmentation=plan_lib.host_augmentation(config),
        repeats=config.data.repeated_augmentations)
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

    if start_step == plan.total_steps:  # resumed at the end: evaluates if that is missing
      recorded = recorded_evaluation(workdir, start_step)
      if recorded is None:
        eval_missing = not evaluate_now(plan.phases[-1].toe)
      else:
        final_eval = recorded
    try:
      # A run resumed at or past config.stop_after_step trains nothing (the stop is where the
      # last run left it), rather than one step more on every rerun.
      while step < min(plan.total_steps, stop_after):
        phase = phases_lib.phase_at(plan.phases, step)
        step_fn, compiles = steps(phase)
        state, metrics = step_fn(state, parallel.shard(next(batches)), applied)
        applied, step = metrics["finite"], step + 1
        faults.at("step", step)
        checkpoints.check()  # a failed write stops the run here, not at the next save
        progress.dispatched(step, metrics, compiled=compiles)
        due_eval = step % plan.eval_every_steps == 0 or step == plan.total_steps
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
      if preempted:
        logging.info("stopping at step %d on SIGTERM; rerun to resume", step)
      else:  # the same command would stop here again
        logging.info("stopping at step %d as config.stop_after_step asks; to go on, rerun with "
                     "a later config.stop_after_step (-1: to the end)", step)
    final = {"train/finished": 1.0} if step == plan.total_steps and not preempted else {}
    if meter.steady_rate is not None:
      final["train/steady_images_per_sec"] = meter.steady_rate
      logging.info("steady-state training throughput: %.1f images/s", meter.steady_rate)
    if final:
      writer.write(step, final)
  return TrainResult(step, final_eval, parallel.unreplicate(state.params), preempted)
