"""Multi-head attention cores by name, all with the (B, N, H, D) layout.

- "xla": explicit softmax(q k^T / sqrt(D)) v; the probabilities are at hand, so the [CLS]
  row a drop layer ranks by is free.
- "dot_product_attention": `jax.nn.dot_product_attention`, which picks the fused path the
  backend has; it never materialises the probabilities, so the [CLS] row is recomputed from
  q[:, 0] and K (N*D multiply-adds per head, negligible).

Both give the same routing decisions in float32 (tests/test_attention.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from skipvit_jax import routing

IMPLEMENTATIONS = ("xla", "dot_product_attention")


class AttentionResult(NamedTuple):
  out: jax.Array  # (B, N, H, D)
  cls_scores: jax.Array | None  # (B, N - 1) float32, head-averaged [CLS] row, patch columns
  probs: jax.Array | None  # (B, H, N, N) float32


def check_implementation(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation: must be one of {IMPLEMENTATIONS}, got {name!r}")


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    implementation: str = "xla",
    with_cls_scores: bool = False,
    with_probs: bool = False,
) -> AttentionResult:
  """Softmax attention of every token to every token.

  Args:
    q, k, v: (B, N, H, D), [CLS] at index 0.
    implementation: one of IMPLEMENTATIONS.
    with_cls_scores: also return the head-averaged [CLS] attention row (patch columns).
    with_probs: also return the full attention probabilities (for inspection; this
      materialises a (B, H, N, N) array whatever the implementation).
  """
  check_implementation(implementation)
  if implementation == "xla" or with_probs:
    probs = attention_probs(q, k)
  else:
    probs = None

  if implementation == "xla":
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  else:
    out = jax.nn.dot_product_attention(q, k, v)

  cls_scores = None
  if with_cls_scores:
    if probs is not None:
      cls_scores = probs[:, :, 0, 1:].mean(axis=1)
    else:
      cls_scores = routing.cls_attention_scores(q, k)
  return AttentionResult(out, cls_scores, probs if with_probs else None)


def attention_probs(q: jax.Array, k: jax.Array) -> jax.Array:
  """q, k: (B, N, H, D) -> softmax(q k^T / sqrt(D)): (B, H, N, N) float32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  return jax.nn.softmax(logits / math.sqrt(q.shape[-1]), axis=-1)
