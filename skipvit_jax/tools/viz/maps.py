"""Per-patch maps from the `aux` of `ViT.apply(..., capture_attention=True)`: where [CLS]
looks at each layer, which patches routing keeps, how ToE orders and groups patches.

Pure numpy: jax or numpy arrays in, numpy out, so tests check them exactly.

Conventions:
- A patch position is 0-based in row-major order, [CLS] excluded, as in aux["routing"].
- A per-patch map is NaN where the patch has no token of its own in that layer: dropped at a
  drop layer (riding SkipViT's skip connection, or discarded), or averaged into another token
  by ToE. NaN rather than 0 so that "absent" and "present but ignored" look different in a
  plot. A fused token (position -1) stands for no single patch and is left out of the maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skipvit_jax.models.toe import ToEPlan

# A patch's fate at one drop layer (`patch_fates`).
ABSENT, DROPPED, KEPT = 0, 1, 2
# Overlay colours for the fates: kept patches stay as they are, dropped ones are darkened,
# absent ones (not in the sequence at that layer) greyed.
FATE_COLORS = {ABSENT: (0.6, 0.6, 0.6), DROPPED: (0.0, 0.0, 0.0), KEPT: None}


def cls_attention_rows(aux: Mapping[str, Any]) -> list[np.ndarray]:
  """Each layer's head-averaged [CLS] attention row over all the keys present.

  Args:
    aux: from `ViT.apply(..., capture_attention=True)`; aux["attention"] holds per layer
      (B, H, n, n) softmax probabilities.

  Returns:
    Per layer (index l - 1 for 1-based layer l), (B, n) float32: key 0 is [CLS] itself, key
    j the j-th non-[CLS] token of that layer's sequence. Each row sums to 1.
  """
  if "attention" not in aux:
    raise ValueError("aux has no 'attention': call the model with capture_attention=True")
  return [np.asarray(p, np.float32)[:, :, 0, :].mean(axis=1) for p in aux["attention"]]


def cls_attention_maps(aux: Mapping[str, Any], num_patches: int) -> np.ndarray:
  """Each layer's head-averaged [CLS] attention row, on the original patch grid.

  Args:
    aux: the model's aux with "attention" (capture_attention=True) and "token_positions".
    num_patches: P, the image's patch count.

  Returns:
    (L, B, P) float32: [l, b, p] is the attention [CLS] pays to the token at patch position p
    in layer l + 1; NaN where that patch has no token of its own in the layer (see the module
    docstring). The [CLS] self-attention and a fused token's share are not on the grid, so a
    layer's map sums to at most 1.
  """
  rows = cls_attention_rows(aux)
  return np.stack([
      scatter_to_patches(row[:, 1:], np.asarray(positions), num_patches)
      for row, positions in zip(rows, aux["token_positions"])
  ])


def scatter_to_patches(
    values: np.ndarray, positions: np.ndarray, num_patches: int, fill: float = np.nan
) -> np.ndarray:
  """values: (B, n) at patch `positions` (B, n) (-1: none) -> (B, P) float32, `fill` elsewhere."""
  batch = values.shape[0]
  out = np.full((batch, num_patches + 1), fill, np.float32)  # column P catches position -1
  np.put_along_axis(out, np.where(positions < 0, num_patches, positions), values, axis=1)
  return out[:, :num_patches]


def kept_mask(aux: Mapping[str, Any], drop_index: int, num_patches: int) -> np.ndarray:
  """Which original patches a drop layer kept.

  Args:
    aux: the model's aux.
    drop_index: which drop layer: an index into aux["routing"] (0 for the first drop layer).
    num_patches: P.

  Returns:
    (B, P) bool, True at the `kept_positions` of that layer (a kept fused token marks none).
  """
  return patch_fates(aux, drop_index, num_patches) == KEPT


def patch_fates(aux: Mapping[str, Any], drop_index: int, num_patches: int) -> np.ndarray:
  """What a drop layer did with each original patch: KEPT, DROPPED or ABSENT (no token of its
  own entering that layer: merged by ToE, or dropped at an earlier drop layer).

  Args:
    aux, drop_index, num_patches: as in `kept_mask`.

  Returns:
    (B, P) int8 of ABSENT / DROPPED / KEPT.
  """
  record = aux["routing"][drop_index]
  fates = np.zeros((np.asarray(record["kept_positions"]).shape[0], num_patches + 1), np.int8)
  for key, fate in (("dropped_positions", DROPPED), ("kept_positions", KEPT)):
    pos = np.asarray(record[key])
    np.put_along_axis(fates, np.where(pos < 0, num_patches, pos), np.int8(fate), axis=1)
  return fates[:, :num_patches]


def patch_image(values: np.ndarray, patch_size: int) -> np.ndarray:
  """values: (..., P) per patch, P a square -> (..., S, S), each value over its patch's pixels."""
  grid = math.isqrt(values.shape[-1])
  if grid * grid != values.shape[-1]:
    raise ValueError(f"values: the last axis must be a square patch count, got {values.shape}")
  square = values.reshape(*values.shape[:-1], grid, grid)
  return np.repeat(np.repeat(square, patch_size, axis=-2), patch_size, axis=-1)


def overlay_patches(
    image: np.ndarray,
    labels: np.ndarray,
    patch_size: int,
    colors: Mapping[Any, Sequence[float] | None],
    *,
    alpha: float = 0.6,
) -> np.ndarray:
  """Paints patches by label over an image.

  Args:
    image: (S, S, 3), uint8 or float in [0, 1].
    labels: (P,) per patch (bool or int), row-major.
    patch_size: p, with S = p * sqrt(P).
    colors: label -> RGB in [0, 1] blended over that label's patches, or None to leave them.
    alpha: the colour's weight; 1 paints it opaque.

  Returns:
    (S, S, 3) float32 in [0, 1].
  """
  out = np.array(image, np.float32)  # a copy: the caller's image stays as it is
  if np.issubdtype(np.asarray(image).dtype, np.integer):
    out /= 255.0
  pixels = patch_image(np.asarray(labels), patch_size)
  if pixels.shape != out.shape[:2]:
    raise ValueError(f"labels cover {pixels.shape} pixels, the image is {out.shape[:2]}")
  for label, color in colors.items():
    if color is not None:
      where = pixels == label
      out[where] = (1 - alpha) * out[where] + alpha * np.asarray(color, np.float32)
  return out


# --------------------------------------------------------------------------------------------
# ToE.


def toe_selection_rank(out_index: np.ndarray, num_patches: int) -> np.ndarray:
  """The order in which ToE selected each patch.

  Args:
    out_index: (B, 1 + S) from `toe.expand_tokens` or aux["toe"]["out_index"].
    num_patches: P.

  Returns:
    (B, P) int32: 0..S-1 for the selected patches (seeds first, then the expansion sub-steps'
    additions in order), -1 for the patches merged into a selected one.
  """
  selected = np.asarray(out_index)[:, 1:] - 1
  ranks = np.broadcast_to(np.arange(selected.shape[1], dtype=np.float32), selected.shape)
  return scatter_to_patches(ranks, selected, num_patches, -1.0).astype(np.int32)


def toe_expansion_step(rank: np.ndarray, plan: ToEPlan) -> np.ndarray:
  """rank: (B, P) from `toe_selection_rank` -> (B, P) int32: 0 for a seed, k for a patch added
  by the k-th expansion sub-step (1-based, over the plan's stages), -1 for a merged patch."""
  # Selection ranks below ends[k] were chosen by step k or earlier.
  ends = np.cumsum([len(plan.seeds), *plan.adds])
  steps = np.searchsorted(ends, rank, side="right").astype(np.int32)
  return np.where(rank < 0, -1, steps)
