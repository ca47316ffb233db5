"""Reduced-precision compute against the float32 model, with stated tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skipvit_jax import RoutingConfig, ViT

TINY = dict(variant="Te/4", image_size=32, num_classes=10)


def _logits_and_kept(routing):
  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  f32 = ViT(**TINY, routing=routing)
  params = f32.init(jax.random.key(1), images, train=False)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  out = []
  for model in (f32, f32.clone(dtype=jnp.bfloat16)):
    logits, aux = jax.jit(lambda p, m=model: m.apply({"params": p}, images, train=False))(params)
    kept = np.asarray(aux["routing"][0]["keep_idx"]) if aux["routing"] else None
    out.append((np.asarray(logits), kept))
  return out


@pytest.mark.slow
def test_bfloat16_dense_logits_track_float32():
  (logits32, _), (logits16, _) = _logits_and_kept(RoutingConfig())
  assert logits16.dtype == np.float32  # the head runs in float32
  # bfloat16 keeps 8 mantissa bits: logits agree to 5% of their spread.
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * np.std(logits32))


@pytest.mark.slow
def test_bfloat16_routing_flips_only_near_ties():
  (logits32, kept32), (logits16, kept16) = _logits_and_kept(RoutingConfig((6,), (0.5,), 11))
  overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(kept32, kept16)]
  assert np.mean(overlap) >= 0.9, overlap
  # Where the same tokens were kept, the logits agree as closely as the dense model's.
  same = np.array([o == 1.0 for o in overlap])
  assert same.any()
  np.testing.assert_allclose(logits16[same], logits32[same], atol=0.05 * np.std(logits32))
