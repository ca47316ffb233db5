"""The trainer's training and evaluation steps lower for NVIDIA GPUs, with the named kernels.

No GPU is needed: tests/support/cuda_lowering.py lowers for CUDA on the CPU, with JAX's hardware
probes answering as an H100 with cuDNN 9.10 would. Every check asserts which kernel is in the
lowered program (cuDNN's fused-attention custom calls, one per layer, forward and backward,
at the padded token counts; the Pallas kernel's Triton calls), so a silent fallback to another
implementation fails.

Two sets, sized for CI (each lowering traces a whole training step, a few seconds):
- the small 12-layer variant of configs/default.py (Te/6, 48 px, 65 tokens; the layer
  numbers mean what the paper's do): dense, every Table 1 row, each ToE stage and ToE +
  SkipViT, through cuDNN and through the Pallas kernel, plus the XLA and float32 cases in
  SMALL_MATRIX;
- ViT-S/16 at 224 px from the ImageNet configs as a user runs them (bfloat16,
  attention="auto"), at the token counts it trains with: 197 (dense: odd, which cuDNN's
  training path rejected before the padding), 197 and 90 (6-55-11), 197 and 99 (ToE stage
  1), 197 and 148 (ToE stage 2), 197, 99 and 46 (ToE + 6-55-11).
The evaluation step is lowered for each implementation on the small variant and through
cuDNN on ViT-S/16.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import pytest

from configs import default, skipvit_s16_imagenet, toe_deit_s_imagenet, vit_s16_imagenet
from configs.sweeps import paper_row
from skipvit_jax import ViT
from skipvit_jax.data import pipeline
from skipvit_jax.models import attention
from skipvit_jax.train import evaluate, plan
from skipvit_jax.train import step as step_lib
from tests.support import cuda_lowering
from tests.support.cuda_lowering import CUDNN_BACKWARD, CUDNN_FORWARD

STEPS_PER_EPOCH = 10
PER_DEVICE_BATCH = 2
DTYPES = ("bfloat16", "float32")
IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "auto")


def _small_config(case: str):
  """configs/default.py set up for one case; returns (config, the phase to lower)."""
  if case.startswith("toe"):
    stage, _, row = case[3:].partition("+")
    config = default.get_config("toe" if row else "toe,baseline")
    if row:
      config.update_from_flattened_dict(paper_row(row))
      config.drop_warmup_epochs = 0.0
    return config, f"toe_stage{stage}" + ("+routed" if row else "")
  config = default.get_config("baseline")
  if case == "dense":
    return config, "dense"
  config.update_from_flattened_dict(paper_row(case))
  return config, "routed"


SMALL_CASES = ("dense", *skipvit_s16_imagenet.ROWS, "toe1", "toe2", "toe1+6-55-11")
SMALL_MATRIX = [
    # cuDNN, the path that training used to crash on: every configuration, in bfloat16.
    *((case, "cudnn", "bfloat16") for case in SMALL_CASES),
    # The Pallas kernel: every configuration, in float32 and bfloat16 alternately.
    *((case, "pallas", DTYPES[(i + 1) % 2]) for i, case in enumerate(SMALL_CASES)),
    # XLA attention is the same few ops in every configuration, and the routing and ToE ops
    # around it are lowered above: the smallest and the most routed case, one per dtype.
    ("dense", "xla", "bfloat16"), ("toe1+6-55-11", "xla", "float32"),
    # cuDNN has no float32 attention: "cudnn" falls back to XLA, saying so, and "auto" picks
    # XLA. ("auto" in bfloat16 is every ViT-S/16 case below.)
    ("6-55-11", "cudnn", "float32"), ("6-55-11", "auto", "float32"),
]

S16_CASES = {  # name: (config, phase, the token counts its layers attend over)
    "dense": (vit_s16_imagenet.get_config(), "dense", {197}),
    "6-55-11": (skipvit_s16_imagenet.get_config("row=6-55-11"), "routed", {197, 90}),
    "toe1": (toe_deit_s_imagenet.get_config(), "toe_stage1", {197, 99}),
    "toe2": (toe_deit_s_imagenet.get_config(), "toe_stage2", {197, 148}),
    "toe1+6-55-11": (toe_deit_s_imagenet.get_config("skipvit"), "toe_stage1+routed",
                     {197, 99, 46}),
}


def _phase_model(config, phase_name: str):
  """The model the trainer builds for the named training phase of `config`."""
  model = plan.build_model(config, num_classes=1000)
  total_steps = plan.total_train_steps(config, STEPS_PER_EPOCH)
  phases = plan.training_phases(config, model, STEPS_PER_EPOCH, total_steps)
  [phase] = [p for p in phases if p.name == phase_name]
  return model, model.clone(routing=phase.routing, toe=phase.toe)


def _optimizer(config):
  """The trainer's (optimizer, learning-rate schedule) for `config`."""
  total_steps = plan.total_train_steps(config, STEPS_PER_EPOCH)
  return plan.optimizer_and_schedule(config, STEPS_PER_EPOCH, total_steps)


def _abstract_state(config, model, optimizer) -> step_lib.TrainState:
  """The shapes of the trainer's initial state: parameters, optimizer state and any EMA."""
  return jax.eval_shape(lambda: plan.initial_state(config, model, optimizer))


def _batch(model, **extra_fields) -> dict:
  size = model.image_size
  batch = {"image": jax.ShapeDtypeStruct((PER_DEVICE_BATCH, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((PER_DEVICE_BATCH,), jnp.int32)}
  for name, (shape, dtype) in extra_fields.items():
    batch[name] = jax.ShapeDtypeStruct((PER_DEVICE_BATCH,) + shape, dtype)
  return batch


def _lower_train_step(config, phase_name: str) -> tuple[str, ViT]:
  """Lowered text of the trainer's own step for the phase, and the phase's model."""
  model, phase_model = _phase_model(config, phase_name)
  optimizer, learning_rate = _optimizer(config)
  step = plan.per_device_train_step(config, phase_model, optimizer, learning_rate)
  state = _abstract_state(config, model, optimizer)
  return cuda_lowering.lower_for_cuda(step, state, _batch(model)), phase_model


def _attention_token_counts(model) -> list[int]:
  """Tokens each layer attends over ([CLS] included), from the model's host-side plan."""
  counts = [attn for attn, _ in model.routing_plan.tokens_per_layer()]
  if model.toe is not None:  # layer 1 runs before ToE, on every token
    counts[0] = 1 + model.num_patches
  return counts


def _expected_kernel(implementation: str, dtype: str) -> str:
  return {"xla": "xla", "pallas": "pallas"}.get(
      implementation, "cudnn" if dtype == "bfloat16" else "xla")


def _assert_kernels(text: str, model, kernel: str, *, backward: bool) -> None:
  """`kernel` ("cudnn", "pallas" or "xla": neither) is what every layer's attention runs."""
  calls = cuda_lowering.custom_calls(text)
  depth = model.dims.depth
  if kernel == "cudnn":
    assert calls[CUDNN_FORWARD] == depth, calls
    assert calls[CUDNN_BACKWARD] == (depth if backward else 0), calls
    padded = [n + n % attention.CUDNN_TOKEN_MULTIPLE for n in _attention_token_counts(model)]
    assert cuda_lowering.cudnn_token_counts(text) == padded
  else:
    assert calls[CUDNN_FORWARD] == calls[CUDNN_BACKWARD] == 0, calls
  kernels = cuda_lowering.triton_kernel_names(text)
  if kernel == "pallas":
    assert kernels == ({"gather_attention_fwd", "gather_attention_bwd"} if backward
                       else {"gather_attention_fwd"}), kernels
  else:
    assert not kernels, kernels


@pytest.mark.parametrize("case,implementation,dtype", SMALL_MATRIX,
                         ids=["-".join(params) for params in SMALL_MATRIX])
@pytest.mark.slow
def test_small_train_step_lowers_for_cuda(case, implementation, dtype, caplog):
  config, phase = _small_config(case)
  config.model.attention, config.model.dtype = implementation, dtype
  with cuda_lowering.pretend_nvidia_gpu(), caplog.at_level(logging.INFO):
    text, model = _lower_train_step(config, phase)
  _assert_kernels(text, model, _expected_kernel(implementation, dtype), backward=True)
  if implementation == "cudnn" and dtype == "float32":  # cuDNN has no float32 attention
    assert ("attention 'cudnn': float32 inputs; using the same padded attention on XLA"
            in caplog.text)


@pytest.mark.parametrize("case", S16_CASES)
@pytest.mark.slow
def test_vit_s16_train_step_lowers_with_cudnn_for_every_token_count(case):
  config, phase, token_counts = S16_CASES[case]
  assert (config.model.attention, config.model.dtype) == ("auto", "bfloat16")
  with cuda_lowering.pretend_nvidia_gpu():
    text, model = _lower_train_step(config, phase)
  assert set(_attention_token_counts(model)) == token_counts
  _assert_kernels(text, model, "cudnn", backward=True)


@pytest.mark.slow
def test_vit_s16_train_step_lowers_with_the_pallas_kernel():
  config = skipvit_s16_imagenet.get_config("row=6-55-11")
  config.model.attention = "pallas"
  with cuda_lowering.pretend_nvidia_gpu():
    text, model = _lower_train_step(config, "routed")
  _assert_kernels(text, model, "pallas", backward=True)


def test_the_step_with_deits_device_augmentation_lowers_for_cuda():
  """configs/toe_deit_s_imagenet.py's recipe on the device (flip, RandAugment, normalisation,
  erasing before mixup and cutmix), on the host's uint8 crops, in the routed small model."""
  config, phase = _small_config("6-55-11")
  config.data.update(augment_on="device", rand_augment="rand-m9-mstd0.5-inc1", random_erase=0.25)
  info = pipeline.DatasetInfo("imagenet2012", 8, 1000, 100, has_object_masks=False)
  augmentation = plan.device_augmentation(config, info)
  assert augmentation is not None and augmentation.rand_augment is not None
  model, phase_model = _phase_model(config, phase)
  optimizer, learning_rate = _optimizer(config)
  step = plan.per_device_train_step(config, phase_model, optimizer, learning_rate, augmentation)
  batch = dict(_batch(model), image=jax.ShapeDtypeStruct(
      (PER_DEVICE_BATCH, model.image_size, model.image_size, 3), jnp.uint8))
  with cuda_lowering.pretend_nvidia_gpu():
    text = cuda_lowering.lower_for_cuda(step, _abstract_state(config, model, optimizer), batch)
  assert "ui8" in text  # the step takes the uint8 crops itself


def _lower_eval_step(config, phase: str, *, with_recall: bool) -> tuple[str, ViT]:
  """Lowered text of the trainer's evaluation step (evaluate.eval_step) for the phase."""
  model, phase_model = _phase_model(config, phase)
  size = model.image_size
  fields = {"valid": ((), jnp.float32)}
  if with_recall:
    fields["mask"] = ((size, size), jnp.float32)

  def step(params, batch):
    return evaluate.eval_step(params, batch, model=phase_model, with_recall=with_recall)

  params = _abstract_state(config, model, _optimizer(config)[0]).params
  return cuda_lowering.lower_for_cuda(step, params, _batch(model, **fields)), phase_model


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_small_eval_step_lowers_for_cuda(implementation):
  config, phase = _small_config("6-55-11")
  config.model.attention, config.model.dtype = implementation, "bfloat16"
  with cuda_lowering.pretend_nvidia_gpu():
    text, model = _lower_eval_step(config, phase, with_recall=True)
  _assert_kernels(text, model, _expected_kernel(implementation, "bfloat16"), backward=False)


def test_vit_s16_eval_step_lowers_with_cudnn():
  config, phase, _ = S16_CASES["dense"]
  with cuda_lowering.pretend_nvidia_gpu():
    text, model = _lower_eval_step(config, phase, with_recall=False)
  _assert_kernels(text, model, "cudnn", backward=False)

