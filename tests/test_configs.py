"""Every config loads, describes how to run it, comments its fields, and builds a valid model."""

import importlib
import re
from pathlib import Path

import pytest

from configs import skipvit_s16_imagenet
from skipvit_jax import flops, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNNABLE = [
    ("default", None), ("default", "baseline"), ("vit_s16_imagenet", None),
    *[("skipvit_s16_imagenet", f"row={row}") for row in skipvit_s16_imagenet.ROWS],
]


@pytest.mark.parametrize("name,arg", RUNNABLE)
def test_config_builds_a_valid_model(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg)
  model = train.build_model(config, num_classes=1000)
  assert model.image_size == config.data.image_size
  assert f"python main.py --config configs/{name}.py" in module.__doc__


def test_paper_rows_map_to_routing():
  config = skipvit_s16_imagenet.get_config("row=4.7-30.30-10")
  assert tuple(config.routing.drop_layers) == (4, 7)
  assert tuple(config.routing.drop_ratios) == (0.3, 0.3)
  assert config.routing.return_layer == 10 and config.drop_warmup_epochs == 15
  fused = skipvit_s16_imagenet.get_config("row=6-45-fused")
  assert fused.routing.mode == "fused" and fused.routing.return_layer == 0
  best = train.build_model(skipvit_s16_imagenet.get_config("row=6-55-11"), num_classes=1000)
  speedup = flops.ideal_speedup("S/16", image_size=224, num_classes=1000, routing=best.routing)
  assert round(speedup, 2) == 1.27


def test_unknown_config_argument_is_rejected():
  with pytest.raises(ValueError, match="row"):
    skipvit_s16_imagenet.get_config("row=6-99-11")
  with pytest.raises(ValueError, match="allowed keys"):
    skipvit_s16_imagenet.get_config("rwo=6-55-11")


def test_every_base_field_is_commented():
  uncommented = []
  for line in (CONFIGS / "common.py").read_text().splitlines():
    match = re.match(r"\s*config\.[\w.]+ = (.*)", line)
    if match and "ConfigDict()" not in match.group(1) and "#" not in line:
      uncommented.append(line.strip())
  assert uncommented == []
