"""Micro-benchmark: fused Pallas gather-attention against XLA gather + dot_product_attention.

    python -m benchmarks.gather_attention                      # ViT-S/16 shapes, GPU
    python -m benchmarks.gather_attention --json_out /tmp/ga.json
    python -m benchmarks.gather_attention --tiny --interpret   # CPU smoke run, seconds

For each kept-token count K it times, forward and forward+backward (median of --runs runs
after --warmup runs, each synchronised with block_until_ready):

- pallas:    kernels.gather_attention (reads kept rows in place; returns [CLS] scores too),
- xla:       take_along_axis gather + jax.nn.dot_product_attention(implementation="xla"),
- cudnn:     the same through the model's "cudnn" attention (skipvit_jax/models/attention.py:
             cuDNN's fused attention, tokens padded to an even count; GPU only, skipped
             elsewhere).

The XLA baselines also compute the [CLS]-row scores (one extra (B, H, 1 + K) row of
logits), so all three produce the same outputs. Each row reports the analytic FLOPs and
minimum bytes moved of the operation, and the achieved fraction of the device's peak
matmul throughput and memory bandwidth, both measured in the same run (a large matmul and
a large elementwise copy). The table goes to stdout with --json_out, else to stderr so that
stdout holds exactly one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from kernels import gather_attention as ga
from skipvit_jax.models import attention

# Shape and probe-size flags: ViT-S/16 on a GPU by default, small under --tiny. Flags given
# on the command line win over both.
_DEFAULTS = dict(batch=256, heads=6, head_dim=64, tokens=197, keep="89,136", matmul_size=8192,
                 copy_mib=1024)
_TINY = dict(batch=2, heads=2, head_dim=16, tokens=33, keep="8,20,all", matmul_size=256,
             copy_mib=8)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int)
  parser.add_argument("--heads", type=int)
  parser.add_argument("--head_dim", type=int)
  parser.add_argument("--tokens", type=int, help="N, [CLS] included.")
  parser.add_argument("--keep",
                      help="Comma-separated kept patch counts K; 'all' = no gather (N tokens).")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--runs", type=int, default=20, help="Timed runs; the median is reported.")
  parser.add_argument("--warmup", type=int, default=3, help="Untimed runs after compilation.")
  parser.add_argument("--matmul_size", type=int,
                      help="Side of the square matmul that measures peak FLOP/s.")
  parser.add_argument("--copy_mib", type=int,
                      help="Size of the array copied to measure peak bandwidth.")
  parser.add_argument("--interpret", action="store_true",
                      help="Run the Pallas kernel in the interpreter (any backend, slow).")
  parser.add_argument("--tiny", action="store_true",
                      help="Small shapes and peak probes by default, for a CPU smoke run.")
  parser.add_argument("--no_backward", action="store_true", help="Forward passes only.")
  parser.add_argument("--json_out", help="Write the JSON here, not to stdout.")
  args = parser.parse_args(argv)
  for name, value in (_TINY if args.tiny else _DEFAULTS).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.runs < 1:
    parser.error("--runs must be >= 1")
  return args


def _measure_peaks(dtype, matmul_size: int, copy_mib: int, warmup: int, runs: int) -> dict:
  """Achievable peaks of this device: a square matmul and a read+write elementwise pass."""
  return {
      "matmul_tflops": timing.peak_matmul_flops(dtype, matmul_size, warmup, runs) / 1e12,
      "bandwidth_gbps": timing.peak_bandwidth(copy_mib, warmup, runs) / 1e9,
      "matmul_size": matmul_size,
      "copy_mib": copy_mib,
  }


def _xla_attention(implementation: str):
  """Gather + attention + [CLS]-row scores, like gather_attention. `implementation` is a name
  of skipvit_jax.models.attention: "dot_product_attention" (XLA) or "cudnn"."""

  def attend(q, k, v, keep_idx):
    if keep_idx is not None:
      cls_row = jnp.zeros((keep_idx.shape[0], 1), jnp.int32)
      rows = jnp.concatenate([cls_row, keep_idx + 1], axis=1)[:, :, None, None]
      q, k, v = (jnp.take_along_axis(x, rows, axis=1) for x in (q, k, v))
    result = attention.attend(q, k, v, implementation=implementation, with_cls_scores=True)
    return result.out, result.cls_scores

  return attend


def _with_backward(attend):
  """Forward + backward for q, k, v with a ones cotangent on out (scores are ranked under
  stop_gradient in the model, so they get none)."""

  def loss(q, k, v, keep_idx):
    out, _ = attend(q, k, v, keep_idx)
    return jnp.sum(out.astype(jnp.float32))

  return jax.grad(loss, argnums=(0, 1, 2))


def _costs(batch, heads, head_dim, tokens, kept, itemsize, backward: bool) -> tuple[int, int]:
  """Analytic FLOPs and the minimum bytes an ideal fused implementation moves."""
  rows = batch * kept * heads * head_dim  # elements of one (B, M, H, D) operand
  flops = 4 * batch * heads * kept**2 * head_dim  # q k^T and p v
  moved = 4 * rows * itemsize  # read q, k, v rows, write out
  if backward:
    # Recompute q k^T, then dv, dp, dq, dk: five matmuls in all.
    flops += 10 * batch * heads * kept**2 * head_dim
    # Read q, k, v, out, dout rows; write dq, dk, dv in the full layout (zeros included).
    moved += 5 * rows * itemsize + 3 * batch * tokens * heads * head_dim * itemsize
  return flops, moved


def run(args: argparse.Namespace) -> dict:
  dtype = jnp.dtype(args.dtype)
  backend = jax.default_backend()
  rng = np.random.default_rng(0)
  shape = (args.batch, args.tokens, args.heads, args.head_dim)
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))

  impls: dict[str, Callable] = {}
  skipped: list[dict] = []
  if args.interpret or ga.can_lower(backend):
    impls["pallas"] = lambda q, k, v, keep: ga.gather_attention(
        q, k, v, keep, interpret=args.interpret
    )
  else:
    reason = f"no Pallas lowering on {backend}; try --interpret"
    skipped.append({"impl": "pallas", "reason": reason})
  impls["xla"] = _xla_attention("dot_product_attention")
  if backend == "gpu":
    impls["cudnn"] = _xla_attention("cudnn")
  else:
    skipped.append({"impl": "cudnn", "reason": f"cuDNN needs a GPU, backend is {backend}"})

  peaks = _measure_peaks(dtype, args.matmul_size, args.copy_mib, args.warmup, args.runs)
  results = []
  for keep in args.keep.split(","):
    if keep == "all":
      keep_idx, kept = None, args.tokens
    else:
      num_keep = int(keep)
      keep_idx = jnp.asarray(
          np.stack([np.sort(rng.choice(args.tokens - 1, num_keep, replace=False))
                    for _ in range(args.batch)]),
          jnp.int32,
      )
      kept = 1 + num_keep
    passes = [("fwd", False)] + ([] if args.no_backward else [("fwd+bwd", True)])
    for name, attend in impls.items():
      for pass_name, backward in passes:
        fn = jax.jit(_with_backward(attend) if backward else attend)
        try:
          times = timing.time_ms(fn, (q, k, v, keep_idx), args.warmup, args.runs)
        except Exception as e:  # cuDNN rejects some shapes/dtypes; report, don't abort.
          skipped.append({"impl": name, "keep": keep, "pass": pass_name,
                          "reason": f"{type(e).__name__}: {str(e)[:300]}"})
          continue
        flops, moved = _costs(args.batch, args.heads, args.head_dim, args.tokens, kept,
                              dtype.itemsize, backward)
        median = statistics.median(times)
        results.append({
            "impl": name,
            "keep": keep,
            "tokens_attended": kept,
            "pass": pass_name,
            "median_ms": median,
            "min_ms": min(times),
            "runs": len(times),
            "flops": flops,
            "bytes": moved,
            "tflops": flops / median / 1e9,
            "gbps": moved / median / 1e6,
            "frac_peak_flops": flops / median / 1e9 / peaks["matmul_tflops"],
            "frac_peak_bandwidth": moved / median / 1e6 / peaks["bandwidth_gbps"],
        })
  return {
      "benchmark": "gather_attention",
      "backend": backend,
      "device": jax.devices()[0].device_kind,
      "interpret": args.interpret,
      "config": {name: getattr(args, name) for name in
                 ("batch", "heads", "head_dim", "tokens", "keep", "dtype", "runs", "warmup")},
      "peak": peaks,
      "results": results,
      "skipped": skipped,
  }


def format_table(report: dict) -> str:
  peak = report["peak"]
  lines = [
      f"{report['device']} ({report['backend']}): peak matmul {peak['matmul_tflops']:.3g} "
      f"TFLOP/s, bandwidth {peak['bandwidth_gbps']:.4g} GB/s",
      f"{'impl':<8}{'keep':>6}{'pass':>9}{'median ms':>11}{'min ms':>9}{'TFLOP/s':>9}"
      f"{'GB/s':>9}{'%flops':>8}{'%bw':>7}",
  ]
  for r in report["results"]:
    lines.append(
        f"{r['impl']:<8}{r['keep']:>6}{r['pass']:>9}{r['median_ms']:>11.3f}{r['min_ms']:>9.3f}"
        f"{r['tflops']:>9.3g}{r['gbps']:>9.4g}{100 * r['frac_peak_flops']:>7.1f}%"
        f"{100 * r['frac_peak_bandwidth']:>6.1f}%"
    )
  for s in report["skipped"]:
    what = " ".join(str(s[key]) for key in ("impl", "keep", "pass") if key in s)
    lines.append(f"skipped {what}: {s['reason']}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  args = _parse_args(argv)
  report = run(args)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(report, f, indent=2)
    print(format_table(report))
  else:
    print(format_table(report), file=sys.stderr)
    print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
