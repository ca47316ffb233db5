"""Training throughput on a CPU with glibc's default malloc and with
skipvit_jax/runtime/host_memory.py.

  python -m benchmarks.host_malloc                     # configs/fashion_mnist.py, its batch
  python -m benchmarks.host_malloc --batch_size=64
  python -m benchmarks.host_malloc --config=configs/default.py --steps=600 --pairs=3

Runs the trainer itself (`python -m skipvit_jax`, its data pipeline included: the effect lives
in the whole process, not in the step alone) for --steps steps, alternately with the
project's malloc settings ("retained") and with glibc's defaults ("system": MALLOC_ARENA_MAX
set to glibc's own default, which makes host_memory leave malloc alone), --pairs times, so
that a machine whose speed drifts favours neither. Per run: images/s over the logged windows
after --skip steps (compilation and the first steps out), and the user and system CPU seconds
of the whole process. Prints a table (stderr) and one JSON object (stdout, or --json_out).
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from benchmarks import timing
from skipvit_jax.runtime import host_memory
from skipvit_jax.train.metrics import read_metrics

MODES = ("system", "retained")
REPO = Path(__file__).resolve().parents[1]  # where `configs` imports from


def _environment(mode: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
  env["JAX_PLATFORMS"] = "cpu"
  if mode == "system":
    env["MALLOC_ARENA_MAX"] = str(8 * os.cpu_count())  # glibc's default on 64-bit
  return env


def run_once(mode: str, args) -> dict:
  """One training run's steady images/s and CPU seconds."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "-m", "skipvit_jax", f"--config={args.config}",
               f"--workdir={workdir}", f"--config.stop_after_step={args.steps}",
               f"--config.log_every_steps={args.log_every}", "--config.eval_every_epochs=1000",
               "--config.checkpoint_every_steps=100000",
               *([f"--config.batch_size={args.batch_size}"] if args.batch_size else []),
               *args.override]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, env=_environment(mode), cwd=REPO, check=True,
                   capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = read_metrics(workdir)
  rates = [r["train/images_per_sec"] for r in records
           if "train/images_per_sec" in r and r["step"] > args.skip]
  return {"mode": mode, "images_per_sec": statistics.mean(rates),
          "user_s": after.ru_utime - before.ru_utime,
          "system_s": after.ru_stime - before.ru_stime}


def run(args) -> dict:
  runs = [run_once(mode, args) for _ in range(args.pairs) for mode in MODES]
  mean = {mode: statistics.mean(r["images_per_sec"] for r in runs if r["mode"] == mode)
          for mode in MODES}
  return {
      "benchmark": "host_malloc", "date": datetime.date.today().isoformat(),
      "jax_version": jax.__version__, "cpu_count": os.cpu_count(), "config": args.config,
      "batch_size": args.batch_size, "steps": args.steps, "skip": args.skip,
      "override": args.override, "runs": runs,
      "mean_images_per_sec": mean, "speedup": mean["retained"] / mean["system"],
  }


def table(report: dict) -> str:
  batch = report["batch_size"] or "of the config"
  lines = [(f"host malloc, {report['config']} batch {batch}, steps "
            f"{report['skip']}-{report['steps']}, {report['cpu_count']} CPUs, JAX "
            f"{report['jax_version']}"),
           f"{'malloc':<10}{'img/s':>8}{'user s':>9}{'sys s':>8}"]
  for r in report["runs"]:
    lines.append(f"{r['mode']:<10}{r['images_per_sec']:>8.0f}{r['user_s']:>9.1f}"
                 f"{r['system_s']:>8.1f}")
  lines.append(f"retained / system images/s: {report['speedup']:.2f}x (FLOP-ideal 1.00x: the "
               "same computation)")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/fashion_mnist.py")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--steps", type=int, default=900)
  parser.add_argument("--skip", type=int, default=200, help="steps left out of the rate")
  parser.add_argument("--log_every", type=int, default=100, help="steps per rate window")
  parser.add_argument("--pairs", type=int, default=2)
  parser.add_argument("--override", action="append", default=[],
                      help="another trainer flag, e.g. --override=--config.model.variant=Te/7")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
