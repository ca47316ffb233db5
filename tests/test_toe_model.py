"""ToE inside the ViT, ToE together with SkipViT, and a training run across all ToE stages."""

import jax
import numpy as np
import pytest

from skipvit_jax import RoutingConfig, ViT
from skipvit_jax.models import flops, toe
from skipvit_jax.train import evaluate, loop
from skipvit_jax.train import step as step_lib
from tests import test_train
from tests.support.jax_testing import count_traces

TINY = dict(variant="Te/4", image_size=32, num_classes=10)  # 64 patches
STAGE1 = toe.make_plan(64, expansion_epochs=(0, 1, 2), keep_rates=(0.5, 0.75, 1.0),
                       init_rate=0.25, substeps=2, epoch=0)  # 32 of 64 patches
SKIP = RoutingConfig((6,), (0.5,), 11)  # within ToE's 32: keep 16


def _run(model, images, params=None):
  params = params or model.init(jax.random.key(0), images, train=False)["params"]
  (logits, aux), state = model.apply(
      {"params": params}, images, train=False, capture_intermediates=True,
      mutable=["intermediates"])
  return params, logits, aux, state["intermediates"]["Transformer"]


@pytest.mark.slow
def test_toe_reduces_every_layer_after_the_first():
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  _, _, aux, inter = _run(ViT(**TINY, toe=STAGE1), images)
  assert [x.shape[1] for x in inter["layer_inputs"]] == [65] + [33] * 11
  # ToE applied to layer 1's output is exactly what layer 2 receives.
  block1_out = inter["encoderblock_0"]["__call__"][0][0]
  out, out_index = toe.expand_tokens(block1_out, STAGE1)
  np.testing.assert_array_equal(inter["layer_inputs"][1], out)
  np.testing.assert_array_equal(aux["toe"]["out_index"], out_index)


@pytest.mark.slow
def test_toe_with_skipvit_ranks_and_restores_within_toe_sequence():
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  model = ViT(**TINY, routing=SKIP, toe=STAGE1)
  _, logits, aux, inter = _run(model, images)
  assert np.all(np.isfinite(logits))
  assert [x.shape[1] for x in inter["layer_inputs"]] == [65] + [33] * 5 + [17] * 4 + [33] * 2
  record = aux["routing"][0]
  assert record["cls_scores"].shape == (2, 32) and record["keep_idx"].shape == (2, 16)
  # The return layer's input has every token back in its slot of ToE's sequence: dropped
  # ones unchanged, kept ones from layer 10's output.
  returned = np.asarray(inter["layer_inputs"][10])
  dropped = np.asarray(inter["dropped_tokens"][0])
  layer10_out = np.asarray(inter["encoderblock_9"]["__call__"][0][0])
  for b in range(2):
    np.testing.assert_array_equal(returned[b, 1 + np.asarray(record["drop_idx"][b])], dropped[b])
    np.testing.assert_array_equal(returned[b, 1 + np.asarray(record["keep_idx"][b])],
                                  layer10_out[b, 1:])
  # Original patch positions go through ToE's index.
  toe_positions = np.asarray(aux["toe"]["out_index"])[:, 1:] - 1
  np.testing.assert_array_equal(
      record["kept_positions"],
      np.take_along_axis(toe_positions, np.asarray(record["keep_idx"]), 1))


def test_toe_model_validation():
  with pytest.raises(ValueError, match="RoutingConfig.drop_layers"):
    ViT(**TINY, routing=RoutingConfig((1,), (0.5,), 3), toe=STAGE1)
  with pytest.raises(ValueError, match="toe: the plan is for 64 patches"):
    ViT(**{**TINY, "image_size": 64}, toe=STAGE1)
  inactive = toe.make_plan(64, expansion_epochs=(0, 1, 2), keep_rates=(0.5, 0.75, 1.0),
                           init_rate=0.25, substeps=2, epoch=2)
  with pytest.raises(ValueError, match="inactive"):
    ViT(**TINY, toe=inactive)


def test_flops_with_toe_and_skipvit():
  macs = flops.forward_macs("Te/4", image_size=32, num_classes=10, routing=SKIP, toe=STAGE1)
  blocks = [flops.block_macs(a, m, 32, 128) for a, m in
            [(65, 65)] + [(33, 33)] * 4 + [(33, 17)] + [(17, 17)] * 4 + [(33, 33)] * 2]
  assert list(macs.blocks) == blocks
  assert macs.routing_overhead > 0  # ToE's similarities and merge, reported apart


@pytest.mark.slow
def test_training_crosses_every_toe_stage_and_resumes_into_stage_two(tmp_path, monkeypatch):
  data_dir = str(tmp_path / "tfds")
  overrides = {"toe.enabled": True, "toe.expansion_epochs": (0, 1, 2), "num_epochs": 3.0,
               "eval_every_epochs": 10.0, "routing.drop_ratios": (0.5,)}
  config = test_train.tiny_config(data_dir, **overrides)  # 4 steps per epoch, 12 steps
  train_steps = count_traces(monkeypatch, step_lib, "train_step")
  eval_steps = count_traces(monkeypatch, evaluate, "eval_step")
  traced = lambda: [(1 + c["model"].toe.num_selected if c["model"].toe else None,
                     c["model"].routing.routes) for c in train_steps.calls]
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  # Stage 1 during the drop warm-up, stage 2 routed, stage 3 (ToE off) routed: one compile each.
  assert traced() == [(33, False), (49, True), (None, True)]
  assert len(eval_steps.calls) == 2  # and the two evaluations at the end

  stopped = test_train.tiny_config(data_dir, **overrides, stop_after_step=6)  # inside stage 2
  loop.train_and_evaluate(stopped, str(tmp_path / "resumed"))
  train_steps.calls.clear()
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert traced() == [(49, True), (None, True)]  # resumed straight into stage 2
  # Bitwise: the same compiled steps replay the same float32 operations on this machine (not
  # the same values as another machine's run, which only has to equal its own resume).
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
