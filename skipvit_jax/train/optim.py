"""Learning-rate schedule and optimizer (AdamW with DeiT's conventions)."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(
    *, base_lr: float, warmup_lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> optax.Schedule:
  """Linear warm-up from warmup_lr to base_lr, then cosine decay to min_lr at total_steps."""
  cosine = optax.cosine_decay_schedule(
      base_lr, max(total_steps - warmup_steps, 1), alpha=min_lr / base_lr if base_lr else 0.0
  )
  if warmup_steps <= 0:
    return cosine
  warmup = optax.linear_schedule(warmup_lr, base_lr, warmup_steps)
  return optax.join_schedules([warmup, cosine], [warmup_steps])


def weight_decay_mask(params) -> object:
  """True exactly for the leaves named `kernel`: dense, attention-projection and patch-embedding
  weights (and the head's). Biases, LayerNorm scales and biases, `cls` and `pos_embedding`
  take no decay: DeiT/timm's rule, written as big_vision writes it, by name, because the
  query/key/value biases are (heads, head_dim) and a rule by rank would decay them."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(optimizer_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW; global-norm gradient clipping first when grad_clip_norm > 0."""
  adamw = optax.adamw(
      schedule,
      b1=optimizer_config.b1,
      b2=optimizer_config.b2,
      eps=optimizer_config.eps,
      weight_decay=optimizer_config.weight_decay,
      mask=weight_decay_mask,
  )
  if optimizer_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adamw)
  return adamw
