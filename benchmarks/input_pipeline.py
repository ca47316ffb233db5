"""Input-pipeline throughput per host: will data loading starve the devices?

  python -m benchmarks.input_pipeline                                  # synthetic, 32 px
  python -m benchmarks.input_pipeline --dataset=synthetic --image_size=224
  python -m benchmarks.input_pipeline --dataset=jpeg --image_size=224 --augment=deit
  python -m benchmarks.input_pipeline --dataset=fashion_mnist --image_size=28 --batch_size=64 \
      --read=memory,disk
  python -m benchmarks.input_pipeline --dataset=imagenet2012 --data_dir=$TFDS_DATA_DIR \
      --image_size=224 --batch_size=256 --threads=8,16,32 --augment=deit

Times the trainer's own pipeline (skipvit_jax/data/pipeline.py: TFDS data source, grain,
per-example decoding and augmentation on the host) for training and evaluation batches, for
each loader thread count, and prints a table (stderr) and one JSON object (stdout). Compare
images/s with the train-step benchmark's images/s per host (benchmarks/train_step.py): when
the pipeline is slower, the devices wait for data.

`--augment=deit` adds DeiT's RandAugment (rand-m9-mstd0.5-inc1) and random erasing (0.25) to
the training crop and flip. `--dataset=jpeg` stands in for ImageNet where it is not prepared:
ImageNet-sized (500 x 375) JPEG photos held in memory and decoded on every read, as the
ImageNet data source does, then cropped and augmented by the ImageNet path. `--read` (the
synthetic data and Fashion-MNIST) times the splits held in memory (`config.data.in_memory`, the
trainer's default), read from their array_record files example by example, or both.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import time

import ml_collections
import numpy as np
from PIL import Image

from benchmarks import timing
from configs import common
from skipvit_jax.data import pipeline

AUGMENTATIONS = {
    "none": pipeline.Augmentation(),
    "deit": pipeline.Augmentation(rand_augment="rand-m9-mstd0.5-inc1", random_erase=0.25),
}
JPEG_SIZE = (500, 375)  # (width, height), ImageNet's most common image size


class JpegSource:
  """ImageNet-like examples: smooth random photos stored as JPEG bytes, decoded per read."""

  def __init__(self, num_examples: int, num_classes: int = 1000):
    rng = np.random.default_rng(0)
    self._labels = rng.integers(0, num_classes, num_examples)
    self._jpegs = []
    for _ in range(num_examples):
      coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # upsampled: photo-like
      image = Image.fromarray(coarse).resize(JPEG_SIZE, Image.BICUBIC)
      buffer = io.BytesIO()
      image.save(buffer, format="JPEG", quality=90)
      self._jpegs.append(buffer.getvalue())

  def __len__(self) -> int:
    return len(self._jpegs)

  def __getitem__(self, index: int) -> dict:
    image = np.asarray(Image.open(io.BytesIO(self._jpegs[index])).convert("RGB"))
    return {"image": image, "label": self._labels[index]}


def load_sources(args, read: str) -> pipeline.Sources:
  if args.dataset != "jpeg":
    return pipeline.load_sources(data_config(args, in_memory=read == "memory"))
  train = JpegSource(args.synthetic_examples)
  evaluation = JpegSource(min(args.synthetic_examples, 1000))
  return pipeline.Sources(train, evaluation, pipeline.DatasetInfo(
      "jpeg", 1000, len(train), len(evaluation), has_object_masks=False))


def data_config(args, in_memory: bool) -> ml_collections.ConfigDict:
  """The trainer's `config.data` (configs/common.py's defaults) for the benchmarked dataset."""
  data = common.base_config().data
  data.update({"name": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
               "train_split": args.train_split, "eval_split": args.eval_split,
               "in_memory": in_memory})
  data.synthetic.update({"num_train": args.synthetic_examples, "num_test": 1000})
  return data


def images_per_sec(batches, num_batches: int, batch_size: int) -> float:
  next(batches)  # the first batch pays for start-up
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * batch_size / (time.perf_counter() - start)


def run(args) -> dict:
  results = []
  for read in args.read.split(","):
    sources = load_sources(args, read)
    info = sources.info
    for threads in (int(t) for t in args.threads.split(",")):
      train = pipeline.train_batches(
          sources.train, info, global_batch=args.batch_size, image_size=args.image_size, seed=0,
          start_step=0, total_steps=args.batches + 1, num_threads=threads,
          augmentation=AUGMENTATIONS[args.augment], repeats=args.repeats)
      evaluation = pipeline.eval_batches(
          sources.eval, info, global_batch=args.batch_size, image_size=args.image_size,
          num_threads=threads)
      eval_batches = min(args.batches, -(-info.num_eval // args.batch_size) - 1)
      results.append({
          "read": read,
          "threads": threads,
          "train_images_per_sec": images_per_sec(train, args.batches, args.batch_size),
          "eval_images_per_sec": (images_per_sec(evaluation, eval_batches, args.batch_size)
                                  if eval_batches > 0 else None),
      })
  return {
      "benchmark": "input_pipeline",
      "date": datetime.date.today().isoformat(),
      "dataset": info.name, "image_size": args.image_size, "batch_size": args.batch_size,
      "augment": args.augment, "repeats": args.repeats,
      "host_cpus": os.cpu_count(), "results": results,
  }


def table(report: dict) -> str:
  lines = [f"input pipeline, {report['dataset']} {report['image_size']}px, batch "
           f"{report['batch_size']}, augment {report['augment']}, repeats "
           f"{report['repeats']}, {report['host_cpus']} host CPUs",
           f"{'read':>8}{'threads':>8}{'train img/s':>14}{'eval img/s':>14}"]
  for r in report["results"]:
    evaluation = r["eval_images_per_sec"]
    lines.append(f"{r['read']:>8}{r['threads']:>8}{r['train_images_per_sec']:>14.0f}"
                 f"{(f'{evaluation:.0f}' if evaluation else '-'):>14}")
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="synthetic",
                      help="'synthetic', 'jpeg' (in-memory ImageNet-like JPEGs) or a TFDS name")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--train_split", default="train")
  parser.add_argument("--eval_split", default="test")
  parser.add_argument("--synthetic_examples", type=int, default=20_000,
                      help="training examples of 'synthetic' and 'jpeg'")
  parser.add_argument("--augment", default="none", choices=sorted(AUGMENTATIONS),
                      help="training augmentation after crop and flip")
  parser.add_argument("--repeats", type=int, default=1, help="repeated augmentation copies")
  parser.add_argument("--batch_size", type=int, default=128, help="per host")
  parser.add_argument("--batches", type=int, default=20, help="timed batches")
  parser.add_argument("--threads", default="1,2,8")
  parser.add_argument("--read", default="memory",
                      help="'memory', 'disk' or both: the synthetic and Fashion-MNIST splits held "
                           "in memory or read from their files (config.data.in_memory)")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
