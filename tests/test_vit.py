"""The ViT with routing: parameter counts, the numpy reference, static shapes, gradients,
compile counts and pmap."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from skipvit_jax import RoutingConfig, ViT
from tests.support import reference
from tests.support.jax_testing import count_compilations

TINY = dict(variant="Te/4", image_size=32, num_classes=10)  # 64 patches, depth 12
SKIP = RoutingConfig((6,), (0.55,), 11)  # 64 -> 29 kept patches, back before layer 11
TWO_STAGE = RoutingConfig((4, 7), (0.3, 0.3), 10)


def _images(batch=2, seed=0, size=32):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _params(model, seed=0):
  """Initialised parameters with a random head (the head is zero-initialised, which would make
  every logit comparison trivially pass)."""
  params = model.init(jax.random.key(seed), _images(1, size=model.image_size),
                      train=False)["params"]
  params = flax.core.unfreeze(params)
  head = params["head"]["kernel"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(seed + 1), head.shape)
  params["head"]["bias"] = jax.random.normal(jax.random.key(seed + 2), params["head"]["bias"].shape)
  return params


def _forward(model, params, images, **kwargs):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, **kwargs))(params, images)


# Tw/16 by hand: patch embedding 16*16*3*40 + 40, [CLS] 40, positions 197*40, 12 blocks of
# 2 LayerNorms (4*40) + q, k, v, out (4*(40*40 + 40)) + MLP (40*160 + 160 + 160*40 + 40), the
# final LayerNorm 80, the head 40*1000 + 1000.
@pytest.mark.parametrize("variant,count",
                         [("S/16", 22_050_664), ("Ti/16", 5_717_416), ("Tw/16", 316_400)])
def test_parameter_count(variant, count):
  model = ViT(variant, num_classes=1000, image_size=224)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1, size=224), train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == count


def test_parameter_names_follow_vit_jax():
  model = ViT(**TINY)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1), train=False))["params"]
  paths = {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  expected = {
      "embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding",
      "Transformer/encoderblock_0/LayerNorm_0/scale",
      "Transformer/encoderblock_11/MultiHeadDotProductAttention_1/query/kernel",
      "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/out/bias",
      "Transformer/encoderblock_5/MlpBlock_3/Dense_1/kernel",
      "Transformer/encoderblock_5/LayerNorm_2/bias",
      "Transformer/encoder_norm/scale", "head/kernel",
  }
  assert expected <= paths


def _assert_close_to_float64(logits, want_logits, margins):
  """The float32 model against the float64 reference (logits |x| ~ 10 here)."""
  # 12 blocks of float32 sums over <= 128 terms: ~sqrt(24 * 128) * 2^-24 ~ 3.3e-6 of the
  # logits' size, ~3e-5 (seen 9.4e-6 at most); a wrong layer or token moves them by O(1).
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  # The [CLS] scores ranked are off by ~1e-6 of their mean in float32 (as the logits, and
  # test_block_input_scores_equal_the_layers_cls_attention_row): every kept-or-dropped
  # decision compared must have room for that (the seeds here leave >= 2.6e-4).
  assert not margins or min(margins) > 1e-4, min(margins)


@pytest.mark.parametrize(
    "routing",
    [RoutingConfig(), SKIP, TWO_STAGE,
     RoutingConfig((6,), (0.55,), 11, drop_point="block_input"),
     RoutingConfig((6,), (0.45,), mode="fused"),
     RoutingConfig((3, 8), (0.5, 0.25), mode="drop")],
    ids=["dense", "skip", "two_stage", "block_input", "fused", "drop"],
)
@pytest.mark.slow
def test_forward_matches_numpy_reference(routing):
  model = ViT(**TINY, routing=routing)
  params = _params(model)
  images = _images(2)
  logits, aux = _forward(model, params, images)
  plan = routing.plan(12, 64)
  margins = []
  want_logits, want_keeps = reference.vit_forward(
      params, images, patch_size=4, drop_layers=routing.drop_layers,
      num_keeps=[s.num_keep for s in plan.stages], return_layer=routing.return_layer,
      mode=routing.mode, drop_point=routing.drop_point, margins=margins,
  )
  _assert_close_to_float64(logits, want_logits, margins)
  assert len(aux["routing"]) == len(routing.drop_layers)
  for record, want_keep in zip(aux["routing"], want_keeps):
    np.testing.assert_array_equal(record["keep_idx"], want_keep)


@pytest.mark.parametrize("routing", [RoutingConfig(), SKIP], ids=["dense", "skip"])
@pytest.mark.slow
def test_conv_stem_forward_matches_numpy_reference(routing):
  model = ViT(**TINY, routing=routing, stem="conv")
  params = _params(model)
  assert jax.tree.map(jnp.shape, params["stem"]) == {
      "conv_0": {"kernel": (3, 3, 3, 16), "bias": (16,)},
      "norm_0": {"scale": (16,), "bias": (16,)},
      "conv_1": {"kernel": (3, 3, 16, 32), "bias": (32,)},
      "norm_1": {"scale": (32,), "bias": (32,)}}
  assert params["embedding"]["kernel"].shape == (1, 1, 32, 32)
  # Random LayerNorm parameters, so a wrong normalisation axis or a missing ReLU shows.
  params["stem"] = jax.tree.map(
      lambda x: x + jax.random.normal(jax.random.key(x.size), x.shape), params["stem"])
  images = _images(2)
  logits, aux = _forward(model, params, images)
  plan = routing.plan(12, 64)
  margins = []
  want_logits, want_keeps = reference.vit_forward(
      params, images, patch_size=4, drop_layers=routing.drop_layers,
      num_keeps=[s.num_keep for s in plan.stages], return_layer=routing.return_layer,
      margins=margins)
  _assert_close_to_float64(logits, want_logits, margins)
  for record, want_keep in zip(aux["routing"], want_keeps):
    np.testing.assert_array_equal(record["keep_idx"], want_keep)


@pytest.mark.slow
def test_ratio_zero_gives_identical_logits_to_no_routing():
  dense = ViT(**TINY)
  params = _params(dense)
  images = _images(3)
  logits_dense, _ = _forward(dense, params, images)
  for routing in (RoutingConfig((6,), (0.0,), 11), RoutingConfig((4, 7), (0.0, 0.0), 10)):
    logits, aux = _forward(ViT(**TINY, routing=routing), params, images)
    # Bitwise: a zero-ratio split keeps every token in order, so the same float32 operations
    # run on the same values (seen so on AVX-512, SSE4.2 and with Eigen's matmuls).
    np.testing.assert_array_equal(logits, logits_dense)
    assert aux["routing"][0]["drop_idx"].shape == (3, 0)


def _intermediates(model, params, images):
  return model.apply(
      {"params": params}, images, train=False, capture_intermediates=True,
      mutable=["intermediates"],
  )


@pytest.mark.slow
def test_reduced_layers_run_on_kept_tokens_only():
  model = ViT(**TINY, routing=SKIP)
  (_, aux), state = _intermediates(model, _params(model), _images(2))
  inter = state["intermediates"]["Transformer"]
  layer_inputs = inter["layer_inputs"]
  tokens_in = [x.shape[1] for x in layer_inputs]
  # layers 1..6 see all 65 tokens; 7..10 see [CLS] + 29 kept; 11, 12 all tokens again.
  assert tokens_in == [65] * 6 + [30] * 4 + [65] * 2
  block6 = inter["encoderblock_5"]
  assert block6["LayerNorm_0"]["__call__"][0].shape[1] == 65  # attention on all tokens
  assert block6["MlpBlock_3"]["__call__"][0].shape[1] == 30  # MLP on the kept ones
  assert aux["routing"][0]["keep_idx"].shape == (2, 29)
  assert aux["routing"][0]["cls_scores"].shape == (2, 64)


@pytest.mark.parametrize("routing", [SKIP, TWO_STAGE,
                                     RoutingConfig((6,), (0.5,), 9, drop_point="block_input")])
@pytest.mark.slow
def test_dropped_tokens_return_unchanged_to_their_positions(routing):
  model = ViT(**TINY, routing=routing)
  params = _params(model)
  images = _images(2)
  (_, aux), state = _intermediates(model, params, images)
  inter = state["intermediates"]["Transformer"]
  returned = np.asarray(inter["layer_inputs"][routing.return_layer - 1])  # (B, 65, C)
  for record, dropped in zip(aux["routing"], inter["dropped_tokens"]):
    positions = np.asarray(record["dropped_positions"])
    for b in range(2):
      # Bit-identical: the skip connection carries them untouched.
      np.testing.assert_array_equal(returned[b, 1 + positions[b]], np.asarray(dropped)[b])
  # The last stage's kept tokens come from the layer before the return layer.
  last_out = np.asarray(inter[f"encoderblock_{routing.return_layer - 2}"]["__call__"][0][0])
  kept_positions = np.asarray(aux["routing"][-1]["kept_positions"])
  for b in range(2):
    np.testing.assert_array_equal(returned[b, 1 + kept_positions[b]], last_out[b, 1:])
    np.testing.assert_array_equal(returned[b, 0], last_out[b, 0])


@pytest.mark.slow
def test_dropped_tokens_leave_after_the_attention_residual():
  model = ViT(**TINY, routing=SKIP)
  (_, aux), state = _intermediates(model, _params(model), _images(2))
  inter = state["intermediates"]["Transformer"]
  block_input = np.asarray(inter["layer_inputs"][5])
  attention_out = np.asarray(
      inter["encoderblock_5"]["MultiHeadDotProductAttention_1"]["__call__"][0].out)
  after_attention = block_input + attention_out
  drop_idx = np.asarray(aux["routing"][0]["drop_idx"])
  dropped = np.asarray(inter["dropped_tokens"][0])
  for b in range(2):
    # The model's own sum, redone in numpy from its float32 terms: the same one rounding
    # (seen exact), or 1 ulp of |x| < 8 where XLA fused it differently.
    np.testing.assert_allclose(dropped[b], after_attention[b, 1 + drop_idx[b]], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.slow
def test_block_input_scores_equal_the_layers_cls_attention_row():
  routing = RoutingConfig((6,), (0.5,), 9, drop_point="block_input")
  model = ViT(**TINY, routing=routing)
  params = _params(model)
  (_, aux), state = _intermediates(model, params, _images(2))
  x = np.asarray(state["intermediates"]["Transformer"]["layer_inputs"][5], np.float64)
  blk = reference._to_float64(params["Transformer"]["encoderblock_5"])
  h = np.stack([reference._layer_norm(xb, blk["LayerNorm_0"]) for xb in x])
  att = blk["MultiHeadDotProductAttention_1"]
  q = np.einsum("bnc,chd->bnhd", h, att["query"]["kernel"]) + att["query"]["bias"]
  k = np.einsum("bnc,chd->bnhd", h, att["key"]["kernel"]) + att["key"]["bias"]
  # float32 scores (~1/64) from the float32 layer input, against float64 from the same:
  # LayerNorm and q, k over 32 features then a 65-key softmax, ~1e-6 relative (seen 1e-6).
  np.testing.assert_allclose(
      aux["routing"][0]["cls_scores"], reference.cls_attention_scores(q, k), rtol=1e-4, atol=1e-7
  )


def test_capture_attention_returns_every_layers_probabilities():
  model = ViT(**TINY, routing=SKIP)
  _, aux = _forward(model, _params(model), _images(2), capture_attention=True)
  shapes = [a.shape for a in aux["attention"]]
  assert shapes == [(2, 2, 65, 65)] * 6 + [(2, 2, 30, 30)] * 4 + [(2, 2, 65, 65)] * 2
  for probs in aux["attention"]:  # float32 sums of <= 65 terms: ~sqrt(65) * 2^-24 ~ 5e-7
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)
  # The drop layer ranked by exactly the head-averaged [CLS] row it returned (one float32
  # mean of 2 heads, redone in numpy: 1 ulp at most).
  np.testing.assert_allclose(
      aux["routing"][0]["cls_scores"], np.mean(aux["attention"][5][:, :, 0, 1:], axis=1), rtol=1e-6
  )


@pytest.mark.slow
def test_fused_mode_appends_one_token_and_never_returns():
  model = ViT(**TINY, routing=RoutingConfig((6,), (0.45,), mode="fused"))
  (_, aux), state = _intermediates(model, _params(model), _images(2))
  tokens_in = [x.shape[1] for x in state["intermediates"]["Transformer"]["layer_inputs"]]
  assert tokens_in == [65] * 6 + [1 + 36 + 1] * 6  # floor(0.45 * 64) = 28 dropped


def _loss_fn(model):
  def loss(params, images, labels, rng):
    logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss


@pytest.mark.slow
def test_gradients_are_finite_and_reach_every_parameter():
  model = ViT(**TINY, routing=TWO_STAGE, dropout_rate=0.1, stochastic_depth=0.1)
  params = _params(model)
  labels = jnp.array([1, 7])
  grads = jax.jit(jax.grad(_loss_fn(model)))(params, _images(2), labels, jax.random.key(3))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.slow
def test_train_step_compiles_once_across_fresh_batches():
  model = ViT(**TINY, routing=SKIP)
  optimizer = optax.adamw(1e-3)
  params = _params(model)
  opt_state = optimizer.init(params)
  loss_fn = _loss_fn(model)

  @jax.jit
  def step(params, opt_state, images, labels, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches = [
      (_images(4, seed=10 + i), jax.random.randint(jax.random.key(i), (4,), 0, 10),
       jax.random.key(i))
      for i in range(4)
  ]
  with count_compilations() as compiles:
    for images, labels, rng in batches:
      params, opt_state, loss = step(params, opt_state, images, labels, rng)
      assert np.isfinite(loss)
  assert compiles[0] == 1


@pytest.mark.slow
def test_pmap_over_two_devices_matches_one_device():
  assert jax.local_device_count() >= 2, "conftest sets two fake CPU devices"
  model = ViT(**TINY, routing=SKIP)
  params = _params(model)
  images = _images(4)
  logits_one, aux_one = _forward(model, params, images)
  replicated = jax.tree.map(lambda p: jnp.broadcast_to(p, (2,) + p.shape), params)
  logits_two, aux_two = jax.pmap(lambda p, x: model.apply({"params": p}, x, train=False))(
      replicated, images.reshape(2, 2, 32, 32, 3)
  )
  # The same float32 model compiled for a batch of 2 and of 4, its sums blocked otherwise:
  # ~sqrt(24 * 128) * 2^-24 ~ 3.3e-6 of the logits' size at most (seen 4e-7); tolerance 3e-5
  # of it. A device given another's images or parameters is off by O(1) of it.
  np.testing.assert_allclose(logits_two.reshape(4, 10), logits_one, rtol=0,
                             atol=3e-5 * np.abs(logits_one).max())
  np.testing.assert_array_equal(
      aux_two["routing"][0]["keep_idx"].reshape(4, -1), aux_one["routing"][0]["keep_idx"]
  )


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(variant="S/16", image_size=100), "image_size"),
        (dict(variant="X/16"), "variant: expected"),
        (dict(variant="S"), "variant: expected"),
        (dict(attention="flash"), "attention implementation"),
        (dict(stem="convolution"), "stem: must be one of"),
        (dict(variant="Te/6", image_size=24, stem="conv"), "stem: 'conv' needs a patch size"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(routing=RoutingConfig((13,), (0.5,), 14)), "RoutingConfig.drop_layers"),
        (dict(routing=RoutingConfig((6,), (0.5,), 13)), "RoutingConfig.return_layer"),
    ],
)
def test_invalid_model_config_fails_at_construction(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ViT(**{**dict(variant="S/16", image_size=224), **kwargs})


def reference_token_positions(aux, routing: RoutingConfig, num_patches: int, batch: int,
                              depth: int = 12) -> list[np.ndarray]:
  """Each layer's tokens as original patch positions, replayed in numpy from the model's own
  decisions (keep_idx, an index into the sequence present; ToE's out_index) and the routing's
  rules: ToE's tokens from layer 2, the kept ones after a drop layer (with a fused token, -1,
  appended), everything back at its place before the first split from the return layer. A
  drop layer's attention sees its input tokens ("after_attention") or the kept ones
  ("block_input")."""
  positions = np.tile(np.arange(num_patches), (batch, 1))
  before_split, per_layer = None, []
  for layer in range(1, depth + 1):
    if layer == 2 and "toe" in aux:
      positions = np.asarray(aux["toe"]["out_index"])[:, 1:] - 1
    if layer == routing.return_layer:
      positions = before_split
    seen = positions
    if layer in routing.drop_layers:
      keep_idx = np.asarray(aux["routing"][routing.drop_layers.index(layer)]["keep_idx"])
      before_split = positions if before_split is None else before_split
      positions = np.take_along_axis(positions, keep_idx, axis=1)
      if routing.mode == "fused":
        positions = np.concatenate([positions, np.full((batch, 1), -1)], axis=1)
      if routing.drop_point == "block_input":
        seen = positions
    per_layer.append(seen)
  return per_layer


@pytest.mark.parametrize("routing,toe_stage", [
    (RoutingConfig(), False),
    (SKIP, False),
    (RoutingConfig((6,), (0.45,), mode="fused"), False),
    (TWO_STAGE, False),
    (RoutingConfig((3, 8), (0.5, 0.25), 10, drop_point="block_input"), False),
    (RoutingConfig((4,), (0.5,), mode="drop"), False),
    (SKIP, True),
    (RoutingConfig((2, 5), (0.3, 0.3), 9), True),
], ids=["dense", "skip", "fused", "two_stage", "block_input", "drop", "toe+skip",
        "toe+two_stage_at_layer_2"])
@pytest.mark.slow
def test_token_positions_in_aux_match_a_numpy_replay(routing, toe_stage):
  plan = None
  if toe_stage:
    from skipvit_jax.models import toe
    plan = toe.make_plan(64, expansion_epochs=(0, 1, 2), keep_rates=(0.5, 0.75, 1.0),
                         init_rate=0.25, substeps=2, epoch=0)
  model = ViT(**TINY, routing=routing, toe=plan)
  images = jax.random.normal(jax.random.key(2), (3, 32, 32, 3))
  params = model.init(jax.random.key(0), images, train=False)["params"]
  _, aux = model.apply({"params": params}, images, train=False, capture_attention=True)
  aux = jax.device_get(aux)
  expected = reference_token_positions(aux, routing, 64, batch=3)
  assert len(aux["token_positions"]) == 12
  for layer, (got, want, probs) in enumerate(
      zip(aux["token_positions"], expected, aux["attention"]), start=1):
    np.testing.assert_array_equal(got, want, err_msg=f"layer {layer}")
    assert probs.shape[-1] == 1 + got.shape[1]  # the tokens that layer's attention saw
