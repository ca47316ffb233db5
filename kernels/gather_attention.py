"""Fused gather-attention: attention among a kept subset of tokens, read in place.

SkipViT keeps [CLS] plus K of the P = N - 1 patch tokens in some layers. The plain way to
attend among them gathers q, k and v into (B, 1 + K, H, D) copies first; this kernel reads
the kept rows of the full-token (B, N, H, D) arrays directly by index, so the only memory
traffic is the rows it attends over, the (B, 1 + K, H, D) output and small per-row
statistics. It also returns the head-averaged [CLS]-row attention probabilities over the
kept patches, the ranking score SkipViT uses to choose the next layer's tokens, without
materialising the (1 + K) x (1 + K) attention matrix.

Kernels are written for the Pallas Triton backend (GPU) and run anywhere with
`interpret=True`:

- forward: FlashAttention-2 style online softmax over tiles of kept keys, one program per
  (query tile, batch, head). The program holding [CLS] makes a second, cheap pass over the
  key tiles for the [CLS] row only, writing its probabilities with the final log-sum-exp.
- backward: one fused program per (tile, batch, head) recomputes probabilities from the
  saved log-sum-exp; it accumulates dk, dv for its key tile over all query tiles, then dq
  for its query tile over all key tiles, and stores the three straight into the full-token
  layout by row index (the gather's transpose). Rows that are not kept get zero gradient.
  Only delta = rowsum(out * dout), a small elementwise reduction, is left to XLA.

The [CLS] scores are differentiable: their cotangent enters the backward kernel as an
extra term on the [CLS] row of dP (see `_bwd_kernel`), so gradients are exact whether or
not the caller wraps the scores in `stop_gradient`.

Public API: `gather_attention` (Pallas), `gather_attention_reference` (plain jnp, same
results), `can_lower` (whether the Pallas kernel compiles on a backend), `BlockSizes`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Large and negative but finite: exp2(mask - m) must be exactly 0 without producing
# inf - inf = NaN when a whole row of a tile is masked.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# Kernels work in base 2 (exp2 is cheaper than exp on GPUs): logits are scaled by log2(e)
# and the saved log-sum-exp is in base 2 too.
_LOG2E = math.log2(math.e)
# Triton's tensor-core dot needs every operand dimension >= 16.
_MIN_TILE = 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes; powers of two >= 16 (Triton).

  Attributes:
    block_q: query rows per forward program.
    block_k: key rows per forward inner-loop step.
    block_bwd: query and key rows per backward program and inner-loop step.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """

  block_q: int = 64
  block_k: int = 64
  block_bwd: int = 32
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k", "block_bwd"):
      size = getattr(self, name)
      if size < _MIN_TILE or size & (size - 1):
        raise ValueError(f"BlockSizes.{name} must be a power of two >= {_MIN_TILE}, got {size}.")


def can_lower(backend: str | None = None) -> bool:
  """Whether `gather_attention` compiles (without `interpret=True`) on `backend`.

  Args:
    backend: a platform name ("gpu", "cuda", "cpu", ...); defaults to JAX's default
      backend.

  Returns:
    True for NVIDIA GPUs, where Pallas lowers to Triton. Everything else (CPU, TPU, ROCm,
    PJRT plugins) should use `gather_attention_reference`, or `interpret=True` for tests.
  """
  backend = jax.default_backend() if backend is None else backend
  return backend.lower() in ("gpu", "cuda")


def gather_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    keep_idx: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Plain-jnp gather-attention with `gather_attention`'s contract; runs on any backend.

  Gathers the kept rows, then softmax attention among them in float32. Differentiable by
  ordinary autodiff (the gather's transpose scatters gradients back to the full layout).

  Args:
    q: (B, N, H, D) queries, [CLS] at token 0.
    k: (B, N, H, D) keys.
    v: (B, N, H, D) values.
    keep_idx: (B, K) int32 kept patch positions (0-based, [CLS] excluded), unique,
      ascending by convention; None attends over all N tokens.

  Returns:
    out: (B, 1 + K, H, D) in the input dtype, [CLS] first, then the kept patches in
      keep_idx order; (B, N, H, D) when keep_idx is None.
    cls_scores: (B, K) float32 ((B, N - 1) when keep_idx is None): the [CLS] row of the
      kept-token attention probabilities at the kept patches, averaged over heads.
  """
  _check_inputs(q, k, v, keep_idx)
  if keep_idx is not None:
    rows = _kept_rows(keep_idx)[:, :, None, None]  # (B, 1 + K, 1, 1)
    q, k, v = (jnp.take_along_axis(x, rows, axis=1) for x in (q, k, v))
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits * scale, axis=-1)  # (B, H, M, M)
  out = jnp.einsum(
      "bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
  )
  return out.astype(q.dtype), probs[:, :, 0, 1:].mean(axis=1)


@functools.partial(jax.jit, static_argnames=("interpret", "block_sizes"))
def gather_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    keep_idx: jax.Array | None = None,
    *,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Softmax attention among [CLS] and the kept patch tokens, read in place (Pallas).

  Same contract as `gather_attention_reference`. Scale 1/sqrt(D); float32 accumulation;
  float32 inputs use full-precision (not TF32) dots. Differentiable in q, k, v through
  both outputs with Pallas backward kernels; gradients come back in the full (B, N, H, D)
  layout, zero on rows that were not kept.

  keep_idx must hold unique positions in [0, N - 1): this is not checked (the values are
  traced), and duplicates give wrong gradients.

  Args:
    q: (B, N, H, D) queries, [CLS] at token 0; float32 or bfloat16.
    k: (B, N, H, D) keys.
    v: (B, N, H, D) values.
    keep_idx: (B, K) int32 kept patch positions (0-based, [CLS] excluded), unique,
      ascending by convention; None attends over all N tokens.
    interpret: run the kernels in the Pallas interpreter (any backend; slow). Required
      wherever `can_lower()` is False.
    block_sizes: tile sizes; defaults to `BlockSizes()`.

  Returns:
    out: (B, 1 + K, H, D) ((B, N, H, D) when keep_idx is None) in the input dtype.
    cls_scores: (B, K) ((B, N - 1) when keep_idx is None) float32.

  Raises:
    NotImplementedError: if `interpret` is False and the default backend has no Pallas
      Triton lowering (see `can_lower`).
  """
  _check_inputs(q, k, v, keep_idx)
  if not interpret and not can_lower():
    raise NotImplementedError(
        f"gather_attention has no Pallas lowering for backend {jax.default_backend()!r}; "
        "pass interpret=True (slow, for tests) or use gather_attention_reference."
    )
  blocks = BlockSizes() if block_sizes is None else block_sizes
  batch, n = q.shape[:2]
  num_rows = n if keep_idx is None else 1 + keep_idx.shape[1]
  padded = _round_up(num_rows, max(blocks.block_q, blocks.block_k, blocks.block_bwd))
  if keep_idx is None:
    rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
  else:
    rows = _kept_rows(keep_idx)
  # Padding rows point one past the last token: loads of them are masked, and the
  # interpreter drops their (masked) scatter stores instead of racing a real row.
  rows = jnp.pad(rows, ((0, 0), (0, padded - num_rows)), constant_values=n)  # (B, Mp)
  out, cls_probs = _attention(q, k, v, rows, num_rows, keep_idx is None, blocks, interpret)
  return out, cls_probs[:, :, 1:].mean(axis=1)


def _check_inputs(q, k, v, keep_idx) -> None:
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError(
        f"q, k, v must share one (B, N, H, D) shape, got {q.shape}, {k.shape}, {v.shape}."
    )
  if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError(f"q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
  if keep_idx is None:
    return
  batch, n = q.shape[:2]
  if (
      keep_idx.ndim != 2
      or keep_idx.shape[0] != batch
      or not 1 <= keep_idx.shape[1] <= n - 1
      or not jnp.issubdtype(keep_idx.dtype, jnp.integer)
  ):
    raise ValueError(
        f"keep_idx must be (B={batch}, K) integer with 1 <= K <= {n - 1}, got "
        f"{keep_idx.shape} {keep_idx.dtype}."
    )


def _kept_rows(keep_idx: jax.Array) -> jax.Array:
  """(B, K) patch positions -> (B, 1 + K) int32 token rows, [CLS] (row 0) first."""
  cls_row = jnp.zeros((keep_idx.shape[0], 1), jnp.int32)
  return jnp.concatenate([cls_row, keep_idx.astype(jnp.int32) + 1], axis=1)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _head_dim_padded(head_dim: int) -> int:
  return max(_MIN_TILE, pl.next_power_of_2(head_dim))


def _dot_precision(dtype) -> lax.Precision | None:
  # Triton would otherwise use TF32 for float32 operands (~1e-3 relative error).
  return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _load_rows(ref, rows: jax.Array, row_ok: jax.Array, head_dim: int) -> jax.Array:
  """Rows `rows` of a (R, Dp) ref -> (len(rows), Dp); masked rows and columns >= head_dim
  read as 0."""
  cols = jnp.arange(ref.shape[-1])
  mask = row_ok[:, None] & (cols < head_dim)[None, :]
  return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=mask, other=0)


def _store_rows(ref, rows: jax.Array, row_ok: jax.Array, head_dim: int, value: jax.Array):
  """Scatters `value` (len(rows), Dp) into rows `rows` of a (R, Dp) ref, skipping masked
  rows and columns >= head_dim."""
  cols = jnp.arange(ref.shape[-1])
  mask = row_ok[:, None] & (cols < head_dim)[None, :]
  plgpu.store(ref.at[rows[:, None], cols[None, :]], value.astype(ref.dtype), mask=mask)


# ---------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(
    rows_ref,  # (Mp,) int32 token row of each kept position
    q_ref,  # (N, Dp) full-token rows of one (batch, head)
    k_ref,
    v_ref,
    out_ref,  # (M, Dp) kept positions
    lse_ref,  # (block_q,) base-2 log-sum-exp of this query tile
    cls_ref,  # (Mp,) [CLS]-row probabilities
    *,
    num_rows: int,
    head_dim: int,
    block_q: int,
    block_k: int,
    precision: lax.Precision | None,
):
  tile = pl.program_id(0)
  qk_scale = _LOG2E / math.sqrt(head_dim)
  num_k_tiles = pl.cdiv(num_rows, block_k)

  q_pos = tile * block_q + jnp.arange(block_q)
  q_ok = q_pos < num_rows
  q = _load_rows(q_ref, rows_ref[pl.ds(tile * block_q, block_q)], q_ok, head_dim)

  def key_tile(t):
    pos = t * block_k + jnp.arange(block_k)
    return rows_ref[pl.ds(t * block_k, block_k)], pos < num_rows

  def body(t, carry):
    acc, m_prev, denom_prev = carry
    k_rows, k_ok = key_tile(t)
    k = _load_rows(k_ref, k_rows, k_ok, head_dim)
    s = plgpu.dot(q, k, trans_b=True, precision=precision) * qk_scale  # (block_q, block_k)
    s = jnp.where(k_ok[None, :], s, _MASK_VALUE)
    m_next = jnp.maximum(m_prev, s.max(axis=1))
    correction = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(s - m_next[:, None])
    v = _load_rows(v_ref, k_rows, k_ok, head_dim)
    pv = plgpu.dot(p.astype(v.dtype), v, precision=precision)
    return correction[:, None] * acc + pv, m_next, correction * denom_prev + p.sum(axis=1)

  acc = jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32)
  m = jnp.full((block_q,), -jnp.inf, jnp.float32)
  denom = jnp.zeros((block_q,), jnp.float32)  # the softmax's running denominator
  acc, m, denom = lax.fori_loop(0, num_k_tiles, body, (acc, m, denom))
  lse = m + jnp.log2(denom)
  lse_ref[...] = lse
  _store_rows(out_ref, q_pos, q_ok, head_dim, acc / denom[:, None])

  # [CLS] is kept position 0, so it lives in query tile 0. Its probabilities need the
  # final log-sum-exp, hence a second pass over the keys for that single row.
  @pl.when(tile == 0)
  def _():
    cls_lse = jnp.sum(jnp.where(q_pos == 0, lse, 0.0))
    cls_row = jnp.zeros((1,), jnp.int32)
    q_cls = _load_rows(q_ref, cls_row, cls_row == 0, head_dim)  # (1, Dp)
    q_cls = q_cls.astype(jnp.float32)

    def cls_body(t, carry):
      k_rows, k_ok = key_tile(t)
      k = _load_rows(k_ref, k_rows, k_ok, head_dim).astype(jnp.float32)
      s = jnp.sum(k * q_cls, axis=1) * qk_scale  # (block_k,)
      cls_ref[pl.ds(t * block_k, block_k)] = jnp.where(k_ok, jnp.exp2(s - cls_lse), 0.0)
      return carry

    lax.fori_loop(0, num_k_tiles, cls_body, 0)


def _forward(q, k, v, rows, num_rows: int, blocks: BlockSizes, interpret: bool):
  """Returns out (B, M, H, D), lse (B, H, Mp) base 2, cls_probs (B, H, M) float32."""
  batch, n, heads, head_dim = q.shape
  padded = rows.shape[1]
  dp = _head_dim_padded(head_dim)
  full_rows = pl.BlockSpec((None, n, None, dp), lambda i, b, h: (b, 0, h, 0))
  kernel = functools.partial(
      _fwd_kernel,
      num_rows=num_rows,
      head_dim=head_dim,
      block_q=blocks.block_q,
      block_k=blocks.block_k,
      precision=_dot_precision(q.dtype),
  )
  num_q_tiles = pl.cdiv(num_rows, blocks.block_q)
  itemsize = q.dtype.itemsize
  cost = pl.CostEstimate(
      flops=4 * batch * heads * num_rows * num_rows * head_dim,
      transcendentals=batch * heads * num_rows * num_rows,
      # q read and out written once; k and v read once per query tile.
      bytes_accessed=batch * heads * num_rows * head_dim * itemsize * (2 + 2 * num_q_tiles),
  )
  out, lse, cls_probs = pl.pallas_call(
      kernel,
      # Query tile fastest: neighbouring programs share one (batch, head)'s keys in L2.
      grid=(num_q_tiles, batch, heads),
      in_specs=[
          pl.BlockSpec((None, padded), lambda i, b, h: (b, 0)),
          full_rows,
          full_rows,
          full_rows,
      ],
      out_specs=[
          pl.BlockSpec((None, num_rows, None, dp), lambda i, b, h: (b, 0, h, 0)),
          pl.BlockSpec((None, None, blocks.block_q), lambda i, b, h: (b, h, i)),
          pl.BlockSpec((None, None, padded), lambda i, b, h: (b, h, 0)),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((batch, num_rows, heads, head_dim), q.dtype),
          jax.ShapeDtypeStruct((batch, heads, padded), jnp.float32),
          jax.ShapeDtypeStruct((batch, heads, padded), jnp.float32),
      ],
      compiler_params=plgpu.CompilerParams(
          num_warps=blocks.num_warps, num_stages=blocks.num_stages
      ),
      cost_estimate=cost,
      interpret=interpret,
      name="gather_attention_fwd",
  )(rows, q, k, v)
  return out, lse, cls_probs[:, :, :num_rows]


# ---------------------------------------------------------------------------------------
# Backward.


def _bwd_kernel(
    rows_ref,  # (Mp,) int32
    q_ref,  # (N, Dp) full-token rows of one (batch, head)
    k_ref,
    v_ref,
    dout_ref,  # (M, Dp) cotangent of out, kept positions
    lse_ref,  # (Mp,) base-2 log-sum-exp per query
    delta_ref,  # (Mp,) rowsum(out * dout), plus the [CLS]-score term at position 0
    dcls_ref,  # (Mp,) cotangent of the [CLS]-row probabilities
    *refs,  # [zero-filled dq, dk, dv inputs aliased to the outputs,] dq, dk, dv (N, Dp)
    num_rows: int,
    head_dim: int,
    block: int,
    precision: lax.Precision | None,
):
  dq_ref, dk_ref, dv_ref = refs[-3:]
  tile = pl.program_id(0)
  scale = 1.0 / math.sqrt(head_dim)
  qk_scale = _LOG2E * scale
  num_tiles = pl.cdiv(num_rows, block)

  def tile_rows(t):
    pos = t * block + jnp.arange(block)
    return pos, rows_ref[pl.ds(t * block, block)], pos < num_rows

  def grad_logits(q, k, v, dout, q_pos, lse, delta, dcls, key_ok):
    """dS = P * (dP - delta) for one (query tile, key tile) pair; also returns P.

    The loss sees P through out = P V (dP = dout V^T) and, on the [CLS] row, directly
    through the scores (dP += dcls). `delta` already holds the matching rowsum(P * dP).
    """
    s = plgpu.dot(q, k, trans_b=True, precision=precision) * qk_scale
    s = jnp.where(key_ok[None, :], s, _MASK_VALUE)
    p = jnp.exp2(s - lse[:, None])
    dp = plgpu.dot(dout, v, trans_b=True, precision=precision)
    dp = dp + jnp.where(q_pos[:, None] == 0, dcls[None, :], 0.0)
    return p, p * (dp - delta[:, None])

  # Pass 1: dk, dv for key tile `tile`, over all query tiles.
  k_pos, k_rows, k_ok = tile_rows(tile)
  k = _load_rows(k_ref, k_rows, k_ok, head_dim)
  v = _load_rows(v_ref, k_rows, k_ok, head_dim)
  dcls_k = dcls_ref[pl.ds(tile * block, block)]

  def dkdv_body(t, carry):
    dk, dv = carry
    q_pos, q_rows, q_ok = tile_rows(t)
    q = _load_rows(q_ref, q_rows, q_ok, head_dim)
    dout = _load_rows(dout_ref, q_pos, q_ok, head_dim)
    # Padding queries carry no loss; their saved statistics may be uninitialised.
    lse = jnp.where(q_ok, lse_ref[pl.ds(t * block, block)], 0.0)
    delta = jnp.where(q_ok, delta_ref[pl.ds(t * block, block)], 0.0)
    p, ds = grad_logits(q, k, v, dout, q_pos, lse, delta, dcls_k, k_ok)
    p = jnp.where(q_ok[:, None], p, 0.0)
    ds = jnp.where(q_ok[:, None], ds, 0.0)
    dv = dv + plgpu.dot(p.astype(dout.dtype), dout, trans_a=True, precision=precision)
    dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True, precision=precision)
    return dk, dv

  zeros = jnp.zeros((block, q_ref.shape[-1]), jnp.float32)
  dk, dv = lax.fori_loop(0, num_tiles, dkdv_body, (zeros, zeros))
  _store_rows(dk_ref, k_rows, k_ok, head_dim, dk * scale)
  _store_rows(dv_ref, k_rows, k_ok, head_dim, dv)

  # Pass 2: dq for query tile `tile`, over all key tiles.
  q_pos, q_rows, q_ok = tile_rows(tile)
  q = _load_rows(q_ref, q_rows, q_ok, head_dim)
  dout = _load_rows(dout_ref, q_pos, q_ok, head_dim)
  lse = jnp.where(q_ok, lse_ref[pl.ds(tile * block, block)], 0.0)
  delta = jnp.where(q_ok, delta_ref[pl.ds(tile * block, block)], 0.0)

  def dq_body(t, dq):
    _, k_rows, k_ok = tile_rows(t)
    k = _load_rows(k_ref, k_rows, k_ok, head_dim)
    v = _load_rows(v_ref, k_rows, k_ok, head_dim)
    dcls = dcls_ref[pl.ds(t * block, block)]
    _, ds = grad_logits(q, k, v, dout, q_pos, lse, delta, dcls, k_ok)
    return dq + plgpu.dot(ds.astype(k.dtype), k, precision=precision)

  dq = lax.fori_loop(0, num_tiles, dq_body, zeros)
  _store_rows(dq_ref, q_rows, q_ok, head_dim, dq * scale)


def _backward(q, k, v, rows, out, lse, cls_probs, dout, dcls, num_rows: int,
              covers_all: bool, blocks: BlockSizes, interpret: bool):
  """Returns dq, dk, dv in the full (B, N, H, D) layout."""
  batch, n, heads, head_dim = q.shape
  padded = rows.shape[1]
  dp = _head_dim_padded(head_dim)
  dcls = dcls.astype(jnp.float32)
  # delta = rowsum(P * dP); on the [CLS] row dP also holds the scores' cotangent.
  delta = jnp.einsum(
      "bmhd,bmhd->bhm", out.astype(jnp.float32), dout.astype(jnp.float32)
  )  # (B, H, M)
  delta = delta.at[:, :, 0].add(jnp.sum(cls_probs * dcls, axis=-1))
  pad = ((0, 0), (0, 0), (0, padded - num_rows))
  delta, dcls = jnp.pad(delta, pad), jnp.pad(dcls, pad)

  full_rows = pl.BlockSpec((None, n, None, dp), lambda i, b, h: (b, 0, h, 0))
  per_row = pl.BlockSpec((None, None, padded), lambda i, b, h: (b, h, 0))
  in_specs = [
      pl.BlockSpec((None, padded), lambda i, b, h: (b, 0)),
      full_rows,
      full_rows,
      full_rows,
      pl.BlockSpec((None, num_rows, None, dp), lambda i, b, h: (b, 0, h, 0)),
      per_row,
      per_row,
      per_row,
  ]
  args = [rows, q, k, v, dout, lse, delta, dcls]
  aliases = {}
  if not covers_all:
    # Only kept rows are stored; the others must read as zero gradient.
    for i in range(3):
      aliases[len(args)] = i
      args.append(jnp.zeros_like(q))
      in_specs.append(full_rows)
  kernel = functools.partial(
      _bwd_kernel,
      num_rows=num_rows,
      head_dim=head_dim,
      block=blocks.block_bwd,
      precision=_dot_precision(q.dtype),
  )
  num_tiles = pl.cdiv(num_rows, blocks.block_bwd)
  itemsize = q.dtype.itemsize
  cost = pl.CostEstimate(
      flops=10 * batch * heads * num_rows * num_rows * head_dim,
      transcendentals=2 * batch * heads * num_rows * num_rows,
      # Each pass reads its own tile's two operands once and the other two per step;
      # dq, dk, dv written once.
      bytes_accessed=batch * heads * num_rows * head_dim * itemsize * (7 + 4 * num_tiles),
  )
  dq, dk, dv = pl.pallas_call(
      kernel,
      grid=(num_tiles, batch, heads),
      in_specs=in_specs,
      out_specs=[full_rows, full_rows, full_rows],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)] * 3,
      input_output_aliases=aliases,
      compiler_params=plgpu.CompilerParams(
          num_warps=blocks.num_warps, num_stages=blocks.num_stages
      ),
      cost_estimate=cost,
      interpret=interpret,
      name="gather_attention_bwd",
  )(*args)
  return dq, dk, dv


# ---------------------------------------------------------------------------------------
# Differentiation rule.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attention(q, k, v, rows, num_rows: int, covers_all: bool, blocks: BlockSizes,
               interpret: bool):
  """Returns out (B, M, H, D) and the per-head [CLS]-row probabilities (B, H, M)."""
  out, _, cls_probs = _forward(q, k, v, rows, num_rows, blocks, interpret)
  return out, cls_probs


def _attention_fwd(q, k, v, rows, num_rows, covers_all, blocks, interpret):
  del covers_all
  out, lse, cls_probs = _forward(q, k, v, rows, num_rows, blocks, interpret)
  return (out, cls_probs), (q, k, v, rows, out, lse, cls_probs)


def _attention_bwd(num_rows, covers_all, blocks, interpret, residuals, cotangents):
  q, k, v, rows, out, lse, cls_probs = residuals
  dout, dcls = cotangents
  dq, dk, dv = _backward(
      q, k, v, rows, out, lse, cls_probs, dout, dcls, num_rows, covers_all, blocks, interpret
  )
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
