"""Does the run gain what the step gains? The trainer's steady images/s against the bare step's.

  python -m benchmarks.trainer_vs_step                            # default and fashion_mnist:long
  python -m benchmarks.trainer_vs_step --recipes=default --rounds=1 --steps=300

For each recipe and each of dense and 6-55-11, alternately in one sitting: the trainer itself
(`python -m skipvit_jax` on the recipe's config, its data pipeline included, routing from step
0 so the run is one compiled phase, no evaluation or checkpoint inside the timed steps) and
the bare step on the same model and batch (benchmarks/train_step.py: the trainer's step on
batches already on the device). Each runs in its own process with the malloc settings the
trainer applies on a CPU-only host (runtime/host_memory.py), so the two differ only in what
the trainer adds around the step. Per run: images/s over the log windows after --skip steps
(the trainer) or the median over timed steps (the step). Reports trainer / step per config and
the routed / dense ratio of each, beside the FLOP-ideal one. Prints a table (stderr) and one
JSON object (stdout, or --json_out).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from benchmarks import timing
from skipvit_jax.models import flops
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.runtime import host_memory
from skipvit_jax.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
# recipe -> (config module, its argument for the dense model, the dataset's classes)
RECIPES = {
    "default": ("default", "baseline", 8),
    "fashion_mnist:long": ("fashion_mnist", "long", 10),
}
ROUTED = RoutingConfig(drop_layers=(6,), drop_ratios=(0.55,), return_layer=11)
CONFIGS = {"dense": [], "6-55-11": ["--config.routing.drop_layers=(6,)",
                                    "--config.routing.drop_ratios=(0.55,)",
                                    "--config.routing.return_layer=11",
                                    "--config.drop_warmup_epochs=0"]}


def _config(recipe: str):
  module, arg, _ = RECIPES[recipe]
  return importlib.import_module(f"configs.{module}").get_config(arg)


def _environment() -> dict[str, str]:
  """The trainer's environment on a CPU-only host, where it applies host_memory itself."""
  env = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return env


def trainer_rate(recipe: str, name: str, args) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    module, arg, _ = RECIPES[recipe]
    command = [sys.executable, "-m", "skipvit_jax", f"--config=configs/{module}.py:{arg}",
               f"--workdir={workdir}", f"--config.stop_after_step={args.steps}",
               f"--config.log_every_steps={args.log_every}", "--config.eval_every_epochs=1000",
               "--config.checkpoint_every_steps=100000", *CONFIGS[name], *args.override]
    subprocess.run(command, env=_environment(), cwd=REPO, check=True, capture_output=True)
    records = read_metrics(workdir)
  rates = [r["train/images_per_sec"] for r in records
           if "train/images_per_sec" in r and r["step"] > args.skip]
  return statistics.mean(rates)


def step_rates(recipe: str, args) -> dict[str, float]:
  """The bare step's images/s of each of CONFIGS, interleaved in one process."""
  config = _config(recipe)
  step_args = [f"--variant={config.model.variant}", f"--stem={config.model.stem}",
               f"--image_size={config.data.image_size}", f"--num_classes={RECIPES[recipe][2]}",
               f"--batch_size={config.batch_size}", f"--dtype={config.model.dtype}",
               f"--configs={','.join(CONFIGS)}", f"--steps={args.step_steps}", "--rounds=2",
               "--warmup=3",
               "--matmul_sizes=256"]
  program = ("import sys; from skipvit_jax.runtime import host_memory; "
             "host_memory.retain_freed_memory(); from benchmarks import train_step; "
             "train_step.main(sys.argv[1:])")
  result = subprocess.run([sys.executable, "-c", program, *step_args], env=_environment(),
                          cwd=REPO, check=True, capture_output=True, text=True)
  return {r["config"]: r["images_per_sec"] for r in json.loads(result.stdout)["results"]}


def run(args) -> dict:
  rows = []
  for recipe in args.recipes.split(","):
    config = _config(recipe)
    flop_args = dict(image_size=config.data.image_size, num_classes=RECIPES[recipe][2],
                     stem=config.model.stem)
    ideal = flops.ideal_speedup(config.model.variant, routing=ROUTED, **flop_args)
    measured = {(name, kind): [] for name in CONFIGS for kind in ("trainer", "step")}
    for _ in range(args.rounds):
      for name in CONFIGS:
        measured[name, "trainer"].append(trainer_rate(recipe, name, args))
      for name, rate in step_rates(recipe, args).items():
        measured[name, "step"].append(rate)
    mean = {key: statistics.mean(values) for key, values in measured.items()}
    for name in CONFIGS:
      rows.append({"recipe": recipe, "config": name,
                   "trainer_images_per_sec": measured[name, "trainer"],
                   "step_images_per_sec": measured[name, "step"],
                   "trainer_over_step": mean[name, "trainer"] / mean[name, "step"]})
    rows.append({"recipe": recipe, "config": "6-55-11 / dense",
                 "trainer_speedup": mean["6-55-11", "trainer"] / mean["dense", "trainer"],
                 "step_speedup": mean["6-55-11", "step"] / mean["dense", "step"],
                 "flop_ideal": ideal})
  return {"benchmark": "trainer_vs_step", "date": datetime.date.today().isoformat(),
          "jax_version": jax.__version__, "cpu_count": os.cpu_count(), "steps": args.steps,
          "skip": args.skip, "rounds": args.rounds, "rows": rows}


def table(report: dict) -> str:
  lines = [f"trainer vs bare step, steps {report['skip']}-{report['steps']}, "
           f"{report['rounds']} rounds, {report['cpu_count']} CPUs, JAX {report['jax_version']}",
           f"{'recipe':<20}{'config':<17}{'trainer img/s':>15}{'step img/s':>12}{'ratio':>8}"]
  for r in report["rows"]:
    if "trainer_speedup" in r:
      lines.append(f"{r['recipe']:<20}{r['config']:<17}{r['trainer_speedup']:>14.3f}x"
                   f"{r['step_speedup']:>11.3f}x   FLOP-ideal {r['flop_ideal']:.3f}x")
    else:
      lines.append(f"{r['recipe']:<20}{r['config']:<17}"
                   f"{statistics.mean(r['trainer_images_per_sec']):>15.0f}"
                   f"{statistics.mean(r['step_images_per_sec']):>12.0f}"
                   f"{r['trainer_over_step']:>8.3f}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--recipes", default=",".join(RECIPES))
  parser.add_argument("--steps", type=int, default=600, help="trainer steps per run")
  parser.add_argument("--skip", type=int, default=100, help="trainer steps left out of the rate")
  parser.add_argument("--log_every", type=int, default=50, help="steps per rate window")
  parser.add_argument("--step_steps", type=int, default=40, help="timed bare steps per run")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--override", action="append", default=[],
                      help="another trainer flag, e.g. --override=--config.data.num_threads=1")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
