"""On-device batch augmentation: mixup and cutmix (DeiT / timm semantics), static shapes.

Each device mixes its own examples with the same batch reversed, with one lambda per batch
drawn from Beta(alpha, alpha); when both are enabled, cutmix is chosen with probability
`switch_prob`. Labels become soft targets, label smoothing included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """labels: (B,) int -> (B, num_classes) float32."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
  """images: (B, H, W, C), targets: (B, K) -> mixed images and targets (same shapes)."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  rng_choice, rng_mixup, rng_cutmix, rng_box = jax.random.split(rng, 4)
  partner_images, partner_targets = images[::-1], targets[::-1]

  def mixup():
    lam = jax.random.beta(rng_mixup, mixup_alpha, mixup_alpha)
    return lam * images + (1 - lam) * partner_images, lam

  def cutmix():
    lam = jax.random.beta(rng_cutmix, cutmix_alpha, cutmix_alpha)
    inside, area = _random_box(rng_box, images.shape[1], images.shape[2], lam)
    mixed = jnp.where(inside[None, :, :, None], partner_images, images)
    return mixed, 1.0 - area  # lambda corrected to the clipped box

  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(rng_choice) < switch_prob
    (mixup_images, mixup_lam), (cutmix_images, cutmix_lam) = mixup(), cutmix()
    mixed = jnp.where(use_cutmix, cutmix_images, mixup_images)
    lam = jnp.where(use_cutmix, cutmix_lam, mixup_lam)
  elif mixup_alpha > 0:
    mixed, lam = mixup()
  else:
    mixed, lam = cutmix()
  return mixed.astype(images.dtype), lam * targets + (1 - lam) * partner_targets


def _random_box(rng: jax.Array, height: int, width: int, lam: jax.Array):
  """A box of area ~(1 - lam) at a uniform centre, clipped to the image.

  Returns (inside: (H, W) bool, box area / image area)."""
  cut = jnp.sqrt(1.0 - lam)
  rng_y, rng_x = jax.random.split(rng)
  cy = jax.random.uniform(rng_y) * height
  cx = jax.random.uniform(rng_x) * width
  half_h, half_w = cut * height / 2, cut * width / 2
  y0, y1 = jnp.round(jnp.clip(cy - half_h, 0, height)), jnp.round(jnp.clip(cy + half_h, 0, height))
  x0, x1 = jnp.round(jnp.clip(cx - half_w, 0, width)), jnp.round(jnp.clip(cx + half_w, 0, width))
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  return inside, (y1 - y0) * (x1 - x0) / (height * width)
