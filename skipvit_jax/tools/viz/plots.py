"""matplotlib figures of the maps (viz/maps.py) and the run comparisons (viz/compare.py) the
notebooks and docs/figures.py draw; matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from skipvit_jax.tools.sweep import schema
from skipvit_jax.tools.viz import compare
from skipvit_jax.tools.viz import maps as patch_maps  # `maps` names the map arrays here


def _pyplot():
  import matplotlib.pyplot as plt

  return plt


def _image_grid_done(fig, axes):
  """Finishes a grid of image panels: no ticks, tight layout; returns the Figure."""
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig


def _image_panels(row, image: np.ndarray, title: str, mask: np.ndarray | None,
                  fontsize: int) -> None:
  """Draws a row's leading panels: the image into `row[0]` and, where given, its object mask
  into `row[1]`."""
  row[0].imshow(image)
  row[0].set_title(title, fontsize=fontsize)
  if mask is not None:
    row[1].imshow(mask, cmap="gray")
    row[1].set_title("object", fontsize=fontsize)


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
    maps: (L, N, P) from `patch_maps.cls_attention_maps`; NaN (absent tokens) is drawn grey.
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
    _image_panels(axes[i], images[i], titles[i] if titles else "image",
                  None if masks is None else masks[i], fontsize=7)
    for layer in range(1, num_layers + 1):
      ax = axes[i, lead + layer - 1]
      # Each map on its own scale: later layers concentrate [CLS] attention on fewer tokens.
      ax.imshow(np.ma.masked_invalid(patch_maps.patch_image(maps[layer - 1, i], patch_size)),
                cmap=cmap)
      if i == 0:
        mark = " drop" if layer in drop_layers else (" ret" if layer == return_layer else "")
        ax.set_title(f"L{layer}{mark}", fontsize=7)
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
    fates: per drop layer, (N, P) from `patch_maps.patch_fates`.
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
    _image_panels(axes[i], images[i], titles[i] if titles else "image",
                  None if masks is None else masks[i], fontsize=8)
    for d, fate in enumerate(fates):
      kept = int((fate[i] == patch_maps.KEPT).sum())
      axes[i, lead + d].imshow(patch_maps.overlay_patches(images[i], fate[i], patch_size,
                                                          patch_maps.FATE_COLORS))
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
    steps: (N, P) from `patch_maps.toe_expansion_step` (0 seeds, k sub-step k, -1 merged).
    rank: (N, P) from `patch_maps.toe_selection_rank`.
    slots: (N, P) from `toe.merge_assignment`: the output token each patch ends up in.
    patch_size: p.
    titles: optional per-image titles.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  from matplotlib.collections import LineCollection

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
    axes[i, 1].imshow(patch_maps.overlay_patches(
        images[i], seeds, patch_size, {0: (0, 0, 0), 1: (1, 1, 0)}, alpha=0.55))
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
    axes[i, 3].imshow(
        patch_maps.overlay_patches(images[i], slots[i], patch_size, colours, alpha=0.65))
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


_MARKERS = "osD^vP*Xph"


def _error_bars(records: Sequence[Mapping], members: Sequence[int], key: str | None):
  """The `key` field of the `members` records, 0 where missing or None; None without a key."""
  return None if key is None else [records[j].get(key) or 0.0 for j in members]


def plot_pareto(
    records: Sequence[Mapping],
    *,
    x_key: str = schema.SPEEDUP,
    y_key: str = schema.TOP1,
    label_key: str = schema.NAME,
    label_all: bool = False,
    x_err_key: str | None = None,
    y_err_key: str | None = None,
    group_key: str | None = None,
    ax=None,
):
  """Accuracy against measured speedup, one point per run, the Pareto front joined.

  Args:
    records: result rows with numbers under `x_key` and `y_key` (see
      `tools.sweep.results.finished_rows`).
    x_key, y_key: the record fields on the axes (both maximised for the front).
    label_key: field written next to each front point.
    label_all: also write it, in grey, next to the points off the front.
    x_err_key, y_err_key: fields holding each point's error bar (e.g. the sd over seeds of a
      mean); a missing or None value draws no bar.
    group_key: field naming each point's group (e.g. its method): one marker and colour per
      group, in the legend, instead of grey dots.
    ax: matplotlib Axes to draw into (default: a new figure).

  Returns:
    The Axes.
  """
  ax = _axes(ax)
  points = np.array([[r[x_key], r[y_key]] for r in records], np.float64).reshape(-1, 2)
  groups = (list(dict.fromkeys(r[group_key] for r in records)) if group_key else ["runs"])
  for k, group in enumerate(groups):
    members = [j for j, r in enumerate(records) if not group_key or r[group_key] == group]
    style = (dict(fmt=_MARKERS[k % len(_MARKERS)], c=f"C{k % 10}", ms=6) if group_key
             else dict(fmt="o", c="0.55", ms=4))
    ax.errorbar(points[members, 0], points[members, 1],
                xerr=_error_bars(records, members, x_err_key),
                yerr=_error_bars(records, members, y_err_key),
                elinewidth=0.8, capsize=2, label=group, **style)
  if len(points):
    front = compare.pareto_front(points)
    # Grouped points keep their markers; the front is a line through them.
    front_style = dict(c="0.3", lw=0.9, zorder=0) if group_key else dict(c="C3", ms=5)
    ax.plot(points[front, 0], points[front, 1], "-" if group_key else "o-",
            label="Pareto front", **front_style)
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
    parameters: Mapping[str, str] = compare.SWEEP_PARAMETERS,
    y_keys: Sequence[str] = (schema.TOP1, schema.SPEEDUP),
):
  """One column per swept parameter, one row per metric: every run as a dot at its value
  of the parameter, the mean over runs with that value (seeds, other parameters) as a line.

  Args:
    records: result rows (see `tools.sweep.results.finished_rows`).
    parameters: config field -> axis label; fields no run varies are skipped.
    y_keys: the metrics, one row each.

  Returns:
    The matplotlib Figure.
  """
  plt = _pyplot()
  varied = {name: label for name, label in parameters.items()
            if len({compare.parameter_label(compare.sweep_parameter(r, name))
                    for r in records}) > 1}
  columns = max(len(varied), 1)
  fig, axes = plt.subplots(len(y_keys), columns, squeeze=False,
                           figsize=(3.2 * columns, 2.6 * len(y_keys)))
  for c, (name, label) in enumerate(varied.items()):
    values = [compare.sweep_parameter(r, name) for r in records]
    # Categories in the values' own order, runs without the override ("base") first.
    categories = sorted({compare.parameter_label(v): v for v in values}.items(),
                        key=lambda item: (item[1] is not None,
                                          item[1] if item[1] is not None else 0))
    where = {text: k for k, (text, _) in enumerate(categories)}
    xs = np.array([where[compare.parameter_label(v)] for v in values])
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
    axes[0, 0].text(0.5, 0.5, "no swept parameter varies", ha="center",
                    transform=axes[0, 0].transAxes)
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
  """Metric-versus-epoch curves, one per run (`compare.eval_history`'s output by run label).

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
