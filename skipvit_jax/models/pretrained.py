"""Pretrained weights: public ViT checkpoints in, this project's trained models out.

`load(path, model)` reads a checkpoint and returns a parameter tree for `model` (a `ViT`), so
that `model.apply({"params": params}, images, train=False)` computes the checkpoint's network.
The format is detected from the file's contents, not its name:

  vision_transformer  `.npz` of google-research/vision_transformer (the ViT paper's and AugReg
                      weights): this project's parameter names, the position embedding with a
                      [CLS] row at Transformer/posembed_input/pos_embedding.
  big_vision          `.npz` of google-research/big_vision: blocks of
                      MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0; a top-level
                      pos_embedding without a [CLS] row (it is added before [CLS] is
                      prepended); optionally under a `params/` prefix.
                      Also the older layouts big_vision's `fix_old_checkpoints` accepts: the
                      position embedding in Transformer/posembed_input or Transformer/, with or
                      without a [CLS] row, and blocks stacked by `nn.scan` (encoderblock/...).
  timm                timm / DeiT state dicts in `.safetensors`, read with the safetensors
                      package's numpy API (no torch): fused qkv weight and bias, OIHW patch
                      convolution, pos_embed with a [CLS] row, norm, head. A `.pth` file is
                      read with torch where torch is installed.
  orbax               this project's own checkpoints: a training workdir, its checkpoints/
                      directory or one step's directory; the latest step's parameters.

What each family expects (the trainer takes the GELU from the checkpoint when
`config.model.gelu = "auto"`; the input normalisation is `config.data.normalization`):

  family                          GELU                 input pixels
  vision_transformer, big_vision  tanh approximation   [-1, 1]                "minus_one_to_one"
  timm, DeiT                      exact (erf)          ImageNet mean and std  "imagenet"

Fitting the checkpoint to the model:
  - the position embedding is resized to the model's patch grid: the [CLS] row is kept, the
    grid resampled bilinearly (`jax.image.resize`: half-pixel centres, antialiased when
    shrinking), as big_vision does, so a 224 px checkpoint runs at 384 px or at 32 px;
  - the head is kept when its class count is the model's; otherwise (or when the checkpoint has
    a pre-logits layer or no head) it is re-initialised to zero, as the model initialises it;
  - any other difference (width, depth, heads, patch size) is an error that lists the first
    mismatching names and shapes. (timm's fused qkv does not record the head count: a timm
    checkpoint is split into the model's heads.)

`save(params, path, format)` writes a model's parameters as a vision_transformer or big_vision
`.npz`. A SkipViT or ToE model is an ordinary ViT at test time, so its export is one too
(`python -m skipvit_jax.tools.export` does it for a training workdir).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.vit import GELUS, ViT

FORMATS = ("vision_transformer", "big_vision", "timm", "orbax")
EXPORT_FORMATS = ("vision_transformer", "big_vision")
GELU = {"vision_transformer": "tanh", "big_vision": "tanh", "timm": "exact"}
NORMALIZATION = {"vision_transformer": "minus_one_to_one", "big_vision": "minus_one_to_one",
                 "timm": "imagenet"}

POS_EMBEDDING = "Transformer/posembed_input/pos_embedding"
_SAFETENSORS_HEADER_MAX = 100 * 2**20  # a header length beyond this is not safetensors
_MISMATCHES_SHOWN = 5

Flat = dict[str, np.ndarray]  # "Transformer/encoderblock_0/LayerNorm_0/scale" -> array


# --------------------------------------------------------------------------------------------
# Reading: each format into this project's flat names.


def checkpoint_format(path: str | Path) -> str:
  """The format `load` would read `path` as (one of FORMATS), from the contents."""
  return _read(Path(path), read_arrays=False)[0]


def _read(path: Path, *, read_arrays: bool = True) -> tuple[str, Flat]:
  """(format, flat arrays in the checkpoint's own names, `params/` prefix removed)."""
  if path.is_dir():
    return "orbax", (_read_orbax(path) if read_arrays else {})
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
  with open(path, "rb") as f:
    head = f.read(9)
  if head[:4] == b"PK\x03\x04":  # a zip: numpy's .npz, or torch's .pth
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
    if names and all(name.endswith(".npy") for name in names):
      flat = dict(np.load(path)) if read_arrays else dict.fromkeys(n[:-4] for n in names)
      flat = _strip_prefix(flat, "params/")
      return _npz_family(path, flat), flat
    return "timm", (_read_torch(path) if read_arrays else {})
  if head[:1] == b"\x80":  # a pickle: torch's legacy .pth
    return "timm", (_read_torch(path) if read_arrays else {})
  header_bytes = int.from_bytes(head[:8], "little")
  if len(head) == 9 and 0 < header_bytes < _SAFETENSORS_HEADER_MAX and head[8:9] == b"{":
    if not read_arrays:
      return "timm", {}
    from safetensors.numpy import load_file
    return "timm", _strip_prefix(load_file(str(path)), "module.")
  raise ValueError(
      f"{path}: not a checkpoint skipvit_jax reads (a .npz of vision_transformer or big_vision, "
      f"a timm .safetensors or .pth, or an orbax checkpoint directory)")


def _strip_prefix(flat: dict, prefix: str) -> dict:
  if flat and all(name.startswith(prefix) for name in flat):
    return {name[len(prefix):]: value for name, value in flat.items()}
  return flat


def _npz_family(path: Path, flat: dict) -> str:
  names = set(flat)
  if any("MultiHeadDotProductAttention_0" in n for n in names) or names & {
      "pos_embedding", "Transformer/pos_embedding"}:
    return "big_vision"
  if any(re.fullmatch(r"Transformer/encoderblock_\d+/MultiHeadDotProductAttention_1/.+", n)
         for n in names):
    return "vision_transformer"
  raise ValueError(f"{path}: a .npz, but neither vision_transformer's nor big_vision's parameter "
                   f"names (it has {sorted(names)[:8]}...)")


def _read_torch(path: Path) -> Flat:
  try:
    import torch
  except ImportError:
    raise ValueError(
        f"{path}: a PyTorch .pth file; reading it needs torch (pip install torch). Or convert "
        "it once where torch is installed:\n"
        "  python -c \"import sys, torch; from safetensors.numpy import save_file; "
        "d = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
        "d = d.get('model', d.get('state_dict', d)); "
        "save_file({k: v.numpy() for k, v in d.items()}, sys.argv[2])\" "
        f"{path} {path.with_suffix('.safetensors')}") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("model", "state_dict"):  # DeiT's and many trainers' checkpoint dicts
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
  return _strip_prefix({k: v.float().numpy() for k, v in state.items()}, "module.")


def _read_orbax(path: Path) -> Flat:
  import orbax.checkpoint as ocp

  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = [p for p in root.iterdir() if p.name.isdigit() and (p / "default").is_dir()]
  if steps:
    item = max(steps, key=lambda p: int(p.name)) / "default"
  elif (root / "default").is_dir():
    item = root / "default"
  else:
    raise ValueError(f"{path}: a directory, but no orbax checkpoint of skipvit_jax in it (expected "
                     "a workdir, its checkpoints/ directory or a step directory)")
  tree = ocp.StandardCheckpointer().restore(item.resolve())
  return _flatten(tree["params"])


def workdir_params(path: str | Path) -> dict:
  """The latest parameters of a training workdir (or its checkpoints/ or a step directory)."""
  return _unflatten(_read_orbax(Path(path)))


def num_arrays(params: Any) -> int:
  """How many arrays a parameter tree holds."""
  return len(_flatten(params))


def _flatten(tree: Any) -> Flat:
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(getattr(k, "key", k)) for k in keys)] = np.asarray(leaf)
  return flat


def _unflatten(flat: Flat) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


# big_vision's block module names -> this project's (vision_transformer's).
_BIG_VISION_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0":
                     "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
                     "MlpBlock_0": "MlpBlock_3"}


def _from_big_vision(flat: Flat) -> Flat:
  if "MAPHead_0" in {n.split("/")[0] for n in flat} or "cls" not in flat:
    raise ValueError("this big_vision checkpoint pools without a [CLS] token (pool_type 'gap' or "
                     "'map'); skipvit_jax's ViT classifies from [CLS], which SkipViT's ranking "
                     "also needs")
  out = {}
  for name, value in flat.items():
    if name.startswith("Transformer/encoderblock/"):  # nn.scan: blocks stacked on axis 0
      rest = name[len("Transformer/encoderblock/"):]
      for i, block in enumerate(value):
        out[f"Transformer/encoderblock_{i}/{rest}"] = block
    else:
      out[name] = value
  renamed = {}
  for name, value in out.items():
    parts = name.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_") and parts[2] in _BIG_VISION_BLOCK:
      parts[2] = _BIG_VISION_BLOCK[parts[2]]
    renamed["/".join(parts)] = value
  for old in ("pos_embedding", "Transformer/pos_embedding", POS_EMBEDDING):
    if old in renamed:
      pos = renamed.pop(old)
      break
  else:
    raise ValueError("this big_vision checkpoint has no position embedding")
  if not _has_cls_row(pos.shape[1]):
    # Added to the patches before [CLS] was prepended: [CLS] got no position embedding.
    pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  renamed[POS_EMBEDDING] = pos
  return renamed


def _has_cls_row(rows: int) -> bool:
  return math.isqrt(rows - 1) ** 2 == rows - 1 and rows > 1


# timm names -> (this project's name, how the tensor is laid out here).
_TIMM_TOP = {
    "cls_token": "cls", "pos_embed": POS_EMBEDDING,
    "patch_embed.proj.bias": "embedding/bias",
    "norm.weight": "Transformer/encoder_norm/scale", "norm.bias": "Transformer/encoder_norm/bias",
    "head.bias": "head/bias",
}
_TIMM_BLOCK = {
    "norm1.weight": "LayerNorm_0/scale", "norm1.bias": "LayerNorm_0/bias",
    "norm2.weight": "LayerNorm_2/scale", "norm2.bias": "LayerNorm_2/bias",
    "attn.proj.bias": "MultiHeadDotProductAttention_1/out/bias",
    "mlp.fc1.bias": "MlpBlock_3/Dense_0/bias", "mlp.fc2.bias": "MlpBlock_3/Dense_1/bias",
}


def _from_timm(flat: Flat, num_heads: int) -> Flat:
  out, unknown = {}, []
  for name, value in flat.items():
    value = np.asarray(value)
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if name in _TIMM_TOP:
      out[_TIMM_TOP[name]] = value
    elif name == "patch_embed.proj.weight":  # (C, 3, p, p) OIHW -> (p, p, 3, C) HWIO
      out["embedding/kernel"] = value.transpose(2, 3, 1, 0)
    elif name == "head.weight":  # (classes, C) -> (C, classes)
      out["head/kernel"] = value.T
    elif block and block[2] in _TIMM_BLOCK:
      out[f"Transformer/encoderblock_{block[1]}/{_TIMM_BLOCK[block[2]]}"] = value
    elif block and block[2] in ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"):
      out.update(_timm_attention(f"Transformer/encoderblock_{block[1]}/"
                                 "MultiHeadDotProductAttention_1", block[2], value, num_heads))
    elif block and block[2] in ("mlp.fc1.weight", "mlp.fc2.weight"):
      dense = "Dense_0" if "fc1" in block[2] else "Dense_1"
      out[f"Transformer/encoderblock_{block[1]}/MlpBlock_3/{dense}/kernel"] = value.T
    else:
      unknown.append(name)
  if unknown:
    raise ValueError(f"timm checkpoint: parts this ViT does not have (distillation or register "
                     f"tokens, LayerScale, global pooling, ...): {sorted(unknown)[:8]}")
  pos = out.get(POS_EMBEDDING)
  if pos is not None and not _has_cls_row(pos.shape[1]):  # timm's no_embed_class models
    out[POS_EMBEDDING] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  return out


def _timm_attention(prefix: str, kind: str, value: np.ndarray, num_heads: int) -> Flat:
  """timm's fused (3C, C) qkv and (C, C) proj, split into this project's per-head layout."""
  width = value.shape[-1] if kind != "attn.qkv.bias" else value.shape[0] // 3
  if width % num_heads:
    raise ValueError(f"timm checkpoint: width {width} does not split into the model's "
                     f"{num_heads} heads")
  head_dim = width // num_heads
  if kind == "attn.proj.weight":  # y = W a over the concatenated heads -> (H, D, C)
    return {f"{prefix}/out/kernel": value.T.reshape(num_heads, head_dim, -1)}
  parts = np.split(value, 3, axis=0)  # query, key, value blocks of rows
  if kind == "attn.qkv.weight":  # (C_out, C_in) -> (C_in, H, D)
    return {f"{prefix}/{n}/kernel": p.T.reshape(-1, num_heads, head_dim)
            for n, p in zip(("query", "key", "value"), parts)}
  return {f"{prefix}/{n}/bias": p.reshape(num_heads, head_dim)
          for n, p in zip(("query", "key", "value"), parts)}


# --------------------------------------------------------------------------------------------
# Fitting to the model.


def resize_pos_embedding(pos: np.ndarray, grid: int) -> np.ndarray:
  """pos: (1, 1 + g * g, C) with a [CLS] row -> (1, 1 + grid * grid, C).

  The [CLS] row is kept; the g x g grid is resampled bilinearly (jax.image.resize: half-pixel
  centres, antialiased when shrinking). The same grid is returned unchanged."""
  old = math.isqrt(pos.shape[1] - 1)
  if old * old != pos.shape[1] - 1:
    raise ValueError(f"position embedding: {pos.shape[1] - 1} patch rows are not a square grid")
  if old == grid:
    return pos
  width = pos.shape[-1]
  patches = pos[0, 1:].reshape(old, old, width).astype(np.float32)
  resized = jax.image.resize(patches, (grid, grid, width), method="bilinear")
  return np.concatenate([pos[:, :1], np.asarray(resized).reshape(1, grid * grid, width)], axis=1)


def model_shapes(model: ViT) -> dict[str, tuple[int, ...]]:
  """{flat parameter name: shape} of `model` (its parameters do not depend on routing)."""
  dense = model.clone(routing=RoutingConfig(), toe=None)
  images = jnp.zeros((1, model.image_size, model.image_size, 3))
  abstract = jax.eval_shape(lambda: dense.init(jax.random.key(0), images, train=False))
  return {name: tuple(leaf.shape) for name, leaf in _flatten_abstract(abstract["params"]).items()}


def _flatten_abstract(tree: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in keys): leaf
          for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fit(flat: Flat, model: ViT, source: str) -> Flat:
  """Resizes the position embedding, keeps or re-initialises the head, checks everything else."""
  expected = model_shapes(model)
  flat = dict(flat)
  if any(name.startswith("pre_logits/") for name in flat):
    # vision_transformer's pre-training representation layer: fine-tuning drops it, and the
    # head it fed does not apply to [CLS] directly.
    for name in [n for n in flat if n.startswith(("pre_logits/", "head/"))]:
      del flat[name]
    logging.info("%s: dropped the pre-logits layer and its head", source)
  pos = flat.get(POS_EMBEDDING)
  want = expected[POS_EMBEDDING]
  if pos is not None and pos.shape[1] != want[1] and pos.shape[2] == want[2]:
    old_grid, grid = math.isqrt(pos.shape[1] - 1), math.isqrt(want[1] - 1)
    flat[POS_EMBEDDING] = resize_pos_embedding(pos, grid)
    logging.info("%s: resized the position embedding from the %d x %d patch grid to %d x %d",
                 source, old_grid, old_grid, grid, grid)
  head = flat.get("head/kernel")
  width = expected["head/kernel"][0]
  if head is None or (head.shape[0] == width and head.shape[1] != model.num_classes):
    reason = (f"it has {head.shape[1]} classes, the model {model.num_classes}"
              if head is not None else "it has no head")
    flat["head/kernel"] = np.zeros(expected["head/kernel"], np.float32)
    flat["head/bias"] = np.zeros(expected["head/bias"], np.float32)
    logging.info("%s: re-initialised the head to zero (%s)", source, reason)

  shapes = {name: tuple(value.shape) for name, value in flat.items()}
  names = sorted(expected, key=_reading_order)
  wrong = [f"{n} {shapes[n]} (model: {expected[n]})" for n in names
           if n in shapes and shapes[n] != expected[n]]
  missing = [n for n in names if n not in shapes]
  extra = sorted((n for n in shapes if n not in expected), key=_reading_order)
  if wrong or missing or extra:
    dims = model.dims

    def listed(items: list[str]) -> str:
      shown, hidden = ", ".join(items[:_MISMATCHES_SHOWN]), len(items) - _MISMATCHES_SHOWN
      return f"{shown} and {hidden} more" if hidden > 0 else shown

    problems = [f"{label}: {listed(items)}"
                for label, items in (("different shapes", wrong), ("missing", missing),
                                     ("not in the model", extra)) if items]
    raise ValueError(
        f"{source} does not fit ViT({model.variant!r}) (width {dims.width}, depth {dims.depth}, "
        f"{dims.num_heads} heads, patch {dims.patch_size}"
        f"{', stem ' + repr(model.stem) if model.stem != 'patch' else ''}): " + "; ".join(problems))
  return {name: np.asarray(value, np.float32) for name, value in flat.items()}


_FIRST = ("embedding/kernel", "embedding/bias", "cls", POS_EMBEDDING)


def _reading_order(name: str) -> tuple:
  """The patch embedding and [CLS] first (they show width and patch size), blocks by number."""
  block = re.match(r"Transformer/encoderblock_(\d+)/", name)
  return (_FIRST.index(name) if name in _FIRST else len(_FIRST),
          int(block[1]) if block else -1, name)


def load(path: str | Path, model: ViT) -> dict:
  """Reads the checkpoint at `path` (any of FORMATS) as parameters of `model`.

  Returns:
    The parameter tree, numpy float32: `model.apply({"params": params}, images, train=False)`.
    What was resized or re-initialised is logged; a checkpoint of another variant raises
    ValueError listing the first mismatching names and shapes.
  """
  path = Path(path)
  fmt, flat = _read(path)
  source = f"{fmt} checkpoint {path}"
  if fmt == "big_vision":
    flat = _from_big_vision(flat)
  elif fmt == "timm":
    flat = _from_timm(flat, model.dims.num_heads)
  gelu = checkpoint_gelu(path)
  if gelu is not None and gelu != model.gelu:
    logging.warning("%s was trained with the %s GELU and the model uses the %s one: its outputs "
                    "will differ (ViT(gelu=%r) or config.model.gelu='auto' matches it)", source,
                    gelu, model.gelu, gelu)
  params = _fit(flat, model, source)
  logging.info("loaded %d arrays from the %s", len(params), source)
  return _unflatten(params)


def checkpoint_gelu(path: str | Path) -> str | None:
  """The GELU the checkpoint at `path` was trained with: its family's (GELU), or for this
  project's own checkpoints the one its run's config.json records. None where nothing records
  it (a run from before the choice existed, or checkpoints away from their workdir): the
  trainer's table of old-config defaults decides then."""
  fmt = checkpoint_format(path)
  if fmt in GELU:
    return GELU[fmt]
  path = Path(path).resolve()
  for directory in (path, *path.parents[:3]):
    config = directory / "config.json"
    if config.exists():
      gelu = json.loads(config.read_text(encoding="utf-8")).get("model", {}).get("gelu")
      return gelu if gelu in GELUS else None
  return None


# --------------------------------------------------------------------------------------------
# Writing.


def save(params: Any, path: str | Path, format: str = "vision_transformer") -> Path:
  """Writes `params` (this project's ViT parameters) as a `.npz` of `format` (EXPORT_FORMATS).

  vision_transformer keeps this project's names; big_vision renames the blocks' modules and
  folds the [CLS] row of the position embedding into the [CLS] token. Returns the path written
  (numpy appends ".npz" when missing)."""
  if format not in EXPORT_FORMATS:
    raise ValueError(f"format: must be one of {EXPORT_FORMATS}, got {format!r}")
  flat = {name: np.asarray(value, np.float32) for name, value in _flatten(params).items()}
  if format == "big_vision":
    renamed = {}
    to_big_vision = {ours: theirs for theirs, ours in _BIG_VISION_BLOCK.items()}
    for name, value in flat.items():
      parts = name.split("/")
      if len(parts) > 2 and parts[1].startswith("encoderblock_"):
        parts[2] = to_big_vision[parts[2]]
      renamed["/".join(parts)] = value
    pos = renamed.pop(POS_EMBEDDING)
    renamed["cls"] = renamed["cls"] + pos[:, :1]
    renamed["pos_embedding"] = pos[:, 1:]
    flat = renamed
  path = Path(path)
  path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **flat)
  return path
