"""Plain-numpy (float64) implementations of the SkipViT spec, written independently of the
package: loops and Python sorting where the package uses argsort and gathers."""

from __future__ import annotations

import math

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def cls_attention_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
  """q, k: (B, N, H, D) -> (B, N - 1)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  batch, n, heads, d = q.shape
  out = np.zeros((batch, n - 1))
  for b in range(batch):
    for h in range(heads):
      row = softmax(k[b, :, h] @ q[b, 0, h] / math.sqrt(d))
      out[b] += row[1:] / heads
  return out


def split_indices(scores: np.ndarray, num_keep: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row: the num_keep highest scores (ties: lower position), both lists ascending."""
  keep, drop = [], []
  for row in np.asarray(scores, np.float64):
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    keep.append(sorted(order[:num_keep]))
    drop.append(sorted(order[num_keep:]))
  return np.array(keep, np.int64), np.array(drop, np.int64).reshape(len(keep), -1)


def fuse(dropped: np.ndarray, weights: np.ndarray, normalize: bool = False) -> np.ndarray:
  """dropped (B, M, C), weights (B, M) -> (B, 1, C)."""
  dropped, weights = np.asarray(dropped, np.float64), np.asarray(weights, np.float64)
  if normalize:
    weights = weights / weights.sum(axis=1, keepdims=True)
  out = np.zeros((dropped.shape[0], 1, dropped.shape[2]))
  for b in range(dropped.shape[0]):
    for m in range(dropped.shape[1]):
      out[b, 0] += weights[b, m] * dropped[b, m]
  return out


# ---------------------------------------------------------------------------------------------
# A whole ViT forward pass with routing, from the parameter tree.


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):  # the tanh approximation, as flax.linen.gelu
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _attention(h, p):
  """h: (n, C) -> (out (n, C), probs (H, n, n))."""
  q = np.einsum("nc,chd->nhd", h, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("nc,chd->nhd", h, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("nc,chd->nhd", h, p["value"]["kernel"]) + p["value"]["bias"]
  d = q.shape[-1]
  probs = softmax(np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d))
  o = np.einsum("hqk,khd->qhd", probs, v)
  return np.einsum("nhd,hdc->nc", o, p["out"]["kernel"]) + p["out"]["bias"], probs


def conv_stem(image: np.ndarray, stem: dict) -> np.ndarray:
  """(H, W, 3) -> (H/p, W/p, C): 3x3 stride-2 convolutions padded as XLA's "SAME" (the odd pad
  row and column at the end), each followed by LayerNorm over channels and ReLU."""
  x = image
  for i in range(sum(1 for name in stem if name.startswith("conv_"))):
    conv = stem[f"conv_{i}"]
    size = x.shape[0]
    out = -(-size // 2)
    pad = max((out - 1) * 2 + 3 - size, 0)
    padded = np.pad(x, ((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
    y = conv["bias"] + sum(
        padded[dy:dy + 2 * out - 1:2, dx:dx + 2 * out - 1:2] @ conv["kernel"][dy, dx]
        for dy in range(3) for dx in range(3))
    x = np.maximum(_layer_norm(y, stem[f"norm_{i}"]), 0)
  return x


def vit_forward(params, images, *, patch_size, drop_layers=(), num_keeps=(), return_layer=None,
                mode="skip", drop_point="after_attention", margins=None):
  """Returns (logits (B, classes), keep lists per drop layer: list of (B, K) arrays of
  positions in the sequence present at that layer). A list given as `margins` gets, per
  image and drop layer, the gap between the last kept and the first dropped score over the
  mean score: how far each decision was from a tie."""
  p = _to_float64(params)
  enc = p["Transformer"]
  depth = sum(1 for name in enc if name.startswith("encoderblock_"))
  logits, keeps = [], [[] for _ in drop_layers]
  for image in np.asarray(images, np.float64):
    side = image.shape[0] // patch_size
    kernel = p["embedding"]["kernel"]  # (p, p, 3, C); (1, 1, C, C) after a convolutional stem
    if "stem" in p:
      grid = conv_stem(image, p["stem"])  # (side, side, C)
      tokens = grid.reshape(side * side, -1) @ kernel[0, 0]
    else:
      patches = image.reshape(side, patch_size, side, patch_size, 3).transpose(0, 2, 1, 3, 4)
      tokens = np.einsum("ijpqc,pqcd->ijd", patches, kernel).reshape(side * side, -1)
    x = np.concatenate([p["cls"][0], tokens + p["embedding"]["bias"]], 0)
    x = x + enc["posembed_input"]["pos_embedding"][0]
    waiting = []  # (list of (original position -> token) dicts) per skip stage
    for i in range(depth):
      layer, blk = i + 1, enc[f"encoderblock_{i}"]
      if layer == return_layer:
        for kept_pos, dropped in reversed(waiting):
          full = np.zeros((len(kept_pos) + len(dropped) + 1, x.shape[1]))
          full[0] = x[0]
          for slot, pos in enumerate(kept_pos):
            full[1 + pos] = x[1 + slot]
          for pos, token in dropped.items():
            full[1 + pos] = token
          x = full
        waiting = []
      stage = drop_layers.index(layer) if layer in drop_layers else None

      def split(x, scores, stage, waiting):
        keep, drop = split_indices(scores[None], num_keeps[stage])
        keep, drop = keep[0], drop[0]
        if margins is not None and len(drop):
          margins.append((scores[keep].min() - scores[drop].max()) / scores.mean())
        keeps[stage].append(keep)
        dropped = {int(j): x[1 + j].copy() for j in drop}
        kept = np.concatenate([x[:1], x[1 + keep]], 0)
        if mode == "fused":
          fused = sum(scores[j] * x[1 + j] for j in drop)
          kept = np.concatenate([kept, fused[None]], 0)
        if mode == "skip":
          waiting.append((list(keep), dropped))
        return kept

      if stage is not None and drop_point == "block_input":
        _, probs = _attention(_layer_norm(x, blk["LayerNorm_0"]),
                              blk["MultiHeadDotProductAttention_1"])
        x = split(x, probs[:, 0, 1:].mean(0), stage, waiting)
      out, probs = _attention(_layer_norm(x, blk["LayerNorm_0"]),
                              blk["MultiHeadDotProductAttention_1"])
      x = x + out
      if stage is not None and drop_point == "after_attention":
        x = split(x, probs[:, 0, 1:].mean(0), stage, waiting)
      mlp = blk["MlpBlock_3"]
      hidden = _layer_norm(x, blk["LayerNorm_2"]) @ mlp["Dense_0"]["kernel"]
      y = _gelu(hidden + mlp["Dense_0"]["bias"])
      x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    cls = _layer_norm(x, enc["encoder_norm"])[0]
    logits.append(cls @ p["head"]["kernel"] + p["head"]["bias"])
  return np.stack(logits), [np.stack(k) for k in keeps]


def _to_float64(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _to_float64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)
