"""The trainer: `train_and_evaluate(config, workdir)`.

Data parallel with `jax.pmap` over the local devices (gradients averaged with `pmean` over
every device of every host). Each training phase (see schedule.py) is one compiled step,
compiled when the phase is first reached. The RNG of step s is `fold_in(key(seed), s)`
(training_step.py) and the data order is a function of (seed, step) (data/pipeline.py), so
restoring the step from a checkpoint restores the RNG and the data position with it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from skipvit_jax import (checkpointing, distributed, evaluate, flops, optim, parallel,
                         pretrained, schedule, training_step)
from skipvit_jax.data import pipeline, randaugment
from skipvit_jax.metric_writer import MetricWriter
from skipvit_jax.models.vit import GELUS, ViT
from skipvit_jax.routing import RoutingConfig

AXIS = parallel.AXIS
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteError(FloatingPointError):
  """Raised when a step produces a NaN/inf loss or gradient."""


# --------------------------------------------------------------------------------------------
# Configuration checks: everything here runs before any compilation.


def resolve_choices(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with its "auto" choices made, as the run's config.json records them:
  config.model.gelu "auto" becomes the GELU of config.init_from's checkpoint family (tanh
  without one)."""
  if config.init_from and not os.path.exists(config.init_from):
    raise ValueError(f"config.init_from: no checkpoint at {config.init_from!r} (a .npz, "
                     ".safetensors or .pth file, or a skipvit_jax workdir)")
  if config.model.gelu not in ("auto", *GELUS):
    raise ValueError(f"config.model.gelu: must be 'auto' or one of {GELUS}, got "
                     f"{config.model.gelu!r}")
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.model.gelu = pretrained.gelu_for(config.model.gelu, config.init_from)
  return resolved


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                routing: RoutingConfig | None = None) -> ViT:
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype: must be one of {sorted(DTYPES)}, got {config.model.dtype!r}")
  # Configs written before the GELU was a choice ran the tanh approximation.
  gelu = pretrained.gelu_for(config.model.get("gelu", "tanh"), config.get("init_from", ""))
  return ViT(
      variant=config.model.variant,
      num_classes=num_classes,
      image_size=config.data.image_size,
      dropout_rate=config.model.dropout_rate,
      stochastic_depth=config.model.stochastic_depth,
      routing=routing if routing is not None else routing_config(config),
      attention=config.model.attention,
      dtype=DTYPES[config.model.dtype],
      remat=config.model.remat,
      gelu=gelu,
  )


def routing_config(config: ml_collections.ConfigDict) -> RoutingConfig:
  r = config.routing
  return RoutingConfig(
      drop_layers=tuple(r.drop_layers), drop_ratios=tuple(r.drop_ratios),
      return_layer=r.return_layer if r.return_layer else None, mode=r.mode,
      drop_point=r.drop_point, ratio_of=r.ratio_of, fuse_normalize=r.fuse_normalize,
      score=r.score,
  )


def toe_schedule(config: ml_collections.ConfigDict, num_patches: int) -> schedule.ToESchedule | None:
  """The configured ToE schedule (validated), or None."""
  if not config.toe.enabled:
    return None
  t = config.toe
  toe = schedule.ToESchedule(
      expansion_epochs=tuple(t.expansion_epochs), keep_rates=tuple(t.keep_rates),
      init_rate=t.init_rate, substeps=t.substeps,
  )
  try:
    toe.plan(num_patches, epoch=0)
  except ValueError as e:
    raise ValueError(f"config.toe.{e}") from None
  return toe


def check_batch_sizes(config: ml_collections.ConfigDict) -> None:
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    size = config[field]
    if size < 1 or size % devices:
      raise ValueError(
          f"config.{field}: must be a positive multiple of the {devices} devices "
          f"({jax.process_count()} processes x {jax.local_device_count()} local), got {size}"
      )
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % (devices * accum):
    raise ValueError(
        f"config.grad_accum_steps: must be >= 1 and divide the per-device batch "
        f"{config.batch_size} / {devices} into equal micro-batches, got {accum}"
    )
  repeats = config.data.repeated_augmentations
  if repeats < 1 or config.batch_size % repeats:
    raise ValueError(
        f"config.data.repeated_augmentations: must be >= 1 and divide config.batch_size "
        f"{config.batch_size}, got {repeats}"
    )


def check_recipe(config: ml_collections.ConfigDict) -> None:
  """The regularisation fields: values in range, augmentation specs that parse."""
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"config.ema_decay: must be in [0, 1) (0 = no EMA), got {config.ema_decay}")
  if not 0.0 <= config.data.random_erase <= 1.0:
    raise ValueError(f"config.data.random_erase: a probability in [0, 1], got "
                     f"{config.data.random_erase}")
  if config.data.rand_augment:
    try:
      randaugment.parse_rand_augment(config.data.rand_augment)
    except ValueError as e:
      raise ValueError(f"config.data.rand_augment: {e}") from None


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(int(round(config.num_epochs * steps_per_epoch)), 1)


def training_phases(config: ml_collections.ConfigDict, model: ViT, steps_per_epoch: int,
                    total_steps: int) -> tuple[schedule.Phase, ...]:
  """The run's training phases (drop warm-up, routing, ToE stages), each one compiled step."""
  return schedule.make_phases(
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
  """`training_step.train_step` bound to one phase's model: what the trainer pmaps over the
  axis `AXIS` (and what tests/test_cuda_lowering.py lowers for GPUs)."""
  regularization = training_step.Regularization(
      label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
      cutmix_alpha=config.cutmix_alpha, mix_switch_prob=config.mix_switch_prob,
  )
  return functools.partial(
      training_step.train_step, model=model, optimizer=optimizer, learning_rate=learning_rate,
      regularization=regularization, seed=config.seed,
      grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
  )


def initial_state(config: ml_collections.ConfigDict, model: ViT,
                  optimizer: optax.GradientTransformation) -> training_step.TrainState:
  """The run's fresh state: parameters from key(config.seed) (they do not depend on routing or
  ToE), the optimizer's state, and the EMA when config.ema_decay > 0. Also the template a
  checkpoint of the run restores into."""
  return training_step.init_state(model.clone(routing=RoutingConfig(), toe=None), optimizer,
                                  config.seed, ema=config.ema_decay > 0)


# --------------------------------------------------------------------------------------------
# Host-side helpers.


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class _StopRequest:
  """SIGTERM (pre-emption, `kill`) asks the loop to checkpoint and return at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  step: int  # the step training stopped at
  eval_metrics: dict[str, float]  # the last evaluation's ("eval/top1", ...)
  params: Any  # this process's final parameters, numpy


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one."""
  distributed.use_cpu_devices(config.num_cpu_devices)
  distributed.maybe_initialize()
  # ---- everything that can reject the config, before compiling anything
  config = resolve_choices(config)
  check_batch_sizes(config)
  check_recipe(config)
  sources = pipeline.load_sources(config.data)
  info = sources.info
  model = build_model(config, info.num_classes)
  dense_model = model.clone(routing=RoutingConfig())
  steps_per_epoch = pipeline.steps_per_epoch(info.num_train, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(
        f"config.batch_size: {config.batch_size} exceeds the {info.num_train} training examples"
    )
  total_steps = total_train_steps(config, steps_per_epoch)
  phases = training_phases(config, model, steps_per_epoch, total_steps)
  phase_models = {p.key: model.clone(routing=p.routing, toe=p.toe) for p in phases}  # validates
  optimizer, learning_rate = make_optimizer(config, steps_per_epoch, total_steps)

  flop_args = dict(image_size=model.image_size, num_classes=model.num_classes)
  run_speedup = flops.schedule_speedup(model.variant, phases=phases, **flop_args)
  logging.info("config:\n%s", config)
  logging.info("devices: %d (%d per process, %d processes), kind %s", jax.device_count(),
               jax.local_device_count(), jax.process_count(), jax.devices()[0].device_kind)
  logging.info("data: %s, %d train / %d eval examples, %d steps per epoch, %d steps",
               info.name, info.num_train, info.num_eval, steps_per_epoch, total_steps)
  for phase in phases:
    macs = flops.forward_macs(model.variant, routing=phase.routing, toe=phase.toe, **flop_args)
    logging.info(
        "phase %-22s steps %d..%d: %.4f GMACs per image forward, FLOP-ideal speedup %.3fx",
        phase.name, phase.start_step, phase.end_step - 1, macs.total / 1e9,
        flops.ideal_speedup(model.variant, routing=phase.routing, toe=phase.toe, **flop_args))
  logging.info("routing %s; whole-run FLOP-ideal speedup %.3fx", model.routing, run_speedup)

  # ---- state: fresh or restored
  state = initial_state(config, model, optimizer)
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(jax.device_get(state))
  if restored is not None:
    state = restored
    logging.info("resumed from the checkpoint at step %d%s", int(state.step),
                 " (config.init_from is not used when resuming)" if config.init_from else "")
  elif config.init_from:
    params = pretrained.load(config.init_from, model)  # logs what it resized or re-initialised
    state = state.replace(params=params,
                          ema_params=params if state.ema_params is not None else None)
    logging.info("initialised the parameters from %s", config.init_from)
  start_step = int(state.step)
  state = parallel.replicate(state)

  writer = MetricWriter(workdir)
  if jax.process_index() == 0:  # what produced this workdir, for notebooks and sweeps
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json(indent=1))
  if start_step == 0:
    writer.write_text(0, "config", str(config))
    writer.write(0, {
        "flops/ideal_speedup": flops.ideal_speedup(model.variant, routing=model.routing, **flop_args),
        "flops/run_ideal_speedup": run_speedup,
    })

  # ---- compiled steps, one per phase key, created on first use
  step_fns: dict[tuple, Any] = {}

  def step_fn_for(phase: schedule.Phase):
    if phase.key not in step_fns:
      step_fns[phase.key] = jax.pmap(
          per_device_train_step(config, phase_models[phase.key], optimizer, learning_rate),
          axis_name=AXIS, donate_argnums=(0,),
      )
    return step_fns[phase.key]

  eval_fns: dict[tuple, Any] = {}

  def eval_fn_for(eval_model: ViT, with_recall: bool):
    key = (eval_model.routing, eval_model.toe, with_recall)
    if key not in eval_fns:
      eval_fns[key] = jax.pmap(
          functools.partial(evaluate.eval_step, model=eval_model, with_recall=with_recall),
          axis_name=AXIS)
    return eval_fns[key]

  def run_eval(step: int) -> dict[str, float]:
    """Evaluates with the training routing (ToE: all tokens unless config.toe.sparse_eval)
    and, when that is not already the dense model, with all tokens; the EMA parameters, when
    kept, with the training routing as `eval_ema/*`."""
    toe = schedule.phase_at(phases, step - 1).toe if config.toe.sparse_eval else None
    eval_model = model.clone(toe=toe)
    keep_ratios = tuple(s.num_keep / model.num_patches for s in eval_model.routing_plan.stages)
    with_recall = info.has_object_masks and eval_model.routing.routes
    # (metric name prefix, suffix, model, parameters, kept-object recall)
    variants = [("eval/", "", eval_model, state.params, with_recall)]
    if eval_model.routing.routes or toe is not None:
      variants.append(("eval/", "_all_tokens", dense_model, state.params, False))
    if state.ema_params is not None:
      variants.append(("eval_ema/", "", eval_model, state.ema_params, with_recall))
    results = {}
    for prefix, suffix, variant_model, params, with_recall in variants:
      batches = pipeline.eval_batches(
          sources.eval, info, global_batch=config.eval_batch_size,
          image_size=model.image_size, process_index=jax.process_index(),
          process_count=jax.process_count(), num_threads=config.data.num_threads,
      )
      sums = evaluate.accumulate(eval_fn_for(variant_model, with_recall), params,
                                 map(parallel.shard, batches))
      summary = evaluate.summarize(sums, keep_ratios=keep_ratios if with_recall else ())
      results.update({f"{prefix}{k}{suffix}": v for k, v in summary.items()})
    writer.write(step, results)
    logging.info("eval at step %d: %s", step, json.dumps({k: round(v, 4) for k, v in results.items()}))
    return results

  eval_every = max(int(round(config.eval_every_epochs * steps_per_epoch)), 1)
  stop_after = config.stop_after_step if config.stop_after_step >= 0 else total_steps

  # ---- the loop
  batches = pipeline.train_batches(
      sources.train, info, global_batch=config.batch_size, image_size=model.image_size,
      seed=config.seed, start_step=start_step, total_steps=total_steps,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, augmentation=pipeline.Augmentation(
          config.data.rand_augment, config.data.random_erase),
      repeats=config.data.repeated_augmentations,
  )
  images_per_step = config.batch_size
  # Loss is averaged over every step between log lines; throughput only over steady steps
  # (a phase's first step, which compiles, and eval/checkpoint pauses are left out).
  window = {"loss": 0.0, "steps": 0, "timed_steps": 0, "start": time.perf_counter(),
            "excluded": 0.0}
  steady = {"images": 0, "seconds": 0.0}
  pending = None  # (step, metrics) of the previous step, read while the current one runs
  final_eval: dict[str, float] = {}
  step = start_step

  def restart_timing() -> None:
    window.update(timed_steps=0, start=time.perf_counter(), excluded=0.0)

  def finish_step(step_done: int, metrics, *, timed: bool = True) -> None:
    metrics = parallel.unreplicate(metrics)
    if not metrics["finite"]:
      raise NonFiniteError(
          f"step {step_done}: loss or gradient is not finite (loss={metrics['loss']}, "
          f"grad_norm={metrics['grad_norm']}); stopping. The update of this step was not "
          f"applied; the latest checkpoint is at step {checkpoints.latest_step()}."
      )
    window["steps"] += 1
    window["timed_steps"] += int(timed)
    window["loss"] += float(metrics["loss"])
    if step_done % config.log_every_steps and step_done != total_steps:
      return
    record = {
        "train/loss": window["loss"] / window["steps"],
        "train/learning_rate": float(metrics["learning_rate"]),
        "train/grad_norm": float(metrics["grad_norm"]),
        "train/param_norm": float(metrics["param_norm"]),
        "train/epoch": step_done / steps_per_epoch,
    }
    rate_text = "n/a"
    if window["timed_steps"]:
      elapsed = time.perf_counter() - window["start"] - window["excluded"]
      record["train/images_per_sec"] = window["timed_steps"] * images_per_step / elapsed
      steady["images"] += window["timed_steps"] * images_per_step
      steady["seconds"] += elapsed
      rate_text = f"{record['train/images_per_sec']:.1f}"
    eta = (total_steps - step_done) * images_per_step * steady["seconds"] / max(steady["images"], 1)
    logging.info("step %d/%d  epoch %.2f  loss %.4f  lr %.2e  img/s %s  ETA %s", step_done,
                 total_steps, record["train/epoch"], record["train/loss"],
                 record["train/learning_rate"], rate_text, _format_duration(eta))
    writer.write(step_done, record)
    window.update(loss=0.0, steps=0)
    restart_timing()

  with _StopRequest() as stop_request:
    while step < total_steps:
      phase = schedule.phase_at(phases, step)
      compiled = phase.key in step_fns
      step_fn = step_fn_for(phase)
      batch = parallel.shard(next(batches))
      state, metrics = step_fn(state, batch)
      if pending is not None:
        finish_step(*pending)
      pending = (step + 1, metrics)
      step += 1
      if not compiled:  # keep compile time out of the throughput figures
        jax.block_until_ready(metrics)
        logging.info("compiled the train step of phase %s at step %d", phase.name, step)
        restart_timing()
        finish_step(*pending, timed=False)
        pending = None
      paused_at = time.perf_counter()
      at_eval = step % eval_every == 0 or step == total_steps
      at_checkpoint = step % config.checkpoint_every_steps == 0 or step == total_steps
      stopping = step >= stop_after or stop_request.requested
      if at_eval or at_checkpoint or stopping:
        if pending is not None:
          finish_step(*pending)
          pending = None
        if at_eval:
          final_eval = run_eval(step)
        if at_checkpoint or stopping:
          checkpoints.save(step, parallel.unreplicate(state))
        window["excluded"] += time.perf_counter() - paused_at
      if stopping and step < total_steps:
        logging.info("stopping at step %d as requested; rerun to resume", step)
        break

  checkpoints.close()
  final = {"train/finished": 1.0} if step == total_steps else {}
  if steady["seconds"] > 0:
    final["train/steady_images_per_sec"] = steady["images"] / steady["seconds"]
    logging.info("steady-state training throughput: %.1f images/s",
                 final["train/steady_images_per_sec"])
  if final:
    writer.write(step, final)
  writer.close()
  return TrainResult(step, final_eval, parallel.unreplicate(state.params))
