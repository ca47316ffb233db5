"""The run's plan: what a config (and the dataset's size) decide before anything compiles.

Each fact about a run is built here once, from the config: the routing, the ToE schedule, the
model, the step counts (an epoch, the run, the drop warm-up, the learning-rate warm-up, the
evaluation interval), the training phases, the optimizer with its learning-rate schedule, the
per-device train step and the initial state. `RunPlan.build` assembles them for the trainer
(loop.py); tests, benchmarks and tools/inspect_run.py call the same builders.

The builders assume a config that validation.check_config accepted: they check nothing
themselves, and validation.py calls them to see that they build, naming the config field when
they do not. A config.json written before a field existed is read with the value every run had
then (ADDED_FIELDS).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import ml_collections
import optax
from absl import logging

from skipvit_jax.augment import policy
from skipvit_jax.augment.batch import DeviceAugmentation
from skipvit_jax.data import pipeline
from skipvit_jax.models import flops, pretrained
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.tome import ToMeConfig
from skipvit_jax.models.vit import DTYPES, ViT
from skipvit_jax.train import optim
from skipvit_jax.train import phases as phases_lib
from skipvit_jax.train import step as step_lib

# Config fields added after workdirs were first written, with the value every earlier run had:
# a config.json without them describes the same run (the model it builds, the run it resumes).
ADDED_FIELDS = {"model.stem": "patch", "model.gelu": "tanh", "data.augment_on": "host",
                "tome.r": 0, "tome.inflection": 0.0, "tome.start_layer": 1,
                "tome.proportional_attention": True, "tome.merge_at_eval": True,
                "patch_dropout.keep_rate": 1.0}
# config.data.augment_on: where flip, RandAugment, normalisation and erasing run. "device": in
# the compiled step (augment/batch.py), the host only decoding and cropping; "host": all of it
# per example on the host (data/pipeline.py).
AUGMENT_ON = ("host", "device")


def config_value(config: ml_collections.ConfigDict, field: str) -> Any:
  """config.<field> (dotted), or its ADDED_FIELDS value where a config predates the field (or
  its whole group)."""
  node = config
  *parents, leaf = field.split(".")
  for name in parents:
    if name not in node and field in ADDED_FIELDS:
      return ADDED_FIELDS[field]
    node = node[name]
  if leaf not in node and field in ADDED_FIELDS:
    return ADDED_FIELDS[field]
  return node[leaf]


def resolve_choices(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with its "auto" choices made, as the run's config.json records them:
  config.model.gelu "auto" becomes the GELU of config.init_from's checkpoint family (tanh
  without one)."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.model.gelu = resolve_gelu(config)
  return resolved


def resolve_gelu(config: ml_collections.ConfigDict) -> str:
  """config.model.gelu, with "auto" made: the GELU config.init_from's checkpoint was trained
  with, where it is recorded; otherwise the one every run had before the choice existed."""
  gelu = config_value(config, "model.gelu")
  if gelu != "auto":
    return gelu
  recorded = pretrained.checkpoint_gelu(config.init_from) if config.init_from else None
  return recorded or ADDED_FIELDS["model.gelu"]


def tome_config(config: ml_collections.ConfigDict) -> ToMeConfig:
  """config.tome as a ToMeConfig (which validates itself); r 0 merges nothing."""
  return ToMeConfig(**{field: config_value(config, f"tome.{field}") for field in (
      "r", "inflection", "start_layer", "proportional_attention", "merge_at_eval")})


def routing_config(config: ml_collections.ConfigDict) -> RoutingConfig:
  """config.routing, config.tome and config.patch_dropout as a RoutingConfig (which validates
  itself); return_layer 0 means none."""
  r = config.routing
  return RoutingConfig(
      drop_layers=tuple(r.drop_layers), drop_ratios=tuple(r.drop_ratios),
      return_layer=r.return_layer if r.return_layer else None, mode=r.mode,
      drop_point=r.drop_point, ratio_of=r.ratio_of, fuse_normalize=r.fuse_normalize,
      score=r.score, tome=tome_config(config),
      patch_keep_rate=config_value(config, "patch_dropout.keep_rate"),
  )


def toe_schedule(config: ml_collections.ConfigDict) -> phases_lib.ToESchedule | None:
  """config.toe as a ToE schedule; None when ToE is off."""
  t = config.toe
  if not t.enabled:
    return None
  return phases_lib.ToESchedule(expansion_epochs=tuple(t.expansion_epochs),
                                keep_rates=tuple(t.keep_rates), init_rate=t.init_rate,
                                substeps=int(t.substeps))


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> ViT:
  """The config's ViT with its routing and without ToE (the phases add ToE's plans): what
  evaluation runs and what a checkpoint of the run holds."""
  return ViT(
      variant=config.model.variant,
      num_classes=num_classes,
      image_size=config.data.image_size,
      dropout_rate=config.model.dropout_rate,
      stochastic_depth=config.model.stochastic_depth,
      routing=routing_config(config),
      attention=config.model.attention,
      dtype=DTYPES[config.model.dtype],
      remat=config.model.remat,
      gelu=resolve_gelu(config),
      stem=config_value(config, "model.stem"),
  )


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """A duration the config gives in epochs, in steps: the nearest whole step."""
  return int(round(epochs * steps_per_epoch))


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """config.num_train_steps when > 0, else config.num_epochs of `steps_per_epoch` (>= 1)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(epochs_to_steps(config.num_epochs, steps_per_epoch), 1)


def drop_warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The steps trained with every token before the routing starts dropping."""
  return epochs_to_steps(config.drop_warmup_epochs, steps_per_epoch)


def training_phases(config: ml_collections.ConfigDict, model: ViT, steps_per_epoch: int,
                    total_steps: int) -> tuple[phases_lib.Phase, ...]:
  """The run's training phases (drop warm-up, routing, ToE stages), each one compiled step;
  `model` is build_model's (its routing and patch count)."""
  return phases_lib.make_phases(
      routing=model.routing, total_steps=total_steps,
      drop_warmup_steps=drop_warmup_steps(config, steps_per_epoch), toe=toe_schedule(config),
      steps_per_epoch=steps_per_epoch, num_patches=model.num_patches,
  )


def optimizer_and_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           total_steps: int
                           ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW as config.optimizer sets it, its learning-rate schedule over `total_steps`)."""
  learning_rate = optim.learning_rate_schedule(
      base_lr=config.optimizer.lr, warmup_lr=config.optimizer.warmup_lr,
      warmup_steps=epochs_to_steps(config.optimizer.warmup_epochs, steps_per_epoch),
      total_steps=total_steps, min_lr=config.optimizer.min_lr,
  )
  return optim.make_optimizer(config.optimizer, learning_rate), learning_rate


def host_augmentation(config: ml_collections.ConfigDict) -> pipeline.Augmentation:
  """What the host does to a training example after decoding it: everything, or with
  config.data.augment_on "device" only the crop."""
  return pipeline.Augmentation(
      rand_augment=config.data.rand_augment, random_erase=config.data.random_erase,
      random_translate=int(config.data.random_translate),
      on_device=config_value(config, "data.augment_on") == "device")


def device_augmentation(config: ml_collections.ConfigDict,
                        info: pipeline.DatasetInfo) -> DeviceAugmentation | None:
  """What the step does to the host's uint8 crops with config.data.augment_on "device" (the
  host path's flip, shift, RandAugment, normalisation and erasing); None on the host path."""
  if config_value(config, "data.augment_on") != "device":
    return None
  mean, std = info.mean_std
  spec = config.data.rand_augment
  return DeviceAugmentation(
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      random_translate=int(config.data.random_translate),
      rand_augment=policy.parse_rand_augment(spec) if spec else None,
      random_erase=float(config.data.random_erase))


def per_device_train_step(config: ml_collections.ConfigDict, model: ViT,
                          optimizer: optax.GradientTransformation,
                          learning_rate: optax.Schedule,
                          augmentation: DeviceAugmentation | None = None) -> Callable:
  """`step.train_step` bound to one phase's model (and device_augmentation's), as
  `(state, batch, applied) -> (state, metrics)` on one device's batch: what the trainer pmaps
  over the axis `step.AXIS` (and what tests/test_cuda_lowering.py lowers for GPUs)."""
  regularization = step_lib.Regularization(
      label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
      cutmix_alpha=config.cutmix_alpha, mix_switch_prob=config.mix_switch_prob,
  )
  return functools.partial(
      step_lib.train_step, model=model, optimizer=optimizer, learning_rate=learning_rate,
      regularization=regularization, seed=config.seed,
      grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
      augmentation=augmentation,
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
  eval_every_steps: int
  phases: tuple[phases_lib.Phase, ...]
  optimizer: optax.GradientTransformation
  learning_rate: optax.Schedule
  augmentation: DeviceAugmentation | None  # the step's, with config.data.augment_on "device"

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, info: pipeline.DatasetInfo) -> RunPlan:
    """The plan of a validated config (validation.check_config, then check_run_length with
    the training set's size) on the dataset `info` describes."""
    model = build_model(config, info.num_classes)
    steps_per_epoch = pipeline.steps_per_epoch(info.num_train, config.batch_size)
    total_steps = total_train_steps(config, steps_per_epoch)
    eval_every_steps = max(epochs_to_steps(config.eval_every_epochs, steps_per_epoch), 1)
    phases = training_phases(config, model, steps_per_epoch, total_steps)
    optimizer, learning_rate = optimizer_and_schedule(config, steps_per_epoch, total_steps)
    return cls(model, steps_per_epoch, total_steps, eval_every_steps, phases, optimizer,
               learning_rate, device_augmentation(config, info))

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
