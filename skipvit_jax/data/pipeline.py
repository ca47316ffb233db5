"""Input pipeline: TFDS data sources read with grain, sharded per host, resumable by step.

Training order is a pure function of (seed, step): epoch e visits the examples in the
permutation `default_rng([seed, e]).permutation(n)`, global step s takes the next
`global_batch` of them (the last incomplete batch of an epoch is dropped, as DeiT does), and
host h of H takes its contiguous `global_batch / H` slice. With repeated augmentation each
step takes `global_batch / r` examples, each r times (see _TrainIndices). Augmentation draws from
`default_rng([seed, step, slot])`, slot being the example's place in the global batch. A run
restarted at step s therefore sees exactly the batches an uninterrupted run would have, on any
number of loader threads or hosts.

Evaluation covers the split exactly once: the split is padded to a whole number of global
batches and every example carries `valid` (1.0, or 0.0 for padding).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Iterator

import grain
import numpy as np

from skipvit_jax.augment import policy
from skipvit_jax.data import in_memory, randaugment, transforms

SYNTHETIC = "synthetic"
FASHION_MNIST = "fashion_mnist"
# Where the synthetic dataset and Fashion-MNIST are prepared when config.data.data_dir is empty.
DATA_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "skipvit_jax", "datasets")
# config.data.normalization -> the (mean, std) in 0..255 that inputs are normalised with; "dataset"
# takes the dataset's own (DatasetInfo.normalization). Pretrained checkpoints expect their
# family's: vision_transformer and big_vision [-1, 1], timm and DeiT ImageNet's mean and std.
NORMALIZATIONS = {
    "minus_one_to_one": (transforms.HALF, transforms.HALF),
    "imagenet": (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  has_object_masks: bool  # examples carry "mask": the object's (H, W) pixel mask
  # Stored at the training resolution (the synthetic data, Fashion-MNIST): flipped, never
  # cropped, so the masks stay aligned; pixels mapped to [-1, 1] unless `normalization` says
  # otherwise. Otherwise ImageNet-style: random-resized crop / centre crop, ImageNet mean and std.
  fixed_size: bool = False
  normalization: str = "dataset"  # a key of NORMALIZATIONS, or "dataset" (the above)

  @property
  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in 0..255 that normalisation subtracts and divides by."""
    if self.normalization != "dataset":
      return NORMALIZATIONS[self.normalization]
    return NORMALIZATIONS["minus_one_to_one" if self.fixed_size else "imagenet"]


@dataclasses.dataclass(frozen=True)
class Sources:
  train: Any  # random-access data source: len() and [i] -> example dict
  eval: Any
  info: DatasetInfo


def load_sources(data_config) -> Sources:
  """Opens the configured dataset; raises ValueError naming the field if it is unavailable."""
  normalization = data_config.get("normalization", "dataset")
  if normalization != "dataset" and normalization not in NORMALIZATIONS:
    raise ValueError(f"config.data.normalization: must be 'dataset' or one of "
                     f"{sorted(NORMALIZATIONS)}, got {normalization!r}")
  sources = _open_sources(data_config)
  return dataclasses.replace(
      sources, info=dataclasses.replace(sources.info, normalization=normalization))


def _open_sources(data_config) -> Sources:
  if data_config.name == SYNTHETIC:
    import tensorflow_datasets as tfds

    from skipvit_jax.data import synthetic

    tfds.disable_progress_bar()  # the first run generates the data; keep the log readable
    builder = synthetic.prepare(
        data_config.data_dir or DATA_CACHE, image_size=data_config.image_size,
        num_train=data_config.synthetic.num_train, num_test=data_config.synthetic.num_test,
        seed=data_config.synthetic.seed,
    )
    train, evaluation = _splits(builder, data_config)
    return Sources(train, evaluation, DatasetInfo(
        SYNTHETIC, synthetic.NUM_CLASSES, len(train), len(evaluation), True, fixed_size=True))
  if data_config.name == FASHION_MNIST:
    return _load_fashion_mnist(data_config)
  return _load_tfds_sources(data_config)


def _load_fashion_mnist(data_config) -> Sources:
  import tensorflow_datasets as tfds

  from skipvit_jax.data import fashion_mnist

  if data_config.image_size != fashion_mnist.IMAGE_SIZE:
    raise ValueError(f"config.data.image_size: Fashion-MNIST's images are "
                     f"{fashion_mnist.IMAGE_SIZE} px, got {data_config.image_size}")
  tfds.disable_progress_bar()
  try:
    builder = fashion_mnist.prepare(data_config.data_dir or DATA_CACHE,
                                    data_config.source_dir)
  except FileNotFoundError as e:
    raise ValueError(f"config.data.source_dir: {e}") from None
  except fashion_mnist.IdxFormatError as e:
    raise ValueError(f"config.data.source_dir: a Fashion-MNIST file is damaged: {e}. Reinstall "
                     f"it (`apt-get install --reinstall dataset-fashion-mnist`) or replace "
                     "it with the original.") from None
  train, evaluation = _splits(builder, data_config)
  return Sources(train, evaluation, DatasetInfo(
      FASHION_MNIST, len(fashion_mnist.CLASS_NAMES), len(train), len(evaluation), True,
      fixed_size=True))


def _splits(builder, data_config) -> tuple[Any, Any]:
  """(train, test) of the project's own datasets; with config.data.in_memory each is read into
  memory once (data/in_memory.py says why) unless it is too large."""
  source = builder.as_data_source()
  if not data_config.get("in_memory", True):  # configs saved before the field existed: on
    return source["train"], source["test"]
  return in_memory.load(source["train"]), in_memory.load(source["test"])


def _load_tfds_sources(data_config) -> Sources:
  import tensorflow_datasets as tfds

  name = data_config.name
  try:
    builder = tfds.builder(name, data_dir=data_config.data_dir or None)
  except Exception as e:  # unknown name: tfds raises its own DatasetNotFoundError
    raise ValueError(
        f"config.data.name: unknown dataset {name!r}: use {SYNTHETIC!r} or a TFDS dataset name "
        f"(e.g. 'imagenet2012', 'cifar10', 'imagenette'); see docs/datasets.md. ({e})"
    ) from None
  if not builder.is_prepared():
    raise ValueError(
        f"config.data.name: dataset {name!r} is not prepared in "
        f"{data_config.data_dir or '~/tensorflow_datasets'}. Prepare it once with\n"
        f"  tfds build {name} --file_format=array_record"
        f"{' --data_dir=' + data_config.data_dir if data_config.data_dir else ''}\n"
        "(ImageNet needs its archives downloaded by hand first; see docs/datasets.md)."
    )
  try:
    sources = builder.as_data_source()
  except Exception as e:
    raise ValueError(
        f"config.data.name: {name!r} is prepared but not in array_record format, which "
        f"reading without TensorFlow needs: rebuild with "
        f"`tfds build {name} --file_format=array_record` ({e})"
    ) from None
  for field in ("train_split", "eval_split"):
    split = getattr(data_config, field)
    if split.split("[")[0] not in sources:
      raise ValueError(f"config.data.{field}: {name!r} has splits {sorted(sources)}, got {split!r}")
  data_dir = data_config.data_dir or None
  # An encoded image (ImageNet's JPEGs) is read as its bytes: the crop is drawn from the
  # header's size, and transforms.decode is faster than TFDS's decoder (OpenCV's, then a
  # channel reorder; PIL's and a copy without OpenCV); BENCHMARKS.md, "CPU: input pipeline".
  decoders = ({"image": tfds.decode.SkipDecoding()}
              if isinstance(builder.info.features["image"], tfds.features.Image) else None)
  train = tfds.data_source(name, split=data_config.train_split, data_dir=data_dir,
                           decoders=decoders)
  evaluation = tfds.data_source(name, split=data_config.eval_split, data_dir=data_dir,
                                decoders=decoders)
  label = builder.info.features["label"]
  return Sources(train, evaluation,
                 DatasetInfo(name, label.num_classes, len(train), len(evaluation), False))


# --------------------------------------------------------------------------------------------
# Per-example preprocessing.


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation after the crop and the flip, as DeiT's recipe has it; off by default.

  Translation and RandAugment run on the uint8 image, random erasing on the normalised one
  (timm's order). With `on_device` the host stops after the crop: it hands the device the
  (S, S, 3) uint8 crop, and the flip, translation, RandAugment, normalisation and erasing
  described here run there (skipvit_jax/augment/).
  """

  rand_augment: str = ""  # timm RandAugment spec, e.g. "rand-m9-mstd0.5-inc1"; "" = off
  random_erase: float = 0.0  # probability of erasing one rectangle with N(0, 1) noise
  random_translate: int = 0  # largest shift in pixels along each axis; 0 = off
  on_device: bool = False  # the host decodes and crops only; the rest runs on the device

  @functools.cached_property
  def rand_augment_options(self) -> policy.RandAugmentOptions | None:
    return policy.parse_rand_augment(self.rand_augment) if self.rand_augment else None


def _three_channels(image: np.ndarray) -> np.ndarray:
  """(H, W[, 1 or 3]) -> (H, W, 3): grey is copied to the three channels the model takes."""
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.broadcast_to(image.reshape(image.shape[:2] + (1,)), image.shape[:2] + (3,))
  return image


def _preprocess(example: dict, rng: np.random.Generator | None, info: DatasetInfo, *,
                image_size: int, augmentation: Augmentation = Augmentation()) -> dict:
  """One example -> {"image": (S, S, 3) float32, "label": int32[, "mask": (S, S) uint8]}; for
  training with `augmentation.on_device`, {"image": (S, S, 3) uint8, "label": int32}.

  The stored image is a uint8 array or, from a data source read without decoding, the
  encoded file. rng is None for evaluation (deterministic preprocessing), which also passes
  the object mask on where the dataset has one."""
  image = example["image"]
  if not transforms.is_encoded(image):
    image = _three_channels(np.asarray(image))
  mean, std = info.mean_std
  out = {"label": np.int32(example["label"])}
  if rng is None:
    image = transforms.decoded(image)
    if info.has_object_masks:
      out["mask"] = np.asarray(example["mask"], np.uint8)
    if not info.fixed_size:
      image = transforms.resize_center_crop(image, image_size)
    out["image"] = transforms.normalize(image, mean, std)
    return out
  if info.fixed_size:
    image = transforms.decoded(image)
  else:  # draws the box from the image's size, then decodes an encoded one
    image = transforms.random_resized_crop(rng, image, image_size)
  if augmentation.on_device:
    out["image"] = np.ascontiguousarray(image, np.uint8)
    return out
  image = transforms.random_flip(rng, image)
  image = transforms.random_translate(rng, image, augmentation.random_translate)
  if augmentation.rand_augment_options is not None:
    image = randaugment.rand_augment(rng, np.ascontiguousarray(image),
                                     augmentation.rand_augment_options,
                                     fill=tuple(int(round(m)) for m in mean))
  image = transforms.normalize(image, mean, std)
  if augmentation.random_erase > 0:
    image = transforms.random_erasing(rng, image, probability=augmentation.random_erase)
  out["image"] = image
  return out


# --------------------------------------------------------------------------------------------
# Training batches.


def steps_per_epoch(num_train: int, global_batch: int) -> int:
  """Whole global batches per epoch; the incomplete last batch is dropped, as in DeiT."""
  return num_train // global_batch


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, window: int, num_examples: int) -> np.ndarray:
  """The example order of one window of epochs (cached: consecutive steps share it)."""
  return np.random.default_rng([seed, window]).permutation(num_examples)


class _TrainIndices:
  """Random access over this host's stream of (step, slot, example index).

  With `repeats` r > 1 (repeated augmentation, DeiT's RASampler), a global batch holds
  B / r distinct examples, each r times: slot s shows distinct example s mod (B / r), so the
  copies sit B / r slots apart, on different devices as DeiT puts them on different GPUs. An
  epoch keeps its length (n // B steps, as many images as without repeats), so it shows
  n / r distinct examples; r consecutive epochs walk through one permutation and show every
  example r times.
  """

  def __init__(self, num_examples: int, global_batch: int, process_index: int,
               process_count: int, seed: int, total_steps: int, repeats: int = 1):
    if global_batch % repeats:
      raise ValueError(
          f"config.data.repeated_augmentations: {repeats} must divide the global batch "
          f"{global_batch}")
    self.host_batch = global_batch // process_count
    self.steps_per_epoch = steps_per_epoch(num_examples, global_batch)
    self._offset = process_index * self.host_batch
    self._distinct_per_step = global_batch // repeats
    self._repeats = repeats
    self._num_examples = num_examples
    self._seed = seed
    self._total_steps = total_steps

  def __len__(self) -> int:
    return self._total_steps * self.host_batch

  def __getitem__(self, k: int) -> tuple[int, int, int]:
    """-> (step, slot in the global batch, example index)."""
    step, host_slot = divmod(k, self.host_batch)
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    window, epoch_in_window = divmod(epoch, self._repeats)
    slot = self._offset + host_slot
    step_in_window = epoch_in_window * self.steps_per_epoch + step_in_epoch
    position = step_in_window * self._distinct_per_step + slot % self._distinct_per_step
    return step, slot, int(_permutation(self._seed, window, self._num_examples)[position])


def train_batches(
    source, info: DatasetInfo, *, global_batch: int, image_size: int, seed: int,
    start_step: int, total_steps: int, process_index: int = 0, process_count: int = 1,
    num_threads: int = 8, prefetch: int = 2, augmentation: Augmentation = Augmentation(),
    repeats: int = 1,
) -> Iterator[dict]:
  """This host's training batches for steps start_step..total_steps-1; each example `repeats`
  times per global batch (see _TrainIndices).

  Yields {"image": (host_batch, S, S, 3) float32 (uint8 with `augmentation.on_device`),
  "label": (host_batch,) int32}."""
  indices = _TrainIndices(info.num_train, global_batch, process_index, process_count, seed,
                          total_steps, repeats)
  if indices.steps_per_epoch < 1:
    raise ValueError(
        f"config.batch_size: {global_batch} is larger than the training split "
        f"({info.num_train} examples)"
    )

  def load(item):
    step, slot, index = item
    rng = np.random.default_rng([seed, step, slot])
    return _preprocess(source[index], rng, info, image_size=image_size,
                       augmentation=augmentation)

  if _batchable(source, info, augmentation):
    steps = range(start_step, total_steps)
    load_batch = functools.partial(_in_memory_batch, source, indices, seed, augmentation, info)
    dataset = grain.MapDataset.source(steps).map(load_batch)
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(read))
  dataset = (
      grain.MapDataset.source(indices)[start_step * indices.host_batch:]
      .map(load)
      .batch(indices.host_batch, drop_remainder=True)
  )
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=prefetch * indices.host_batch)
  return iter(dataset.to_iter_dataset(read))


def _batchable(source, info: DatasetInfo, augmentation: Augmentation) -> bool:
  """Whether a step's batch can be read as one: a split held in memory, stored at the training
  resolution, with at most the flip and the shift to do per example on the host. Then
  _in_memory_batch indexes the arrays once per step, where the per-example path would spend
  tens of microseconds of Python per example, holding the interpreter's lock, on the cores the
  step runs on (BENCHMARKS.md, "CPU: the trainer against the bare step")."""
  return (isinstance(source, in_memory.InMemorySource) and info.fixed_size
          and not augmentation.rand_augment and not augmentation.random_erase)


def _in_memory_batch(source: in_memory.InMemorySource, indices: _TrainIndices, seed: int,
                     augmentation: Augmentation, info: DatasetInfo, step: int) -> dict:
  """The host batch of `step`, as the per-example path makes it (the same draws from
  default_rng([seed, step, slot]), so the same values), read with one index per feature."""
  items = [indices[step * indices.host_batch + k] for k in range(indices.host_batch)]
  arrays = source.arrays
  rows = np.array([index for _, _, index in items])
  images = arrays["image"][rows]  # (b, H, W[, C])
  if images.ndim == 3 or images.shape[-1] == 1:  # grey: the three channels the model takes
    images = np.repeat(images.reshape(images.shape[:3] + (1,)), 3, axis=-1)
  out = {"label": arrays["label"][rows].astype(np.int32)}
  if augmentation.on_device:
    out["image"] = images
    return out
  shifted = []
  for (step_, slot, _), image in zip(items, images):
    rng = np.random.default_rng([seed, step_, slot])
    image = transforms.random_flip(rng, image)
    shifted.append(transforms.random_translate(rng, image, augmentation.random_translate))
  mean, std = info.mean_std
  out["image"] = transforms.normalize(np.stack(shifted), mean, std)
  return out


# --------------------------------------------------------------------------------------------
# Evaluation batches.


class _EvalIndices:
  """This host's share of the padded eval split: global element g is example g if g < n,
  else padding; host h takes slots [h * host_batch, (h + 1) * host_batch) of every batch."""

  def __init__(self, num_examples: int, global_batch: int, process_index: int, process_count: int):
    self.host_batch = global_batch // process_count
    self.num_batches = math.ceil(num_examples / global_batch)
    self._global_batch = global_batch
    self._offset = process_index * self.host_batch
    self._num_examples = num_examples

  def __len__(self) -> int:
    return self.num_batches * self.host_batch

  def __getitem__(self, k: int) -> int:
    batch, slot = divmod(k, self.host_batch)
    g = batch * self._global_batch + self._offset + slot
    return g if g < self._num_examples else -1


def eval_batches(
    source, info: DatasetInfo, *, global_batch: int, image_size: int,
    process_index: int = 0, process_count: int = 1, num_threads: int = 8,
) -> Iterator[dict]:
  """This host's eval batches; every host yields the same number of them.

  Yields {"image", "label", "valid": (host_batch,) float32[, "mask": (host_batch, S, S)]}."""
  indices = _EvalIndices(info.num_eval, global_batch, process_index, process_count)
  padding = None

  def load(index):
    nonlocal padding
    if index >= 0:
      out = _preprocess(source[index], None, info, image_size=image_size)
      out["valid"] = np.float32(1.0)
      return out
    if padding is None:
      padding = _zeros_like(
          _preprocess(source[0], None, info, image_size=image_size))
      padding["valid"] = np.float32(0.0)
    return padding

  dataset = grain.MapDataset.source(indices).map(load).batch(indices.host_batch)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * indices.host_batch)
  return iter(dataset.to_iter_dataset(read))


def _zeros_like(example: dict) -> dict:
  return {k: np.zeros_like(v) for k, v in example.items()}
