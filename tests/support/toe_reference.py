"""Plain-numpy (float64) implementation of the ToE spec (docs/method.md §3), written
independently of skipvit_jax.models.toe: Python lists, loops and sorting, with the similarities
recomputed from scratch in every expansion sub-step as the spec describes."""

from __future__ import annotations

import numpy as np


def schedule(num_patches, init_rate, keep_rates, substeps, stage):
  """Spec §3.2/§3.3 counts for an active `stage` (1..G): (seed positions, per-sub-step adds)."""
  p = num_patches
  increments = []
  previous = init_rate
  for rate in keep_rates:
    increments.append(rate - previous)
    previous = rate
  num_seeds = int(p * init_rate)
  stride = int(1 // init_rate)
  seeds = [pos for pos in range(p) if pos % stride == 0][:num_seeds]
  adds = []
  for s in range(1, stage + 1):
    if s == len(keep_rates):
      # Written out as the reference does it: r0 + (0 + d_1 + ... + d_{G-1}), left to right.
      before = 0
      for d in increments[: s - 1]:
        before = before + d
      count = int(p * keep_rates[-1]) - int(p * (init_rate + before))
    else:
      count = int(p * increments[s - 1])
    for j in range(substeps):
      if j < substeps - 1:
        adds.append(count // substeps)
      else:
        adds.append(count - (substeps - 1) * (count // substeps))
  return seeds, adds


def _unit(v):
  return v / np.sqrt(np.sum(v * v))


def select(patches, seeds, adds):
  """One image. patches: (P, C). Returns (selected positions in slot order, the remaining
  positions in list order, host slot of each remaining position, the smallest similarity
  gap any decision depended on)."""
  patches = np.asarray(patches, np.float64)
  unit = [_unit(v) for v in patches]
  selected = list(seeds)
  remaining = [p for p in range(len(patches)) if p not in set(seeds)]
  margin = np.inf
  for m in adds:
    selected_units = np.stack([unit[s] for s in selected])
    scores = [float(np.max(selected_units @ unit[u])) for u in remaining]
    # Ascending score; among equal scores the earlier entry of the current list first.
    order = sorted(range(len(remaining)), key=lambda i: (scores[i], i))
    ranked = [scores[i] for i in order]
    # Added tokens' order and the added/kept boundary depend on the first m + 1 scores.
    for i in range(min(m, len(ranked) - 1)):
      margin = min(margin, ranked[i + 1] - ranked[i])
    selected += [remaining[i] for i in order[:m]]
    remaining = [remaining[i] for i in order[m:]]
  hosts = []
  selected_units = np.stack([unit[s] for s in selected])
  for u in remaining:
    sims = [float(v) for v in selected_units @ unit[u]]
    best = max(sims)
    hosts.append(sims.index(best))  # first (lowest) slot among equal maxima
    if len(sims) > 1:
      margin = min(margin, best - sorted(sims)[-2])
  return selected, remaining, hosts, margin


def expand_tokens(x, seeds, adds):
  """x: (B, 1 + P, C). Returns (out (B, 1 + S, C), out_index (B, 1 + S), group sizes
  (B, S): 1 + members merged into each slot, margin: the smallest gap over the batch)."""
  x = np.asarray(x, np.float64)
  outs, indices, sizes = [], [], []
  margin = np.inf
  for image in x:
    patches = image[1:]
    selected, remaining, hosts, gap = select(patches, seeds, adds)
    margin = min(margin, gap)
    members = [[s] for s in selected]
    for u, host in zip(remaining, hosts):
      members[host].append(u)
    tokens = [image[0]]
    for group in members:
      total = np.zeros(image.shape[1])
      for p in group:
        total = total + patches[p]
      tokens.append(total / len(group))
    outs.append(np.stack(tokens))
    indices.append([0] + [s + 1 for s in selected])
    sizes.append([len(group) for group in members])
  return np.stack(outs), np.array(indices, np.int64), np.array(sizes, np.int64), margin
