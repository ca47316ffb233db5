"""Config validation: every field of a training config checked before any data is generated or
anything compiles. A bad value raises ConfigError naming the field (`config.<field>`, or
`RoutingConfig.<field>` for the routing) and the values it allows.

`check_config` runs everything that needs neither the dataset nor a compiler: value ranges and
string choices, the model (variant, image size, routing against the depth and the patch count,
ToMe and PatchDropout and what they combine with, ToE against the routing), batch
divisibility over the devices and, where the training set's size is known from the config (the
synthetic data, Fashion-MNIST), the run length against the drop warm-up and the ToE schedule.
`check_run_length` repeats the last part once a TFDS dataset is opened and its size known.

Validation builds nothing of its own: where a check is that a part of the run builds (the model,
its routing, each phase's token layout), it calls plan.py's builder and turns the builder's
ValueError into a ConfigError that names the config field.
"""

from __future__ import annotations

import contextlib
import math
import os
from numbers import Real
from typing import Any, Iterator

import jax
import ml_collections

from skipvit_jax.augment import policy
from skipvit_jax.data import fashion_mnist, pipeline
from skipvit_jax.data.synthetic import IMAGE_SIZE_RANGE
from skipvit_jax.models import attention, routing
from skipvit_jax.models.routing import DROP_POINTS, MODES, RATIO_BASES, SCORES
from skipvit_jax.models.variants import conv_stem_channels, decode_variant
from skipvit_jax.models.vit import DTYPES, GELUS, STEMS
from skipvit_jax.train import plan


class ConfigError(ValueError):
  """A config that cannot run; the message names the field (`config.<field>`)."""


@contextlib.contextmanager
def _naming(prefix: str = "", suffix: str = "") -> Iterator[None]:
  """A builder's ValueError inside the block as a ConfigError: prefix + its message + suffix."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"{prefix}{e}{suffix}") from None


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  return plan.config_value(config, field)


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
    raise ConfigError(f"config.{field}: must be {kind}"
                      f"{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")


def _choice(config, field: str, allowed) -> None:
  value = _get(config, field)
  if value not in allowed:
    raise ConfigError(f"config.{field}: must be one of {tuple(allowed)}, got {value!r}")


def _flag(config, field: str) -> None:
  if not isinstance(_get(config, field), bool):
    raise ConfigError(f"config.{field}: must be True or False, got {_get(config, field)!r}")


def _string(config, field: str) -> None:
  if not isinstance(_get(config, field), str):
    raise ConfigError(f"config.{field}: must be a string, got {_get(config, field)!r}")


def _tuple(config, field: str, *, integer: bool) -> tuple:
  value = _get(config, field)
  kind = int if integer else Real
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value):
    raise ConfigError(f"config.{field}: must be a tuple of "
                      f"{'integers' if integer else 'numbers'}, got {value!r}")
  return tuple(value)


def _check_init_from(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.init_from names a checkpoint that exists, and model.gelu resolves against it;
  returns the config with its choices resolved (plan.resolve_choices)."""
  if not isinstance(config.init_from, str):
    raise ConfigError(f"config.init_from: must be a path (a string), got {config.init_from!r}")
  if config.init_from and not os.path.exists(config.init_from):
    raise ConfigError(f"config.init_from: no checkpoint at {config.init_from!r} (a .npz, "
                      ".safetensors or .pth file, or a skipvit_jax workdir)")
  _choice(config, "model.gelu", ("auto", *GELUS))
  with _naming("config.init_from: "):
    return plan.resolve_choices(config)


def _check_routing(config: ml_collections.ConfigDict) -> None:
  _tuple(config, "routing.drop_layers", integer=True)
  _tuple(config, "routing.drop_ratios", integer=False)
  _number(config, "routing.return_layer", low=0, integer=True)
  _choice(config, "routing.mode", MODES)
  _choice(config, "routing.drop_point", DROP_POINTS)
  _choice(config, "routing.ratio_of", RATIO_BASES)
  _choice(config, "routing.score", SCORES)
  _flag(config, "routing.fuse_normalize")
  _check_reducers(config)
  with _naming(suffix=" (config.routing)"):
    plan.routing_config(config)


def _check_reducers(config: ml_collections.ConfigDict) -> None:
  """config.tome (ToMe) and config.patch_dropout (PatchDropout): their values, and that what
  they are combined with supports them (docs/method.md §8.5, §9)."""
  _number(config, "tome.r", low=0, integer=True)
  _number(config, "tome.inflection", low=-1, high=1)
  _number(config, "tome.start_layer", low=1, integer=True)
  _flag(config, "tome.proportional_attention")
  _flag(config, "tome.merge_at_eval")
  _number(config, "patch_dropout.keep_rate", low=0, high=1, low_open=True)
  _flag(config, "toe.enabled")
  merges = _get(config, "tome.r") > 0
  keep_rate = _get(config, "patch_dropout.keep_rate")
  if merges and tuple(config.routing.drop_layers):
    raise ConfigError(
        f"config.tome.r: ToMe's merging does not combine with SkipViT's drop layers "
        f"(config.routing.drop_layers={tuple(config.routing.drop_layers)}); set "
        f"config.tome.r=0 or config.routing.drop_layers=(), got r={_get(config, 'tome.r')}")
  if config.toe.enabled and (merges or keep_rate < 1):
    reducer = ("ToMe (config.tome.r > 0)" if merges
               else "PatchDropout (config.patch_dropout.keep_rate < 1)")
    raise ConfigError(f"config.toe.enabled: ToE does not combine with {reducer}; must be False "
                      "with it, or turn that reducer off")
  if (merges and _get(config, "tome.proportional_attention")
      and config.model.attention not in attention.BIAS_IMPLEMENTATIONS):
    raise ConfigError(
        f"config.model.attention: ToMe's proportional attention (config.tome."
        f"proportional_attention=True) adds a logit bias, which {config.model.attention!r} "
        f"does not take; must be one of {attention.BIAS_IMPLEMENTATIONS}, or set "
        "config.tome.proportional_attention=False")


def _check_reducer_sizes(config: ml_collections.ConfigDict, depth: int, num_patches: int) -> None:
  """ToMe's first merging layer is in the model; PatchDropout keeps at least one patch."""
  start = _get(config, "tome.start_layer")
  if _get(config, "tome.r") > 0 and start > depth:
    raise ConfigError(f"config.tome.start_layer: must be in 1..{depth} ({config.model.variant} "
                      f"has {depth} layers), got {start}")
  keep_rate = _get(config, "patch_dropout.keep_rate")
  try:
    routing.patch_dropout_count(num_patches, keep_rate)
  except ValueError:
    raise ConfigError(f"config.patch_dropout.keep_rate: keeps none of the {num_patches} patches; "
                      f"must be in [1 / {num_patches}, 1], got {keep_rate}") from None


def _check_toe(config: ml_collections.ConfigDict, num_patches: int) -> None:
  """The ToE schedule, where enabled, plans for the model's patch count."""
  _flag(config, "toe.enabled")
  _flag(config, "toe.sparse_eval")
  if not config.toe.enabled:
    return
  epochs = _tuple(config, "toe.expansion_epochs", integer=False)
  if any(e < 0 for e in epochs):
    raise ConfigError(f"config.toe.expansion_epochs: epochs must be >= 0, got {epochs}")
  _tuple(config, "toe.keep_rates", integer=False)
  _number(config, "toe.init_rate", low=0, high=1, low_open=True)
  _number(config, "toe.substeps", low=1, integer=True)
  with _naming("config.toe."):
    plan.toe_schedule(config).plan(num_patches, epoch=0)


def _check_model(config: ml_collections.ConfigDict) -> None:
  """The model the config describes (without ToE): variant, image size, stem, routing, the
  rest; then the ToE schedule against its patch count."""
  for field in ("model.variant", "model.attention", "model.dtype", "data.name"):
    _string(config, field)
  with _naming("config.model."):
    dims = decode_variant(config.model.variant)
  _number(config, "data.image_size", low=1, integer=True)
  _number(config, "model.dropout_rate", low=0, high=1, high_open=True)
  _number(config, "model.stochastic_depth", low=0, high=1, high_open=True)
  _choice(config, "model.dtype", DTYPES)
  _choice(config, "model.attention", attention.IMPLEMENTATIONS)
  _choice(config, "model.stem", STEMS)
  _flag(config, "model.remat")
  _check_routing(config)
  if config.data.image_size % dims.patch_size:
    raise ConfigError(f"config.data.image_size: must be a multiple of the patch size "
                      f"{dims.patch_size} of {config.model.variant}, got {config.data.image_size}")
  if _get(config, "model.stem") == "conv":
    with _naming("config.model.", f" ({config.model.variant}), or 'patch'"):
      conv_stem_channels(dims.width, dims.patch_size)
  _check_reducer_sizes(config, dims.depth, (config.data.image_size // dims.patch_size) ** 2)
  with _naming(suffix=" (config.routing)"):
    model = plan.build_model(config, num_classes=2)  # plans the routing for depth and patches
  _check_toe(config, model.num_patches)


def _check_data(config: ml_collections.ConfigDict) -> None:
  data = config.data
  for field in ("data.train_split", "data.eval_split", "data.data_dir", "data.source_dir",
                "data.rand_augment", "data.normalization"):
    _string(config, field)
  if not data.name:
    raise ConfigError("config.data.name: must name a dataset ('synthetic', 'fashion_mnist' or "
                      "a TFDS name), got ''")
  _choice(config, "data.normalization", ("dataset", *pipeline.NORMALIZATIONS))
  _choice(config, "data.augment_on", plan.AUGMENT_ON)
  _number(config, "data.num_threads", low=1, integer=True)
  _flag(config, "data.in_memory")
  _number(config, "data.random_erase", low=0, high=1)
  _number(config, "data.random_translate", low=0, integer=True)
  size = data.image_size  # its own checks come with the model's
  if isinstance(size, int) and size > 0 and data.random_translate >= size / 2:
    raise ConfigError(f"config.data.random_translate: must be below half of data.image_size "
                      f"({size}), got {data.random_translate}")
  _number(config, "data.repeated_augmentations", low=1, integer=True)
  if data.rand_augment:
    with _naming("config.data.rand_augment: "):
      policy.parse_rand_augment(data.rand_augment)
  if data.name == pipeline.SYNTHETIC:
    _number(config, "data.synthetic.num_train", low=1, integer=True)
    _number(config, "data.synthetic.num_test", low=1, integer=True)
    _number(config, "data.synthetic.seed", low=0, integer=True)
    low, high = IMAGE_SIZE_RANGE
    if not low <= data.image_size <= high:
      raise ConfigError(f"config.data.image_size: the synthetic data is rendered at "
                        f"{low}..{high} px, got {data.image_size}")
  if data.name == pipeline.FASHION_MNIST and data.image_size != fashion_mnist.IMAGE_SIZE:
    raise ConfigError(f"config.data.image_size: Fashion-MNIST's images are "
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
    raise ConfigError("config.num_train_steps: must be > 0, or -1 to train config.num_epochs, "
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
  """The batches split evenly over every device of every process (and into micro-batches)."""
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    _number(config, field, low=1, integer=True)
    if config[field] % devices:
      raise ConfigError(
          f"config.{field}: must be a positive multiple of the {devices} devices "
          f"({jax.process_count()} processes x {jax.local_device_count()} local), got "
          f"{config[field]}")
  if config.batch_size % (devices * config.grad_accum_steps):
    raise ConfigError(
        f"config.grad_accum_steps: must divide the per-device batch {config.batch_size} / "
        f"{devices} into equal micro-batches, got {config.grad_accum_steps}")
  if config.batch_size % config.data.repeated_augmentations:
    raise ConfigError(
        f"config.data.repeated_augmentations: must divide config.batch_size "
        f"{config.batch_size}, got {config.data.repeated_augmentations}")


def known_train_size(config: ml_collections.ConfigDict) -> int | None:
  """The training set's size where the config alone tells it (before any data exists)."""
  if config.data.name == pipeline.SYNTHETIC:
    return config.data.synthetic.num_train
  if config.data.name == pipeline.FASHION_MNIST:
    return fashion_mnist.NUM_TRAIN
  return None


def check_run_length(config: ml_collections.ConfigDict, num_train: int) -> None:
  """The run on `num_train` training examples has a step, and its drop warm-up and ToE fit it:
  a routed config that would never route, or a ToE config that would never reduce, is an error,
  as is a phase whose token layout does not build (ToE's tokens against the routing)."""
  steps_per_epoch = pipeline.steps_per_epoch(num_train, config.batch_size)
  if steps_per_epoch < 1:
    raise ConfigError(f"config.batch_size: {config.batch_size} exceeds the {num_train} "
                      "training examples")
  model = plan.build_model(config, num_classes=2)
  total = plan.total_train_steps(config, steps_per_epoch)
  warmup_steps = plan.drop_warmup_steps(config, steps_per_epoch)
  if model.routing.reduces and warmup_steps >= total:
    raise ConfigError(
        f"config.drop_warmup_epochs: the run trains {total} steps and the drop warm-up lasts "
        f"{warmup_steps} ({config.drop_warmup_epochs:g} epochs of {steps_per_epoch} steps), so "
        "the routing would never drop a token; make the warm-up shorter than the run or remove "
        "the routing")
  phases = plan.training_phases(config, model, steps_per_epoch, total)
  if config.toe.enabled and all(phase.toe is None for phase in phases):
    raise ConfigError(
        f"config.toe.expansion_epochs: no stage that reduces tokens starts within the run's "
        f"{total} steps ({total / steps_per_epoch:g} epochs), so ToE would never act; got "
        f"{tuple(config.toe.expansion_epochs)}")
  for phase in phases:  # the model checks each layout (with ToE, drop layers from 2 on)
    with _naming(suffix=f" (config.routing with config.toe, phase {phase.name})"):
      model.clone(routing=phase.routing, toe=phase.toe)


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every check that needs neither data nor compilation (see the module docstring); returns
  the config with its "auto" choices made (plan.resolve_choices), which the checks after the
  first ran on and the run uses."""
  if "allow_resume_with_changes" not in config:
    raise ConfigError("config.allow_resume_with_changes: missing; configs start from "
                      "configs/common.py's base_config()")
  config = _check_init_from(config)
  _check_optimization(config)
  _check_data(config)
  _check_model(config)
  check_batch_sizes(config)
  num_train = known_train_size(config)
  if num_train is not None:
    check_run_length(config, num_train)
  return config
