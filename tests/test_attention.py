"""Attention implementations agree with each other and with the numpy reference."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from skipvit_jax import RoutingConfig, ViT
from skipvit_jax.models import attention
from tests.support import reference
from tests.support.jax_testing import assert_grads_close


def _qkv(seed, batch=2, n=65, heads=3, d=8):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(batch, n, heads, d)).astype(np.float32) for _ in range(3)]


def _reference_attention(q, k, v):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  probs = reference.softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]))
  return np.einsum("bhqk,bkhd->bqhd", probs, v), probs


@pytest.mark.parametrize("implementation", attention.IMPLEMENTATIONS)
def test_attention_matches_reference(implementation):
  # Every name works on every backend (falling back where needed) and means the same thing.
  q, k, v = _qkv(0)
  result = jax.jit(
      lambda q, k, v: attention.attend(
          q, k, v, implementation=implementation, with_cls_scores=True, with_probs=True
      )
  )(q, k, v)
  want_out, want_probs = _reference_attention(q, k, v)
  # float32 against float64, N = 65 keys, d = 8: out averages rows of v (|v| < 5), off by
  # ~sqrt(N) * 2^-24 * 5 ~ 2.4e-6 at most (seen 3e-7); a softmax entry has the relative error
  # of its logit and of the N-term denominator, ~1e-6 (seen 1.4e-7 absolute, on ~1e-2).
  np.testing.assert_allclose(result.out, want_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result.probs, want_probs, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      result.cls_scores, reference.cls_attention_scores(q, k), rtol=1e-5, atol=1e-7
  )


def test_outputs_are_returned_only_when_asked():
  q, k, v = _qkv(1)
  result = attention.attend(q, k, v, implementation="dot_product_attention")
  assert result.cls_scores is None and result.probs is None


@pytest.mark.parametrize(
    "implementation", ["auto", "dot_product_attention", "cudnn", "pallas", "pallas_interpret"])
@pytest.mark.slow
def test_implementations_make_the_same_routing_decisions(implementation):
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  routing = RoutingConfig((4, 7), (0.3, 0.3), 10)
  xla = ViT("Te/4", num_classes=10, image_size=32, routing=routing, attention="xla")
  params = xla.init(jax.random.key(1), images, train=False)["params"]
  fused = xla.clone(attention=implementation)
  logits_xla, aux_xla = jax.jit(lambda p: xla.apply({"params": p}, images, train=False))(params)
  logits_dpa, aux_dpa = jax.jit(lambda p: fused.apply({"params": p}, images, train=False))(params)
  # Two float32 computations of the same model: scores (~1/64) off by ~1e-6 relative after
  # 4 or 7 layers (seen 1.4e-6 of the largest with one-ulp input noise), logits (|x| < 10)
  # by ~sqrt(24 * 128) * 2^-24 ~ 3e-6 relative at most (seen 0: the same XLA code here).
  for a, b in zip(aux_xla["routing"], aux_dpa["routing"]):
    np.testing.assert_array_equal(a["keep_idx"], b["keep_idx"])
    np.testing.assert_allclose(a["cls_scores"], b["cls_scores"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(logits_xla, logits_dpa, rtol=1e-5, atol=1e-5)


def test_pallas_falls_back_to_the_reference_off_gpu_and_says_so(caplog):
  q, k, v = _qkv(3)
  attention._log_fallback_once.cache_clear()
  with caplog.at_level(logging.INFO):
    result = attention.attend(q, k, v, implementation="pallas", with_cls_scores=True)
  assert jax.default_backend() == "cpu"
  assert "attention 'pallas': no Pallas lowering on backend 'cpu'" in caplog.text
  want_out, _ = _reference_attention(q, k, v)
  # As in test_attention_matches_reference.
  np.testing.assert_allclose(result.out, want_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      result.cls_scores, reference.cls_attention_scores(q, k), rtol=1e-5, atol=1e-7
  )


def test_auto_picks_per_backend():
  assert attention.resolve("auto", "gpu") == "cudnn"
  assert attention.resolve("auto", "cuda", dtype=jnp.bfloat16, head_dim=64) == "cudnn"
  assert attention.resolve("auto", "gpu", dtype=jnp.float16, head_dim=128) == "cudnn"
  # Where cuDNN cannot run the inputs, XLA.
  assert attention.resolve("auto", "gpu", dtype=jnp.float32, head_dim=64) == "xla"
  assert attention.resolve("auto", "gpu", dtype=jnp.bfloat16, head_dim=12) == "xla"
  assert attention.resolve("auto", "gpu", dtype=jnp.bfloat16, head_dim=256) == "xla"
  for backend in ("cpu", "tpu", "ascend", "some_pjrt_plugin"):
    assert attention.resolve("auto", backend) == "xla"
  assert attention.resolve("pallas", "tpu") == "pallas"  # explicit names are kept


@pytest.mark.parametrize("num_tokens", [46, 65, 90, 91, 99, 148, 197])
@pytest.mark.parametrize("multiple", [attention.CUDNN_TOKEN_MULTIPLE, 8, 64])
@pytest.mark.slow
def test_padded_attention_equals_unpadded_in_outputs_and_gradients(num_tokens, multiple):
  # The padding the cuDNN path uses, run through XLA: padding keys are masked and padding
  # rows dropped, so nothing of the padding reaches the output or the gradients.
  q, k, v = _qkv(num_tokens, batch=2, n=num_tokens, heads=2, d=8)
  cotangent = np.random.default_rng(num_tokens + 1).normal(size=q.shape).astype(np.float32)

  def loss(attend):
    return lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)

  padded = functools.partial(attention.padded_dot_product_attention, multiple=multiple,
                             implementation="xla")
  unpadded = lambda q, k, v: attention.attend(q, k, v, implementation="xla").out
  # float32 both, N <= 197 keys, d = 8: an output row averages rows of v (|v| < 5), the two
  # summing in other orders: ~sqrt(N) * 2^-24 * 5 ~ 4e-6 at most (seen 5e-7, one-ulp input
  # noise). Tolerance 1e-5; one unmasked padding key moves outputs by >= 1.3e-3 here.
  np.testing.assert_allclose(jax.jit(padded)(q, k, v), jax.jit(unpadded)(q, k, v),
                             rtol=1e-5, atol=1e-5)
  want_out, _ = _reference_attention(q, k, v)
  np.testing.assert_allclose(jax.jit(padded)(q, k, v), want_out, rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(loss(padded), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(unpadded), argnums=(0, 1, 2)))(q, k, v)
  # Gradients of sum(out * cotangent), sums over N <= 197 keys of O(1) terms: rounding
  # ~sqrt(N) * 2^-24 * (a few) ~ 1e-6 (seen 4.4e-7); tolerance 1e-5 and 1e-4 of the entry.
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [90, 91, 197])
def test_cudnn_path_gives_the_xla_paths_cls_scores(num_tokens):
  # Off a GPU "cudnn" runs its padded call on XLA: the same code up to the kernel.
  q, k, v = _qkv(num_tokens, batch=2, n=num_tokens, heads=2, d=8)
  cudnn, xla = (
      jax.jit(functools.partial(attention.attend, implementation=name, with_cls_scores=True))(
          q, k, v)
      for name in ("cudnn", "xla"))
  # float32, N <= 197: out as in test_padded_attention_equals_unpadded_in_outputs_and_gradients
  # (seen 4.2e-7); the scores (~1/N) to ~1e-6 relative (seen 1.9e-8 absolute).
  np.testing.assert_allclose(cudnn.out, xla.out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cudnn.cls_scores, xla.cls_scores, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(
      cudnn.cls_scores, reference.cls_attention_scores(q, k), rtol=1e-5, atol=1e-8)


def test_unknown_implementation_is_rejected():
  q, k, v = _qkv(2)
  with pytest.raises(ValueError, match="attention implementation"):
    attention.attend(q, k, v, implementation="flash")


@pytest.mark.parametrize("implementation", ["pallas_interpret", "cudnn"])
@pytest.mark.slow
def test_gradients_through_the_model_match_xla(implementation):
  # "cudnn" off a GPU runs its token padding on XLA, here of the odd counts 65 and, after the
  # drop, 33: gradients through the routed model must not see the padding.
  images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  labels = jax.numpy.array([3, 5])
  xla = ViT("Te/4", num_classes=10, image_size=32, routing=RoutingConfig((6,), (0.5,), 11))
  params = xla.init(jax.random.key(5), images, train=False)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(6), params["head"]["kernel"].shape)

  def grads(model):
    def loss(p):
      logits, _ = model.apply({"params": p}, images, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.grad(loss))(params)

  want, got = grads(xla), grads(xla.clone(attention=implementation))
  # Both float32, differing by rounding only. Each gradient entry is a sum over B*N = 130
  # token rows or <= 128 features, carried through 12 blocks forward and back: its error is
  # ~sqrt(24 * 130) * 2^-24 ~ 3e-6 of the largest gradient in its block (the size of the
  # terms summed), not of the entry. Tolerance 1e-4 of that (worst seen 2.6e-6 with AVX-512,
  # SSE4.2, Eigen instead of YNNPACK matmuls, or one-ulp parameter noise); padding leaking
  # into the gradients would move them by O(1) of it.
  assert_grads_close(got, want, 1e-4)


@pytest.mark.slow
def test_an_unknown_platform_falls_back_on_every_path_and_trains(monkeypatch, caplog):
  """What a PJRT plugin (Ascend, ...) sees: no cuDNN, no Pallas lowering, XLA for "auto"."""
  monkeypatch.setattr(jax, "default_backend", lambda: "someplugin")
  attention._log_fallback_once.cache_clear()
  images = jax.random.normal(jax.random.key(7), (2, 32, 32, 3))
  labels = jax.numpy.array([1, 2])
  base = ViT("Te/4", num_classes=10, image_size=32, routing=RoutingConfig((6,), (0.5,), 11))
  params = base.init(jax.random.key(8), images, train=False)["params"]
  optimizer = optax.adamw(1e-3)
  with caplog.at_level(logging.INFO):
    for implementation in ("auto", "cudnn", "pallas"):
      model = base.clone(attention=implementation)

      def loss(p, model=model):
        logits, _ = model.apply({"params": p}, images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

      @jax.jit
      def step(p, opt_state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

      new_params, _, value = step(params, optimizer.init(params))
      assert np.isfinite(value)
      assert not np.allclose(new_params["head"]["bias"], params["head"]["bias"])
  assert "attention 'cudnn': backend 'someplugin'" in caplog.text
  assert "attention 'pallas': no Pallas lowering on backend 'someplugin'" in caplog.text
