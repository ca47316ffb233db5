"""Lowering the project's programs for NVIDIA GPUs on a machine without one.

`jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))` runs JAX's and Pallas' GPU
lowering rules on a CPU: Pallas kernels become Triton custom calls, `jax.nn.dot_product_attention`
becomes cuDNN's fused-attention custom calls, and every shape check on the way runs. Only XLA's
final GPU compile is left out.

Where JAX or this project decides by probing the hardware, `pretend_nvidia_gpu` answers as
an H100 would; it is the one place those probes are patched.
"""

from __future__ import annotations

import collections
import contextlib
import re
from typing import Any, Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

from skipvit_jax.models import attention
from skipvit_jax.runtime import parallel

CUDNN_FORWARD = "__cudnn$fmhaSoftmax"
CUDNN_BACKWARD = "__cudnn$fmhaSoftmaxBackward"
TRITON = "__gpu$xla.gpu.triton"


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split("."))


@contextlib.contextmanager
def pretend_nvidia_gpu(compute_capability: str = "9.0", cudnn_version: int = 91000):
  """Inside: `jax.default_backend()` is "gpu" (what this project's attention choices and the
  Pallas kernel ask), and JAX's cuDNN attention sees cuDNN `cudnn_version` on a GPU of
  `compute_capability` (default: an H100 with cuDNN 9.10)."""
  capability = _version(compute_capability)
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(jax, "default_backend", lambda: "gpu"))
    stack.enter_context(mock.patch.object(
        cudnn_attention, "check_cudnn_version", lambda: cudnn_version))
    stack.enter_context(mock.patch.object(
        cudnn_attention, "check_compute_capability", lambda c: capability >= _version(c)))
    stack.enter_context(mock.patch.object(
        cudnn_attention, "is_cuda_compute_capability_equal", lambda c: capability == _version(c)))
    attention._log_fallback_once.cache_clear()
    yield


def lower_for_cuda(per_device_fn: Callable, *per_device_args: Any) -> str:
  """StableHLO text of `per_device_fn` mapped over the local devices as `jax.pmap` maps it
  (a shard_map over the axis `parallel.AXIS`, collectives included), lowered for CUDA.

  per_device_args: pytrees of arrays or jax.ShapeDtypeStruct, one device's shapes.
  """
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.array(devices), (parallel.AXIS,))
  spec = jax.sharding.PartitionSpec(parallel.AXIS)

  def mapped(*args):
    outputs = per_device_fn(*jax.tree.map(lambda x: x[0], args))
    return jax.tree.map(lambda x: jnp.asarray(x)[None], outputs)

  stacked = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((len(devices),) + tuple(x.shape), x.dtype), per_device_args)
  program = jax.jit(jax.shard_map(mapped, mesh=mesh, in_specs=spec, out_specs=spec,
                                  check_vma=False))
  return program.trace(*stacked).lower(lowering_platforms=("cuda",)).as_text()


def custom_calls(text: str) -> collections.Counter:
  """Call-site count of every custom-call target in lowered StableHLO text."""
  return collections.Counter(re.findall(r"custom_call @([\w$.]+)\(", text))


def triton_kernel_names(text: str) -> set[str]:
  """Names of the Pallas kernels lowered to Triton custom calls."""
  names = set()
  for line in text.splitlines():
    if f"custom_call @{TRITON}(" in line:
      names.update(re.findall(r'\bname = "(\w+)"', line))
  return names


def cudnn_token_counts(text: str) -> list[int]:
  """The token count (query length) of every cuDNN fused-attention forward call, in order."""
  counts = []
  for line in text.splitlines():
    if f"custom_call @{CUDNN_FORWARD}(" in line:
      # The operand types close the line: (tensor<BxTxNxHxdtype>, ...) for q, k, v first.
      operands = line[line.rindex(": (") :]
      counts.append(int(re.match(r": \(tensor<\d+x(\d+)x", operands).group(1)))
  return counts
