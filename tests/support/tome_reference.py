"""Plain-numpy (float64) references for ToMe and PatchDropout, written independently of the
package: loops and Python sorting from the paper's equations, and a line-by-line numpy
transliteration of facebookresearch/ToMe's `tome/merge.py`.

ToMe source read: github.com/facebookresearch/ToMe at commit
af95e4b1befa172dadccd8c81e223b10090f9579 (2023-03-30), `tome/merge.py`
(`bipartite_soft_matching`, `merge_wavg`), `tome/patch/timm.py` (`ToMeBlock`, `ToMeAttention`:
the metric is `k.mean(1)`, the keys averaged over heads; proportional attention adds
`size.log()` to every key's logits) and `tome/utils.py` (`parse_r`). Its conventions, which
`tome_source_merge` follows line by line:

- A is `metric[..., ::2, :]` (sequence positions 0, 2, ...; [CLS] is A's first), B is
  `metric[..., 1::2, :]`;
- with a class token, `protected = 1`, `r = min(r, (t - protected) // 2)` and
  `scores[..., 0, :] = -math.inf`, so [CLS] is never a source;
- `node_max, node_idx = scores.max(dim=-1)`, `edge_idx = node_max.argsort(dim=-1,
  descending=True)`, the first r sources, the rest unmerged and sorted (`unm_idx.sort(dim=1)`)
  so that [CLS] stays first;
- `merge_wavg`: `x = merge(x * size, mode="sum")`, `size = merge(size, mode="sum")`,
  `x = x / size`, where merge gathers the sources and `scatter_reduce`s them into their B
  tokens, and returns `cat([unm, dst])`: unmerged A tokens, then every B token.

Ties: torch's `argsort` is not stable (its order among equal scores is unspecified and differs
between CPU and CUDA); the transliteration, like the package, uses a stable descending order
(the lower A index first), and `max(dim=-1)`'s index, like `argmax`, the first maximum (the
lower B index).
"""

from __future__ import annotations

import math

import numpy as np

from tests.support import reference


def parse_r(num_layers: int, r: int, inflection: float) -> list[int]:
  """tome/utils.py `parse_r(num_layers, (r, inflection))`, as written there."""
  min_val = int(r * (1.0 - inflection))
  max_val = 2 * r - min_val
  step = (max_val - min_val) / (num_layers - 1)
  return [int(min_val + step * i) for i in range(num_layers)]


# ---------------------------------------------------------------------------------------------
# From the paper's equations, one example at a time, with loops.


def matching(metric: np.ndarray, r: int) -> tuple[list[int], list[int], list[int]]:
  """metric (N, D) of one example -> (unmerged A indices ascending, source A indices in merge
  order, their destination B indices). A = positions 0, 2, ...; B = 1, 3, ...; A index 0
  ([CLS]) is never a source; ties: the lower B index is the best match, the lower A index
  merges first."""
  m = np.asarray(metric, np.float64)
  n = m.shape[0]
  a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
  unit = [m[i] / math.sqrt(float(m[i] @ m[i])) for i in range(n)]
  best, best_j = [], []
  for ai, i in enumerate(a_pos):
    if ai == 0:  # [CLS]
      best.append(-math.inf)
      best_j.append(0)
      continue
    score, arg = -math.inf, 0
    for bj, j in enumerate(b_pos):
      s = float(unit[i] @ unit[j])
      if s > score:  # strict: the first maximum wins
        score, arg = s, bj
    best.append(score)
    best_j.append(arg)
  order = sorted(range(len(a_pos)), key=lambda ai: (-best[ai], ai))
  src = order[:r]
  return sorted(order[r:]), src, [best_j[ai] for ai in src]


def merge(x: np.ndarray, size: np.ndarray, metric: np.ndarray, r: int
          ) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """One example's merge: x (N, C), size (N,) -> (x', size', new index of each old token).

  x'_j = (s_j x_j + sum over sources i -> j of s_i x_i) / (s_j + sum of s_i) for each B token
  j; unmerged A tokens unchanged; order: unmerged A ascending, then B ascending."""
  x, size = np.asarray(x, np.float64), np.asarray(size, np.float64)
  n = x.shape[0]
  unm, src, dst = matching(metric, r)
  b_pos = list(range(1, n, 2))
  out_x, out_s, new_index = [], [], [0] * n
  for slot, ai in enumerate(unm):
    out_x.append(x[2 * ai])
    out_s.append(size[2 * ai])
    new_index[2 * ai] = slot
  for bj, j in enumerate(b_pos):
    total, weight = size[j] * x[j], size[j]
    for ai, d in zip(src, dst):
      if d == bj:
        total = total + size[2 * ai] * x[2 * ai]
        weight += size[2 * ai]
        new_index[2 * ai] = len(unm) + bj
    out_x.append(total / weight)
    out_s.append(weight)
    new_index[j] = len(unm) + bj
  return np.stack(out_x), np.array(out_s), new_index


def proportional_attention(q, k, v, size) -> np.ndarray:
  """softmax(q k^T / sqrt(D) + log s) v per head. q, k, v: (N, H, D), size (N,) -> (N, H, D)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  n, heads, d = q.shape
  out = np.zeros_like(q)
  log_size = np.log(np.asarray(size, np.float64))
  for h in range(heads):
    for i in range(n):
      logits = k[:, h] @ q[i, h] / math.sqrt(d) + log_size  # (N,): one per key j
      out[i, h] = reference.softmax(logits) @ v[:, h]
  return out


def vit_forward(params, images, *, patch_size: int, merges: tuple[int, ...],
                proportional: bool = True, keep_idx=None):
  """A ViT with PatchDropout (the kept patch positions `keep_idx` (B, K), or None) and ToMe
  (r per layer in `merges`). Returns (logits (B, classes), sizes per example, merge groups
  (B, P): the final token index each original patch ended in, -1 for a dropped patch)."""
  p = reference._to_float64(params)
  enc = p["Transformer"]
  logits, sizes, groups = [], [], []
  for b, image in enumerate(np.asarray(images, np.float64)):
    side = image.shape[0] // patch_size
    patches = image.reshape(side, patch_size, side, patch_size, 3).transpose(0, 2, 1, 3, 4)
    tokens = np.einsum("ijpqc,pqcd->ijd", patches, p["embedding"]["kernel"]).reshape(
        side * side, -1)
    x = np.concatenate([p["cls"][0], tokens + p["embedding"]["bias"]], 0)
    x = x + enc["posembed_input"]["pos_embedding"][0]
    num_patches = side * side
    where = {pos: 1 + pos for pos in range(num_patches)}  # patch -> sequence index
    if keep_idx is not None:
      kept = [int(j) for j in keep_idx[b]]
      x = np.concatenate([x[:1], x[[1 + j for j in kept]]], 0)
      where = {pos: (1 + kept.index(pos) if pos in kept else -1) for pos in range(num_patches)}
    size = np.ones(x.shape[0])
    for i, r in enumerate(merges):
      blk = enc[f"encoderblock_{i}"]
      attn = blk["MultiHeadDotProductAttention_1"]
      h = reference._layer_norm(x, blk["LayerNorm_0"])
      q, k, v = (np.einsum("nc,chd->nhd", h, attn[name]["kernel"]) + attn[name]["bias"]
                 for name in ("query", "key", "value"))
      o = proportional_attention(q, k, v, size if proportional else np.ones_like(size))
      x = x + np.einsum("nhd,hdc->nc", o, attn["out"]["kernel"]) + attn["out"]["bias"]
      if r:
        x, size, new_index = merge(x, size, k.mean(axis=1), r)
        where = {pos: (new_index[s] if s >= 0 else -1) for pos, s in where.items()}
      mlp = blk["MlpBlock_3"]
      hidden = reference._layer_norm(x, blk["LayerNorm_2"]) @ mlp["Dense_0"]["kernel"]
      y = reference._gelu(hidden + mlp["Dense_0"]["bias"])
      x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    cls = reference._layer_norm(x, enc["encoder_norm"])[0]
    logits.append(cls @ p["head"]["kernel"] + p["head"]["bias"])
    sizes.append(size)
    groups.append([where[pos] for pos in range(num_patches)])
  return np.stack(logits), np.stack(sizes), np.array(groups)


# ---------------------------------------------------------------------------------------------
# tome/merge.py, transliterated to numpy (batched, as written there).


def tome_source_merge(metric: np.ndarray, x: np.ndarray, size: np.ndarray | None, r: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """`bipartite_soft_matching(metric, r, class_token=True)` then `merge_wavg(merge, x, size)`.

  metric (B, N, D), x (B, N, C), size (B, N, 1) or None -> (x (B, N - r, C), size)."""
  metric, x = np.asarray(metric, np.float64), np.asarray(x, np.float64)
  protected = 1  # class_token
  t = metric.shape[1]
  r = min(r, (t - protected) // 2)
  metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  a, b = metric[..., ::2, :], metric[..., 1::2, :]
  scores = a @ np.swapaxes(b, -1, -2)
  scores[..., 0, :] = -math.inf
  node_max, node_idx = scores.max(axis=-1), scores.argmax(axis=-1)
  edge_idx = np.argsort(-node_max, axis=-1, kind="stable")[..., None]
  unm_idx = edge_idx[..., r:, :]
  src_idx = edge_idx[..., :r, :]
  dst_idx = np.take_along_axis(node_idx[..., None], src_idx, axis=-2)
  unm_idx = np.sort(unm_idx, axis=1)

  def merge_sum(x):  # merge(x, mode="sum")
    src, dst = x[..., ::2, :], x[..., 1::2, :].copy()
    n, t1, c = src.shape
    unm = np.take_along_axis(src, np.broadcast_to(unm_idx, (n, t1 - r, c)), axis=-2)
    src = np.take_along_axis(src, np.broadcast_to(src_idx, (n, r, c)), axis=-2)
    for batch in range(n):  # dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, "sum")
      for row in range(r):
        dst[batch, dst_idx[batch, row, 0]] += src[batch, row]
    return np.concatenate([unm, dst], axis=1)

  if size is None:
    size = np.ones_like(x[..., 0, None])
  x = merge_sum(x * size)
  size = merge_sum(np.asarray(size, np.float64))
  return x / size, size
