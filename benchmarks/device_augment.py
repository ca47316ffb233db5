"""What the device augmentation costs inside the training step, measured in one process.

  python -m benchmarks.device_augment                  # ViT-S/16, 224 px, batch 64, DeiT's recipe
  python -m benchmarks.device_augment --variant=Te/16 --rounds=1 --steps=2   # a smoke run

Times, interleaved round by round: the trainer's step (skipvit_jax.train.step, pmapped) on a
normalised float32 batch, the same step taking the host's uint8 crops and augmenting them
first (flip, RandAugment `--rand_augment`, normalisation, random erasing `--random_erase`:
skipvit_jax/augment/batch.py), and `augment_batch` alone under jit, whole and stage by stage.
Reports each one's milliseconds per step and per image, and the augmentation's share of the
step two ways: (augmenting step - plain step) / plain step, and augment_batch alone / plain
step. Prints a table (stderr) and one JSON object (stdout, or --json_out).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import time

import jax
import numpy as np
import optax

from benchmarks import timing
from skipvit_jax.augment import batch as augment
from skipvit_jax.augment import policy
from skipvit_jax.models.vit import DTYPES, ViT
from skipvit_jax.runtime import parallel
from skipvit_jax.train import step as step_lib

# As data/transforms.py scales them, without importing the host's decoders.
MEAN = tuple(float(m) for m in np.array(policy.IMAGENET_MEAN_FRACTION, np.float32) * 255)
STD = tuple(float(s) for s in np.array(policy.IMAGENET_STD_FRACTION, np.float32) * 255)


def augmentations(args) -> dict[str, augment.DeviceAugmentation]:
  """The whole augmentation and each stage on its own (the flip and normalisation always)."""
  options = policy.parse_rand_augment(args.rand_augment)
  plain = augment.DeviceAugmentation(mean=MEAN, std=STD)
  return {
      "all": augment.DeviceAugmentation(mean=MEAN, std=STD, rand_augment=options,
                                        random_erase=args.random_erase),
      "flip + normalise": plain,
      "+ RandAugment": augment.DeviceAugmentation(mean=MEAN, std=STD, rand_augment=options),
      "+ erasing": augment.DeviceAugmentation(mean=MEAN, std=STD,
                                              random_erase=args.random_erase),
  }


def run(args) -> dict:
  model = ViT(args.variant, num_classes=1000, image_size=args.image_size,
              dtype=DTYPES[args.dtype])
  optimizer = optax.adamw(1e-4, weight_decay=0.05)
  state = jax.device_get(step_lib.init_state(model, optimizer, seed=0))
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8)
  labels = rng.integers(0, 1000, args.batch_size).astype(np.int32)
  normalised = ((crops - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
  batches = {"plain": {"image": normalised, "label": labels},
             "augmenting": {"image": crops, "label": labels}}
  stages = augmentations(args)

  def make_step(augmentation):
    return jax.pmap(functools.partial(
        step_lib.train_step, model=model, optimizer=optimizer, learning_rate=lambda _: 1e-4,
        regularization=step_lib.Regularization(), seed=0, augmentation=augmentation),
        axis_name=parallel.AXIS, donate_argnums=(0,))

  steps = {"plain": make_step(None), "augmenting": make_step(stages["all"]),
           "separate": make_step(None)}
  states = {name: parallel.replicate(state) for name in steps}
  device_batches = {name: parallel.device_put_sharded(parallel.shard(b))
                    for name, b in batches.items()}
  device_batches["separate"] = device_batches["augmenting"]
  augment_first = jax.pmap(
      lambda batch, step: {**batch, "image": augment.augment_batch(
          jax.random.fold_in(jax.random.key(0), step), batch["image"], stages["all"])},
      axis_name=parallel.AXIS)
  step_index = parallel.replicate(np.int32(0))
  images = jax.device_put(crops)
  alone = {name: jax.jit(functools.partial(augment.augment_batch, augmentation=a))
           for name, a in stages.items()}

  def time_step(name):
    cpu_start, start = time.process_time(), time.perf_counter()
    batch = device_batches[name]
    if name == "separate":
      batch = augment_first(batch, step_index)
    states[name], metrics = steps[name](states[name], batch)
    jax.block_until_ready(metrics)
    cpu[name].append(time.process_time() - cpu_start)
    return time.perf_counter() - start

  def time_alone(name, key):
    start = time.perf_counter()
    jax.block_until_ready(alone[name](key, images))
    return time.perf_counter() - start

  cpu = {name: [] for name in steps}  # CPU seconds of all threads: robust to a noisy neighbour
  for name in steps:  # compile and warm up
    time_step(name)
    cpu[name].clear()
  for name in alone:
    time_alone(name, jax.random.key(0))
  times = {name: [] for name in [*steps, *alone]}
  for round_ in range(args.rounds):
    for name in steps:
      times[name] += [time_step(name) for _ in range(args.steps)]
    for name in alone:
      times[name] += [time_alone(name, jax.random.key(100 * round_ + i))
                      for i in range(args.augment_runs)]
  ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  return {
      "benchmark": "device_augment", "date": datetime.date.today().isoformat(),
      "jax_version": jax.__version__, "device": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(), "variant": args.variant, "image_size": args.image_size,
      "batch_size": args.batch_size, "dtype": args.dtype, "rand_augment": args.rand_augment,
      "random_erase": args.random_erase, "rounds": args.rounds,
      "ms": ms, "ms_per_image": {name: m / args.batch_size for name, m in ms.items()},
      "step_ms_samples": {name: [1e3 * t for t in times[name]] for name in steps},
      "step_cpu_s": {name: statistics.median(c) for name, c in cpu.items()},
      "cpu_share_in_step": statistics.median(cpu["augmenting"]) / statistics.median(cpu["plain"])
                           - 1,
      "cpu_share_before_step": statistics.median(cpu["separate"])
                               / statistics.median(cpu["plain"]) - 1,
      "share_in_step": (ms["augmenting"] - ms["plain"]) / ms["plain"],
      "share_before_step": (ms["separate"] - ms["plain"]) / ms["plain"],
      "share_alone": ms["all"] / ms["plain"],
  }


def table(report: dict) -> str:
  lines = [f"device augmentation, {report['variant']} {report['image_size']}px batch "
           f"{report['batch_size']} {report['dtype']}, {report['rand_augment']}, erasing "
           f"{report['random_erase']}; {report['device']}, {report['cpu_count']} CPUs, JAX "
           f"{report['jax_version']}",
           f"{'':<26}{'ms':>10}{'ms/image':>10}"]
  labels = {"plain": "train step, float input", "augmenting": "train step + augmentation",
            "separate": "augmentation, then step",
            "all": "augment_batch alone"}
  for name, ms in report["ms"].items():
    lines.append(f"{labels.get(name, '  ' + name):<26}{ms:>10.1f}"
                 f"{report['ms_per_image'][name]:>10.3f}")
  lines.append(f"augmentation's share of the step: {100 * report['share_in_step']:.1f}% "
               f"inside it, {100 * report['share_before_step']:.1f}% in a function before it, "
               f"{100 * report['share_alone']:.1f}% alone / step")
  lines.append(f"in CPU seconds per step: {100 * report['cpu_share_in_step']:.1f}% inside it, "
               f"{100 * report['cpu_share_before_step']:.1f}% in a function before it")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="S/16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=64, help="global, over local devices")
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  parser.add_argument("--rand_augment", default="rand-m9-mstd0.5-inc1")
  parser.add_argument("--random_erase", type=float, default=0.25)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="timed train steps per round")
  parser.add_argument("--augment_runs", type=int, default=5,
                      help="timed augment_batch calls per stage per round")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
