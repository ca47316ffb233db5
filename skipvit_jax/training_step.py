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

from skipvit_jax import augment, parallel
from skipvit_jax.models.vit import ViT

AXIS = parallel.AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Regularization:
  label_smoothing: float = 0.0  # target = (1 - e) one-hot + e / classes
  mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixup; 0 = off
  cutmix_alpha: float = 0.0  # cutmix; 0 = off
  mix_switch_prob: float = 0.5  # chance of cutmix when both are on


def train_step(
    state: TrainState, batch: dict, *, model: ViT, optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule, regularization: Regularization, seed: int,
) -> tuple[TrainState, dict]:
  """One optimisation step on this device's shard of the global batch (run under pmap).

  batch: image (b, S, S, 3) float32, label (b,) int32.
  The step's randomness is fold_in(key(seed), step), then the device index.
  """
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step),
                           jax.lax.axis_index(AXIS))
  rng_mix, rng_dropout = jax.random.split(rng)
  targets = augment.soft_targets(batch["label"], model.num_classes, regularization.label_smoothing)
  images, targets = augment.mix_batch(
      rng_mix, batch["image"], targets, mixup_alpha=regularization.mixup_alpha,
      cutmix_alpha=regularization.cutmix_alpha, switch_prob=regularization.mix_switch_prob,
  )

  def loss_fn(params):
    logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng_dropout})
    return optax.softmax_cross_entropy(logits, targets).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  loss, grads = jax.lax.pmean((loss, grads), AXIS)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A blown-up step is not applied: the host stops on `finite` with the last good state.
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                           state.replace(step=state.step + 1))
  metrics = {
      "loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_state.params),
      "learning_rate": learning_rate(state.step), "finite": finite,
  }
  return new_state, metrics


def init_state(model: ViT, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh parameters (initialised from key(seed)) and optimizer state, on the host's device."""
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  params = jax.jit(lambda rng: model.init(rng, dummy, train=False)["params"])(jax.random.key(seed))
  return TrainState(jnp.int32(0), params, optimizer.init(params))
