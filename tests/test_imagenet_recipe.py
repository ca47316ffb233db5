"""configs/skipvit_s16_imagenet.py end to end on a dataset in ImageNet's format (JPEGs of
varying size, built in the test): the host decodes and crops, the step augments on the device,
and a run stopped and resumed ends bitwise where an uninterrupted one does."""

import jax
import numpy as np
import pytest

from configs import skipvit_s16_imagenet
from skipvit_jax.data import pipeline
from skipvit_jax.train import loop, plan
from skipvit_jax.train.metrics import read_metrics
from tests.support import imagenet_like


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  imagenet_like.prepare(path)
  return path


def small_config(data_dir: str, **overrides):
  """The recipe with its data, model and length shrunk: 32 px crops, Te/8 (16 patches; its 12
  layers keep the row's drop layer 6 and return layer 11), 4 steps of 16 per epoch, 1.5 epochs
  routed from the start (one compiled step); DeiT's RandAugment and erasing on top, so the
  device does all of it."""
  config = skipvit_s16_imagenet.get_config("row=6-55-11")
  config.data.update(name="imagenet_like", data_dir=data_dir, image_size=32, num_threads=2,
                     rand_augment="rand-m9-mstd0.5-inc1", random_erase=0.25)
  config.model.update(variant="Te/8", dtype="float32")
  config.update(batch_size=16, eval_batch_size=8, num_epochs=1.5, drop_warmup_epochs=0.0,
                log_every_steps=2, eval_every_epochs=2.0, checkpoint_every_steps=4)
  config.optimizer.warmup_epochs = 0.5
  config.update(overrides)
  return config


def test_the_recipe_augments_on_the_device(data_dir):
  config = small_config(data_dir)
  assert config.data.augment_on == "device"
  sources = pipeline.load_sources(config.data)
  run = plan.RunPlan.build(config, sources.info)
  assert run.augmentation.rand_augment.ops[0] == "AutoContrast"
  assert run.augmentation.random_erase == 0.25
  batches = pipeline.train_batches(
      sources.train, sources.info, global_batch=16, image_size=32, seed=0, start_step=0,
      total_steps=1, num_threads=1, augmentation=plan.host_augmentation(config))
  images = next(batches)["image"]
  assert images.dtype == np.uint8 and images.shape == (16, 32, 32, 3)


@pytest.mark.slow
def test_the_recipe_trains_and_resumes_bitwise(data_dir, tmp_path):
  straight = loop.train_and_evaluate(small_config(data_dir), str(tmp_path / "straight"))
  stopped = loop.train_and_evaluate(small_config(data_dir, stop_after_step=3),
                                    str(tmp_path / "resumed"))
  assert stopped.step == 3
  resumed = loop.train_and_evaluate(small_config(data_dir), str(tmp_path / "resumed"))
  assert straight.step == resumed.step == 6
  # Bitwise: the same compiled steps replay the same float32 operations on this machine (not
  # the same values as another machine's run, which only has to equal its own resume).
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  records = read_metrics(tmp_path / "resumed")
  assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
  assert records[-1]["train/finished"] == 1
  evaluation = straight.eval_metrics
  assert evaluation["eval/num_examples"] == imagenet_like.SPLITS["validation"]
  assert 0 <= evaluation["eval/top1"] <= 1
