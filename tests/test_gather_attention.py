"""kernels.gather_attention against float64 numpy, and its gradients against autodiff of the
jnp reference.

On CPU the Pallas kernels run in the interpreter, which fills every output buffer with NaN
before the kernel runs (`test_interpreter_poisons_unwritten_outputs` pins that down), so
an element a kernel fails to write fails the comparisons below. On a GPU the same tests run
the compiled Triton kernels.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from benchmarks import gather_attention as benchmark
from kernels import gather_attention as ga
from skipvit_jax.models import routing
from tests.support import cuda_lowering, reference

INTERPRET = not ga.can_lower()
# Small tiles so that small shapes still span several query and key tiles.
SMALL = ga.BlockSizes(block_q=16, block_k=16, block_bwd=16)
MIXED = ga.BlockSizes(block_q=32, block_k=16, block_bwd=64)


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  # The float32 reference must not use TF32 on GPUs; CPUs ignore this.
  with jax.default_matmul_precision("highest"):
    yield


def _inputs(seed, batch, n, heads, d, num_keep, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, d)), dtype) for _ in range(3))
  if num_keep is None:
    return q, k, v, None
  keep = np.stack([np.sort(rng.choice(n - 1, num_keep, replace=False)) for _ in range(batch)])
  return q, k, v, jnp.asarray(keep, jnp.int32)


def _numpy_gather_attention(q, k, v, keep_idx):
  """float64 loops over (batch, head): out (B, M, H, D), cls_scores (B, M - 1)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  batch, n, heads, d = q.shape
  rows = [list(range(n)) if keep_idx is None else [0] + [1 + int(j) for j in keep_idx[b]]
          for b in range(batch)]
  m = len(rows[0])
  out, scores = np.zeros((batch, m, heads, d)), np.zeros((batch, m - 1))
  for b in range(batch):
    for h in range(heads):
      qs, ks, vs = q[b, rows[b], h], k[b, rows[b], h], v[b, rows[b], h]
      probs = reference.softmax(qs @ ks.T / math.sqrt(d))
      out[b, :, h] = probs @ vs
      scores[b] += probs[0, 1:] / heads
  return out, scores


def _kernel(keep_idx, blocks=SMALL):
  return lambda q, k, v: ga.gather_attention(q, k, v, keep_idx, interpret=INTERPRET,
                                             block_sizes=blocks)


def _reference(keep_idx):
  return lambda q, k, v: ga.gather_attention_reference(q, k, v, keep_idx)


def test_interpreter_poisons_unwritten_outputs():
  if not INTERPRET:
    pytest.skip("poisoning is a property of the interpreter")

  def writes_first_row(x_ref, o_ref):
    o_ref[0, :] = x_ref[0, :]

  x = jnp.ones((2, 4), jnp.float32)
  got = pl.pallas_call(writes_first_row, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                       interpret=True)(x)
  assert np.all(np.asarray(got[0]) == 1) and np.all(np.isnan(got[1]))


FORWARD_CASES = [
    # batch, n, heads, d, num_keep (None: all tokens), blocks
    (2, 65, 2, 16, 37, SMALL),  # K + 1 not a multiple of the tile
    (2, 65, 2, 16, None, SMALL),
    (1, 197, 2, 16, 136, MIXED),  # ViT-S/16 token counts
    (2, 197, 3, 16, 89, SMALL),
    (1, 197, 2, 16, None, MIXED),
    (2, 17, 2, 16, 16, SMALL),  # every patch kept
    (3, 33, 2, 24, 5, SMALL),  # head_dim not a power of two; one partial tile
]


@pytest.mark.parametrize("batch,n,heads,d,num_keep,blocks", FORWARD_CASES)
def test_forward_matches_numpy(batch, n, heads, d, num_keep, blocks):
  q, k, v, keep_idx = _inputs(n + (num_keep or 0), batch, n, heads, d, num_keep)
  want_out, want_scores = _numpy_gather_attention(q, k, v, keep_idx)
  m = n if num_keep is None else 1 + num_keep
  for name, fn in [("kernel", _kernel(keep_idx, blocks)), ("reference", _reference(keep_idx))]:
    out, scores = jax.jit(fn)(q, k, v)
    assert out.shape == (batch, m, heads, d) and out.dtype == jnp.float32, name
    assert scores.shape == (batch, m - 1) and scores.dtype == jnp.float32, name
    assert np.isfinite(out).all() and np.isfinite(scores).all(), name
    # float32 against float64. out: an average of N <= 197 rows of v (|v| < 5), off by
    # ~sqrt(N) * 2^-24 * 5 ~ 4e-6 at most in the sum (seen 7e-7). scores: softmax entries,
    # relative error ~ that of their logits and of the N-term denominator, ~1e-6 (seen 2e-7).
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-7, err_msg=name)


def test_forward_bfloat16_matches_numpy():
  q, k, v, keep_idx = _inputs(7, 2, 65, 2, 16, 20, jnp.bfloat16)
  want_out, want_scores = _numpy_gather_attention(q, k, v, keep_idx)
  for fn in (_kernel(keep_idx), _reference(keep_idx)):
    out, scores = jax.jit(fn)(q, k, v)
    assert out.dtype == jnp.bfloat16 and scores.dtype == jnp.float32
    # bfloat16's unit roundoff u = 2^-8 ~ 3.9e-3: the probabilities are rounded to it before
    # the value product (<= u * max|v| ~ 1.6e-2 on the average of rows with |v| < 4) and the
    # output once more (u * |out|): within 2e-2 + 2e-2 |out| (seen 1.2e-2, on every ISA).
    np.testing.assert_allclose(np.asarray(out, np.float32), want_out, rtol=2e-2, atol=2e-2)
    # The scores come from the bfloat16 q, k (exact in float32) in float32: as above.
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_cls_scores_without_keep_idx_match_routing():
  q, k, v, _ = _inputs(3, 2, 65, 3, 16, None)
  _, scores = jax.jit(_kernel(None))(q, k, v)
  want = routing.cls_attention_scores(q, k)
  # float32 softmax entries: relative error ~1e-6 (see test_forward_matches_numpy), seen 2e-7.
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(scores, reference.cls_attention_scores(q, k), rtol=1e-5, atol=1e-7)


def _loss(fn, with_scores):
  """A scalar that weights every output element differently, so no gradient term cancels."""

  def loss(q, k, v):
    out, scores = fn(q, k, v)
    total = jnp.sum(out.astype(jnp.float32) * jnp.sin(jnp.arange(out.size)).reshape(out.shape))
    if with_scores:
      total += jnp.sum(scores * jnp.cos(jnp.arange(scores.size)).reshape(scores.shape))
    return total

  return loss


GRAD_CASES = [
    # batch, n, heads, d, num_keep, dtype, blocks, with_scores, rtol (relative to max |grad|).
    # float32: the backward's sums over N <= 65 keys and d <= 24 features are off by
    # ~sqrt(65 + 24) * 2^-24 ~ 6e-7 of max |grad| (seen 5.4e-7); tolerance 1e-5.
    # bfloat16 (u = 2^-8 ~ 3.9e-3): rounding the gradients alone costs up to u of max |grad|
    # (seen 3.8e-3, on every ISA); the bf16 probabilities and their cotangents within the
    # kernel add a few u more at most; tolerance 2e-2. A wrong kept row or scale is O(1).
    (2, 65, 2, 16, 37, jnp.float32, SMALL, True, 1e-5),
    (1, 33, 2, 16, None, jnp.float32, MIXED, True, 1e-5),
    (2, 33, 2, 24, 5, jnp.float32, SMALL, False, 1e-5),
    (2, 65, 2, 16, 20, jnp.bfloat16, SMALL, True, 2e-2),
]


@pytest.mark.parametrize("batch,n,heads,d,num_keep,dtype,blocks,with_scores,rtol", GRAD_CASES)
def test_gradients_match_reference(batch, n, heads, d, num_keep, dtype, blocks, with_scores,
                                   rtol):
  q, k, v, keep_idx = _inputs(n + d, batch, n, heads, d, num_keep, dtype)
  grads = jax.jit(jax.grad(_loss(_kernel(keep_idx, blocks), with_scores), (0, 1, 2)))(q, k, v)
  if dtype == jnp.bfloat16:
    # Differentiate the reference in float32: the kernel accumulates in float32 too, and a
    # bf16 reference would carry its own rounding error into the comparison.
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  want = jax.jit(jax.grad(_loss(_reference(keep_idx), with_scores), (0, 1, 2)))(q, k, v)
  for name, got, expected in zip("qkv", grads, want):
    assert got.shape == (batch, n, heads, d) and got.dtype == dtype, name
    got, expected = np.asarray(got, np.float32), np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=rtol,
                               err_msg=f"d{name}")
    if keep_idx is not None:
      dropped = np.ones((batch, n), bool)
      dropped[:, 0] = False
      np.put_along_axis(dropped, np.asarray(keep_idx) + 1, False, axis=1)
      assert np.all(got[dropped] == 0), f"d{name} is non-zero on rows that were not kept"
      assert np.all(np.abs(got[~dropped]).max(axis=-1) > 0), f"d{name} misses a kept row"


def test_cls_scores_gradient_matches_reference():
  # Only the scores feed the loss: their backward path alone must be exact.
  q, k, v, keep_idx = _inputs(11, 2, 33, 2, 16, 12)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v)[1] * jnp.arange(12.0))

  got = jax.jit(jax.grad(loss(_kernel(keep_idx)), (0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(_reference(keep_idx)), (0, 1, 2)))(q, k, v)
  # float32 sums over N = 13 kept tokens and d = 16 features, through the softmax: rounding
  # ~sqrt(13 + 16) * 2^-24 ~ 3e-7 of max |grad| (seen up to 1e-6 with one-ulp input noise).
  # Tolerance 1e-5 of max |grad|, relative to no entry (entries cancel down to 0).
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())
  assert np.abs(got[2]).max() == 0  # scores do not depend on v


def test_rejects_bad_inputs():
  q, k, v, keep_idx = _inputs(0, 2, 17, 2, 16, 4)
  with pytest.raises(ValueError, match="share one"):
    ga.gather_attention(q, k[:, :9], v, keep_idx, interpret=True)
  with pytest.raises(ValueError, match="keep_idx"):
    ga.gather_attention(q, k, v, keep_idx[:1], interpret=True)
  with pytest.raises(ValueError, match="keep_idx"):
    ga.gather_attention_reference(q, k, v, jnp.zeros((2, 17), jnp.int32))
  with pytest.raises(ValueError, match="power of two"):
    ga.BlockSizes(block_q=24)


def test_can_lower_only_on_gpu():
  assert ga.can_lower("gpu") and ga.can_lower("cuda")
  assert not ga.can_lower("cpu") and not ga.can_lower("tpu")


@pytest.mark.skipif(ga.can_lower(), reason="the default backend has a Pallas lowering")
def test_compiled_call_without_lowering_raises():
  q, k, v, keep_idx = _inputs(0, 1, 17, 2, 16, 4)
  with pytest.raises(NotImplementedError, match="interpret=True"):
    ga.gather_attention(q, k, v, keep_idx)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_lowers_to_triton(dtype):
  """Forward and backward lower to Triton kernels for CUDA, on any host: this catches
  shapes and ops the Triton backend rejects, though not Triton's own compilation."""
  x = jax.ShapeDtypeStruct((4, 197, 6, 64), dtype)
  keep_idx = jax.ShapeDtypeStruct((4, 89), jnp.int32)

  def fwd_and_bwd(q, k, v, keep_idx):
    return jax.grad(_loss(lambda *a: ga.gather_attention(*a, keep_idx), True), (0, 1, 2))(q, k, v)

  with cuda_lowering.pretend_nvidia_gpu():
    hlo = jax.jit(fwd_and_bwd).trace(x, x, x, keep_idx).lower(lowering_platforms=("cuda",))
  text = hlo.as_text()
  assert cuda_lowering.custom_calls(text)[cuda_lowering.TRITON] == 2
  assert cuda_lowering.triton_kernel_names(text) == {"gather_attention_fwd", "gather_attention_bwd"}


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
  out = tmp_path / "bench.json"
  benchmark.main(["--tiny", "--interpret", "--keep", "8", "--runs", "3", "--warmup", "0",
                  "--json_out", str(out)])
  report = json.loads(out.read_text())
  assert {"backend", "device", "config", "peak", "results", "skipped"} <= report.keys()
  assert report["peak"]["matmul_tflops"] > 0 and report["peak"]["bandwidth_gbps"] > 0
  rows = {(r["impl"], r["pass"]) for r in report["results"]}
  assert {("pallas", "fwd"), ("pallas", "fwd+bwd"), ("xla", "fwd"), ("xla", "fwd+bwd")} <= rows
  for r in report["results"]:
    assert r["runs"] == 3 and r["median_ms"] > 0 and r["flops"] > 0 and r["bytes"] > 0
    assert 0 < r["frac_peak_flops"] and 0 < r["frac_peak_bandwidth"]
