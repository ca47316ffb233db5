"""ToMe (skipvit_jax/models/tome.py and its wiring in the ViT) against float64 references:
the paper's equations (loops) and a transliteration of facebookresearch/ToMe's merge.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist
from skipvit_jax.models import attention, flops, tome
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.tome import ToMeConfig
from skipvit_jax.models.vit import ViT
from skipvit_jax.train import phases, plan, validation
from tests.support import fashion_flops, tome_reference
from tests.support.jax_testing import trace_counter

HIGHEST = jax.lax.Precision.HIGHEST


def _match(metric, r):
  return jax.jit(tome.bipartite_soft_matching, static_argnums=1,
                 static_argnames="precision")(metric, r, precision=HIGHEST)


def _random(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("num_tokens,r", [(17, 1), (17, 8), (26, 5), (50, 24), (9, 3)])
def test_matching_matches_the_reference(num_tokens, r):
  metric = _random(num_tokens, 3, num_tokens, 8)
  got = _match(metric, r)
  assert got.unm_idx.shape == (3, (num_tokens + 1) // 2 - r) and got.src_idx.shape == (3, r)
  for b in range(3):
    unm, src, dst = tome_reference.matching(metric[b], r)
    np.testing.assert_array_equal(got.unm_idx[b], unm)
    np.testing.assert_array_equal(got.src_idx[b], src)
    np.testing.assert_array_equal(got.dst_idx[b], dst)


def test_ties_merge_the_lower_a_index_into_the_lower_b_index():
  # Tokens 1..8 (A: 2, 4, 6, 8; B: 1, 3, 5, 7) on four directions: A tokens 2, 4 and 6 point
  # like B tokens 1 and 5 (cosine exactly 1, a tie for their best match and between them),
  # A token 8 elsewhere. [CLS] (position 0) points like B token 1 too, and stays.
  e = np.eye(4, dtype=np.float32)
  metric = np.stack([e[0], e[0], e[0], e[1], e[0], e[0], e[0], e[2], e[3] + e[2]])[None]
  got = _match(metric, 2)
  unm, src, dst = tome_reference.matching(metric[0], 2)
  assert (src, dst) == ([1, 2], [0, 0])  # A 1, 2 (positions 2, 4) tie at 1: lower first, B 0
  np.testing.assert_array_equal(got.src_idx[0], src)
  np.testing.assert_array_equal(got.dst_idx[0], dst)
  np.testing.assert_array_equal(got.unm_idx[0], unm)
  assert unm == [0, 3, 4]  # [CLS] first, then A 3 and 4 ascending
  # ToMe's own code (transliterated, with a stable argsort) decides the same.
  x = _random(1, 1, 9, 3)
  want_x, want_size = tome_reference.tome_source_merge(metric, x, None, 2)
  out, size = tome.merge_wavg(jnp.asarray(x), jnp.ones((1, 9)), got)
  # float32 against float64: a mean of at most 3 float32 values, relative error ~1e-7.
  np.testing.assert_allclose(out, want_x, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(size, want_size[..., 0])


def test_conventions_of_tome_merge_py_at_af95e4b():
  """facebookresearch/ToMe tome/merge.py at af95e4b1befa172dadccd8c81e223b10090f9579: A is
  `metric[..., ::2, :]`, B `metric[..., 1::2, :]`; `scores[..., 0, :] = -inf` protects [CLS];
  `merge_wavg` sums `x * size` and `size` into the B token with `scatter_reduce` and divides;
  the output is `cat([unm, dst])`."""
  # Sequence [CLS], t1, t2, t3, t4: A = ([CLS], t2, t4), B = (t1, t3). t2 is t3's direction
  # (cosine 1), t4 is far from both B tokens, [CLS] is t1's direction (but protected).
  metric = np.array([[[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [-1, -1, 1]]], np.float32)
  x = np.arange(15, dtype=np.float32).reshape(1, 5, 3)
  size = np.array([[1, 1, 3, 1, 1]], np.float32)  # t2 already stands for 3 patches
  m = _match(metric, 1)
  np.testing.assert_array_equal(m.src_idx, [[1]])  # A index 1 = t2 (sequence position 2)
  np.testing.assert_array_equal(m.dst_idx, [[1]])  # into B index 1 = t3 (position 3)
  np.testing.assert_array_equal(m.unm_idx, [[0, 2]])  # [CLS], t4
  out, new_size = tome.merge_wavg(jnp.asarray(x), jnp.asarray(size), m)
  merged = (3 * x[0, 2] + 1 * x[0, 3]) / 4
  np.testing.assert_allclose(out[0], np.stack([x[0, 0], x[0, 4], x[0, 1], merged]), rtol=1e-6)
  np.testing.assert_array_equal(new_size, [[1, 1, 1, 4]])  # unm A, then every B token
  want_x, want_size = tome_reference.tome_source_merge(metric, x, size[..., None], 1)
  np.testing.assert_allclose(out, want_x, rtol=1e-6)  # float32 against float64
  np.testing.assert_array_equal(new_size, want_size[..., 0])


def test_cls_is_never_merged_even_when_it_is_the_best_match():
  metric = _random(2, 2, 11, 4)
  metric[:, 0] = metric[:, 1]  # [CLS] identical to B token 0: cosine 1, the best there is
  for r in (1, 5):  # 5 = (11 - 1) // 2, the most a merge may take
    m = _match(metric, r)
    assert not (np.asarray(m.src_idx) == 0).any()
    assert (np.asarray(m.unm_idx)[:, 0] == 0).all()
    assert (np.asarray(tome.merged_index(m, 11))[:, 0] == 0).all()
  with pytest.raises(ValueError, match="r must be in 1..5"):
    tome.bipartite_soft_matching(metric, 6)


def test_merge_follows_tome_source_and_the_equations_with_sizes():
  metric, x = _random(3, 2, 15, 6), _random(4, 2, 15, 5)
  size = np.random.default_rng(5).integers(1, 5, size=(2, 15)).astype(np.float32)
  m = _match(metric, 4)
  got_x, got_size = jax.jit(tome.merge_wavg)(x, size, m)
  want_x, want_size = tome_reference.tome_source_merge(metric, x, size[..., None], 4)
  # float32 sums of <= 5 size-weighted float32 terms against float64: ~1e-6 relative.
  np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_size, want_size[..., 0])
  for b in range(2):
    loop_x, loop_size, new_index = tome_reference.merge(x[b], size[b], metric[b], 4)
    np.testing.assert_allclose(got_x[b], loop_x, rtol=1e-5, atol=1e-6)  # as above
    np.testing.assert_array_equal(got_size[b], loop_size)
    np.testing.assert_array_equal(tome.merged_index(m, 15)[b], new_index)
    # Each token after the merge continues the one before it at source_index.
    np.testing.assert_array_equal(
        np.asarray(tome.merged_index(m, 15))[b][np.asarray(tome.source_index(m, 15))[b]],
        np.arange(11))


def test_sizes_and_merge_groups_compose_over_three_layers():
  x = _random(6, 2, 21, 4)
  size, groups = np.ones((2, 21), np.float32), np.tile(np.arange(21), (2, 1))
  want_x, want_size, want_groups = x.astype(np.float64), np.ones((2, 21)), groups.copy()
  for r in (5, 4, 3):
    n = x.shape[1]
    m = _match(x, r)  # the tokens are their own metric
    new_index = np.asarray(jax.jit(tome.merged_index, static_argnums=1)(m, n))
    x, size = (np.asarray(a) for a in jax.jit(tome.merge_wavg)(x, size, m))
    groups = np.take_along_axis(new_index, groups, axis=1)
    for b in range(2):
      bx, bs, bi = tome_reference.merge(want_x[b], want_size[b], want_x[b], r)
      want_x[b, :n - r], want_size[b, :n - r] = bx, bs
      want_groups[b] = np.asarray(bi)[want_groups[b]]
    want_x, want_size = want_x[:, :n - r], want_size[:, :n - r]
  assert x.shape == (2, 21 - 12, 4)
  np.testing.assert_allclose(x, want_x, rtol=1e-5, atol=1e-6)  # three float32 merges
  np.testing.assert_array_equal(size, want_size)
  np.testing.assert_array_equal(groups, want_groups)
  assert (size.sum(axis=1) == 21).all()  # every token is counted once
  for b in range(2):  # a final token's size is the number of original tokens in its group
    np.testing.assert_array_equal(np.bincount(groups[b], minlength=9), size[b])


@pytest.mark.parametrize("implementation", ["xla", "dot_product_attention", "auto"])
def test_proportional_attention_matches_the_reference(implementation):
  q, k, v = (_random(seed, 2, 9, 2, 4) for seed in (7, 8, 9))
  size = np.random.default_rng(10).integers(1, 6, size=(2, 9)).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    got = attention.attend(q, k, v, implementation=implementation,
                           key_bias=tome.proportional_bias(size), with_probs=True)
  for b in range(2):
    want = tome_reference.proportional_attention(q[b], k[b], v[b], size[b])
    # float32 softmax and sums over 9 keys against float64.
    np.testing.assert_allclose(got.out[b], want, rtol=1e-5, atol=1e-6)
  # A key of size s weighs as s copies of it: plain attention over repeated keys, in float64.
  repeat = np.repeat(np.arange(9), size[0].astype(int))
  logits = np.einsum("qhd,khd->hqk", q[0].astype(np.float64), k[0, repeat]) / 2.0  # sqrt(4)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  want = np.einsum("hqk,khd->qhd", weights / weights.sum(-1, keepdims=True), v[0, repeat])
  np.testing.assert_allclose(got.out[0], want, rtol=1e-5, atol=1e-6)  # float32, as above


def test_implementations_without_a_bias_are_refused():
  q = jnp.zeros((1, 3, 1, 8))
  for name in ("cudnn", "pallas"):
    with pytest.raises(ValueError, match="takes no logit bias"):
      attention.attend(q, q, q, implementation=name, key_bias=jnp.zeros((1, 3)))
  assert attention.resolve("auto", "gpu", dtype=jnp.bfloat16, head_dim=64, with_bias=True) == "xla"
  with pytest.raises(ValueError, match="attention: ToMe's proportional attention"):
    ViT("Te/4", num_classes=3, image_size=16, attention="cudnn",
        routing=RoutingConfig(tome=ToMeConfig(r=2)))
  ViT("Te/4", num_classes=3, image_size=16, attention="cudnn",
      routing=RoutingConfig(tome=ToMeConfig(r=2, proportional_attention=False)))


def test_schedule_is_tomes_parse_r_capped_at_half_the_tokens():
  for r, inflection in ((3, 0.0), (4, -1.0), (5, 1.0), (2, -0.5)):
    assert list(tome.parse_r(12, r, inflection)) == tome_reference.parse_r(12, r, inflection)
  assert tome.parse_r(12, 4, -1.0) == (8, 7, 6, 5, 5, 4, 3, 2, 2, 1, 0, 0)
  # 50 tokens: each layer merges at most (n - 1) // 2 of the n present.
  assert tome.merge_schedule(ToMeConfig(r=30), 12, 50) == (24, 12, 6, 3, 2, 1, 0, 0, 0, 0, 0, 0)
  assert tome.merge_schedule(ToMeConfig(r=2, start_layer=11), 12, 50) == (0,) * 10 + (2, 2)
  with pytest.raises(ValueError, match="ToMeConfig.start_layer: must be in 1..12"):
    tome.merge_schedule(ToMeConfig(r=2, start_layer=13), 12, 50)
  for bad in (dict(r=-1), dict(r=1.5), dict(inflection=2.0), dict(start_layer=0),
              dict(merge_at_eval=1)):
    with pytest.raises(ValueError, match="ToMeConfig."):
      ToMeConfig(**bad)
  with pytest.raises(ValueError, match="RoutingConfig.tome: ToMe's merging .* drop layers"):
    RoutingConfig((6,), (0.5,), 11, tome=ToMeConfig(r=2))


# ---------------------------------------------------------------------------------------------
# The model.

IMAGES = jax.random.normal(jax.random.key(0), (2, 20, 20, 3))  # 25 patches, 26 tokens
MERGING = RoutingConfig(tome=ToMeConfig(r=2, inflection=-0.5))  # 3, 2, 2, ..., 1


def _model(routing=MERGING, **kwargs):
  return ViT("Te/4", num_classes=5, image_size=20, routing=routing, **kwargs)


def _params():
  params = _model(RoutingConfig()).init(jax.random.key(1), IMAGES[:1], train=False)["params"]
  head = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape) * 0.5
  return {**params, "head": {**params["head"], "kernel": head}}  # not zero: logits to compare


PARAMS = _params()


@pytest.mark.parametrize("proportional", [True, False])
def test_model_matches_the_reference_forward(proportional):
  routing = RoutingConfig(tome=ToMeConfig(r=2, inflection=-1.0,
                                          proportional_attention=proportional))
  model = _model(routing)
  merges = model.token_plan(train=False).merges
  assert merges == (4, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0)  # ToMe's decreasing (2, -1)
  with jax.default_matmul_precision("highest"):
    logits, aux = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
        PARAMS, IMAGES)
  want_logits, want_sizes, want_groups = tome_reference.vit_forward(
      PARAMS, IMAGES, patch_size=4, merges=merges, proportional=proportional)
  # 12 float32 blocks against float64 with the same merge decisions.
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(aux["tome"]["sizes"], want_sizes)
  np.testing.assert_array_equal(aux["tome"]["merge_groups"], want_groups)
  assert aux["tome"]["sizes"].shape == (2, 26 - sum(merges))
  # Per layer, the tokens attention sees and each token's host patch.
  counts = [1 + t.shape[1] for t in aux["token_positions"]]
  assert counts == [attn for attn, _ in model.token_plan(train=False).tokens_per_layer()]
  final_hosts = np.asarray(aux["token_positions"][-1])  # layer 12 merges nothing
  groups = np.asarray(aux["tome"]["merge_groups"])
  for b in range(2):  # each final token's host patch is one of its group
    for slot, host in enumerate(final_hosts[b], start=1):
      assert groups[b, host] == slot


def _apply(routing, train):
  return jax.jit(lambda p, x: _model(routing).apply({"params": p}, x, train=train))(
      PARAMS, IMAGES)


def test_merging_at_evaluation_is_the_default_and_can_be_turned_off():
  _, aux = _apply(MERGING, train=False)
  assert "tome" in aux and MERGING.routes and MERGING.reduces
  off = RoutingConfig(tome=ToMeConfig(r=2, inflection=-0.5, merge_at_eval=False))
  logits, aux = _apply(off, train=False)
  dense, _ = _apply(RoutingConfig(), train=False)
  assert "tome" not in aux and not off.routes and off.reduces
  np.testing.assert_array_equal(logits, dense)
  assert _model(off).token_plan(train=True).merges == MERGING.plan(12, 25).merges  # trains


def test_one_compilation_for_every_batch_and_gradients_flow():
  model = _model(MERGING, remat=True)
  counted = trace_counter(lambda params, images: model.apply(
      {"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)})[0].sum())
  grad = jax.jit(jax.grad(counted))
  for seed in range(3):
    images = jax.random.normal(jax.random.key(seed), IMAGES.shape)
    grads = grad(PARAMS, images)
  assert len(counted.calls) == 1  # static shapes: traced, so compiled, once
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  block0 = grads["Transformer"]["encoderblock_0"]
  assert np.abs(block0["MlpBlock_3"]["Dense_0"]["kernel"]).sum() > 0
  assert np.abs(grads["Transformer"]["posembed_input"]["pos_embedding"]).sum() > 0


def test_drop_warmup_trains_on_all_tokens_first():
  got = phases.make_phases(routing=MERGING, drop_warmup_steps=3, total_steps=10)
  assert [(p.name, p.start_step, p.end_step, p.routing) for p in got] == [
      ("drop_warmup", 0, 3, RoutingConfig()), ("routed", 3, 10, MERGING)]


def test_flops_count_the_merged_tokens():
  model = _model()
  tokens = model.token_plan(train=True).tokens_per_layer()
  assert tokens[:3] == ((26, 23), (23, 21), (21, 19))
  macs = flops.forward_macs("Te/4", image_size=20, num_classes=5, routing=MERGING)
  dims = model.dims
  assert sum(macs.blocks) == sum(flops.block_macs(a, m, dims.width, dims.mlp_dim)
                                 for a, m in tokens)
  assert macs.routing_overhead == sum(
      tome.matching_macs(a, r, dims.head_dim, dims.width)
      for (a, _), r in zip(tokens, model.token_plan(train=True).merges))
  assert tome.matching_macs(26, 6, 16, 32) == 13 * 13 * 16 + 6 * 13 * 32


def test_r_for_a_speedup_is_the_closest_and_matches_6_55_11_on_fashion_mnist():
  target, run = fashion_flops.target_6_55_11()
  r, speedup = flops.tome_r_for_speedup(target, "Te/4", start_layer=3, inflection=0.2, **run)
  every = [flops.run_speedup("Te/4", routing=RoutingConfig(
      tome=ToMeConfig(r=k, start_layer=3, inflection=0.2)), **run) for k in range(26)]
  assert speedup == every[r] and abs(speedup - target) == min(abs(s - target) for s in every)
  # configs/fashion_mnist.py's documented match, which configs/sweeps/race_fashion_mnist.py runs.
  matched = fashion_mnist.get_config("tome_r=3,tome_inflection=0.2,tome_start=3")
  assert (r, matched.tome.r, matched.tome.start_layer, matched.tome.inflection) == (3, 3, 3, 0.2)
  assert tome.parse_r(10, 3, 0.2) == (2, 2, 2, 2, 2, 3, 3, 3, 3, 4)
  assert matched.drop_warmup_epochs == fashion_mnist.get_config("row=6-55-11").drop_warmup_epochs
  validation.check_config(matched)


def test_config_fields_are_validated_and_older_configs_read_as_no_merging():
  config = fashion_mnist.get_config("tome_r=2")
  for field, value, message in (
      ("tome.r", -1, "config.tome.r: must be an integer >= 0"),
      ("tome.inflection", 1.5, "config.tome.inflection"),
      ("tome.start_layer", 0, "config.tome.start_layer: must be an integer >= 1"),
      ("tome.start_layer", 13, "config.tome.start_layer: must be in 1..12"),
      ("model.attention", "pallas", "config.model.attention: ToMe's proportional attention"),
  ):
    bad = fashion_mnist.get_config("tome_r=2")
    bad.update_from_flattened_dict({field: value})
    with pytest.raises(validation.ConfigError, match=message):
      validation.check_config(bad)
  with config.unlocked():
    del config["tome"]
  assert plan.routing_config(config).tome == ToMeConfig()  # plan.ADDED_FIELDS
