"""Input-pipeline throughput per host: will data loading starve the devices?

  python -m benchmarks.input_pipeline                                  # synthetic, 32 px
  python -m benchmarks.input_pipeline --dataset=synthetic --image_size=224
  python -m benchmarks.input_pipeline --dataset=jpeg --image_size=224 --augment=deit \
      --repeats=3 --paths=host,device --stages
  python -m benchmarks.input_pipeline --dataset=fashion_mnist --image_size=28 --batch_size=64 \
      --read=memory,disk
  python -m benchmarks.input_pipeline --dataset=imagenet2012 --data_dir=$TFDS_DATA_DIR \
      --image_size=224 --batch_size=256 --threads=8,16,32 --augment=deit --paths=host,device

Times the trainer's own pipeline (skipvit_jax/data/pipeline.py: TFDS data source, grain,
per-example decoding and augmentation on the host) for training and evaluation batches, for
each loader thread count, and prints a table (stderr) and one JSON object (stdout). Compare
images/s with the train-step benchmark's images/s per host (benchmarks/train_step.py): when
the pipeline is slower, the devices wait for data.

`--augment=deit` adds DeiT's RandAugment (rand-m9-mstd0.5-inc1) and random erasing (0.25) to
the training crop and flip. `--paths` picks what the host does for training: `host`, all of
it (uint8 crop to normalised float32), and `device`, the host's part when the augmentation
runs on the device (`Augmentation.on_device`: decode, crop and resize, uint8 out). Each row
gives images/s, images/s per loader core (threads up to the host's cores), the process's CPU
ms per image (every thread, batching included) and its minor page faults per image; the
malloc settings (`--malloc`) are set before anything allocates.

`--dataset=jpeg` stands in for ImageNet where it is not prepared: ImageNet-sized JPEG photos
(JPEG_SIZES) held in memory as their encoded bytes, as the ImageNet data source returns them,
decoded and cropped on every read. `--stages` then also times each per-image stage alone
(ms of one core per image, the fastest of three passes over `--stage_images` images): TFDS's
own decode and the previous PIL crop and resize beside the ones the pipeline uses, then
RandAugment, normalisation and erasing of the host path. `--read` (the synthetic data and
Fashion-MNIST) times the splits held in memory (`config.data.in_memory`, the trainer's
default), read from their array_record files example by example, or both.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import os
import resource
import time
from collections.abc import Callable, Sequence

import cv2
import jax
import ml_collections
import numpy as np
from PIL import Image

from benchmarks import timing
from configs import common
from skipvit_jax.data import pipeline, randaugment, transforms
from skipvit_jax.runtime import host_memory

AUGMENTATIONS = {
    "none": pipeline.Augmentation(),
    "deit": pipeline.Augmentation(rand_augment="rand-m9-mstd0.5-inc1", random_erase=0.25),
}
PATHS = ("host", "device")  # the training path's host part: everything, or decode + crop
MALLOC = {"glibc": None, "retain": host_memory.RETAIN, "loader": host_memory.LOADER}
# (width, height), in turn: ImageNet's common sizes, 500 px on the long side at 4:3, 3:4, 3:2,
# 2:3 and 1:1 (500 x 375 the most common). Sizes that vary, as ImageNet's do, matter to malloc.
JPEG_SIZES = ((500, 375), (375, 500), (500, 333), (500, 375), (333, 500), (500, 500))


class JpegSource:
  """ImageNet-like examples: smooth random photos as their JPEG bytes, as the ImageNet data
  source returns them (skipvit_jax/data/pipeline.py reads encoded images undecoded)."""

  def __init__(self, num_examples: int, num_classes: int = 1000):
    rng = np.random.default_rng(0)
    self._labels = rng.integers(0, num_classes, num_examples)
    self._jpegs = []
    for i in range(num_examples):
      coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # upsampled: photo-like
      image = Image.fromarray(coarse).resize(JPEG_SIZES[i % len(JPEG_SIZES)], Image.BICUBIC)
      buffer = io.BytesIO()
      image.save(buffer, format="JPEG", quality=90)
      self._jpegs.append(buffer.getvalue())

  def __len__(self) -> int:
    return len(self._jpegs)

  def __getitem__(self, index: int) -> dict:
    return {"image": self._jpegs[index], "label": self._labels[index]}


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


def time_batches(batches, num_batches: int, batch_size: int) -> dict:
  """Images/s, CPU ms and minor page faults per image over `num_batches` batches."""
  next(batches)  # the first batch pays for start-up
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  cpu, start = time.process_time(), time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  images = num_batches * batch_size
  return {
      "images_per_sec": images / (time.perf_counter() - start),
      "cpu_ms_per_image": 1e3 * (time.process_time() - cpu) / images,
      "page_faults_per_image":
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / images,
  }


def run(args) -> dict:
  results = []
  for read in args.read.split(","):
    sources = load_sources(args, read)
    info = sources.info
    for threads in (int(t) for t in args.threads.split(",")):
      for i, path in enumerate(args.paths.split(",")):
        augmentation = dataclasses.replace(AUGMENTATIONS[args.augment],
                                           on_device=path == "device")
        train = pipeline.train_batches(
            sources.train, info, global_batch=args.batch_size, image_size=args.image_size,
            seed=0, start_step=0, total_steps=args.batches + 1, num_threads=threads,
            augmentation=augmentation, repeats=args.repeats)
        timed = time_batches(train, args.batches, args.batch_size)
        row = {"read": read, "path": path, "threads": threads,
               "train_images_per_sec": timed["images_per_sec"],
               "train_images_per_sec_per_core":
                   timed["images_per_sec"] / min(threads, os.cpu_count()),
               "train_cpu_ms_per_image": timed["cpu_ms_per_image"],
               "train_page_faults_per_image": timed["page_faults_per_image"],
               "eval_images_per_sec": None}
        eval_batches = min(args.batches, -(-info.num_eval // args.batch_size) - 1)
        if i == 0 and eval_batches > 0:  # evaluation is the same on either path
          evaluation = pipeline.eval_batches(
              sources.eval, info, global_batch=args.batch_size, image_size=args.image_size,
              num_threads=threads)
          row["eval_images_per_sec"] = time_batches(
              evaluation, eval_batches, args.batch_size)["images_per_sec"]
        results.append(row)
  return {
      "benchmark": "input_pipeline",
      "date": datetime.date.today().isoformat(),
      "jax_version": jax.__version__,
      "dataset": info.name, "image_size": args.image_size, "batch_size": args.batch_size,
      "augment": args.augment, "repeats": args.repeats, "malloc": args.malloc,
      "host_cpus": os.cpu_count(), "results": results,
      "stages": (stage_times(args, sources.train) if args.stages else None),
  }


def _pil_crop_resize(image: np.ndarray, box: transforms.Box, size: int) -> np.ndarray:
  """The crop and resize the pipeline used before: PIL's bicubic of a copied crop."""
  top, left, h, w = box
  return np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize(
      (size, size), Image.BICUBIC))


def _pil_box_resize(image: Image.Image, box: transforms.Box, size: int) -> np.ndarray:
  """PIL's bicubic straight from the decoded PIL image's box: no crop copy."""
  top, left, h, w = box
  return np.asarray(image.resize((size, size), Image.BICUBIC,
                                 box=(left, top, left + w, top + h)))


def _cv2_cubic(image: np.ndarray, box: transforms.Box, size: int) -> np.ndarray:
  """OpenCV's INTER_CUBIC alone: 4 taps, not antialiased."""
  top, left, h, w = box
  return cv2.resize(image[top:top + h, left:left + w], (size, size),
                    interpolation=cv2.INTER_CUBIC)


def _pil_decoded(data: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


def _per_call(fn: Callable[[int], object], n: int) -> tuple[float, float]:
  """(ms of this process's CPU, minor page faults) per call of fn(0..n-1): the fastest of
  three passes, and the faults of the last (the first may fault memory in for good)."""
  passes = []
  for _ in range(3):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.process_time()
    for i in range(n):
      fn(i)
    passes.append(1e3 * (time.process_time() - start) / n)
  return min(passes), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n


def stage_times(args, source: Sequence) -> list[dict]:
  """ms of one core per image for each stage alone, on the first --stage_images examples."""
  if args.dataset != "jpeg":
    return []
  n, size = min(args.stage_images, len(source)), args.image_size
  data = [source[i]["image"] for i in range(n)]
  rngs = lambda: [np.random.default_rng([0, i]) for i in range(n)]
  decoded = [transforms.decode(d) for d in data]
  pil_images = [_pil_decoded(d) for d in data]
  boxes = [transforms.random_resized_crop_box(r, *d.shape[:2]) for r, d in zip(rngs(), decoded)]
  crops = [transforms.resize(d[t:t + h, x:x + w], size, size)
           for d, (t, x, h, w) in zip(decoded, boxes)]
  options = AUGMENTATIONS["deit"].rand_augment_options
  mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
  normalised = [transforms.normalize(c, mean, std) for c in crops]
  fill = tuple(int(round(m)) for m in mean)
  stages = [
      ("decode", "TFDS's (PIL, to numpy)",
       lambda i: np.asarray(Image.open(io.BytesIO(data[i])))),
      ("decode", "TFDS's with OpenCV (imdecode, to RGB)",
       lambda i: cv2.cvtColor(cv2.imdecode(np.frombuffer(data[i], np.uint8), cv2.IMREAD_COLOR),
                              cv2.COLOR_BGR2RGB)),
      ("decode", "simplejpeg (pipeline)", lambda i: transforms.decode(data[i])),
      ("decode", "PIL, to a PIL image", lambda i: _pil_decoded(data[i])),
      ("crop + resize", "PIL, copied crop (before)",
       lambda i: _pil_crop_resize(decoded[i], boxes[i], size)),
      ("crop + resize", "PIL, box of a PIL image",
       lambda i: _pil_box_resize(pil_images[i], boxes[i], size)),
      ("crop + resize", "OpenCV antialiased (pipeline)",
       lambda i: transforms.resize(decoded[i][boxes[i][0]:boxes[i][0] + boxes[i][2],
                                              boxes[i][1]:boxes[i][1] + boxes[i][3]],
                                   size, size)),
      ("crop + resize", "OpenCV INTER_CUBIC, not antialiased",
       lambda i: _cv2_cubic(decoded[i], boxes[i], size)),
  ]
  flip_rngs, ra_rngs, erase_rngs = rngs(), rngs(), rngs()
  stages += [
      ("flip", "host path", lambda i: np.ascontiguousarray(
          transforms.random_flip(flip_rngs[i], crops[i]))),
      ("RandAugment", "host path, " + AUGMENTATIONS["deit"].rand_augment,
       lambda i: randaugment.rand_augment(ra_rngs[i], crops[i], options, fill=fill)),
      ("normalisation", "host path", lambda i: transforms.normalize(crops[i], mean, std)),
      ("random erasing", "host path, p = 0.25",
       lambda i: transforms.random_erasing(erase_rngs[i], normalised[i], probability=0.25)),
  ]
  results = []
  for stage, how, fn in stages:
    ms, faults = _per_call(fn, n)
    results.append({"stage": stage, "how": how, "ms_per_image": ms,
                    "page_faults_per_image": faults})
  return results


def table(report: dict) -> str:
  lines = [f"input pipeline, {report['dataset']} {report['image_size']}px, batch "
           f"{report['batch_size']}, augment {report['augment']}, repeats "
           f"{report['repeats']}, malloc {report['malloc']}, {report['host_cpus']} host CPUs, "
           f"JAX {report['jax_version']}",
           f"{'read':>8}{'path':>8}{'threads':>8}{'train img/s':>13}{'per core':>10}"
           f"{'CPU ms/img':>12}{'faults/img':>12}{'eval img/s':>12}"]
  for r in report["results"]:
    evaluation = r["eval_images_per_sec"]
    lines.append(f"{r['read']:>8}{r['path']:>8}{r['threads']:>8}"
                 f"{r['train_images_per_sec']:>13.0f}{r['train_images_per_sec_per_core']:>10.0f}"
                 f"{r['train_cpu_ms_per_image']:>12.2f}{r['train_page_faults_per_image']:>12.1f}"
                 f"{(f'{evaluation:.0f}' if evaluation else '-'):>12}")
  if report["stages"]:
    lines.append(f"{'stage':<16}{'how':<40}{'ms/image':>10}{'faults/img':>12}")
    lines += [f"{s['stage']:<16}{s['how']:<40}{s['ms_per_image']:>10.3f}"
              f"{s['page_faults_per_image']:>12.1f}" for s in report["stages"]]
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
  parser.add_argument("--paths", default="host", help="'host', 'device' or both: the training "
                      "path's host part, everything or decode + crop (Augmentation.on_device)")
  parser.add_argument("--stages", action="store_true",
                      help="also time each per-image stage alone ('jpeg' only)")
  parser.add_argument("--stage_images", type=int, default=200)
  parser.add_argument("--malloc", default="glibc", choices=sorted(MALLOC),
                      help="glibc's as found, or host_memory's RETAIN or LOADER settings")
  parser.add_argument("--json_out", default="")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if MALLOC[args.malloc] is not None and not host_memory.apply(MALLOC[args.malloc]):
    raise SystemExit(f"--malloc={args.malloc}: glibc's mallopt is not available here")
  report = run(args)
  timing.emit(report, table(report), args.json_out)
  return report


if __name__ == "__main__":
  main()
