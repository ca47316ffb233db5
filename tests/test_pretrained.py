"""skipvit_jax.models.pretrained: each checkpoint format, written here from a model's parameters in
that format's layout, loads into a fresh model that computes the same logits; export round
trips; position embeddings resize; heads are kept or re-initialised; mismatches are named."""

import logging
import math
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from configs import default
from configs.sweeps import paper_row
from skipvit_jax import ViT
from skipvit_jax.data import pipeline
from skipvit_jax.models import pretrained
from skipvit_jax.models.vit import GELUS
from skipvit_jax.tools import export
from skipvit_jax.train import checkpointing, loop, plan
from skipvit_jax.train import step as step_lib

IMAGE, PATCH, CLASSES = 32, 8, 5
GRID = IMAGE // PATCH


def random_params(model: ViT, seed: int = 0) -> dict:
  """The model's parameter tree filled with N(0, 0.3^2) values: a zero head or [CLS] would
  hide a mistake in how they are carried over."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, model.image_size, model.image_size, 3)),
                         train=False))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def flat_names(params: dict) -> dict[str, np.ndarray]:
  """The tree as "a/b/c" names, written out independently of the module under test."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}/")
      else:
        out[f"{prefix}{key}"] = np.asarray(value)

  walk(params, "")
  return out


def logits(model: ViT, params, images) -> np.ndarray:
  with jax.default_matmul_precision("highest"):
    return np.asarray(model.apply({"params": params}, images, train=False)[0])


@pytest.fixture(scope="module")
def source():
  model = ViT(f"Te/{PATCH}", num_classes=CLASSES, image_size=IMAGE)
  params = random_params(model)
  images = np.random.default_rng(1).uniform(-1, 1, (3, IMAGE, IMAGE, 3)).astype(np.float32)
  return model, params, images, logits(model, params, images)


def fresh(**kwargs) -> ViT:
  return ViT(f"Te/{PATCH}", **{"num_classes": CLASSES, "image_size": IMAGE, **kwargs})


# --------------------------------------------------------------------------------------------
# Layouts of the three public formats, built by hand from this project's parameter names.


def big_vision_layout(flat: dict, *, prefix: str = "", pos: str = "top", scan: bool = False):
  """big_vision's names: blocks' modules _0/_1/_0, the [CLS] row of the position embedding
  folded into cls (big_vision adds the embedding before prepending [CLS]). pos="old" keeps a
  combined [CLS]+grid embedding in Transformer/posembed_input (an older layout)."""
  rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
            "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0", "LayerNorm_0": "LayerNorm_0"}
  out = {}
  for name, value in flat.items():
    parts = name.split("/")
    if parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
      parts[2] = rename[parts[2]]
    out["/".join(parts)] = value
  embedding = out.pop("Transformer/posembed_input/pos_embedding")
  if pos == "top":
    out["cls"] = out["cls"] + embedding[:, :1]
    out["pos_embedding"] = embedding[:, 1:]
  else:
    out["Transformer/posembed_input/pos_embedding"] = embedding
  if scan:
    blocks = sorted({n.split("/")[1] for n in out if n.startswith("Transformer/encoderblock_")},
                    key=lambda b: int(b.split("_")[1]))
    first_block = {n.split("/", 2)[2] for n in out if n.startswith("Transformer/encoderblock_0/")}
    for rest in sorted(first_block):
      out[f"Transformer/encoderblock/{rest}"] = np.stack(
          [out.pop(f"Transformer/{b}/{rest}") for b in blocks])
  return {f"{prefix}{name}": value for name, value in out.items()}


def timm_layout(flat: dict, heads: int) -> dict[str, np.ndarray]:
  """timm's VisionTransformer state dict: fused qkv, OIHW patch conv, PyTorch (out, in) Linear."""
  width = flat["cls"].shape[-1]
  sd = {
      "cls_token": flat["cls"],
      "pos_embed": flat["Transformer/posembed_input/pos_embedding"],
      "patch_embed.proj.weight": flat["embedding/kernel"].transpose(3, 2, 0, 1),
      "patch_embed.proj.bias": flat["embedding/bias"],
      "norm.weight": flat["Transformer/encoder_norm/scale"],
      "norm.bias": flat["Transformer/encoder_norm/bias"],
      "head.weight": flat["head/kernel"].T,
      "head.bias": flat["head/bias"],
  }
  for i in range(12):
    b = f"Transformer/encoderblock_{i}/"
    attn = b + "MultiHeadDotProductAttention_1/"
    qkv = [flat[f"{attn}{n}/kernel"].reshape(width, width).T for n in ("query", "key", "value")]
    sd.update({
        f"blocks.{i}.norm1.weight": flat[b + "LayerNorm_0/scale"],
        f"blocks.{i}.norm1.bias": flat[b + "LayerNorm_0/bias"],
        f"blocks.{i}.attn.qkv.weight": np.concatenate(qkv, axis=0),
        f"blocks.{i}.attn.qkv.bias": np.concatenate(
            [flat[f"{attn}{n}/bias"].reshape(width) for n in ("query", "key", "value")]),
        f"blocks.{i}.attn.proj.weight": flat[attn + "out/kernel"].reshape(width, width).T,
        f"blocks.{i}.attn.proj.bias": flat[attn + "out/bias"],
        f"blocks.{i}.norm2.weight": flat[b + "LayerNorm_2/scale"],
        f"blocks.{i}.norm2.bias": flat[b + "LayerNorm_2/bias"],
        f"blocks.{i}.mlp.fc1.weight": flat[b + "MlpBlock_3/Dense_0/kernel"].T,
        f"blocks.{i}.mlp.fc1.bias": flat[b + "MlpBlock_3/Dense_0/bias"],
        f"blocks.{i}.mlp.fc2.weight": flat[b + "MlpBlock_3/Dense_1/kernel"].T,
        f"blocks.{i}.mlp.fc2.bias": flat[b + "MlpBlock_3/Dense_1/bias"],
    })
  assert len(sd) == 8 + 12 * 12
  return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def timm_forward_float64(sd: dict, images: np.ndarray, heads: int) -> np.ndarray:
  """timm's VisionTransformer.forward in float64 numpy, exact GELU, from the state dict alone."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  weight = sd["patch_embed.proj.weight"]  # (C, 3, p, p)
  width, _, p, _ = weight.shape
  x = images.astype(np.float64).transpose(0, 3, 1, 2)  # NCHW, as PyTorch sees it
  batch, _, size, _ = x.shape
  g = size // p
  patches = x.reshape(batch, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(batch, g * g, -1)
  tokens = patches @ weight.reshape(width, -1).T + sd["patch_embed.proj.bias"]
  cls = np.broadcast_to(sd["cls_token"], (batch, 1, width))
  tokens = np.concatenate([cls, tokens], axis=1) + sd["pos_embed"]

  def layer_norm(t, prefix):
    mean = t.mean(-1, keepdims=True)
    var = ((t - mean) ** 2).mean(-1, keepdims=True)
    return (t - mean) / np.sqrt(var + 1e-6) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

  erf = np.vectorize(math.erf)
  for i in range(12):
    b = f"blocks.{i}."
    h = layer_norm(tokens, b + "norm1")
    qkv = h @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]  # (B, N, 3C)
    n = qkv.shape[1]
    q, k, v = qkv.reshape(batch, n, 3, heads, width // heads).transpose(2, 0, 3, 1, 4)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(width // heads)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = (scores / scores.sum(-1, keepdims=True)) @ v  # (B, H, N, D)
    attn = attn.transpose(0, 2, 1, 3).reshape(batch, n, width)
    tokens = tokens + attn @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
    h = layer_norm(tokens, b + "norm2") @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
    h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    tokens = tokens + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
  tokens = layer_norm(tokens, "norm")
  return tokens[:, 0] @ sd["head.weight"].T + sd["head.bias"]


# --------------------------------------------------------------------------------------------
# Loading each format.


@pytest.mark.slow
def test_vision_transformer_npz_loads_to_the_same_logits(source, tmp_path):
  model, params, images, expected = source
  path = tmp_path / "augreg.npz"
  np.savez(path, **flat_names(params))
  assert pretrained.checkpoint_format(path) == "vision_transformer"
  loaded = pretrained.load(path, fresh())
  # The same float32 parameters through the same program: equal on one machine (seen 0); 1e-5
  # of logits |x| < 1 is slack for a layout that re-adds [CLS] and its position row.
  np.testing.assert_allclose(logits(fresh(), loaded, images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", [
    {}, {"prefix": "params/"}, {"pos": "old"}, {"scan": True},
], ids=["current", "params_prefix", "old_posembed_input_with_cls", "scan_stacked"])
def test_big_vision_npz_loads_to_the_same_logits(source, tmp_path, layout):
  model, params, images, expected = source
  path = tmp_path / "big_vision.npz"
  np.savez(path, **big_vision_layout(flat_names(params), **layout))
  assert pretrained.checkpoint_format(path) == "big_vision"
  loaded = pretrained.load(path, fresh())
  np.testing.assert_allclose(logits(fresh(), loaded, images), expected, atol=1e-5, rtol=0)


def test_big_vision_without_cls_token_is_refused(source, tmp_path):
  flat = big_vision_layout(flat_names(source[1]))
  del flat["cls"]
  np.savez(tmp_path / "gap.npz", **flat)
  with pytest.raises(ValueError, match=r"pool_type 'gap' or 'map'"):
    pretrained.load(tmp_path / "gap.npz", fresh())


def test_timm_safetensors_matches_an_independent_float64_forward(source, tmp_path):
  model, params, images, _ = source
  heads = model.dims.num_heads
  sd = timm_layout(flat_names(params), heads)
  path = tmp_path / "deit.safetensors"
  save_file(sd, str(path))
  assert pretrained.checkpoint_format(path) == "timm"
  exact = fresh(gelu="exact")
  loaded = pretrained.load(path, exact)
  reference = timm_forward_float64(sd, images, heads)
  # float32 against float64 over 12 blocks of <= 128-term sums: ~sqrt(24 * 128) * 2^-24 of
  # the logits' size (< 1): ~3e-6 at most (seen 5.4e-7, SSE4.2).
  np.testing.assert_allclose(logits(exact, loaded, images), reference, atol=1e-5, rtol=0)
  # The same parameters are this project's (the layout is a pure rearrangement) ...
  for name, value in flat_names(loaded).items():
    np.testing.assert_array_equal(value, flat_names(params)[name], err_msg=name)
  # ... and the tanh GELU is a different function, by more than the tolerance above.
  assert np.abs(logits(fresh(), loaded, images) - reference).max() > 1e-4


def test_timm_parts_this_vit_lacks_are_named(source, tmp_path):
  sd = timm_layout(flat_names(source[1]), source[0].dims.num_heads)
  sd["dist_token"] = np.zeros((1, 1, 32), np.float32)
  save_file(sd, str(tmp_path / "distilled.safetensors"))
  with pytest.raises(ValueError, match=r"does not have .*\['dist_token'\]"):
    pretrained.load(tmp_path / "distilled.safetensors", fresh())


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
  path = tmp_path / "deit.pth"
  with zipfile.ZipFile(path, "w") as archive:  # torch's zip layout, not an .npz
    archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  assert pretrained.checkpoint_format(path) == "timm"
  with pytest.raises(ValueError, match=r"(?s)pip install torch.*save_file") as error:
    pretrained.load(path, fresh())
  assert "deit.safetensors" in str(error.value)


@pytest.mark.slow
def test_orbax_checkpoint_of_this_project_loads_from_any_of_its_directories(source, tmp_path):
  model, params, images, expected = source
  optimizer = optax.adam(1e-3)
  state = step_lib.init_state(model, optimizer, seed=0).replace(params=params)
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=1)
  checkpoints.save(7, jax.device_get(state))
  checkpoints.close()
  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "7"):
    assert pretrained.checkpoint_format(path) == "orbax"
    loaded = pretrained.load(path, fresh())
    np.testing.assert_allclose(logits(fresh(), loaded, images), expected, atol=1e-6, rtol=0)


def test_files_that_are_no_checkpoint_are_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("not weights")
  with pytest.raises(ValueError, match="not a checkpoint"):
    pretrained.load(tmp_path / "notes.txt", fresh())
  with pytest.raises(FileNotFoundError):
    pretrained.load(tmp_path / "missing.npz", fresh())
  np.savez(tmp_path / "other.npz", weights=np.zeros(3))
  with pytest.raises(ValueError, match="neither vision_transformer's nor big_vision's"):
    pretrained.load(tmp_path / "other.npz", fresh())


# --------------------------------------------------------------------------------------------
# Export.


@pytest.mark.parametrize("format", pretrained.EXPORT_FORMATS)
def test_save_then_load_round_trips_exactly(source, tmp_path, format):
  _, params, _, _ = source
  path = pretrained.save(params, tmp_path / "export", format=format)
  assert path == tmp_path / "export.npz"
  assert pretrained.checkpoint_format(path) == format
  loaded = flat_names(pretrained.load(path, fresh()))
  for name, value in flat_names(params).items():
    if format == "big_vision" and name in ("cls", "Transformer/posembed_input/pos_embedding"):
      # cls + pos[0] is rounded once on export; loading gives it back as cls, with a zero row.
      continue
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_exported_file_has_vision_transformer_names(source, tmp_path):
  _, params, _, _ = source
  with np.load(pretrained.save(params, tmp_path / "vit.npz")) as exported:
    names = set(exported.files)
    pos = exported["Transformer/posembed_input/pos_embedding"]
  assert names == set(flat_names(params))
  assert "Transformer/encoderblock_11/MultiHeadDotProductAttention_1/query/kernel" in names
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in names
  assert pos.shape == (1, 1 + GRID * GRID, 32)  # with its [CLS] row
  with pytest.raises(ValueError, match="format"):
    pretrained.save(params, tmp_path / "x.npz", format="timm")


@pytest.mark.slow
def test_export_command_writes_a_workdirs_parameters(source, tmp_path, capsys):
  model, params, _, _ = source
  optimizer = optax.adam(1e-3)
  state = step_lib.init_state(model, optimizer, seed=0).replace(params=params)
  checkpoints = checkpointing.Checkpoints(str(tmp_path / "run"), keep=1)
  checkpoints.save(3, jax.device_get(state))
  checkpoints.close()
  export.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "run.npz")])
  assert "run.npz" in capsys.readouterr().out
  with np.load(tmp_path / "run.npz") as exported:
    np.testing.assert_array_equal(exported["head/kernel"], params["head"]["kernel"])


# --------------------------------------------------------------------------------------------
# Fitting to the model.


def test_position_embedding_resize_is_the_identity_at_the_same_grid():
  pos = np.random.default_rng(0).standard_normal((1, 1 + 9, 4)).astype(np.float32)
  np.testing.assert_array_equal(pretrained.resize_pos_embedding(pos, 3), pos)


def test_position_embedding_resize_by_hand():
  # A 2 x 2 grid to 4 x 4, half-pixel centres: output centres at -0.25, 0.25, 0.75, 1.25 in
  # input coordinates, so each axis interpolates [a, b] as [a, .75a + .25b, .25a + .75b, b].
  grid = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)
  pos = np.concatenate([[[7.0]], grid.reshape(4, 1)])[None]  # (1, 1 + 4, 1), [CLS] row 7
  axis = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  expected = axis @ grid @ axis.T  # (4, 4)
  resized = pretrained.resize_pos_embedding(pos, 4)
  assert resized.shape == (1, 17, 1)
  assert resized[0, 0, 0] == 7.0  # [CLS] row kept
  # Quarter weights on values <= 12: a few float32 roundings, ulp(12) ~ 1e-6 (seen exact).
  np.testing.assert_allclose(resized[0, 1:, 0].reshape(4, 4), expected, atol=1e-6)


@pytest.mark.slow
def test_a_checkpoint_runs_at_another_resolution(source, tmp_path, caplog):
  _, params, _, _ = source
  np.savez(tmp_path / "vit.npz", **flat_names(params))
  bigger = fresh(image_size=48)  # 6 x 6 patches instead of 4 x 4
  with caplog.at_level(logging.INFO):
    loaded = pretrained.load(tmp_path / "vit.npz", bigger)
  assert "resized the position embedding from the 4 x 4 patch grid to 6 x 6" in caplog.text
  pos = loaded["Transformer"]["posembed_input"]["pos_embedding"]
  assert pos.shape == (1, 37, 32)
  np.testing.assert_array_equal(
      pos[:, 0], params["Transformer"]["posembed_input"]["pos_embedding"][:, 0])
  assert np.isfinite(logits(bigger, loaded, np.zeros((1, 48, 48, 3), np.float32))).all()


def test_head_is_reinitialised_for_another_class_count(source, tmp_path, caplog):
  _, params, _, _ = source
  np.savez(tmp_path / "vit.npz", **flat_names(params))
  with caplog.at_level(logging.INFO):
    loaded = pretrained.load(tmp_path / "vit.npz", fresh(num_classes=7))
  assert "re-initialised the head to zero (it has 5 classes, the model 7)" in caplog.text
  assert loaded["head"]["kernel"].shape == (32, 7) and not loaded["head"]["kernel"].any()
  assert not loaded["head"]["bias"].any()
  np.testing.assert_array_equal(loaded["cls"], params["cls"])
  # The same class count keeps the head.
  kept = pretrained.load(tmp_path / "vit.npz", fresh())
  np.testing.assert_array_equal(kept["head"]["kernel"], params["head"]["kernel"])


def test_pre_logits_layer_is_dropped_with_its_head(source, tmp_path, caplog):
  _, params, _, _ = source
  flat = flat_names(params)
  flat["pre_logits/kernel"] = np.ones((32, 32), np.float32)
  flat["pre_logits/bias"] = np.ones(32, np.float32)
  np.savez(tmp_path / "i21k.npz", **flat)
  with caplog.at_level(logging.INFO):
    loaded = pretrained.load(tmp_path / "i21k.npz", fresh())
  assert "dropped the pre-logits layer" in caplog.text
  assert not loaded["head"]["kernel"].any()


def test_another_variant_is_an_error_naming_the_first_mismatches(source, tmp_path):
  _, params, _, _ = source
  np.savez(tmp_path / "te.npz", **flat_names(params))
  with pytest.raises(ValueError) as wider:
    pretrained.load(tmp_path / "te.npz", ViT("Ti/8", num_classes=CLASSES, image_size=IMAGE))
  message = str(wider.value)
  assert "does not fit ViT('Ti/8') (width 192, depth 12, 3 heads, patch 8)" in message
  # The most telling names first: the patch embedding, then [CLS].
  assert ("different shapes: embedding/kernel (8, 8, 3, 32) (model: (8, 8, 3, 192)), "
          "embedding/bias (32,) (model: (192,)), cls (1, 1, 32) (model: (1, 1, 192))") in message
  assert "more" in message  # only the first few are listed


def test_a_patch_checkpoint_into_the_conv_stem_is_an_error_naming_the_stem(source, tmp_path):
  _, params, _, _ = source
  np.savez(tmp_path / "te.npz", **flat_names(params))
  with pytest.raises(ValueError) as error:
    pretrained.load(tmp_path / "te.npz",
                    ViT("Te/8", num_classes=CLASSES, image_size=IMAGE, stem="conv"))
  message = str(error.value)
  assert "patch 8, stem 'conv'): different shapes: embedding/kernel (8, 8, 3, 32)" in message
  assert "missing: stem/conv_0/bias, stem/conv_0/kernel" in message
  with pytest.raises(ValueError, match=r"missing: Transformer/encoderblock_12/"):
    pretrained.load(tmp_path / "te.npz", ViT("L/8", num_classes=CLASSES, image_size=IMAGE))
  with pytest.raises(ValueError,
                     match=r"embedding/kernel \(8, 8, 3, 32\) \(model: \(4, 4, 3, 32\)\)"):
    pretrained.load(tmp_path / "te.npz", ViT("Te/4", num_classes=CLASSES, image_size=IMAGE))


# --------------------------------------------------------------------------------------------
# The model's GELU and the config's choices.


@pytest.mark.slow
def test_gelu_choice_changes_the_function(source):
  _, params, images, expected = source
  assert GELUS == ("tanh", "exact")
  exact = logits(fresh(gelu="exact"), params, images)
  assert 1e-5 < np.abs(exact - expected).max() < 0.1
  with pytest.raises(ValueError, match="gelu"):
    fresh(gelu="relu")


def test_auto_gelu_follows_the_checkpoint_family(source, tmp_path):
  _, params, _, _ = source
  np.savez(tmp_path / "vit.npz", **flat_names(params))
  save_file(timm_layout(flat_names(params), 2), str(tmp_path / "deit.safetensors"))
  vit, deit = str(tmp_path / "vit.npz"), str(tmp_path / "deit.safetensors")
  assert (pretrained.checkpoint_gelu(vit), pretrained.checkpoint_gelu(deit)) == ("tanh", "exact")
  config = default.get_config()
  for init_from, gelu, resolved in [("", "auto", "tanh"), (vit, "auto", "tanh"),
                                    (deit, "auto", "exact"), (deit, "tanh", "tanh")]:
    config.init_from, config.model.gelu = init_from, gelu
    assert plan.resolve_gelu(config) == resolved


# --------------------------------------------------------------------------------------------
# Fine-tuning in the trainer.


def tiny_run_config(data_dir, *, image_size: int, steps: int, **overrides):
  """configs/default.py:baseline on 4,000 synthetic images of `image_size` px, Te/8, batch 64."""
  config = default.get_config("baseline")
  config.data.data_dir = str(data_dir)
  config.data.image_size = image_size
  config.model.variant = "Te/8"
  config.data.synthetic.num_train = 4000
  config.data.synthetic.num_test = 300
  config.data.num_threads = 2
  config.batch_size = 64
  config.eval_batch_size = 100
  config.num_train_steps = steps
  config.optimizer.warmup_epochs = 0.1
  config.log_every_steps = 50
  config.checkpoint_every_steps = steps
  config.eval_every_epochs = 100.0  # once, at the end
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.slow
def test_fine_tuning_from_an_export_beats_the_same_run_from_scratch(tmp_path, caplog):
  # A short dense run at 32 px (4 x 4 patches), exported as a vision_transformer .npz, then
  # fine-tuned at 40 px (5 x 5 patches) with 6-55-11 routing from the first step.
  dense = loop.train_and_evaluate(
      tiny_run_config(tmp_path / "tfds", image_size=32, steps=300), str(tmp_path / "dense"))
  assert dense.eval_metrics["eval/top1"] > 0.18  # chance: 0.125
  export.main(["--workdir", str(tmp_path / "dense"), "--out", str(tmp_path / "dense.npz")])
  routed = {**paper_row("6-55-11"), "drop_warmup_epochs": 0.0, "optimizer.lr": 1e-3}
  results = {}
  for name, init_from in (("fine_tuned", str(tmp_path / "dense.npz")), ("scratch", "")):
    config = tiny_run_config(tmp_path / "tfds", image_size=40, steps=40, init_from=init_from,
                             **routed)
    with caplog.at_level(logging.INFO):
      results[name] = loop.train_and_evaluate(config, str(tmp_path / name))
  assert "resized the position embedding from the 4 x 4 patch grid to 5 x 5" in caplog.text
  assert "initialised the parameters from" in caplog.text
  fine_tuned, scratch = (results[n].eval_metrics["eval/top1"] for n in ("fine_tuned", "scratch"))
  assert fine_tuned > scratch + 0.05, (fine_tuned, scratch)

  # Resuming always wins over config.init_from: the finished run restores, trains no step.
  caplog.clear()
  config = tiny_run_config(tmp_path / "tfds", image_size=40, steps=40,
                           init_from=str(tmp_path / "dense.npz"), **routed)
  with caplog.at_level(logging.INFO):
    again = loop.train_and_evaluate(config, str(tmp_path / "fine_tuned"))
  assert again.step == 40 and "resuming, so config.init_from is not used" in caplog.text
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(results["fine_tuned"].params)):
    np.testing.assert_array_equal(a, b)


def test_init_from_a_missing_file_and_bad_choices_fail_before_anything_runs(tmp_path):
  config = tiny_run_config(tmp_path / "tfds", image_size=32, steps=2,
                           init_from=str(tmp_path / "nowhere.npz"))
  with pytest.raises(ValueError, match=r"config.init_from: no checkpoint at"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  config = tiny_run_config(tmp_path / "tfds", image_size=32, steps=2,
                           **{"model.gelu": "relu"})
  with pytest.raises(ValueError, match=r"config.model.gelu: must be one of \('auto', 'tanh'"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()


def test_input_normalization_is_a_config_choice(tmp_path):
  data = tiny_run_config(tmp_path / "tfds", image_size=32, steps=1).data
  data.synthetic.num_train, data.synthetic.num_test = 8, 4
  assert pipeline.load_sources(data).info.mean_std[0][0] == 127.5  # [-1, 1], the dataset's
  data.normalization = "imagenet"
  mean, std = pipeline.load_sources(data).info.mean_std
  np.testing.assert_allclose(mean / 255, [0.485, 0.456, 0.406], rtol=1e-6)
  np.testing.assert_allclose(std / 255, [0.229, 0.224, 0.225], rtol=1e-6)
  data.normalization = "unit"
  with pytest.raises(ValueError, match=r"config.data.normalization: must be 'dataset' or one of"):
    pipeline.load_sources(data)
