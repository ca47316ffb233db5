"""Training-step throughput of routed configurations against the dense ViT, in one process.

  python -m benchmarks.train_step                       # ViT-S/16, 224 px, every config
  python -m benchmarks.train_step --variant=Te/4 --image_size=32 --batch_size=8 --steps=3 \
      --configs=dense,6-55-11                           # a seconds-long smoke run
  python -m benchmarks.train_step --attention=xla,cudnn,pallas --configs=dense,6-55-11
  python -m benchmarks.train_step --attention=auto --configs=6-55-11,tome7,pd80,pd80+6-55-11

Runs the trainer's own step (skipvit_jax.train.step: forward, backward, pmean, AdamW update,
pmap'd over the local devices) on synthetic batches already on the devices, so the input
pipeline is out of the picture. Configurations are interleaved round by round, so a machine
that speeds up or slows down during the run affects all of them alike. Per configuration:
images/s (median over the timed steps), the step's device memory (XLA's memory analysis of the
compiled step: arguments + outputs + temporaries), achieved FLOP/s and MFU against a peak
measured in the same run (the fastest of a few square matmuls), the measured speedup over the
dense step, the FLOP-ideal speedup and the realised fraction of the ideal gain
((measured - 1) / (ideal - 1)). Besides the SkipViT rows and ToE stages, `tome<r>` merges r
tokens per layer with ToMe (proportional attention: implementations that take a logit bias
only, see skipvit_jax/models/attention.py) and `pd<percent>` keeps that percentage of the patch
tokens at the input (PatchDropout), alone or before a row (`pd80+6-55-11`); `tome3i0.2from3`
adds ToMe's inflection and first merging layer, `pd40of49` names the kept patches; ViT-S/16's
`tome7` and `pd80` are the r and keep rate whose FLOP-ideal speedup is closest to 6-55-11's.
With several attention implementations (--attention, a comma list) every configuration runs
with each, speedups against the dense step of the same implementation, and each result names
what really ran (a fallback included). Steps are traced
one after another, then compiled in parallel threads (XLA compiles outside Python's lock), which
on a many-core GPU host cuts the start-up severalfold.
Prints a table (stderr) and one JSON object (stdout, or --json_out). --profile_dir adds a
jax.profiler trace of a few steps of each configuration, taken after the timing, and its
summary: device-op time per step spent in matmuls, in routing's sort/gather/scatter, and in
everything else.

Imports no data stack: runs where only JAX, Flax and optax are installed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import gzip
import json
import re
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import optax

from benchmarks import timing
from skipvit_jax.models import attention, flops, toe
from skipvit_jax.models.routing import PAPER_ROWS, RoutingConfig
from skipvit_jax.models.tome import ToMeConfig
from skipvit_jax.models.variants import decode_variant
from skipvit_jax.models.vit import DTYPES, STEMS, ViT
from skipvit_jax.runtime import parallel
from skipvit_jax.train import step as step_lib

# ToE's DeiT-S schedule (r0 0.25, rates 0.5 / 0.75 / 1.0, 2 sub-steps); stage 3 is dense.
TOE_DEIT_S = dict(expansion_epochs=(0, 1, 2), keep_rates=(0.5, 0.75, 1.0), init_rate=0.25,
                  substeps=2)
DEFAULT_CONFIGS = ("dense",) + PAPER_ROWS + ("toe1", "toe2", "toe1+6-55-11", "tome7", "pd80")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  name: str
  routing: RoutingConfig
  toe_stage: int  # 0: no ToE
  attention: str = "xla"  # attention implementation (skipvit_jax/models/attention.py)


_TOME_NAME = re.compile(r"tome(?P<r>\d+)(?:i(?P<inflection>-?[\d.]+))?(?:from(?P<start>\d+))?$")
_PATCH_KEEP = re.compile(r"(?:(?P<kept>\d+)of(?P<total>\d+)|(?P<percent>\d+))$")


def parse_config(name: str, attention: str = "xla") -> BenchConfig:
  """'dense', a paper row ('6-55-11', '6-45-fused'), 'toe1'/'toe2', 'toe<k>+<row>',
  'tome<r>[i<inflection>][from<layer>]' (ToMe: r per layer, its (r, inflection) schedule, the
  first merging layer; 'tome3i0.2from3'), 'pd<percent>' or 'pd<kept>of<patches>' (PatchDropout's
  kept share of the patches; 'pd40of49'), alone or before a row ('pd80+6-55-11')."""
  if name.startswith("tome"):
    match = _TOME_NAME.match(name)
    if match is None:
      raise ValueError(f"--configs: {name!r} is not tome<r>[i<inflection>][from<layer>]")
    tome = ToMeConfig(r=int(match["r"]), inflection=float(match["inflection"] or 0),
                      start_layer=int(match["start"] or 1))
    return BenchConfig(name, RoutingConfig(tome=tome), 0, attention)
  toe_stage, keep_rate, row = 0, 1.0, name
  if name.startswith("toe"):
    stage, _, row = name[3:].partition("+")
    toe_stage = int(stage)
  elif name.startswith("pd"):
    share, _, row = name[2:].partition("+")
    match = _PATCH_KEEP.match(share)
    if match is None:
      raise ValueError(f"--configs: {name!r} is not pd<percent> or pd<kept>of<patches>")
    keep_rate = (int(match["kept"]) / int(match["total"]) if match["kept"]
                 else int(match["percent"]) / 100)
  routing = RoutingConfig() if row in ("dense", "") else RoutingConfig.from_paper_row(row)
  routing = dataclasses.replace(routing, patch_keep_rate=keep_rate)
  return BenchConfig(name, routing, toe_stage, attention)


def attention_runs_as(bench: BenchConfig, args) -> str:
  """What the configuration's attention runs as; with ToMe's proportional attention, the
  layers after the first merge take a logit bias, which can change what "auto" picks."""
  kwargs = dict(dtype=DTYPES[args.dtype], head_dim=decode_variant(args.variant).head_dim)
  plain = attention.runs_as(bench.attention, **kwargs)
  tome = bench.routing.tome
  if not (tome.merges and tome.proportional_attention):
    return plain
  biased = attention.runs_as(bench.attention, with_bias=True, **kwargs)
  return biased if biased == plain else f"{biased} ({plain} up to the first merge)"


def build_step(bench: BenchConfig, args, optimizer):
  """(pmapped step, model) for one configuration."""
  model = ViT(args.variant, num_classes=args.num_classes, image_size=args.image_size,
              routing=bench.routing, attention=bench.attention, dtype=DTYPES[args.dtype],
              remat=args.remat, stem=args.stem)
  if bench.toe_stage:
    plan = toe.make_plan(model.num_patches, epoch=bench.toe_stage - 1, **TOE_DEIT_S)
    model = model.clone(toe=plan if plan.active else None)
  step = jax.pmap(
      functools.partial(
          step_lib.train_step, model=model, optimizer=optimizer,
          learning_rate=lambda count: args.lr, regularization=step_lib.Regularization(),
          seed=0,
      ),
      axis_name=parallel.AXIS, donate_argnums=(0,),
  )
  return step, model


def initial_state_and_batch(args, optimizer):
  """(host initial state, device batch), shared by every configuration: the parameters do
  not depend on routing, ToE or attention, and the batch is not donated."""
  model = ViT(args.variant, num_classes=args.num_classes, image_size=args.image_size,
              stem=args.stem)
  state = jax.device_get(step_lib.init_state(model, optimizer, seed=0))
  rng = np.random.default_rng(0)
  batch = parallel.device_put_sharded(parallel.shard({
      "image": rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)
                          ).astype(np.float32),
      "label": rng.integers(0, args.num_classes, size=args.batch_size).astype(np.int32),
  }))
  return state, batch


# Op names in a CPU or GPU trace, by kind (a trailing ".N" numbers an op's instances).
_OP_KINDS = (
    ("matmul", re.compile(r"^(ynn_fusion|dot|convolution|cublas|gemm|.*(gemm|cudnn))", re.I)),
    ("routing (sort / gather / scatter)", re.compile(r"sort|gather|scatter", re.I)),
)


def profile_summary(trace_dir: Path, num_steps: int) -> dict:
  """Device-op time per step by kind (matmul, routing, other), and the largest ops, from the
  Perfetto trace jax.profiler wrote under `trace_dir`. Op time is summed over the threads or
  streams that ran it, so on a multi-threaded CPU it can exceed the wall time."""
  [path] = trace_dir.rglob("perfetto_trace.json.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops = collections.Counter()
  for event in events:
    name = event.get("name", "")
    # Python frames start with "$", runtime scopes are CamelCase or "A::B": neither is an op.
    if event.get("ph") != "X" or not name or name[0] == "$" or name[0].isupper() or "::" in name:
      continue
    ops[re.sub(r"[._]\d+$", "", name)] += event.get("dur", 0) / 1e3 / num_steps  # us -> ms
  kinds = collections.Counter()
  for name, ms in ops.items():
    kinds[next((kind for kind, pattern in _OP_KINDS if pattern.search(name)), "other")] += ms
  return {"op_ms_per_step": dict(kinds), "top_ops_ms_per_step": dict(ops.most_common(8))}


def step_memory(compiled) -> int | None:
  """The compiled step's device memory in bytes, or None: XLA's memory analysis of the very
  program that is timed (arguments + outputs + temporaries, less donated aliases)."""
  analysis = compiled.memory_analysis()
  if analysis is None:  # not every backend reports it
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def peak_memory_in_use() -> int | None:
  """The process's peak device memory in bytes (largest over local devices), where reported."""
  stats = [device.memory_stats() or {} for device in jax.local_devices()]
  peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
  return max(peaks) if peaks else None


def run(args) -> dict:
  devices = jax.local_devices()
  optimizer = optax.adamw(args.lr, weight_decay=0.05)
  names = args.configs.split(",")
  if names[0] != "dense":
    names.insert(0, "dense")  # the baseline every speedup is measured against
  attentions = args.attention.split(",")
  configs = [parse_config(name, attention) for attention in attentions for name in names]
  key = lambda bench: (bench.attention, bench.name)

  # The best of a few sizes: MFU against the fastest matmul this device runs, not a lucky one
  # (on a CPU the cache makes mid sizes fastest; on a GPU the largest wins).
  matmul_sizes = [int(size) for size in args.matmul_sizes.split(",")]
  peaks = {size: timing.peak_matmul_flops(DTYPES[args.dtype], size) for size in matmul_sizes}
  peak = max(peaks.values())
  initial_state, batch = initial_state_and_batch(args, optimizer)
  states, models, lowered = {}, {}, {}
  for bench in configs:  # tracing holds Python's lock: one after another
    step, models[key(bench)] = build_step(bench, args, optimizer)
    states[key(bench)] = parallel.replicate(initial_state)  # each step donates its own
    lowered[key(bench)] = step.lower(states[key(bench)], batch)
  with concurrent.futures.ThreadPoolExecutor(args.compile_threads or None) as pool:
    steps = dict(zip(lowered, pool.map(lambda program: program.compile(), lowered.values())))
  memory = {k: step_memory(compiled) for k, compiled in steps.items()}
  for k, step in steps.items():  # warm up everything before any timing
    for _ in range(args.warmup):
      states[k], metrics = step(states[k], batch)
    jax.block_until_ready(metrics)

  times = {key(bench): [] for bench in configs}
  per_round = max(1, -(-args.steps // args.rounds))
  for _ in range(args.rounds):
    for k in times:
      step = steps[k]
      for _ in range(per_round):
        start = time.perf_counter()
        states[k], metrics = step(states[k], batch)
        jax.block_until_ready(metrics)
        times[k].append(time.perf_counter() - start)

  profiles = {}
  if args.profile_dir:  # after the timing, so tracing cannot slow what is timed
    for bench in configs:
      k = key(bench)
      trace_dir = Path(args.profile_dir) / "_".join(k if len(attentions) > 1 else k[1:])
      with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.profile_steps):
          states[k], metrics = steps[k](states[k], batch)
        jax.block_until_ready(metrics)
      profiles[k] = profile_summary(trace_dir, args.profile_steps)

  flop_args = dict(image_size=args.image_size, num_classes=args.num_classes, stem=args.stem)
  dense_rates = {}
  results = []
  for bench in configs:
    k = key(bench)
    model = models[k]
    macs = flops.forward_macs(args.variant, routing=bench.routing, toe=model.toe, **flop_args)
    seconds = statistics.median(times[k])
    rate = args.batch_size / seconds
    dense_rates.setdefault(bench.attention, rate)
    train_flops = 3 * 2 * macs.total * args.batch_size  # forward + backward (2x) per step
    ideal = flops.ideal_speedup(args.variant, routing=bench.routing, toe=model.toe, **flop_args)
    measured = rate / dense_rates[bench.attention]
    results.append({
        "config": bench.name,
        "attention": bench.attention,
        "attention_runs_as": attention_runs_as(bench, args),
        "tokens_per_layer": [a for a, _ in (model.token_plan(train=True).tokens_per_layer())],
        "toe_tokens": 1 + model.toe.num_selected if model.toe else None,
        "images_per_sec": rate,
        "step_ms_median": seconds * 1e3,
        "timed_steps": len(times[k]),
        "step_memory_mib": memory[k] / 2**20 if memory[k] else None,
        "achieved_tflops": train_flops / seconds / 1e12 / len(devices),
        "mfu": train_flops / seconds / len(devices) / peak,
        "measured_speedup": measured,
        "ideal_speedup": ideal,
        "realised_fraction_of_ideal_gain": (measured - 1) / (ideal - 1) if ideal > 1 else None,
        **({"profile": profiles[k]} if k in profiles else {}),
    })
  peak_in_use = peak_memory_in_use()
  return {
      "benchmark": "train_step",
      "date": datetime.date.today().isoformat(),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "local_devices": len(devices),
      "variant": args.variant, "stem": args.stem, "image_size": args.image_size,
      "batch_size": args.batch_size,
      "dtype": args.dtype, "attention": args.attention, "remat": args.remat,
      "peak_matmul_tflops_per_device": peak / 1e12,
      "matmul_tflops_by_size": {str(size): value / 1e12 for size, value in peaks.items()},
      "process_peak_memory_mib": peak_in_use / 2**20 if peak_in_use else None,
      "results": results,
  }


def table(report: dict) -> str:
  lines = [
      f"train step, {report['variant']}"
      f"{' (conv stem)' if report['stem'] == 'conv' else ''} {report['image_size']}px, "
      f"global batch {report['batch_size']}, {report['dtype']}, attention {report['attention']}, "
      f"{report['local_devices']}x {report['device_kind']}, JAX {report['jax_version']}, "
      f"peak matmul {report['peak_matmul_tflops_per_device']:.3f} TFLOP/s per device",
      f"{'attention':<10}{'config':<16}{'img/s':>10}{'ms/step':>10}{'mem MiB':>10}{'MFU':>8}"
      f"{'speedup':>9}{'ideal':>8}{'realised':>10}",
  ]
  for r in report["results"]:
    realised = r["realised_fraction_of_ideal_gain"]
    memory = r["step_memory_mib"]
    lines.append(
        f"{r['attention']:<10}{r['config']:<16}{r['images_per_sec']:>10.1f}"
        f"{r['step_ms_median']:>10.1f}"
        f"{(f'{memory:.0f}' if memory else '-'):>10}{r['mfu']:>8.1%}{r['measured_speedup']:>9.3f}"
        f"{r['ideal_speedup']:>8.3f}{(f'{realised:.0%}' if realised is not None else '-'):>10}")
  for r in report["results"]:
    if "profile" in r:
      kinds = r["profile"]["op_ms_per_step"]
      total = sum(kinds.values())
      lines.append(f"profile {r['attention']} {r['config']}: " + ", ".join(
          f"{kind} {ms:.0f} ms ({ms / total:.0%})" for kind, ms in sorted(kinds.items())))
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="S/16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--stem", default="patch", choices=STEMS,
                      help="the model's config.model.stem")
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=256, help="global, over local devices")
  parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  parser.add_argument("--remat", action="store_true",
                      help="recompute each block's activations in the backward pass")
  parser.add_argument("--attention", default="xla",
                      help="attention implementation(s), comma-separated (see "
                           "skipvit_jax/models/attention.py)")
  parser.add_argument("--compile_threads", type=int, default=0,
                      help="threads compiling the steps in parallel (0: one per CPU core)")
  parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per config (>= 20)")
  parser.add_argument("--rounds", type=int, default=4, help="interleaving rounds")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--matmul_sizes", default="1024,2048,4096",
                      help="square matmul sides; the fastest is the peak MFU is measured against")
  parser.add_argument("--json_out", default="")
  parser.add_argument("--profile_dir", default="",
                      help="also trace --profile_steps steps of each config with jax.profiler "
                           "into PROFILE_DIR/<config> (TensorBoard's profile plugin, Perfetto)")
  parser.add_argument("--profile_steps", type=int, default=3)
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
