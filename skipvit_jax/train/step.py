"""The training step: forward, backward, gradient all-reduce and optimizer update.

Imports nothing from the data stack (no TFDS, grain or ml_collections), so benchmarks can run
exactly the step the trainer runs on a machine that has only JAX, Flax and optax.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from skipvit_jax.augment import mix
from skipvit_jax.augment.batch import DeviceAugmentation, augment_batch
from skipvit_jax.models.vit import ViT
from skipvit_jax.runtime import parallel

AXIS = parallel.AXIS
# step_rngs folds these into the step key for random routing and device augmentation, rather
# than splitting more ways, so that the mixing and dropout keys (split in two) stay those of
# earlier runs.
ROUTING_STREAM = 1
AUGMENT_STREAM = 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  ema_params: Any = None  # the exponential moving average of params, when kept


@dataclasses.dataclass(frozen=True)
class Regularization:
  label_smoothing: float = 0.0  # target = (1 - e) one-hot + e / classes
  mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixup; 0 = off
  cutmix_alpha: float = 0.0  # cutmix; 0 = off
  mix_switch_prob: float = 0.5  # chance of cutmix when both are on


def step_rngs(seed: int, step: jax.Array | int, device_index: jax.Array | int) -> dict:
  """The keys of one device's training step: "augment" (augment/batch.py), "mix" (mixup /
  cutmix), and the model's streams "dropout" (dropout, stochastic depth) and "routing"
  (RoutingConfig(score="random")).

  All derive from fold_in(fold_in(key(seed), step), device_index), so they are a function of
  (seed, step) and a restarted run redraws them exactly."""
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), device_index)
  rng_mix, rng_dropout = jax.random.split(rng)
  return {"mix": rng_mix, "dropout": rng_dropout,
          "routing": jax.random.fold_in(rng, ROUTING_STREAM),
          "augment": jax.random.fold_in(rng, AUGMENT_STREAM)}


def train_step(
    state: TrainState, batch: dict, applied: jax.Array | bool = True, *, model: ViT,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule, regularization: Regularization, seed: int,
    grad_accum_steps: int = 1, ema_decay: float = 0.0,
    augmentation: DeviceAugmentation | None = None,
) -> tuple[TrainState, dict]:
  """One optimisation step on this device's shard of the global batch (run under pmap).

  batch: image (b, S, S, 3), label (b,) int32. The image is float32 and normalised, or, with
    `augmentation`, the host's uint8 crop, which augment_batch flips, RandAugments, normalises
    and erases first.
  applied: the previous step's `finite` metric. Once a step is not finite, neither it nor any
    later step is applied, so the state stays the last finite one however many steps the host
    dispatched before it read the metric (it reads each step's metrics one step late).
  The step's randomness is `step_rngs(seed, step, device index)`.
  grad_accum_steps: the shard is split into this many micro-batches, run one after another
    with their gradients averaged, so that only one micro-batch's activations are alive: the
    same update as the whole shard at once (mixup and cutmix pair examples across the whole
    shard, before the split; only dropout differs, drawn per micro-batch).
  ema_decay: when > 0, state.ema_params becomes decay * ema + (1 - decay) * new params.
  """
  rngs = step_rngs(seed, state.step, jax.lax.axis_index(AXIS))
  rng_mix, rng_augment = rngs.pop("mix"), rngs.pop("augment")
  images = batch["image"]
  if augmentation is not None:
    images = augment_batch(rng_augment, images, augmentation)
  targets = mix.soft_targets(batch["label"], model.num_classes, regularization.label_smoothing)
  images, targets = mix.mix_batch(
      rng_mix, images, targets, mixup_alpha=regularization.mixup_alpha,
      cutmix_alpha=regularization.cutmix_alpha, switch_prob=regularization.mix_switch_prob,
  )

  def loss_and_grads(images, targets, rngs):
    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, train=True, rngs=rngs)
      return optax.softmax_cross_entropy(logits, targets).mean()
    return jax.value_and_grad(loss_fn)(state.params)

  if grad_accum_steps == 1:
    loss, grads = loss_and_grads(images, targets, rngs)
  else:
    def accumulate(total, micro_batch):
      return jax.tree.map(jnp.add, total, loss_and_grads(*micro_batch)), None

    split = lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:])  # (k, b / k, ...)
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
    micro_rngs = {name: jax.random.split(key, grad_accum_steps) for name, key in rngs.items()}
    total, _ = jax.lax.scan(accumulate, zeros, (split(images), split(targets), micro_rngs))
    loss, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)
  loss, grads = jax.lax.pmean((loss, grads), AXIS)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay > 0:
    ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay)
  new_state = TrainState(state.step + 1, params, opt_state, ema_params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & applied
  # A blown-up step is not applied: the host stops on `finite` with the last finite state.
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                           state.replace(step=state.step + 1))
  metrics = {
      "loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_state.params),
      "learning_rate": learning_rate(state.step), "finite": finite,
  }
  return new_state, metrics


def init_state(model: ViT, optimizer: optax.GradientTransformation, seed: int, *,
               ema: bool = False) -> TrainState:
  """Fresh parameters (initialised from key(seed)) and optimizer state, on the host's device;
  with `ema`, an average that starts at the initial parameters."""
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  params = jax.jit(lambda rng: model.init(rng, dummy, train=False)["params"])(jax.random.key(seed))
  ema_params = jax.tree.map(jnp.copy, params) if ema else None
  return TrainState(jnp.int32(0), params, optimizer.init(params), ema_params)
