"""Config validation: every field of a training config checked before any data is generated or
anything compiles. A bad value raises ValueError naming the field (`config.<field>`, or
`RoutingConfig.<field>` for the routing) and the values it allows.

`check_config` runs everything that needs neither the dataset nor a compiler: value ranges and
string choices, the model (variant, image size, routing against the depth and the patch count,
ToE against the routing), batch divisibility over the devices and, where the training set's
size is known from the config (the synthetic data, Fashion-MNIST), the run length against the
drop warm-up and the ToE schedule. `check_run_length` repeats the last part once a TFDS
dataset is opened and its size known.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any

import jax
import ml_collections

from skipvit_jax.models import attention, pretrained
from skipvit_jax.train import phases as phases_lib
from skipvit_jax.data import fashion_mnist, pipeline, randaugment
from skipvit_jax.models.variants import conv_stem_channels, decode_variant
from skipvit_jax.models.vit import DTYPES, GELUS, STEMS, ViT
from skipvit_jax.models.routing import DROP_POINTS, MODES, RATIO_BASES, SCORES, RoutingConfig

_SYNTHETIC_SIZES = (32, 224)  # skipvit_jax.data.synthetic.IMAGE_SIZE_RANGE


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for name in field.split("."):
    node = node[name]
  return node


def _number(config, field: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
  """config.<field> is a finite (integer) number in the given bounds."""
  value = _get(config, field)
  kind = "an integer" if integer else "a number"
  ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (not integer or float(value).is_integer())
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    bounds = []
    if low is not None:
      bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
      bounds.append(f"{'<' if high_open else '<='} {high:g}")
    raise ValueError(f"config.{field}: must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
                     f", got {value!r}")


def _choice(config, field: str, allowed) -> None:
  value = _get(config, field)
  if value not in allowed:
    raise ValueError(f"config.{field}: must be one of {tuple(allowed)}, got {value!r}")


def _flag(config, field: str) -> None:
  if not isinstance(_get(config, field), bool):
    raise ValueError(f"config.{field}: must be True or False, got {_get(config, field)!r}")


def _tuple(config, field: str, *, integer: bool) -> tuple:
  value = _get(config, field)
  kind = int if integer else Real
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value):
    raise ValueError(f"config.{field}: must be a tuple of {'integers' if integer else 'numbers'}, "
                     f"got {value!r}")
  return tuple(value)


def routing_config(config: ml_collections.ConfigDict) -> RoutingConfig:
  """config.routing as a RoutingConfig (which validates itself)."""
  r = config.routing
  _tuple(config, "routing.drop_layers", integer=True)
  _tuple(config, "routing.drop_ratios", integer=False)
  _number(config, "routing.return_layer", low=0, integer=True)
  _choice(config, "routing.mode", MODES)
  _choice(config, "routing.drop_point", DROP_POINTS)
  _choice(config, "routing.ratio_of", RATIO_BASES)
  _choice(config, "routing.score", SCORES)
  _flag(config, "routing.fuse_normalize")
  return RoutingConfig(
      drop_layers=tuple(r.drop_layers), drop_ratios=tuple(r.drop_ratios),
      return_layer=r.return_layer if r.return_layer else None, mode=r.mode,
      drop_point=r.drop_point, ratio_of=r.ratio_of, fuse_normalize=r.fuse_normalize,
      score=r.score,
  )


def toe_schedule(config: ml_collections.ConfigDict, num_patches: int) -> phases_lib.ToESchedule | None:
  """The configured ToE schedule, checked against the model's patch count; None when off."""
  _flag(config, "toe.enabled")
  _flag(config, "toe.sparse_eval")
  if not config.toe.enabled:
    return None
  t = config.toe
  epochs = _tuple(config, "toe.expansion_epochs", integer=False)
  if any(e < 0 for e in epochs):
    raise ValueError(f"config.toe.expansion_epochs: epochs must be >= 0, got {epochs}")
  _tuple(config, "toe.keep_rates", integer=False)
  _number(config, "toe.init_rate", low=0, high=1, low_open=True)
  _number(config, "toe.substeps", low=1, integer=True)
  toe = phases_lib.ToESchedule(expansion_epochs=epochs, keep_rates=tuple(t.keep_rates),
                             init_rate=t.init_rate, substeps=int(t.substeps))
  try:
    toe.plan(num_patches, epoch=0)
  except ValueError as e:
    raise ValueError(f"config.toe.{e}") from None
  return toe


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                routing: RoutingConfig | None = None) -> ViT:
  """The config's ViT (its routing unless `routing` is given; no ToE: phases add it)."""
  _choice(config, "model.dtype", DTYPES)
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
      stem=config.model.get("stem", "patch"),  # configs written before the stem was a choice
  )


def resolve_choices(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with its "auto" choices made, as the run's config.json records them:
  config.model.gelu "auto" becomes the GELU of config.init_from's checkpoint family (tanh
  without one)."""
  if not isinstance(config.init_from, str):
    raise ValueError(f"config.init_from: must be a path (a string), got {config.init_from!r}")
  if config.init_from and not os.path.exists(config.init_from):
    raise ValueError(f"config.init_from: no checkpoint at {config.init_from!r} (a .npz, "
                     ".safetensors or .pth file, or a skipvit_jax workdir)")
  _choice(config, "model.gelu", ("auto", *GELUS))
  resolved = ml_collections.ConfigDict(config.to_dict())
  try:
    resolved.model.gelu = pretrained.gelu_for(config.model.gelu, config.init_from)
  except ValueError as e:
    raise ValueError(f"config.init_from: {e}") from None
  return resolved


def check_model(config: ml_collections.ConfigDict, num_classes: int = 2) -> ViT:
  """The model the config describes (without ToE): variant, image size, routing, the rest."""
  for field in ("model.variant", "model.attention", "model.dtype", "data.name"):
    if not isinstance(_get(config, field), str):
      raise ValueError(f"config.{field}: must be a string, got {_get(config, field)!r}")
  try:
    decode_variant(config.model.variant)
  except ValueError as e:
    raise ValueError(f"config.{e}") from None
  _number(config, "data.image_size", low=1, integer=True)
  _number(config, "model.dropout_rate", low=0, high=1, high_open=True)
  _number(config, "model.stochastic_depth", low=0, high=1, high_open=True)
  _choice(config, "model.dtype", DTYPES)
  _choice(config, "model.attention", attention.IMPLEMENTATIONS)
  _flag(config, "model.remat")
  routing = routing_config(config)
  dims = decode_variant(config.model.variant)
  patch = dims.patch_size
  if config.data.image_size % patch:
    raise ValueError(f"config.data.image_size: must be a multiple of the patch size {patch} of "
                     f"{config.model.variant}, got {config.data.image_size}")
  if "stem" in config.model:
    _choice(config, "model.stem", STEMS)
    if config.model.stem == "conv":
      try:
        conv_stem_channels(dims.width, patch)
      except ValueError as e:
        raise ValueError(f"config.model.{e} ({config.model.variant}), or 'patch'") from None
  model = build_model(config, num_classes, routing)
  try:
    model.routing_plan
  except ValueError as e:
    raise ValueError(f"{e} (config.routing)") from None
  return model


def _check_data(config: ml_collections.ConfigDict) -> None:
  data = config.data
  for field in ("data.train_split", "data.eval_split", "data.data_dir", "data.source_dir",
                "data.rand_augment", "data.normalization"):
    if not isinstance(_get(config, field), str):
      raise ValueError(f"config.{field}: must be a string, got {_get(config, field)!r}")
  if not data.name:
    raise ValueError("config.data.name: must name a dataset ('synthetic', 'fashion_mnist' or a "
                     "TFDS name), got ''")
  _choice(config, "data.normalization", ("dataset", *pipeline.NORMALIZATIONS))
  _number(config, "data.num_threads", low=1, integer=True)
  _flag(config, "data.in_memory")
  _number(config, "data.random_erase", low=0, high=1)
  _number(config, "data.random_translate", low=0, integer=True)
  size = data.image_size  # its own checks come with the model's
  if isinstance(size, int) and size > 0 and data.random_translate >= size / 2:
    raise ValueError(f"config.data.random_translate: must be below half of data.image_size "
                     f"({size}), got {data.random_translate}")
  _number(config, "data.repeated_augmentations", low=1, integer=True)
  if data.rand_augment:
    try:
      randaugment.parse_rand_augment(data.rand_augment)
    except ValueError as e:
      raise ValueError(f"config.data.rand_augment: {e}") from None
  if data.name == pipeline.SYNTHETIC:
    _number(config, "data.synthetic.num_train", low=1, integer=True)
    _number(config, "data.synthetic.num_test", low=1, integer=True)
    _number(config, "data.synthetic.seed", low=0, integer=True)
    low, high = _SYNTHETIC_SIZES
    if not low <= data.image_size <= high:
      raise ValueError(f"config.data.image_size: the synthetic data is rendered at {low}..{high} "
                       f"px, got {data.image_size}")
  if data.name == pipeline.FASHION_MNIST and data.image_size != fashion_mnist.IMAGE_SIZE:
    raise ValueError(f"config.data.image_size: Fashion-MNIST's images are "
                     f"{fashion_mnist.IMAGE_SIZE} px, got {data.image_size}")


def _check_optimization(config: ml_collections.ConfigDict) -> None:
  _number(config, "seed", low=0, integer=True)
  _number(config, "num_cpu_devices", low=0, integer=True)
  _number(config, "optimizer.lr", low=0, low_open=True)
  _number(config, "optimizer.warmup_lr", low=0)
  _number(config, "optimizer.warmup_epochs", low=0)
  _number(config, "optimizer.min_lr", low=0)
  _number(config, "optimizer.weight_decay", low=0)
  _number(config, "optimizer.b1", low=0, high=1, high_open=True)
  _number(config, "optimizer.b2", low=0, high=1, high_open=True)
  _number(config, "optimizer.eps", low=0, low_open=True)
  _number(config, "optimizer.grad_clip_norm", low=0)
  _number(config, "label_smoothing", low=0, high=1, high_open=True)
  _number(config, "mixup_alpha", low=0)
  _number(config, "cutmix_alpha", low=0)
  _number(config, "mix_switch_prob", low=0, high=1)
  _number(config, "ema_decay", low=0, high=1, high_open=True)
  _number(config, "grad_accum_steps", low=1, integer=True)
  _number(config, "drop_warmup_epochs", low=0)
  _number(config, "num_train_steps", low=-1, integer=True)
  if config.num_train_steps == 0:
    raise ValueError("config.num_train_steps: must be > 0, or -1 to train config.num_epochs, "
                     "got 0")
  if config.num_train_steps < 0:
    _number(config, "num_epochs", low=0, low_open=True)
  _number(config, "log_every_steps", low=1, integer=True)
  _number(config, "eval_every_epochs", low=0, low_open=True)
  _number(config, "checkpoint_every_steps", low=1, integer=True)
  _number(config, "keep_checkpoints", low=1, integer=True)
  _number(config, "stop_after_step", low=-1, integer=True)
  _flag(config, "allow_resume_with_changes")


def check_batch_sizes(config: ml_collections.ConfigDict) -> None:
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    _number(config, field, low=1, integer=True)
    if config[field] % devices:
      raise ValueError(
          f"config.{field}: must be a positive multiple of the {devices} devices "
          f"({jax.process_count()} processes x {jax.local_device_count()} local), got "
          f"{config[field]}")
  if config.batch_size % (devices * config.grad_accum_steps):
    raise ValueError(
        f"config.grad_accum_steps: must divide the per-device batch {config.batch_size} / "
        f"{devices} into equal micro-batches, got {config.grad_accum_steps}")
  if config.batch_size % config.data.repeated_augmentations:
    raise ValueError(
        f"config.data.repeated_augmentations: must divide config.batch_size "
        f"{config.batch_size}, got {config.data.repeated_augmentations}")


def known_train_size(config: ml_collections.ConfigDict) -> int | None:
  """The training set's size where the config alone tells it (before any data exists)."""
  if config.data.name == pipeline.SYNTHETIC:
    return config.data.synthetic.num_train
  if config.data.name == pipeline.FASHION_MNIST:
    return fashion_mnist.NUM_TRAIN
  return None


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """config.num_train_steps when > 0, else config.num_epochs of `steps_per_epoch` (>= 1)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(int(round(config.num_epochs * steps_per_epoch)), 1)


def check_run_length(config: ml_collections.ConfigDict, model: ViT, num_train: int
                     ) -> tuple[int, int, tuple[phases_lib.Phase, ...]]:
  """(steps per epoch, total steps, phases) of the run; the drop warm-up and ToE must fit it:
  a routed config that would never route, or a ToE config that would never reduce, is an
  error."""
  steps_per_epoch = pipeline.steps_per_epoch(num_train, config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size: {config.batch_size} exceeds the {num_train} training "
                     f"examples")
  total = total_train_steps(config, steps_per_epoch)
  warmup_steps = int(round(config.drop_warmup_epochs * steps_per_epoch))
  if model.routing.routes and warmup_steps >= total:
    raise ValueError(
        f"config.drop_warmup_epochs: the run trains {total} steps and the drop warm-up lasts "
        f"{warmup_steps} ({config.drop_warmup_epochs:g} epochs of {steps_per_epoch} steps), so "
        "the routing would never drop a token; make the warm-up shorter than the run or remove "
        "the routing")
  toe = toe_schedule(config, model.num_patches)
  if toe is not None and model.routing.routes and model.routing.drop_layers[0] < 2:
    raise ValueError(f"RoutingConfig.drop_layers: with ToE (after layer 1) drop layers must be "
                     f"2 or later, got {model.routing.drop_layers} (config.routing.drop_layers)")
  phases = phases_lib.make_phases(
      routing=model.routing, total_steps=total, drop_warmup_steps=warmup_steps, toe=toe,
      steps_per_epoch=steps_per_epoch, num_patches=model.num_patches)
  if toe is not None and all(phase.toe is None for phase in phases):
    raise ValueError(
        f"config.toe.expansion_epochs: no stage that reduces tokens starts within the run's "
        f"{total} steps ({total / steps_per_epoch:g} epochs), so ToE would never act; got "
        f"{tuple(config.toe.expansion_epochs)}")
  for phase in phases:  # each phase's layout must build (ToE's tokens against the routing)
    try:
      model.clone(routing=phase.routing, toe=phase.toe)
    except ValueError as e:
      raise ValueError(f"{e} (config.routing with config.toe, phase {phase.name})") from None
  return steps_per_epoch, total, phases


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every check that needs neither data nor compilation (see the module docstring); returns
  the config with its "auto" choices resolved (`resolve_choices`)."""
  if "allow_resume_with_changes" not in config:
    raise ValueError("config.allow_resume_with_changes: missing; configs start from "
                     "configs/common.py's base_config()")
  config = resolve_choices(config)
  _check_optimization(config)
  _check_data(config)
  model = check_model(config)
  check_batch_sizes(config)
  num_train = known_train_size(config)
  if num_train is not None:
    check_run_length(config, model, num_train)
  return config
