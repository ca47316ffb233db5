"""Input-pipeline throughput per host: will data loading starve the devices?

  python benchmarks/input_pipeline.py                                  # synthetic, 32 px
  python benchmarks/input_pipeline.py --dataset=synthetic --image_size=224
  python benchmarks/input_pipeline.py --dataset=imagenet2012 --data_dir=$TFDS_DATA_DIR \
      --image_size=224 --batch_size=256 --threads=8,16,32

Times the trainer's own pipeline (skipvit_jax/data/pipeline.py: TFDS data source, grain,
per-example decoding and augmentation on the host) for training and evaluation batches, for
each loader thread count, and prints a table (stderr) and one JSON object (stdout). Compare
images/s with the train-step benchmark's images/s per host (benchmarks/train_step.py): when
the pipeline is slower, the devices wait for data.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_collections

from benchmarks import timing
from skipvit_jax.data import pipeline


def data_config(args) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
      "train_split": args.train_split, "eval_split": args.eval_split, "num_threads": 1,
      "synthetic": {"num_train": args.synthetic_examples, "num_test": 1000, "seed": 0},
  })


def images_per_sec(batches, num_batches: int, batch_size: int) -> float:
  next(batches)  # the first batch pays for start-up
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * batch_size / (time.perf_counter() - start)


def run(args) -> dict:
  sources = pipeline.load_sources(data_config(args))
  info = sources.info
  results = []
  for threads in (int(t) for t in args.threads.split(",")):
    train = pipeline.train_batches(
        sources.train, info, global_batch=args.batch_size, image_size=args.image_size, seed=0,
        start_step=0, total_steps=args.batches + 1, num_threads=threads)
    evaluation = pipeline.eval_batches(
        sources.eval, info, global_batch=args.batch_size, image_size=args.image_size,
        num_threads=threads)
    eval_batches = min(args.batches, -(-info.num_eval // args.batch_size) - 1)
    results.append({
        "threads": threads,
        "train_images_per_sec": images_per_sec(train, args.batches, args.batch_size),
        "eval_images_per_sec": (images_per_sec(evaluation, eval_batches, args.batch_size)
                                if eval_batches > 0 else None),
    })
  return {
      "benchmark": "input_pipeline",
      "date": datetime.date.today().isoformat(),
      "dataset": info.name, "image_size": args.image_size, "batch_size": args.batch_size,
      "host_cpus": os.cpu_count(), "results": results,
  }


def table(report: dict) -> str:
  lines = [f"input pipeline, {report['dataset']} {report['image_size']}px, batch "
           f"{report['batch_size']}, {report['host_cpus']} host CPUs",
           f"{'threads':>8}{'train img/s':>14}{'eval img/s':>14}"]
  for r in report["results"]:
    evaluation = r["eval_images_per_sec"]
    lines.append(f"{r['threads']:>8}{r['train_images_per_sec']:>14.0f}"
                 f"{(f'{evaluation:.0f}' if evaluation else '-'):>14}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="synthetic", help="'synthetic' or a TFDS name")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--train_split", default="train")
  parser.add_argument("--eval_split", default="test")
  parser.add_argument("--synthetic_examples", type=int, default=20_000)
  parser.add_argument("--batch_size", type=int, default=128, help="per host")
  parser.add_argument("--batches", type=int, default=20, help="timed batches")
  parser.add_argument("--threads", default="1,2,8")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
