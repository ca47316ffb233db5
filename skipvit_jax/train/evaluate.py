"""Evaluation: exact top-1 / top-5 / loss over a split, and kept-object recall.

Metrics are accumulated as sums with an example count (padding has weight 0), summed over
devices with `psum` and over batches on the host, so averages are exact for any split size.

Kept-object recall (synthetic data, which carries object masks): at each drop layer, the
fraction of the patches overlapping the object that the layer kept. Selecting patches at
random scores the keep ratio K / P; a model that learned where the object is scores higher.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from skipvit_jax.data import pipeline
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.runtime import parallel

AXIS = parallel.AXIS


def patch_overlap(mask, patch_size: int):
  """Which ViT patches touch the object; numpy and jax arrays alike (only reshape and any).

  Args:
    mask: (..., S, S) object mask, nonzero on the object; S divisible by patch_size.
    patch_size: p, the ViT's patch side.

  Returns:
    (..., P) bool with P = (S / p)^2, in row-major patch order (the order of a ViT's patch
    tokens, [CLS] excluded): True where the patch holds at least one object pixel.
  """
  size = mask.shape[-1]
  if mask.shape[-2] != size or size % patch_size:
    raise ValueError(f"mask must be (..., S, S), S divisible by {patch_size}; got {mask.shape}")
  grid = size // patch_size
  patches = mask.reshape(*mask.shape[:-2], grid, patch_size, grid, patch_size)
  return (patches != 0).any(axis=(-3, -1)).reshape(*mask.shape[:-2], grid * grid)


def in_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """logits: (B, K), labels: (B,) -> (B,) bool: the label's logit is strictly among the k
  highest.

  A tie counts against the example (fewer than k other classes may score >= the label), so
  all-equal logits, a zero-initialised head's, are never right; an example with any NaN
  logit is never right either (a comparison with NaN would otherwise count nothing above it).
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)  # (B, 1)
  others_at_least = jnp.sum(logits >= label_logit, axis=1) - 1  # the label itself is >=
  return (others_at_least < k) & ~jnp.any(jnp.isnan(logits), axis=1)


def eval_step(params, batch: dict, *, model: nn.Module, with_recall: bool) -> dict:
  """Summed metrics of one device's batch, psum'ed over the `batch` axis.

  batch: image (b, S, S, 3), label (b,), valid (b,) in {0, 1}, mask (b, S, S) if with_recall.
  """
  logits, aux = model.apply({"params": params}, batch["image"], train=False)
  labels, valid = batch["label"], batch["valid"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  sums = {
      "count": jnp.sum(valid),
      "loss": jnp.sum(loss * valid),
      "top1": jnp.sum(in_top_k(logits, labels, 1) * valid),
      "top5": jnp.sum(in_top_k(logits, labels, 5) * valid),
  }
  if with_recall:
    on_object = patch_overlap(batch["mask"], model.dims.patch_size)  # (b, P)
    sums["object_patches"] = jnp.sum(on_object * valid[:, None])
    for i, record in enumerate(aux["routing"]):
      positions = record["kept_positions"]  # (b, K); -1 marks a fused token
      kept_on_object = jnp.take_along_axis(on_object, jnp.maximum(positions, 0), axis=1)
      kept_on_object &= positions >= 0
      sums[f"kept_object_patches_{i}"] = jnp.sum(kept_on_object * valid[:, None])
  return jax.lax.psum(sums, AXIS)


def summarize(sums: dict, *, keep_ratios: tuple[float, ...] = ()) -> dict[str, float]:
  """Host-side: averages from the summed metrics."""
  count = float(sums["count"])
  out = {name: float(sums[name]) / count for name in ("loss", "top1", "top5")}
  out["num_examples"] = count
  for i, ratio in enumerate(keep_ratios):
    key = f"kept_object_patches_{i}"
    if key in sums:
      out[f"kept_object_recall_{i}"] = float(sums[key]) / max(float(sums["object_patches"]), 1.0)
      out[f"keep_ratio_{i}"] = ratio
  return out


def accumulate(step_fn, params, batches: Iterable[dict],
               should_stop: Callable[[], bool] = lambda: False) -> dict | None:
  """Runs a pmapped eval step over sharded batches and adds the (replicated) sums; None when
  `should_stop()`, asked after each batch, turns true."""
  total = None
  for batch in batches:
    sums = jax.tree.map(lambda x: x.astype(np.float64),
                        parallel.unreplicate(step_fn(params, batch)))
    total = sums if total is None else jax.tree.map(np.add, total, sums)
    if should_stop():
      return None
  return total


class Evaluator:
  """Evaluates a run's state on its eval split: with the model's training routing (and the
  current ToE stage when `sparse_toe`), with all tokens when that differs, and the parameter
  EMA when the state keeps one. One compiled step per (routing, ToE, recall) variant.

  Metric names: eval/<metric> (training routing), eval/<metric>_all_tokens, eval_ema/<metric>;
  kept-object recall where the dataset has object masks and the model routes.
  """

  def __init__(self, *, model, sources, global_batch: int, num_threads: int,
               sparse_toe: bool = False):
    self._model = model
    self._dense = model.clone(routing=RoutingConfig(), toe=None)
    self._sources = sources
    self._global_batch = global_batch
    self._num_threads = num_threads
    self._sparse_toe = sparse_toe
    self._steps: dict[tuple, object] = {}

  def _step(self, model, with_recall: bool):
    key = (model.routing, model.toe, with_recall)
    if key not in self._steps:
      self._steps[key] = jax.pmap(
          functools.partial(eval_step, model=model, with_recall=with_recall), axis_name=AXIS)
    return self._steps[key]

  def __call__(self, state, toe, should_stop=lambda: False) -> dict[str, float] | None:
    """Metrics of `state` (replicated), or None when `should_stop()` became true between
    batches. `toe`: the ToE plan of the phase just trained (used with `sparse_toe`)."""
    model = self._model.clone(toe=toe if self._sparse_toe else None)
    info = self._sources.info
    keep_ratios = tuple(s.num_keep / model.num_patches for s in model.routing_plan.stages)
    with_recall = info.has_object_masks and model.routing.routes
    # (metric name prefix, suffix, model, parameters, kept-object recall)
    variants = [("eval/", "", model, state.params, with_recall)]
    if model.routing.routes or model.toe is not None:
      variants.append(("eval/", "_all_tokens", self._dense, state.params, False))
    if state.ema_params is not None:
      variants.append(("eval_ema/", "", model, state.ema_params, with_recall))
    results = {}
    for prefix, suffix, variant_model, params, recall in variants:
      batches = pipeline.eval_batches(
          self._sources.eval, info, global_batch=self._global_batch,
          image_size=model.image_size, process_index=jax.process_index(),
          process_count=jax.process_count(), num_threads=self._num_threads)
      sums = accumulate(self._step(variant_model, recall), params,
                        map(parallel.shard, batches), should_stop)
      if sums is None:
        return None
      summary = summarize(sums, keep_ratios=keep_ratios if recall else ())
      results.update({f"{prefix}{k}{suffix}": v for k, v in summary.items()})
    return results
