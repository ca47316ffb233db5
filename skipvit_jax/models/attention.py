"""Multi-head attention cores by name, all with the (B, N, H, D) layout.

- "xla": explicit softmax(q k^T / sqrt(D)) v; the probabilities are at hand, so the [CLS]
  row a drop layer ranks by is free.
- "dot_product_attention": `jax.nn.dot_product_attention` with its default (XLA)
  implementation; it never materialises the probabilities in the API, so the [CLS] row is
  recomputed from q[:, 0] and K (N*D multiply-adds per head, negligible).
- "cudnn": the same function forced onto cuDNN's fused flash attention, for NVIDIA GPUs with
  bfloat16/float16 inputs and a head dimension that is a multiple of 8 up to 128. JAX (0.10 at
  least) checks cuDNN's training path as if a bias were always present and so rejects every
  odd token count, and a ViT has 1 + P tokens (197 at 224 px; 99 in ToE's first DeiT-S
  stage). The tokens are therefore padded to an even count, the padding keys masked through
  cuDNN's own key-length mask and the padding rows dropped from the output: outputs and
  gradients are those of the unpadded attention (tests/test_attention.py checks it through
  XLA). Where cuDNN cannot run, the same padded call runs on XLA instead, saying so once in
  the log.
- "pallas": the fused Pallas kernel of `kernels/gather_attention.py`, which emits the [CLS]
  row itself. It lowers on NVIDIA GPUs only; elsewhere (CPU, TPU, a PJRT plugin) it falls
  back to the kernel's plain-jnp reference, saying so once in the log.
- "pallas_interpret": the same kernel in Pallas interpret mode, on any backend: how the
  kernel is tested on CPU (slow; not for training).
- "auto": "cudnn" where cuDNN can run (an NVIDIA GPU, bfloat16/float16, a supported head
  dimension), "xla" everywhere else (float32 on a GPU, CPU, TPU, any PJRT plugin). On a GPU
  the choice follows from memory traffic: cuDNN's flash attention never writes the
  (B, H, N, N) probabilities to memory, forward or backward, where "xla" writes them in the
  forward pass and reads them back in the backward pass. `benchmarks/gpu_check.py` times all
  three GPU implementations in the training step and names the fastest; what has been
  measured is in BENCHMARKS.md, and docs/attention.md explains the choice.

In the model the kernel runs with keep_idx=None: after a split the residual stream itself is
gathered (the MLP and the residual add need the kept tokens anyway), so every layer attends
over the tokens it has. The kernel's gather-by-index mode is benchmarked on its own
(benchmarks/gather_attention.py).

All give the same routing decisions in float32 (tests/test_attention.py).

A logit bias per key (`key_bias`, ToMe's proportional attention: log of each token's size,
docs/method.md §8) is taken by "xla" and "dot_product_attention"; "auto" resolves to "xla"
when there is one. "cudnn" and the Pallas kernel take none (BIAS_IMPLEMENTATIONS lists those
that do; config validation rejects the others before anything compiles).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl import logging

from kernels import gather_attention as gather_attention_kernel
from skipvit_jax.models import routing

IMPLEMENTATIONS = ("auto", "xla", "dot_product_attention", "cudnn", "pallas", "pallas_interpret")
# The implementations that add a per-key logit bias (ToMe's proportional attention).
BIAS_IMPLEMENTATIONS = ("auto", "xla", "dot_product_attention")

# What cuDNN's fused attention accepts (JAX's own checks, kept conservative: head dimensions
# up to 256 need a Hopper GPU, 128 runs on every generation).
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
# The token count cuDNN's training path is given is a multiple of this; see the module doc.
CUDNN_TOKEN_MULTIPLE = 2


class AttentionResult(NamedTuple):
  out: jax.Array  # (B, N, H, D)
  cls_scores: jax.Array | None  # (B, N - 1) float32, head-averaged [CLS] row, patch columns
  probs: jax.Array | None  # (B, H, N, N) float32
  key_mean: jax.Array | None = None  # (B, N, D) keys averaged over heads (ToMe's metric)


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
    key_bias: jax.Array | None = None,
) -> AttentionResult:
  """Softmax attention of every token to every token.

  Args:
    q, k, v: (B, N, H, D), [CLS] at index 0.
    implementation: one of IMPLEMENTATIONS (one of BIAS_IMPLEMENTATIONS with `key_bias`).
    with_cls_scores: also return the head-averaged [CLS] attention row (patch columns).
    with_probs: also return the full attention probabilities (for inspection; this
      materialises a (B, H, N, N) array whatever the implementation).
    key_bias: (B, N) float32 added to every query's logit for key j (after the 1/sqrt(D)
      scale), or None. Takes no gradient.
  """
  implementation = resolve(implementation, dtype=q.dtype, head_dim=q.shape[-1],
                           with_bias=key_bias is not None)
  if key_bias is not None:
    if implementation not in BIAS_IMPLEMENTATIONS:
      raise ValueError(
          f"attention implementation: {implementation!r} takes no logit bias (ToMe's "
          f"proportional attention); must be one of {BIAS_IMPLEMENTATIONS}")
    key_bias = jax.lax.stop_gradient(key_bias).astype(jnp.float32)
  probs = attention_probs(q, k, key_bias) if with_probs else None
  cls_scores = None
  if implementation == "xla":
    out, cls_scores = _xla_attention(q, k, v, key_bias)
  elif implementation == "dot_product_attention":
    bias = None if key_bias is None else key_bias[:, None, None, :].astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias)
  elif implementation == "cudnn":
    out = _cudnn_attention(q, k, v)
  else:
    out, cls_scores = _pallas_attention(q, k, v, interpret=implementation == "pallas_interpret")

  if with_cls_scores and cls_scores is None:
    if key_bias is not None:
      probs = attention_probs(q, k, key_bias) if probs is None else probs
    if probs is not None:
      cls_scores = probs[:, :, 0, 1:].mean(axis=1)
    else:
      cls_scores = routing.cls_attention_scores(q, k)
  return AttentionResult(
      out, cls_scores if with_cls_scores else None, probs if with_probs else None
  )


def resolve(
    implementation: str, backend: str | None = None, *, dtype=None, head_dim: int | None = None,
    with_bias: bool = False,
) -> str:
  """The concrete implementation `implementation` means on `backend` (default: JAX's) for
  inputs of `dtype` and `head_dim` (None: any that cuDNN supports), with a logit bias or not
  ("auto" with a bias is "xla")."""
  check_implementation(implementation)
  if implementation != "auto":
    return implementation
  if with_bias:
    return "xla"
  return "cudnn" if _cudnn_unsupported(backend, dtype, head_dim) is None else "xla"


def runs_as(implementation: str, *, dtype, head_dim: int, backend: str | None = None,
            with_bias: bool = False) -> str:
  """What `implementation` runs on `backend` for inputs of `dtype` and `head_dim` (with a
  logit bias or not): the resolved name, or the fallback and why (for benchmark and log
  records)."""
  backend = jax.default_backend() if backend is None else backend
  name = resolve(implementation, backend, dtype=dtype, head_dim=head_dim, with_bias=with_bias)
  if name == "cudnn":
    reason = _cudnn_unsupported(backend, dtype, head_dim)
    return name if reason is None else f"xla (cudnn cannot run: {reason})"
  if name == "pallas" and not gather_attention_kernel.can_lower(backend):
    return f"pallas jnp reference (no Pallas lowering on backend {backend!r})"
  return name


def _cudnn_unsupported(backend: str | None, dtype, head_dim: int | None) -> str | None:
  """Why cuDNN's fused attention cannot run these inputs here, or None when it can."""
  backend = jax.default_backend() if backend is None else backend
  if backend not in ("gpu", "cuda"):
    return f"backend {backend!r}"
  if dtype is not None and jnp.dtype(dtype) not in CUDNN_DTYPES:
    return f"{jnp.dtype(dtype)} inputs"
  if head_dim is not None and (head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM):
    return f"head dimension {head_dim} (needs a multiple of 8 up to {CUDNN_MAX_HEAD_DIM})"
  return None


def _cudnn_attention(q, k, v) -> jax.Array:
  reason = _cudnn_unsupported(None, q.dtype, q.shape[-1])
  if reason is not None:
    _log_fallback_once("cudnn", reason, "the same padded attention on XLA")
  return padded_dot_product_attention(q, k, v, multiple=CUDNN_TOKEN_MULTIPLE,
                                      implementation="cudnn" if reason is None else "xla")


def padded_dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, multiple: int, implementation: str
) -> jax.Array:
  """`jax.nn.dot_product_attention` with the tokens padded to a multiple of `multiple`.

  The padding keys are masked by key length (cuDNN's native padding mask, no bias array),
  the padding queries are zeros whose output rows are dropped, so the result and its
  gradients equal the unpadded attention's.

  Args:
    q, k, v: (B, N, H, D).
    multiple: the padded token count is the smallest multiple of this >= N.
    implementation: "cudnn" or "xla", passed to `jax.nn.dot_product_attention`.

  Returns:
    (B, N, H, D).
  """
  batch, num_tokens = q.shape[:2]
  padded = -(-num_tokens // multiple) * multiple
  if padded == num_tokens:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  pad = ((0, 0), (0, padded - num_tokens), (0, 0), (0, 0))
  out = jax.nn.dot_product_attention(
      *(jnp.pad(x, pad) for x in (q, k, v)),
      key_value_seq_lengths=jnp.full((batch,), num_tokens, jnp.int32),
      implementation=implementation,
  )
  return out[:, :num_tokens]


def _pallas_attention(q, k, v, *, interpret: bool) -> tuple[jax.Array, jax.Array]:
  """The Pallas kernel where it lowers (or in interpret mode), else its jnp reference."""
  backend = jax.default_backend()
  if interpret or gather_attention_kernel.can_lower(backend):
    return gather_attention_kernel.gather_attention(q, k, v, interpret=interpret)
  _log_fallback_once("pallas", f"no Pallas lowering on backend {backend!r}", "the jnp reference")
  return gather_attention_kernel.gather_attention_reference(q, k, v)


@functools.cache
def _log_fallback_once(implementation: str, reason: str, instead: str) -> None:
  logging.info("attention %r: %s; using %s", implementation, reason, instead)


def _xla_attention(q, k, v, key_bias=None) -> tuple[jax.Array, jax.Array]:
  """Explicit attention, with `key_bias` (B, N) added to the logits when given; returns
  (out (B, N, H, D), [CLS] scores (B, N - 1)).

  The softmax denominator is applied after the value product, to the (N, D) output rows
  instead of the (N, N) weights: one full pass over the attention matrix less, forward and
  backward, which on a CPU is a measurable part of a ViT step.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  if key_bias is not None:
    logits = logits + key_bias[:, None, None, :]
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  denominator = weights.sum(axis=-1)  # (B, H, N)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  out = out / jnp.swapaxes(denominator, 1, 2)[..., None].astype(out.dtype)
  cls_scores = (weights[:, :, 0, 1:] / denominator[:, :, :1]).mean(axis=1)
  return out, cls_scores


def attention_probs(q: jax.Array, k: jax.Array, key_bias: jax.Array | None = None) -> jax.Array:
  """q, k: (B, N, H, D), key_bias: (B, N) or None -> softmax(q k^T / sqrt(D) + key_bias):
  (B, H, N, N) float32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  if key_bias is not None:
    logits = logits + key_bias[:, None, None, :]
  return jax.nn.softmax(logits, axis=-1)
