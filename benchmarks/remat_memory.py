"""Memory saved by rematerialisation (`config.model.remat`), from XLA's memory analysis.

  python -m benchmarks.remat_memory                          # ViT-S/16, 224 px, batch 64
  python -m benchmarks.remat_memory --configs=dense,6-55-11 --batch_size=256

Compiles, without running, the training step (forward, backward, AdamW update, as
benchmarks/train_step.py and the trainer run it) of each configuration with and without
remat, and reports XLA's memory analysis of each compiled step: its temporaries (activations
kept for the backward pass among them: what remat recomputes instead) and its whole device
memory (arguments + outputs + temporaries, less donated aliases).

Remat hides each recomputation behind optimisation barriers, so that the compiler cannot
merge it back into the forward pass. XLA's GPU compiler removes the barriers after
scheduling, once the buffers are assigned; XLA:CPU removes them before its last
common-subexpression pass, which then merges the recomputation back and leaves the step's
memory as it was without remat. On a CPU this benchmark therefore compiles with that pass
(`cse_barrier_expander`) disabled: the figures are those of the program GPU compilers keep,
planned by the CPU's buffer assignment. Prints a table (stderr) and one JSON object (stdout,
or --json_out).

Imports no data stack: runs where only JAX, Flax and optax are installed.
"""

from __future__ import annotations

import argparse
import datetime

import jax
import optax

from benchmarks import timing, train_step
from skipvit_jax.models.vit import DTYPES, STEMS
from skipvit_jax.runtime import parallel

MIB = 2**20
# XLA:CPU's pass that drops remat's optimisation barriers too early (see the module docstring).
KEEP_BARRIERS_ON_CPU = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def compile_keeping_barriers(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
  """`lowered.compile()`, except that on a CPU the optimisation barriers survive to buffer
  assignment, as they do in XLA's GPU compiler."""
  on_cpu = jax.default_backend() == "cpu"
  return lowered.compile(compiler_options=KEEP_BARRIERS_ON_CPU if on_cpu else None)


def step_memory(step, state, batch) -> dict[str, int]:
  """{"temp": temporaries, "total": whole device memory} in bytes of the pmapped training
  step's compiled program, for a replicated state and a sharded batch."""
  compiled = compile_keeping_barriers(step.lower(state, batch))
  return {"temp": int(compiled.memory_analysis().temp_size_in_bytes),
          "total": train_step.step_memory(compiled)}


def run(args) -> dict:
  optimizer = optax.adamw(args.lr, weight_decay=0.05)
  initial_state, batch = train_step.initial_state_and_batch(args, optimizer)
  state = parallel.replicate(initial_state)
  results = []
  for name in args.configs.split(","):
    bench = train_step.parse_config(name, args.attention)
    row = {"config": name}
    for remat in (False, True):
      args.remat = remat
      step, _ = train_step.build_step(bench, args, optimizer)
      memory = step_memory(step, state, batch)
      suffix = "_remat" if remat else ""
      row["temp_mib" + suffix] = memory["temp"] / MIB
      row["step_memory_mib" + suffix] = memory["total"] / MIB
    row["temp_saved_fraction"] = 1 - row["temp_mib_remat"] / row["temp_mib"]
    results.append(row)
  return {
      "benchmark": "remat_memory",
      "date": datetime.date.today().isoformat(),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "local_devices": jax.local_device_count(),
      "variant": args.variant, "image_size": args.image_size, "batch_size": args.batch_size,
      "dtype": args.dtype, "attention": args.attention, "results": results,
  }


def table(report: dict) -> str:
  lines = [f"remat memory, {report['variant']} {report['image_size']}px, global batch "
           f"{report['batch_size']} on {report['local_devices']} device(s), {report['dtype']}, "
           f"{report['backend']} ({report['device_kind']}), JAX {report['jax_version']}",
           f"{'config':<14}{'temp MiB':>10}{'remat':>10}{'saved':>8}{'step MiB':>11}{'remat':>10}"]
  for r in report["results"]:
    lines.append(f"{r['config']:<14}{r['temp_mib']:>10.0f}{r['temp_mib_remat']:>10.0f}"
                 f"{r['temp_saved_fraction']:>8.0%}{r['step_memory_mib']:>11.0f}"
                 f"{r['step_memory_mib_remat']:>10.0f}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="S/16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--stem", default="patch", choices=STEMS,
                      help="the model's config.model.stem")
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64, help="global, over local devices")
  parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  parser.add_argument("--attention", default="xla")
  parser.add_argument("--configs", default="dense,6-55-11,toe1")
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
