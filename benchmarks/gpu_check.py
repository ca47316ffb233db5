"""One command for a GPU: kernel correctness, the training step per attention implementation,
MFU, memory, and timm's ViT-S/16 as a peer, written as JSON and as Markdown for BENCHMARKS.md.

  python -m benchmarks.gpu_check --out_dir /tmp/gpu_check      # one H100/H200, a few minutes
  python -m benchmarks.gpu_check --smoke --out_dir /tmp/smoke  # CPU, the same code, toy sizes

1. Correctness, before any timing: the Pallas gather-attention kernel and the cuDNN attention
   path (token padding included) against float32 references at ViT-S/16 shapes (197 tokens,
   6 heads of 64; kept subsets of 89 and all patches), forward output, [CLS] row and the
   gradients of q, k and v, in float32 and bfloat16. Errors are max |got - want| / max |want|.
2. The training step (benchmarks/train_step.py, the trainer's own step): ViT-S/16, 224 px,
   bfloat16 compute, global batch 256, for dense, 6-55-11, 6-45-fused, 4.7-30.30-11, ToE
   stages 1 and 2 and ToE stage 1 + 6-55-11, each with the "xla", "cudnn" and "pallas"
   attention, interleaved in one process; MFU against the fastest bf16 matmul measured in the
   same run; each compiled step's memory and the process's peak.
3. The peer, when torch and timm import: timm's vit_small_patch16_224 training step (bfloat16
   autocast, PyTorch's fused scaled-dot-product attention, torch.compile, fused AdamW) at the
   same batch, in the same process.
4. The device augmentation (benchmarks/device_augment.py): DeiT's flip, RandAugment,
   normalisation and erasing on the step's uint8 crops, inside the dense step, as a function
   before it, and alone.
5. The other token reducers in the same step, with the "auto" attention a run would use:
   6-55-11 beside ToMe (`tome7`: r = 7 per layer; its proportional attention needs a logit
   bias, so its layers after the first merge run "xla") and PatchDropout (`pd80`: 80% of the
   patches kept), the r and keep rate whose FLOP-ideal speedup is closest to 6-55-11's.
6. A verdict on the performance targets and which attention implementation measured fastest
   (the choice "auto" is to follow on NVIDIA GPUs).

Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (without --out_dir, OUT_DIR is a
fresh temporary directory, so that a run leaves nothing where it was started), prints the
Markdown and OUT_DIR (stderr) and the JSON (stdout). Needs only JAX, Flax and optax (plus
torch and timm for the peer). JAX is told not to preallocate GPU memory, so that PyTorch can
share the device and the reported peak is what the steps used.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts a backend


import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import device_augment, timing, train_step
from kernels import gather_attention as ga
from skipvit_jax.models import attention

CONFIGS = "dense,6-55-11,6-45-fused,4.7-30.30-11,toe1,toe2,toe1+6-55-11"
ATTENTIONS = "xla,cudnn,pallas"
# Section 5: the token reducers, each against the dense step, with the attention "auto" picks.
REDUCER_CONFIGS = "6-55-11,tome7,pd80"
REDUCER_ATTENTION = "auto"
# Performance targets: dense MFU, routed speedup, ToE's realised share of its ideal gain.
DENSE_MFU_TARGET = 0.35
SPEEDUP_TARGETS = {"6-55-11": 1.24}
TOE_REALISED_TARGET = 0.9
# Correctness: error relative to the largest reference value. float32 kernels use full-
# precision dots; bfloat16 keeps 8 mantissa bits in its inputs and outputs.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}

# Full size (a GPU) and --smoke (a CPU, seconds to a minute).
_FULL = dict(variant="S/16", image_size=224, num_classes=1000, batch_size=256, steps=20,
             rounds=4, warmup=2, matmul_sizes="4096,8192", configs=CONFIGS,
             attention=ATTENTIONS, reducer_configs=REDUCER_CONFIGS,
             check_shape=(4, 197, 6, 64), check_keep=89)
# A CPU compiles each training step for about 15 s: the smoke run compiles four, and three
# for the reducers (dense, ToMe, PatchDropout).
_SMOKE = dict(variant="Te/4", image_size=32, num_classes=10, batch_size=4, steps=2, rounds=1,
              warmup=1, matmul_sizes="128", configs="dense,6-55-11", attention="cudnn,pallas",
              reducer_configs="tome2,pd80", check_shape=(2, 33, 2, 16), check_keep=8)


def environment(smoke: bool) -> dict:
  device = jax.devices()[0]
  return {
      "date": datetime.date.today().isoformat(),
      "python": sys.version.split()[0],
      "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "local_devices": jax.local_device_count(),
      "platform_version": getattr(device.client, "platform_version", ""),
      "smoke": smoke,
  }


# ---------------------------------------------------------------------------------------------
# 1. Correctness.


def _relative_errors(got, want) -> dict[str, float]:
  return {name: float(jnp.max(jnp.abs(g.astype(jnp.float32) - w)) / jnp.max(jnp.abs(w)))
          for name, g, w in zip(("out", "cls_scores", "dq", "dk", "dv"), got, want)}


def _outputs_and_grads(fn, q, k, v):
  """fn(q, k, v) -> (out, cls_scores); returns (out, cls_scores, dq, dk, dv) of a loss that
  weights every output element differently, so no gradient term cancels."""

  def loss(q, k, v):
    out, scores = fn(q, k, v)
    weights = jnp.sin(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    score_weights = jnp.cos(jnp.arange(scores.size, dtype=jnp.float32)).reshape(scores.shape)
    return jnp.sum(out.astype(jnp.float32) * weights) + jnp.sum(scores * score_weights)

  out, scores = jax.jit(fn)(q, k, v)
  return (out, scores, *jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))


def _check(kernel: str, runs_as: str, dtype: str, tokens: int, kept: int | None, fn, reference,
           q, k, v) -> dict:
  """Runs fn in `dtype` and the reference in float32 at full precision on the same values."""
  got = _outputs_and_grads(fn, q, k, v)
  with jax.default_matmul_precision("highest"):
    want = _outputs_and_grads(reference, *(x.astype(jnp.float32) for x in (q, k, v)))
  errors = _relative_errors(got, want)
  return {"kernel": kernel, "runs_as": runs_as, "dtype": dtype, "tokens": tokens, "kept": kept,
          "errors": errors, "tolerance": TOLERANCE[dtype],
          "passed": all(e <= TOLERANCE[dtype] for e in errors.values())}


def kernel_checks(shape: tuple[int, int, int, int], num_keep: int) -> list[dict]:
  """The Pallas kernel (kept subset and all tokens) and the cuDNN path (all tokens, and the
  kept count as its own sequence), each in float32 and bfloat16."""
  batch, tokens, heads, head_dim = shape
  rng = np.random.default_rng(0)
  values = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
  keep_idx = jnp.asarray(np.stack([np.sort(rng.choice(tokens - 1, num_keep, replace=False))
                                   for _ in range(batch)]), jnp.int32)
  interpret = not ga.can_lower()
  pallas_runs_as = "pallas" if not interpret else "pallas_interpret"
  checks = []
  for dtype in ("float32", "bfloat16"):
    q, k, v = (jnp.asarray(x, dtype) for x in values)
    for kept in (keep_idx, None):
      checks.append(_check(
          "pallas", pallas_runs_as, dtype, tokens, None if kept is None else num_keep,
          lambda q, k, v, kept=kept: ga.gather_attention(q, k, v, kept, interpret=interpret),
          lambda q, k, v, kept=kept: ga.gather_attention_reference(q, k, v, kept), q, k, v))
    for n in (tokens, 1 + num_keep):
      attend = functools.partial(attention.attend, with_cls_scores=True)
      checks.append(_check(
          "cudnn", attention.runs_as("cudnn", dtype=q.dtype, head_dim=head_dim), dtype, n, None,
          lambda q, k, v, attend=attend: tuple(attend(q, k, v, implementation="cudnn"))[:2],
          lambda q, k, v, attend=attend: tuple(attend(q, k, v, implementation="xla"))[:2],
          q[:, :n], k[:, :n], v[:, :n]))
  return checks


# ---------------------------------------------------------------------------------------------
# 3. The timm peer.


def timm_peer(*, batch_size: int, steps: int, warmup: int, smoke: bool) -> dict:
  """images/s of timm's ViT-S/16 training step (bf16 autocast, SDPA, torch.compile)."""
  try:
    import timm
    import torch
  except ImportError as e:
    return {"ran": False, "reason": f"torch and timm do not both import: {e}"}
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if smoke:  # the testing variant's shape: 12 layers of width 32 on 32 px
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=32, depth=12, num_heads=2, num_classes=10)
  else:
    model = timm.create_model("vit_small_patch16_224", num_classes=1000)  # random weights
  image_size = model.patch_embed.img_size[0]
  model = model.to(device).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                                fused=device == "cuda")
  compile_model = device == "cuda"  # inductor on a CPU takes minutes: the smoke run skips it
  forward = torch.compile(model) if compile_model else model
  images = torch.randn(batch_size, 3, image_size, image_size, device=device)
  labels = torch.randint(0, model.num_classes, (batch_size,), device=device)

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  def synchronize():
    if device == "cuda":
      torch.cuda.synchronize()

  for _ in range(warmup + 1):  # the first call compiles
    step()
  synchronize()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    synchronize()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  return {
      "ran": True, "model": "vit_small_patch16_224" if not smoke else "ViT 12x32, 32 px",
      "torch": torch.__version__, "timm": timm.__version__, "device": device,
      "torch_compile": compile_model, "fused_attention": bool(model.blocks[0].attn.fused_attn),
      "batch_size": batch_size, "timed_steps": len(times),
      "images_per_sec": batch_size / seconds, "step_ms_median": seconds * 1e3,
      "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
  }


# ---------------------------------------------------------------------------------------------
# 4. Verdicts.


def fastest_attention(results: list[dict]) -> dict:
  """The implementation with the highest geometric-mean images/s over the configurations."""
  by_attention: dict[str, list[float]] = {}
  for r in results:
    by_attention.setdefault(r["attention"], []).append(r["images_per_sec"])
  means = {name: math.exp(statistics.fmean(map(math.log, rates)))
           for name, rates in by_attention.items()}
  fastest = max(means, key=means.get)
  auto = attention.resolve("auto", dtype=jnp.bfloat16, head_dim=64)
  return {"geomean_images_per_sec": means, "fastest": fastest, "auto_picks": auto,
          "auto_agrees": auto == fastest}


def judge(results: list[dict], peer: dict) -> list[dict]:
  """Each performance target, per attention implementation, where its numbers were measured."""
  verdicts = []

  def add(target: str, attention_name: str, value: float | None, passed: bool | None):
    verdicts.append({"target": target, "attention": attention_name, "value": value,
                     "passed": passed})

  for name in dict.fromkeys(r["attention"] for r in results):
    rows = {r["config"]: r for r in results if r["attention"] == name}
    dense = rows["dense"]
    add(f"dense MFU >= {DENSE_MFU_TARGET:.0%}", name, dense["mfu"],
        dense["mfu"] >= DENSE_MFU_TARGET)
    timm_rate = peer.get("images_per_sec")
    add("dense images/s >= timm's", name,
        dense["images_per_sec"] / timm_rate if timm_rate else None,
        dense["images_per_sec"] >= timm_rate if timm_rate else None)
    for config, target in SPEEDUP_TARGETS.items():
      if config in rows:
        speedup = rows[config]["measured_speedup"]
        add(f"{config} speedup >= {target}x", name, speedup, speedup >= target)
    for config, row in rows.items():
      if config.startswith("toe") and "+" not in config and row["ideal_speedup"] > 1:
        realised = row["realised_fraction_of_ideal_gain"]
        add(f"{config} realises >= {TOE_REALISED_TARGET:.0%} of its ideal gain", name,
            realised, realised >= TOE_REALISED_TARGET)
    memory = {c: r["step_memory_mib"] for c, r in rows.items()}
    routed = [m for c, m in memory.items() if c != "dense"]
    if routed and all(memory.values()):
      add("every routed step's memory < dense's", name, max(routed) / memory["dense"],
          max(routed) < memory["dense"])
  return verdicts


# ---------------------------------------------------------------------------------------------
# Output.


def _number(value, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
  env, steps = report["environment"], report["train_step"]
  lines = [
      f"## GPU: {env['device_kind']}, JAX {env['jax']}, {env['date']}"
      + (" (CPU smoke run: toy sizes, not a measurement)" if env["smoke"] else ""),
      "",
      f"`python -m benchmarks.gpu_check {' '.join(report['argv'])}`; {env['local_devices']} "
      f"device(s), {env['platform_version']}; flax {env['flax']}, optax {env['optax']}; "
      f"{report['runtime_s']['total']:.0f} s in all.",
      "",
      "### Kernel correctness (max |error| / max |reference|, against float32 references)",
      "",
      "| kernel | runs as | dtype | tokens | kept | out | [CLS] | dq | dk | dv | tolerance | ok |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in report["kernel_checks"]:
    e = c["errors"]
    lines.append(
        f"| {c['kernel']} | {c['runs_as']} | {c['dtype']} | {c['tokens']} | "
        f"{_number(c['kept'], 'd')} | " + " | ".join(
            f"{e[key]:.1e}" for key in ("out", "cls_scores", "dq", "dk", "dv"))
        + f" | {c['tolerance']:.0e} | {'yes' if c['passed'] else '**no**'} |")
  lines += [
      "",
      f"### Training step: {steps['variant']} {steps['image_size']} px, {steps['dtype']}, "
      f"global batch {steps['batch_size']}",
      "",
      f"Peak: the fastest {steps['dtype']} matmul in the same run, "
      f"{steps['peak_matmul_tflops_per_device']:.1f} TFLOP/s per device; process peak memory "
      f"{_number(steps['process_peak_memory_mib'], '.0f')} MiB. Speedups are against the dense "
      "step of the same attention implementation.",
      "",
      "| attention (runs as) | config | img/s | ms/step | step memory MiB | MFU | speedup | "
      "FLOP-ideal | realised |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in steps["results"]:
    lines.append(
        f"| {r['attention']} ({r['attention_runs_as']}) | {r['config']} | "
        f"{r['images_per_sec']:.1f} | {r['step_ms_median']:.1f} | "
        f"{_number(r['step_memory_mib'], '.0f')} | {r['mfu']:.1%} | "
        f"{r['measured_speedup']:.3f}x | {r['ideal_speedup']:.3f}x | "
        f"{_number(r['realised_fraction_of_ideal_gain'], '.0%')} |")
  augment = report["device_augment"]
  lines += [
      "", f"### Device augmentation: {augment['rand_augment']}, erasing "
      f"{augment['random_erase']}, on the uint8 crops of the step above (dense)", "",
      "| | ms/step | ms/image |", "|---|---|---|",
      *(f"| {name} | {ms:.2f} | {augment['ms_per_image'][name]:.4f} |"
        for name, ms in augment["ms"].items()),
      "", f"Share of the step: {augment['share_in_step']:.1%} inside it, "
      f"{augment['share_before_step']:.1%} as a function before it, "
      f"{augment['share_alone']:.1%} alone.",
  ]
  reducers = report["reducers"]
  lines += [
      "", f"### Token reducers: attention {REDUCER_ATTENTION}, {reducers['variant']} "
      f"{reducers['image_size']} px, {reducers['dtype']}, global batch {reducers['batch_size']}",
      "", "Speedups against the dense step with the same attention choice.", "",
      "| config | attention runs as | img/s | ms/step | step memory MiB | speedup | FLOP-ideal "
      "| realised |", "|---|---|---|---|---|---|---|---|",
  ]
  for r in reducers["results"]:
    lines.append(
        f"| {r['config']} | {r['attention_runs_as']} | {r['images_per_sec']:.1f} | "
        f"{r['step_ms_median']:.1f} | {_number(r['step_memory_mib'], '.0f')} | "
        f"{r['measured_speedup']:.3f}x | {r['ideal_speedup']:.3f}x | "
        f"{_number(r['realised_fraction_of_ideal_gain'], '.0%')} |")
  peer = report["timm"]
  lines += ["", "### Peer: timm", ""]
  if peer["ran"]:
    lines.append(
        f"{peer['model']} (timm {peer['timm']}, torch {peer['torch']}, torch.compile "
        f"{peer['torch_compile']}, fused attention {peer['fused_attention']}), batch "
        f"{peer['batch_size']}, bfloat16 autocast: **{peer['images_per_sec']:.1f} img/s**, "
        f"{peer['step_ms_median']:.1f} ms/step, peak memory "
        f"{_number(peer['peak_memory_mib'], '.0f')} MiB.")
  else:
    lines.append(f"Not run: {peer['reason']}.")
  lines += ["", "### Targets", "", "| target | attention | value | met |", "|---|---|---|---|"]
  for v in report["targets"]:
    met = {True: "yes", False: "**no**", None: "not measured"}[v["passed"]]
    lines.append(f"| {v['target']} | {v['attention']} | {_number(v['value'], '.3f')} | {met} |")
  auto = report["attention_choice"]
  lines += [
      "",
      f"Fastest attention (geometric mean of images/s over the configurations): "
      f"**{auto['fastest']}**; \"auto\" picks {auto['auto_picks']} here"
      + ("." if auto["auto_agrees"] else ": the measurement disagrees with the choice."),
  ]
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", help="where the JSON and Markdown go (default: a fresh "
                                        "temporary directory, printed)")
  parser.add_argument("--smoke", action="store_true",
                      help="toy sizes on any backend: the same code in under a minute on a CPU")
  parser.add_argument("--attention", help=f"implementations to time (default {ATTENTIONS})")
  parser.add_argument("--configs", help=f"training-step configurations (default {CONFIGS})")
  parser.add_argument("--reducer_configs",
                      help=f"token-reducer configurations, timed with attention "
                           f"{REDUCER_ATTENTION} (default {REDUCER_CONFIGS})")
  parser.add_argument("--batch_size", type=int, help="global batch (default 256)")
  parser.add_argument("--no_timm", action="store_true", help="skip the timm peer")
  args = parser.parse_args(argv)
  for name, value in (_SMOKE if args.smoke else _FULL).items():
    if getattr(args, name, None) is None:
      setattr(args, name, value)
  return args


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  # Made before minutes of measuring, so that an unwritable --out_dir fails at once.
  out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="gpu_check_"))
  out_dir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  runtime = {}
  report = {"benchmark": "gpu_check", "argv": argv, "environment": environment(args.smoke)}

  clock = time.perf_counter()
  report["kernel_checks"] = kernel_checks(args.check_shape, args.check_keep)
  runtime["kernel_checks"] = time.perf_counter() - clock

  clock = time.perf_counter()
  report["train_step"] = train_step.run(train_step.parse_args([
      f"--variant={args.variant}", f"--image_size={args.image_size}",
      f"--num_classes={args.num_classes}", f"--batch_size={args.batch_size}",
      "--dtype=bfloat16", f"--attention={args.attention}", f"--configs={args.configs}",
      f"--steps={args.steps}", f"--rounds={args.rounds}", f"--warmup={args.warmup}",
      f"--matmul_sizes={args.matmul_sizes}",
  ]))
  runtime["train_step"] = time.perf_counter() - clock

  clock = time.perf_counter()
  report["reducers"] = train_step.run(train_step.parse_args([
      f"--variant={args.variant}", f"--image_size={args.image_size}",
      f"--num_classes={args.num_classes}", f"--batch_size={args.batch_size}",
      "--dtype=bfloat16", f"--attention={REDUCER_ATTENTION}",
      f"--configs={args.reducer_configs}", f"--steps={args.steps}", f"--rounds={args.rounds}",
      f"--warmup={args.warmup}", f"--matmul_sizes={args.matmul_sizes}",
  ]))
  runtime["reducers"] = time.perf_counter() - clock

  clock = time.perf_counter()
  report["device_augment"] = device_augment.run(device_augment.parse_args([
      f"--variant={args.variant}", f"--image_size={args.image_size}",
      f"--batch_size={args.batch_size}", "--dtype=bfloat16", f"--rounds={args.rounds}",
      f"--steps={args.steps}",
  ]))
  runtime["device_augment"] = time.perf_counter() - clock

  clock = time.perf_counter()
  report["timm"] = ({"ran": False, "reason": "--no_timm"} if args.no_timm else timm_peer(
      batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, smoke=args.smoke))
  runtime["timm"] = time.perf_counter() - clock

  results = report["train_step"]["results"]
  report["targets"] = judge(results, report["timm"])
  report["attention_choice"] = fastest_attention(results)
  runtime["total"] = time.perf_counter() - started
  report["runtime_s"] = runtime

  text = markdown(report)
  (out_dir / "gpu_check.md").write_text(text + "\n")
  timing.emit(report, text, str(out_dir / "gpu_check.json"))
  print(f"gpu_check.json and gpu_check.md are in {out_dir}", file=sys.stderr)
  return report


if __name__ == "__main__":
  main()
