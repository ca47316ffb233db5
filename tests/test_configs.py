"""Every config loads, describes how to run it, comments its fields, and builds a valid model."""

import ast
import importlib
import re
from pathlib import Path

import pytest

from configs import skipvit_s16_imagenet, toe_deit_s_imagenet, vit_s16_imagenet
from skipvit_jax.models import flops
from skipvit_jax.train import phases as phases_lib
from skipvit_jax.train import plan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RUNNABLE = [
    ("default", None), ("default", "baseline"), ("default", "toe"), ("default", "toe,baseline"),
    ("vit_s16_imagenet", None), ("toe_deit_s_imagenet", None),
    ("toe_deit_s_imagenet", "deit_t"), ("toe_deit_s_imagenet", "skipvit"),
    *[("skipvit_s16_imagenet", f"row={row}") for row in skipvit_s16_imagenet.ROWS],
    ("fashion_mnist", None), ("fashion_mnist", "row=6-55-11"), ("fashion_mnist", "toe"),
    ("fashion_mnist", "long"), ("fashion_mnist", "long,row=6-55-11"),
    ("finetune", None), ("finetune", "toe"),
]


@pytest.mark.parametrize("name,arg", RUNNABLE)
def test_config_builds_a_valid_model_in_every_phase(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg)
  model = plan.build_model(config, num_classes=1000)
  assert model.image_size == config.data.image_size
  assert f"python main.py --config configs/{name}.py" in module.__doc__
  assert_every_phase_builds(config, model)


def assert_every_phase_builds(config, model) -> None:
  """Builds the model of each training phase of `config` (10 steps per epoch): cloning
  validates the phase's routing and ToE layout."""
  for phase in plan.training_phases(config, model, steps_per_epoch=10,
                                    total_steps=plan.total_train_steps(config, 10)):
    model.clone(routing=phase.routing, toe=phase.toe)


def test_toe_configs_token_counts_and_schedule():
  deit_s = plan.toe_schedule(toe_deit_s_imagenet.get_config())
  assert [1 + deit_s.plan(196, e).num_selected for e in (0, 100)] == [99, 148]
  assert deit_s.plan(196, 200) is None
  deit_t = plan.toe_schedule(toe_deit_s_imagenet.get_config("deit_t"))
  assert [1 + deit_t.plan(196, e).num_selected for e in (0, 100)] == [117, 156]
  # ToE's DeiT-S schedule, whose 1.31x whole-run speedup tests/test_phases.py checks.
  assert deit_s == phases_lib.ToESchedule((0, 100, 200), (0.5, 0.75, 1.0), 0.25, 2)


def test_paper_rows_map_to_routing():
  config = skipvit_s16_imagenet.get_config("row=4.7-30.30-10")
  assert tuple(config.routing.drop_layers) == (4, 7)
  assert tuple(config.routing.drop_ratios) == (0.3, 0.3)
  assert config.routing.return_layer == 10 and config.drop_warmup_epochs == 15
  fused = skipvit_s16_imagenet.get_config("row=6-45-fused")
  assert fused.routing.mode == "fused" and fused.routing.return_layer == 0
  best = plan.build_model(skipvit_s16_imagenet.get_config("row=6-55-11"), num_classes=1000)
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


# docs/recipes.md: one table per ImageNet config; "ours" must be what the config sets.
RECIPE_SECTIONS = {
    "configs/toe_deit_s_imagenet.py": toe_deit_s_imagenet.get_config(),
    "configs/vit_s16_imagenet.py": vit_s16_imagenet.get_config(),
    "configs/skipvit_s16_imagenet.py": skipvit_s16_imagenet.get_config(),
}


def _recipe_rows(section: str) -> list[tuple[str, str]]:
  """(field, ours) of every table row of docs/recipes.md's section on `section` whose field
  cell is one config path, e.g. ("optimizer.lr", "1e-3")."""
  text = (REPO / "docs" / "recipes.md").read_text()
  body = text.split(f"## `{section}`")[1].split("\n## ")[0]
  rows = []
  for line in body.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 4 and re.fullmatch(r"`[\w.]+`", cells[0]):
      rows.append((cells[0].strip("`"), cells[2]))
  return rows


def _as_value(text: str):
  """The value an "ours" cell states: a backticked string, a Python literal, or a literal
  or bare word before a remark ("0 (off)", "bfloat16")."""
  if text.startswith("`") and text.endswith("`"):
    return text.strip("`")
  for candidate in (text, text.split()[0]):
    try:
      return ast.literal_eval(candidate)
    except (ValueError, SyntaxError):
      pass
  return text.split()[0]


@pytest.mark.parametrize("section", sorted(RECIPE_SECTIONS))
def test_recipes_doc_states_what_each_config_sets(section):
  config, checked = RECIPE_SECTIONS[section], []
  for field, ours in _recipe_rows(section):
    node = config
    for name in field.split("."):
      node = node[name] if name in node else None
      if node is None:
        break
    if node is None or hasattr(node, "keys"):  # not a leaf: the row describes, not sets
      continue
    value = _as_value(ours)
    actual = tuple(node) if isinstance(node, (list, tuple)) else node
    assert actual == value, (section, field, ours, node)
    checked.append(field)
  minimum = {"configs/toe_deit_s_imagenet.py": 24, "configs/vit_s16_imagenet.py": 14,
             "configs/skipvit_s16_imagenet.py": 1}[section]
  assert len(checked) >= minimum, checked
