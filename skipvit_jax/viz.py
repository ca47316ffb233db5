"""What the notebooks show: where [CLS] looks, which patches routing keeps, how ToE groups
patches, and how sweep runs trade accuracy for speed.

Extraction functions are pure numpy: the `aux` of `ViT.apply(..., capture_attention=True)`
(jax or numpy arrays) in, numpy out, so tests can check them exactly. Plotting helpers import
matplotlib inside the function, so importing this module stays light.

Conventions:
- A patch position is 0-based in row-major order, [CLS] excluded, as in aux["routing"].
- A per-patch map is NaN where the patch has no token of its own in that layer: dropped at a
  drop layer (riding SkipViT's skip connection, or discarded), or averaged into another token
  by ToE. NaN rather than 0 so that "absent" and "present but ignored" look different in a
  plot. A fused token (position -1) stands for no single patch and is left out of the maps.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skipvit_jax.toe import ToEPlan

# A patch's fate at one drop layer (`patch_fates`).
ABSENT, DROPPED, KEPT = 0, 1, 2
# Overlay colours for the fates: kept patches stay as they are, dropped ones are darkened,
# absent ones (not in the sequence at that layer) greyed.
FATE_COLORS = {ABSENT: (0.6, 0.6, 0.6), DROPPED: (0.0, 0.0, 0.0), KEPT: None}

# Fields of a sweep's per-run row (skipvit_jax/sweep.py writes SWEEP_DIR/results.json).
ACCURACY = "top1"  # eval top-1 with the run's routing
ACCURACY_ALL_TOKENS = "top1_all_tokens"
SPEEDUP = "speedup_measured"  # steady training images/s over the dense run's (same seed)
IDEAL_SPEEDUP = "speedup_ideal"  # the FLOP model's, over the whole run
FINISHED = "done"  # the status of a run that finished
# Config overrides whose effect the sweep notebook plots, with their axis labels.
SWEEP_PARAMETERS = {
    "routing.drop_layers": "drop layer(s)",
    "routing.drop_ratios": "drop ratio(s)",
    "routing.return_layer": "return layer",
}


# --------------------------------------------------------------------------------------------
# [CLS] attention and routing.


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


# --------------------------------------------------------------------------------------------
# Sweeps.


def load_sweep_results(sweep_dir: str) -> list[dict]:
  """The per-run rows of SWEEP_DIR/results.json (every run and seed, failed ones included),
  each with its "overrides" as {config field: value}, tuple values as tuples."""
  with open(os.path.join(sweep_dir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  return [{**row, "overrides": {field: tuple(value) if isinstance(value, list) else value
                                for field, value in row["overrides"].items()}}
          for row in results["runs"]]


def completed_runs(records: Sequence[Mapping], *keys: str) -> list[Mapping]:
  """The finished runs that have a finite number under every one of `keys`."""
  return [
      r for r in records
      if r.get("status") == FINISHED
      and all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)
  ]


def eval_history(run_dir: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """One metric over a run's evaluations, from RUN_DIR/metrics.jsonl.

  Args:
    run_dir: a trainer workdir (a sweep's run dir is one).
    key: an evaluation metric, e.g. "eval/kept_object_recall_0" or "eval/top1".

  Returns:
    (epochs, values): (E,) float64 each, one entry per evaluation that recorded `key`, in
    step order; an evaluation's epoch is its step over the run's steps per epoch (from the
    training records' "train/epoch"). A resumed run's repeated evaluation keeps the last.
  """
  by_step: dict[int, float] = {}
  steps_per_epoch = None
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for record in map(json.loads, f):
      if record.get("train/epoch"):
        steps_per_epoch = record["step"] / record["train/epoch"]
      if key in record and record[key] is not None:
        by_step[record["step"]] = record[key]
  if by_step and steps_per_epoch is None:
    raise ValueError(f"{run_dir}: no training record gives the steps per epoch")
  steps = sorted(by_step)
  return (np.array(steps, np.float64) / (steps_per_epoch or 1.0),
          np.array([by_step[s] for s in steps], np.float64))


def sweep_parameter(record: Mapping, name: str) -> Any:
  """A run's override of the config field `name` (e.g. "routing.drop_layers"), or None where
  the run keeps its base config's value."""
  return record["overrides"].get(name)


def parameter_label(value: Any) -> str:
  """An override value as an axis label: (4, 7) -> "4,7", 0.55 -> "0.55", None -> "base"."""
  if isinstance(value, tuple):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "-"
  return "base" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def runs_table(rows: Sequence[Mapping], *, accuracy: str = ACCURACY) -> str:
  """A plain-text table of sweep rows: name, seed, status, accuracy (%), measured and ideal
  speedup, and the overrides (or the base config where there are none)."""
  lines = [f"{'run':<16}{'seed':>5}  {'status':<11}{'top-1 %':>8}{'speedup':>9}{'ideal':>7}  config"]
  for r in rows:
    top1, speedup, ideal = r.get(accuracy), r.get(SPEEDUP), r.get(IDEAL_SPEEDUP)
    overrides = " ".join(f"{k}={parameter_label(v)}" for k, v in r["overrides"].items())
    lines.append(
        f"{r['name']:<16}{r['seed']:>5}  {r['status']:<11}"
        f"{'-' if top1 is None else f'{100 * top1:.1f}':>8}"
        f"{'-' if speedup is None else f'{speedup:.2f}x':>9}"
        f"{'-' if ideal is None else f'{ideal:.2f}x':>7}  {overrides or r['base']}")
  return "\n".join(lines)


def pareto_front(points: np.ndarray) -> np.ndarray:
  """The points no other point beats in both coordinates (both maximised).

  Args:
    points: (N, 2), e.g. (speedup, accuracy) per run.

  Returns:
    (K,) int indices of the non-dominated points, by ascending first coordinate. A point is
    dominated when another is >= in both coordinates and > in one; equal points are all kept.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"points must be (N, 2), got {points.shape}")
  # Sweep from the largest x down: a point is on the front when its y beats every y seen at
  # a strictly larger x, and ties the best y of its own x.
  order = np.lexsort((-points[:, 1], -points[:, 0]))  # x descending, then y descending
  front, best_y = [], -np.inf
  for _, group in itertools.groupby(order, key=lambda j: points[j, 0]):
    group = list(group)
    top = points[group[0], 1]
    if top > best_y:
      front += [j for j in group if points[j, 1] == top]
      best_y = top
  return np.array(sorted(front, key=lambda j: points[j, 0]), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib imported on use).


def _pyplot():
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _image_grid_done(fig, axes):
  """Finishes a grid of image panels: no ticks, tight layout; returns the Figure."""
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig


def _axes(ax):
  """`ax`, or the Axes of a new single-plot figure."""
  if ax is None:
    _, ax = _pyplot().subplots(figsize=(6, 4.2))
  return ax


def plot_cls_attention(
    images: np.ndarray,
    maps: np.ndarray,
    patch_size: int,
    *,
    masks: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    drop_layers: Sequence[int] = (),
    return_layer: int | None = None,
):
  """One row per image: the image, its object mask, then every layer's [CLS] attention map.

  Args:
    images: (N, S, S, 3) display images (uint8 or float in [0, 1]).
    maps: (L, N, P) from `cls_attention_maps`; NaN (absent tokens) is drawn grey.
    patch_size: p.
    masks: optional (N, S, S) object masks.
    titles: optional per-image titles (e.g. the class name).
    drop_layers, return_layer: 1-based layers to mark in the column titles.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  num_layers, num_images = maps.shape[:2]
  lead = 1 + (masks is not None)
  fig, axes = plt.subplots(num_images, lead + num_layers, squeeze=False,
                           figsize=(1.3 * (lead + num_layers), 1.4 * num_images))
  cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
  for i in range(num_images):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_title(titles[i] if titles else "image", fontsize=7)
    if masks is not None:
      axes[i, 1].imshow(masks[i], cmap="gray")
      axes[i, 1].set_title("object", fontsize=7)
    for l in range(num_layers):
      ax = axes[i, lead + l]
      # Each map on its own scale: later layers concentrate [CLS] attention on fewer tokens.
      ax.imshow(np.ma.masked_invalid(patch_image(maps[l, i], patch_size)), cmap=cmap)
      if i == 0:
        mark = " drop" if l + 1 in drop_layers else (" ret" if l + 1 == return_layer else "")
        ax.set_title(f"L{l + 1}{mark}", fontsize=7)
  return _image_grid_done(fig, axes)


def plot_routing(
    images: np.ndarray,
    fates: Sequence[np.ndarray],
    patch_size: int,
    *,
    masks: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    drop_layers: Sequence[int] = (),
):
  """One row per image: the image, its object mask, then the kept (clear), dropped (dark)
  and absent (grey) patches at each drop layer.

  Args:
    images: (N, S, S, 3).
    fates: per drop layer, (N, P) from `patch_fates`.
    patch_size: p.
    masks: optional (N, S, S) object masks.
    titles: optional per-image titles.
    drop_layers: the drop layers' 1-based numbers, for the column titles.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  num_images = images.shape[0]
  lead = 1 + (masks is not None)
  fig, axes = plt.subplots(num_images, lead + len(fates), squeeze=False,
                           figsize=(1.6 * (lead + len(fates)), 1.6 * num_images))
  for i in range(num_images):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
    if masks is not None:
      axes[i, 1].imshow(masks[i], cmap="gray")
      axes[i, 1].set_title("object", fontsize=8)
    for d, fate in enumerate(fates):
      kept = int((fate[i] == KEPT).sum())
      axes[i, lead + d].imshow(overlay_patches(images[i], fate[i], patch_size, FATE_COLORS))
      layer = f"layer {drop_layers[d]}" if d < len(drop_layers) else f"drop {d}"
      axes[i, lead + d].set_title(f"{layer}: {kept} kept", fontsize=8)
  return _image_grid_done(fig, axes)


def plot_toe(
    images: np.ndarray,
    steps: np.ndarray,
    rank: np.ndarray,
    slots: np.ndarray,
    patch_size: int,
    *,
    titles: Sequence[str] | None = None,
):
  """One row per image: the image, ToE's seeds and expansion order, and its merge groups.

  Args:
    images: (N, S, S, 3).
    steps: (N, P) from `toe_expansion_step` (0 seeds, k sub-step k, -1 merged).
    rank: (N, P) from `toe_selection_rank`.
    slots: (N, P) from `toe.merge_assignment`: the output token each patch ends up in.
    patch_size: p.
    titles: optional per-image titles.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  from matplotlib.collections import LineCollection  # pylint: disable=g-import-not-at-top

  num_images = images.shape[0]
  grid = math.isqrt(rank.shape[-1])
  fig, axes = plt.subplots(num_images, 4, squeeze=False, figsize=(7.6, 1.9 * num_images))
  step_cmap = plt.get_cmap("plasma").with_extremes(bad="0.85")
  # tab20 in a fixed shuffled order; colours repeat over many groups, the outlines separate them.
  palette = plt.get_cmap("tab20")(np.random.default_rng(0).permutation(20))[:, :3]
  for i in range(num_images):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
    seeds = np.where(steps[i] == 0, 1, 0)
    axes[i, 1].imshow(overlay_patches(images[i], seeds, patch_size, {0: (0, 0, 0), 1: (1, 1, 0)},
                                      alpha=0.55))
    axes[i, 1].set_title(f"{int(seeds.sum())} seeds", fontsize=8)
    selected = np.where(steps[i] < 0, np.nan, steps[i].astype(np.float32))
    shown = axes[i, 2].imshow(np.ma.masked_invalid(selected.reshape(grid, grid)),
                              cmap=step_cmap, vmin=0, vmax=max(int(steps.max()), 1))
    for p in np.flatnonzero(rank[i] >= 0):
      axes[i, 2].text(p % grid, p // grid, str(rank[i, p]), fontsize=4, ha="center",
                      va="center", color="white")
    axes[i, 2].set_title("selection order", fontsize=8)
    bar = fig.colorbar(shown, ax=axes[i, 2], fraction=0.046, pad=0.04)
    bar.set_ticks(range(max(int(steps.max()), 1) + 1))
    bar.set_label("sub-step (0: seed)", fontsize=7)
    colours = {slot: palette[(slot - 1) % len(palette)] for slot in np.unique(slots[i])}
    axes[i, 3].imshow(overlay_patches(images[i], slots[i], patch_size, colours, alpha=0.65))
    axes[i, 3].add_collection(LineCollection(
        _group_outlines(slots[i].reshape(grid, grid), patch_size), colors="k", linewidths=0.8))
    hosts = np.flatnonzero(rank[i] >= 0)
    axes[i, 3].scatter((hosts % grid + 0.5) * patch_size - 0.5,
                       (hosts // grid + 0.5) * patch_size - 0.5, s=3, c="k")
    axes[i, 3].set_title(f"{len(colours)} merge groups", fontsize=8)
  return _image_grid_done(fig, axes)


def _group_outlines(groups: np.ndarray, patch_size: int) -> list:
  """groups: (g, g) group ids -> pixel-space line segments between patches of different groups."""

  def edge(v):  # pixel centres are at integers, so patch edges sit half a pixel before
    return v * patch_size - 0.5

  segments = []
  for r, c in zip(*np.nonzero(groups[:, 1:] != groups[:, :-1])):
    segments.append([(edge(c + 1), edge(r)), (edge(c + 1), edge(r + 1))])
  for r, c in zip(*np.nonzero(groups[1:] != groups[:-1])):
    segments.append([(edge(c), edge(r + 1)), (edge(c + 1), edge(r + 1))])
  return segments


def plot_pareto(
    records: Sequence[Mapping],
    *,
    x_key: str = SPEEDUP,
    y_key: str = ACCURACY,
    label_key: str = "name",
    label_all: bool = False,
    ax=None,
):
  """Accuracy against measured speedup, one point per run, the Pareto front joined.

  Args:
    records: run records with numbers under `x_key` and `y_key` (see `completed_runs`).
    x_key, y_key: the record fields on the axes (both maximised for the front).
    label_key: field written next to each front point.
    label_all: also write it, in grey, next to the points off the front.
    ax: matplotlib Axes to draw into (default: a new figure).

  Returns:
    The Axes.
  """
  ax = _axes(ax)
  points = np.array([[r[x_key], r[y_key]] for r in records], np.float64).reshape(-1, 2)
  ax.scatter(points[:, 0], points[:, 1], s=18, c="0.55", label="runs")
  if len(points):
    front = pareto_front(points)
    ax.plot(points[front, 0], points[front, 1], "o-", c="C3", ms=5, label="Pareto front")
    for j in front:
      ax.annotate(str(records[j].get(label_key, j)), points[j], fontsize=6,
                  xytext=(3, 3), textcoords="offset points")
    for j in sorted(set(range(len(points))) - set(front.tolist())) if label_all else ():
      ax.annotate(str(records[j].get(label_key, j)), points[j], fontsize=6,
                  xytext=(3, -8), textcoords="offset points", color="0.4")
  ax.axvline(1.0, c="0.8", lw=0.8, zorder=0)
  ax.set_xlabel(x_key)
  ax.set_ylabel(y_key)
  ax.legend(fontsize=7)
  return ax


def plot_parameter_effects(
    records: Sequence[Mapping],
    *,
    parameters: Mapping[str, str] = SWEEP_PARAMETERS,
    y_keys: Sequence[str] = (ACCURACY, SPEEDUP),
):
  """One column per swept parameter, one row per metric: every run as a dot at its value
  of the parameter, the mean over runs with that value (seeds, other parameters) as a line.

  Args:
    records: run records (see `completed_runs`).
    parameters: config field -> axis label; fields no run varies are skipped.
    y_keys: the metrics, one row each.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  varied = {name: label for name, label in parameters.items()
            if len({parameter_label(sweep_parameter(r, name)) for r in records}) > 1}
  columns = max(len(varied), 1)
  fig, axes = plt.subplots(len(y_keys), columns, squeeze=False,
                           figsize=(3.2 * columns, 2.6 * len(y_keys)))
  for c, (name, label) in enumerate(varied.items()):
    values = [sweep_parameter(r, name) for r in records]
    # Categories in the values' own order, runs without the override ("base") first.
    categories = sorted({parameter_label(v): v for v in values}.items(),
                        key=lambda item: (item[1] is not None, item[1] if item[1] is not None else 0))
    where = {text: k for k, (text, _) in enumerate(categories)}
    xs = np.array([where[parameter_label(v)] for v in values])
    for row, y_key in enumerate(y_keys):
      ax = axes[row, c]
      ys = np.array([r[y_key] for r in records], np.float64)
      ax.scatter(xs, ys, s=12, c="0.5")
      means = np.array([ys[xs == k].mean() for k in range(len(categories))])
      # The line joins the overridden values; "base" runs (other configs) get a lone marker.
      swept = np.array([value is not None for _, value in categories])
      ax.plot(np.flatnonzero(swept), means[swept], "o-", c="C0", ms=4)
      ax.plot(np.flatnonzero(~swept), means[~swept], "s", c="C1", ms=4)
      ax.set_xticks(range(len(categories)), [text for text, _ in categories], fontsize=7)
      ax.set_xlabel(label)
      ax.set_ylabel(y_key, fontsize=8)
  if not varied:
    axes[0, 0].text(0.5, 0.5, "no swept parameter varies", ha="center", transform=axes[0, 0].transAxes)
  fig.tight_layout()
  return fig


def plot_eval_history(
    histories: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "",
    ax=None,
):
  """Metric-versus-epoch curves, one per run (`eval_history`'s output by run label).

  Args:
    histories: label -> (epochs, values).
    ylabel: the metric's axis label.
    reference: a horizontal line to compare against (e.g. the keep ratio: a router that
      keeps patches at random recalls that fraction of the object), or None.
    reference_label: the line's legend entry.
    ax: matplotlib Axes to draw into (default: a new figure).

  Returns:
    The Axes.
  """
  ax = _axes(ax)
  for label, (epochs, values) in histories.items():
    ax.plot(epochs, values, "o-", ms=3, label=label)
  if reference is not None:
    ax.axhline(reference, c="0.5", ls="--", lw=0.8, label=reference_label or None)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  return ax
