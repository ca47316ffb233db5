"""A trained run, loaded for inspection (the notebooks): its config, model, parameters, a few
evaluation images, and the model's intermediate decisions on them.

A workdir written by `loop.train_and_evaluate` holds config.json and orbax checkpoints of the
whole train state; the checkpoint is restored into a template built by the trainer's own
builders (skipvit_jax/train/plan.py), then only the parameters are kept.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from skipvit_jax.data import pipeline
from skipvit_jax.models import toe as toe_lib
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.vit import ViT
from skipvit_jax.train import checkpointing, optim, plan, resume


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  config: ml_collections.ConfigDict  # the run's config.json
  model: ViT  # the configured model with its routing and without ToE (what eval/top1 ran)
  params: Any  # numpy parameters of the latest checkpoint
  step: int  # the step of that checkpoint
  ema_params: Any = None  # the parameters' moving average (config.ema_decay > 0), numpy


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the trainer wrote to workdir/config.json."""
  return ml_collections.ConfigDict(resume.read_config(workdir))


def load_run(workdir: str, *, num_classes: int | None = None) -> TrainedRun:
  """The latest checkpoint of a training workdir.

  Args:
    workdir: a directory `loop.train_and_evaluate` wrote (config.json, checkpoints/).
    num_classes: the classifier's size; None opens the run's dataset to read it.

  Returns:
    The TrainedRun. Raises FileNotFoundError when the workdir has no checkpoint.
  """
  config = load_config(workdir)
  if num_classes is None:
    num_classes = pipeline.load_sources(config.data).info.num_classes
  model = plan.build_model(config, num_classes)
  # The optimizer only shapes the restore template; its schedule's values do not matter.
  optimizer = optim.make_optimizer(config.optimizer, optax.constant_schedule(config.optimizer.lr))
  template = jax.device_get(plan.initial_state(config, model, optimizer))
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  state = checkpoints.restore_latest(template)
  checkpoints.close()
  if state is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint in {workdir}/checkpoints")
  return TrainedRun(config, model, state.params, int(state.step), state.ema_params)


def eval_examples(config: ml_collections.ConfigDict, count: int) -> dict[str, np.ndarray]:
  """The first `count` examples of the run's eval split, preprocessed as evaluation does.

  Returns:
    image: (N, S, S, 3) float32, the model's input.
    display: (N, S, S, 3) float32 in [0, 1], the same pixels for plotting.
    label: (N,) int32.
    mask: (N, S, S) uint8 object masks (datasets that have them: synthetic, Fashion-MNIST).
  """
  sources = pipeline.load_sources(config.data)
  count = min(count, sources.info.num_eval)
  batch = next(pipeline.eval_batches(
      sources.eval, sources.info, global_batch=count, image_size=config.data.image_size,
      num_threads=1))
  batch.pop("valid")
  mean, std = sources.info.mean_std
  batch["display"] = np.clip((batch["image"] * std + mean) / 255.0, 0.0, 1.0)
  return batch


def first_toe_plan(config: ml_collections.ConfigDict, num_patches: int) -> toe_lib.ToEPlan:
  """The plan of the first stage in which `config.toe`'s schedule reduces tokens.

  A finished run's current stage is usually the last, where ToE is off; the first active
  stage shows the strongest reduction. The schedule is read even where config.toe.enabled is
  False: ToE has no parameters, so it can be applied to any checkpoint for inspection.
  """
  t = config.toe
  plans = toe_lib.stage_plans(
      num_patches, expansion_epochs=tuple(t.expansion_epochs), keep_rates=tuple(t.keep_rates),
      init_rate=t.init_rate, substeps=t.substeps)
  active = [p for p in plans if p.active]
  if not active:
    raise ValueError(f"config.toe: no stage of {t} reduces tokens")
  return active[0]


def forward(model: ViT, params: Any, images: np.ndarray) -> tuple[np.ndarray, dict]:
  """images: (B, S, S, 3) -> (logits (B, classes), aux with every layer's attention), numpy."""
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, capture_attention=True))
  return jax.device_get(apply(params, images))


def toe_decisions(
    model: ViT, params: Any, images: np.ndarray, plan: toe_lib.ToEPlan
) -> dict[str, np.ndarray]:
  """What ToE would do after layer 1 on `images`: the tokens it selects and the merge groups.

  Returns:
    out_index: (B, 1 + S) int32, as `toe.expand_tokens` returns it.
    slots: (B, P) int32 in 1..S, from `toe.merge_assignment`.
  """
  # The dense model's input to layer 2 is the output of layer 1, what ToE reduces.
  dense = model.clone(routing=RoutingConfig(), toe=None)

  @jax.jit
  def decide(p, x):
    _, state = dense.apply({"params": p}, x, train=False, mutable=["intermediates"])
    first_block_out = state["intermediates"]["Transformer"]["layer_inputs"][1]
    _, out_index = toe_lib.expand_tokens(first_block_out, plan)
    return {"out_index": out_index, "slots": toe_lib.merge_assignment(first_block_out, plan)}

  return jax.device_get(decide(params, images))
