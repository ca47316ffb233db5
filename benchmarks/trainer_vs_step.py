"""Does the run gain what the step gains? The trainer's steady images/s against the bare step's.

  python -m benchmarks.trainer_vs_step                            # default and fashion_mnist:long
  python -m benchmarks.trainer_vs_step --recipes=default --rounds=1 --steps=300

For each recipe and each of dense and 6-55-11, alternately in one sitting: the trainer itself
(`python -m skipvit_jax` on the recipe's config, its data pipeline included, routing from step
0 so the run is one compiled phase, no evaluation or checkpoint inside the timed steps) and
the bare step (`bare_step`: the trainer's own compiled step, built by train/plan.py from the
same config, on one batch of the recipe's data already on the device, dispatched back to back).
Each runs in its own process with the malloc settings the trainer's process has
(runtime/host_memory.py), so the two differ only in what the trainer adds around the step. Per
run: images/s over the log windows after --skip steps (the trainer) or over --step_steps steps
(the bare step). Reports trainer / step per config and
the routed / dense ratio of each, beside the FLOP-ideal one. Prints a table (stderr) and one
JSON object (stdout, or --json_out).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import timing
from skipvit_jax.data import pipeline
from skipvit_jax.models import flops
from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.runtime import host_memory, parallel
from skipvit_jax.train import plan, validation
from skipvit_jax.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
# recipe -> (config module, its argument for the dense model, the dataset's classes)
RECIPES = {
    "default": ("default", "baseline", 8),
    "fashion_mnist:long": ("fashion_mnist", "long", 10),
}
ROUTED = RoutingConfig(drop_layers=(6,), drop_ratios=(0.55,), return_layer=11)
CONFIGS = {"dense": {}, "6-55-11": {"routing.drop_layers": (6,), "routing.drop_ratios": (0.55,),
                                    "routing.return_layer": 11, "drop_warmup_epochs": 0.0}}


def _config(recipe: str, name: str = "dense"):
  module, arg, _ = RECIPES[recipe]
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  config.update_from_flattened_dict(CONFIGS[name])
  return config


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
               "--config.checkpoint_every_steps=100000",
               *(f"--config.{field}={value}" for field, value in CONFIGS[name].items()),
               *args.override]
    subprocess.run(command, env=_environment(), cwd=REPO, check=True, capture_output=True)
    records = read_metrics(workdir)
  rates = [r["train/images_per_sec"] for r in records
           if "train/images_per_sec" in r and r["step"] > args.skip]
  return statistics.mean(rates)


def bare_step(recipe: str, name: str, steps: int, warmup: int = 3) -> float:
  """The trainer's own compiled step (plan.per_device_train_step of the recipe's config, pmapped
  as the trainer does) on one batch of the recipe's data already on the device: images/s over
  `steps` steps dispatched back to back. Run in a process of its own (see step_rate)."""
  config = validation.check_config(_config(recipe, name))
  sources = pipeline.load_sources(config.data)
  run_plan = plan.RunPlan.build(config, sources.info)
  [phase] = run_plan.phases  # routing from step 0: one phase
  model = run_plan.model.clone(routing=phase.routing, toe=phase.toe)
  step = jax.pmap(plan.per_device_train_step(config, model, run_plan.optimizer,
                                             run_plan.learning_rate, run_plan.augmentation),
                  axis_name=parallel.AXIS, donate_argnums=(0,))
  state = parallel.replicate(plan.initial_state(config, run_plan.model, run_plan.optimizer))
  batch = next(pipeline.train_batches(
      sources.train, sources.info, global_batch=config.batch_size,
      image_size=config.data.image_size, seed=0, start_step=0, total_steps=1, num_threads=1,
      augmentation=plan.host_augmentation(config)))
  batch = parallel.device_put_sharded(parallel.shard(batch))
  applied = parallel.replicate(np.bool_(True))
  for _ in range(warmup):
    state, metrics = step(state, batch, applied)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, applied)
  jax.block_until_ready(metrics)
  return steps * config.batch_size / (time.perf_counter() - start)


def step_rate(recipe: str, name: str, args) -> float:
  """bare_step in its own process, with the malloc settings the trainer's process has."""
  program = ("import sys; from skipvit_jax.runtime import host_memory; host_memory.tune_malloc(); "
             "from benchmarks import trainer_vs_step as t; "
             "print(t.bare_step(sys.argv[1], sys.argv[2], int(sys.argv[3])))")
  result = subprocess.run([sys.executable, "-c", program, recipe, name, str(args.step_steps)],
                          env=_environment(), cwd=REPO, check=True, capture_output=True,
                          text=True)
  return float(result.stdout.split()[-1])


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
        measured[name, "step"].append(step_rate(recipe, name, args))
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
  parser.add_argument("--step_steps", type=int, default=100, help="timed bare steps per run")
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
