"""Property tests (hypothesis): every generated config, RoutingConfig and ToE schedule either
builds and runs a forward pass with exactly the planned token counts, or raises ValueError
(ConfigError, for a config) naming the field. Never another exception, never a silently
different run."""

import math
import re

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from configs import default
from skipvit_jax.data import pipeline
from skipvit_jax.models import attention, routing, toe
from skipvit_jax.models.routing import DROP_POINTS, MODES, RATIO_BASES, SCORES, RoutingConfig
from skipvit_jax.train import plan as plan_lib
from skipvit_jax.train import validation

FIELD = re.compile(r"\bconfig\.[a-z_]+|RoutingConfig\.[a-z_]+|\b(keep_rates|init_rate|"
                   r"expansion_epochs|substeps|num_patches|epoch):")
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

floats = lambda lo, hi: st.one_of(st.floats(lo, hi), st.sampled_from([math.nan, math.inf, 0.0]))
ints = lambda lo, hi: st.integers(lo, hi)


@st.composite
def routing_fields(draw, max_layer: int = 12):
  """Mostly well-formed routings (increasing layers, a ratio each, a return layer after them
  for "skip"), each part replaced by noise now and then."""
  layers = tuple(sorted(draw(st.sets(ints(1, max_layer), max_size=3))))
  ratios = tuple(draw(st.floats(0.0, 0.95)) for _ in layers)
  mode = draw(st.sampled_from(MODES))
  back = draw(ints(layers[-1] + 1, max_layer)) if layers and layers[-1] < max_layer else 0
  fields = {
      "routing.drop_layers": layers,
      "routing.drop_ratios": ratios,
      "routing.return_layer": back if mode == "skip" and layers else 0,
      "routing.mode": mode,
      "routing.drop_point": draw(st.sampled_from(DROP_POINTS)),
      "routing.ratio_of": draw(st.sampled_from(RATIO_BASES)),
      "routing.score": draw(st.sampled_from(SCORES)),
  }
  noise = {
      "routing.drop_layers": st.lists(ints(-1, max_layer + 2), max_size=3).map(tuple),
      "routing.drop_ratios": st.lists(floats(-0.2, 1.2), max_size=3).map(tuple),
      "routing.return_layer": ints(0, max_layer + 2),
      "routing.mode": st.sampled_from(MODES + ("evit",)),
      "routing.score": st.sampled_from(SCORES + ("norm",)),
  }
  for name in draw(st.lists(st.sampled_from(sorted(noise)), max_size=2, unique=True)):
    fields[name] = draw(noise[name])
  return fields


@st.composite
def toe_fields(draw):
  """Mostly well-formed ToE schedules (start epochs non-decreasing, rates increasing to at most
  1, a seed rate below the first), each part replaced by noise now and then."""
  stages = draw(ints(1, 4))
  epochs = tuple(sorted(draw(st.lists(st.floats(0.0, 4.0), min_size=stages, max_size=stages))))
  rates = tuple(sorted(draw(st.sets(st.sampled_from([0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0]),
                                    min_size=stages, max_size=stages))))
  fields = {
      "toe.enabled": True,
      "toe.expansion_epochs": epochs,
      "toe.keep_rates": rates,
      "toe.init_rate": draw(st.floats(0.05, rates[0])),
      "toe.substeps": draw(ints(1, 3)),
  }
  noise = {
      "toe.expansion_epochs": st.lists(floats(-1.0, 6.0), max_size=4).map(tuple),
      "toe.keep_rates": st.lists(floats(-0.2, 1.3), max_size=4).map(tuple),
      "toe.init_rate": floats(-0.1, 1.2),
      "toe.substeps": ints(-1, 4),
  }
  for name in draw(st.lists(st.sampled_from(sorted(noise)), max_size=2, unique=True)):
    fields[name] = draw(noise[name])
  return fields


# Every config field a run's validity depends on, with values inside and outside its range.
FIELDS = {
    "model.variant": st.sampled_from(["Te/8", "Te/4", "Te/16", "Te/5", "Q/8", "Te/0", "Te"]),
    "model.dtype": st.sampled_from(["float32", "bfloat16", "float16"]),
    "model.attention": st.sampled_from(attention.IMPLEMENTATIONS + ("flash",)),
    "model.gelu": st.sampled_from(["auto", "tanh", "exact", "relu"]),
    "model.stem": st.sampled_from(["patch", "conv", "convolution"]),
    "model.dropout_rate": floats(-0.5, 1.5),
    "model.stochastic_depth": floats(-0.5, 1.5),
    "data.name": st.sampled_from(["synthetic", "fashion_mnist", ""]),
    "data.image_size": st.one_of(st.sampled_from([28, 32, 40, 48, 64]), ints(-8, 300)),
    "data.normalization": st.sampled_from(["dataset", "imagenet", "minus_one_to_one", "unit"]),
    "data.num_threads": ints(-1, 4),
    "data.random_erase": floats(-0.5, 1.5),
    "data.random_translate": ints(-2, 20),
    "data.repeated_augmentations": ints(-1, 5),
    "data.rand_augment": st.sampled_from(["", "rand-m9-mstd0.5-inc1", "rand-x9", "augmix"]),
    "data.synthetic.num_train": ints(-1, 600),
    "batch_size": ints(-2, 300),
    "eval_batch_size": ints(-2, 70),
    "grad_accum_steps": ints(-1, 5),
    "num_epochs": floats(-1.0, 6.0),
    "num_train_steps": ints(-3, 40),
    "drop_warmup_epochs": floats(-1.0, 8.0),
    "optimizer.lr": floats(-1.0, 1.0),
    "optimizer.warmup_epochs": floats(-1.0, 3.0),
    "optimizer.b2": floats(-0.5, 1.5),
    "label_smoothing": floats(-0.5, 1.5),
    "ema_decay": floats(-0.5, 1.5),
    "mix_switch_prob": floats(-0.5, 1.5),
    "log_every_steps": ints(-2, 10),
    "eval_every_epochs": floats(-1.0, 3.0),
    "checkpoint_every_steps": ints(-2, 10),
    "keep_checkpoints": ints(-1, 4),
    "stop_after_step": ints(-3, 10),
    "toe.enabled": st.booleans(),
}


def tiny_base():
  """The default config (6-55-11 after a 1-epoch warm-up) at 32 px, 256 images, batch 32."""
  config = default.get_config()
  config.data.image_size = 32
  config.model.variant = "Te/8"
  config.data.synthetic.num_train = 256
  config.batch_size = 32
  config.eval_batch_size = 32
  config.num_epochs = 2.0
  return config


def assert_forward_has_the_planned_token_counts(config) -> None:
  """Every phase's model traced on a batch of 2 (jax.eval_shape: a forward pass without the
  FLOPs): logits, and exactly the planned kept tokens and ToE tokens."""
  info = pipeline.DatasetInfo(config.data.name, num_classes=3,
                              num_train=validation.known_train_size(config), num_eval=1,
                              has_object_masks=False)
  run = plan_lib.RunPlan.build(config, info)  # the trainer's plan
  size = config.data.image_size
  for phase in run.phases:
    phase_model = run.model.clone(routing=phase.routing, toe=phase.toe)
    (logits, aux), _ = jax.eval_shape(lambda model=phase_model: model.init_with_output(
        jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False))
    assert logits.shape == (2, 3)
    stages = phase_model.routing_plan.stages
    assert len(aux["routing"]) == len(stages)
    for record, stage in zip(aux["routing"], stages):
      assert record["keep_idx"].shape == (2, stage.num_keep)
      assert record["drop_idx"].shape == (2, stage.num_present - stage.num_keep)
    if phase.toe is not None:
      assert aux["toe"]["out_index"].shape == (2, 1 + phase.toe.num_selected)


@FUZZ
@given(st.data())
@pytest.mark.slow
def test_fuzzed_configs_run_as_planned_or_name_the_field(data):
  config = tiny_base()
  names = data.draw(st.lists(st.sampled_from(sorted(FIELDS) + ["routing", "toe"]), max_size=4,
                             unique=True))
  groups = {"routing": routing_fields(), "toe": toe_fields()}
  overrides = {}
  for name in names:
    overrides.update(data.draw(groups[name]) if name in groups
                     else {name: data.draw(FIELDS[name])})
  config.update_from_flattened_dict(overrides)
  try:
    validation.check_config(config)
  except validation.ConfigError as e:  # what main.py reports in one line
    assert FIELD.search(str(e)), f"{e} (from {overrides})"
    event(f"rejected: {FIELD.search(str(e))[0]}")
    return
  event("accepted")
  assert_forward_has_the_planned_token_counts(plan_lib.resolve_choices(config))


@FUZZ
@given(fields=routing_fields(), num_patches=ints(1, 80))
@pytest.mark.slow
def test_fuzzed_routing_configs_plan_or_name_the_field(fields, num_patches):
  try:
    config = RoutingConfig(
        drop_layers=fields["routing.drop_layers"], drop_ratios=fields["routing.drop_ratios"],
        return_layer=fields["routing.return_layer"] or None, mode=fields["routing.mode"],
        drop_point=fields["routing.drop_point"], ratio_of=fields["routing.ratio_of"],
        score=fields["routing.score"])
    plan = config.plan(12, num_patches)
  except ValueError as e:
    assert str(e).startswith("RoutingConfig."), str(e)
    event("rejected")
    return
  event(f"accepted, {len(plan.stages)} drop layers")
  # The plan against the rule, computed here: floor(ratio x base) dropped, at least one kept.
  present = num_patches
  for stage, layer, ratio in zip(plan.stages, config.drop_layers, config.drop_ratios):
    base = present if config.ratio_of == "present" else num_patches
    assert stage.layer == layer and stage.num_present == present
    assert stage.num_keep == present - math.floor(round(ratio * base, 9)) >= 1
    present = stage.num_keep + (config.mode == "fused")
  # ... and the routing itself keeps exactly that many tokens.
  for stage in plan.stages:
    tokens = jnp.zeros((2, 1 + stage.num_present, 4))
    kept, split = jax.eval_shape(
        lambda x, stage=stage: routing.route(x, jnp.zeros(x.shape[:2])[:, 1:], stage, config),
        tokens)
    assert split.keep_idx.shape == (2, stage.num_keep)
    assert kept.shape[1] == 1 + stage.num_keep + (config.mode == "fused")


@FUZZ
@given(fields=toe_fields(), num_patches=st.one_of(ints(16, 200), ints(-1, 15)),
       epoch=st.one_of(st.floats(0.0, 6.0), floats(-1.0, 6.0)))
@pytest.mark.slow
def test_fuzzed_toe_schedules_plan_or_name_the_field(fields, num_patches, epoch):
  epochs, rates = fields["toe.expansion_epochs"], fields["toe.keep_rates"]
  init_rate, substeps = fields["toe.init_rate"], fields["toe.substeps"]
  try:
    plan = toe.make_plan(num_patches, expansion_epochs=epochs, keep_rates=rates,
                         init_rate=init_rate, substeps=substeps, epoch=epoch)
  except ValueError as e:
    assert FIELD.search(str(e)), str(e)
    event("rejected")
    return
  event(f"accepted, {'reducing' if plan.active else 'all tokens'}")
  if not plan.active:  # before the first stage, or a stage that keeps every token
    assert plan.num_selected == num_patches
    return
  assert 1 <= plan.num_selected < num_patches
  assert plan.num_selected == len(plan.seeds) + sum(plan.adds)
  tokens = jnp.zeros((2, 1 + num_patches, 8))
  reduced, out_index = jax.eval_shape(lambda x: toe.expand_tokens(x, plan), tokens)
  assert reduced.shape == (2, 1 + plan.num_selected, 8)
  assert out_index.shape == (2, 1 + plan.num_selected)


@pytest.mark.parametrize("overrides,field", [
    ({"log_every_steps": 0}, "config.log_every_steps"),
    ({"checkpoint_every_steps": 0}, "config.checkpoint_every_steps"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints"),
    ({"eval_every_epochs": 0.0}, "config.eval_every_epochs"),
    ({"num_epochs": 0.0}, "config.num_epochs"),
    ({"num_epochs": -1.0}, "config.num_epochs"),
    ({"num_train_steps": 0}, "config.num_train_steps"),
    ({"drop_warmup_epochs": 2.0}, "config.drop_warmup_epochs"),  # as long as the run
    ({"routing.mode": "evit"}, "config.routing.mode"),
    ({"model.gelu": "relu"}, "config.model.gelu"),
    ({"model.stem": "convolution"}, "config.model.stem"),
    ({"model.stem": "conv", "model.variant": "Te/6", "data.image_size": 36}, "config.model.stem"),
    ({"data.normalization": "unit"}, "config.data.normalization"),
    ({"toe.enabled": True, "toe.expansion_epochs": (3, 4, 5)}, "config.toe.expansion_epochs"),
    ({"optimizer.lr": math.nan}, "config.optimizer.lr"),
    ({"data.image_size": 36}, "config.data.image_size"),  # not a multiple of 8
    ({"data.random_translate": 16}, "config.data.random_translate"),  # half of 32 px
    ({"data.random_translate": -1}, "config.data.random_translate"),
])
def test_a_bad_field_fails_validation_naming_itself(overrides, field):
  config = tiny_base()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(validation.ConfigError, match=re.escape(field)):
    validation.check_config(config)


def test_with_toe_a_drop_layer_before_layer_2_is_the_models_error_naming_the_config():
  config = tiny_base()
  config.update_from_flattened_dict({
      "toe.enabled": True, "toe.expansion_epochs": (0.0, 1.0), "toe.keep_rates": (0.5, 1.0),
      "routing.drop_layers": (1,), "routing.drop_ratios": (0.5,), "drop_warmup_epochs": 0.0})
  with pytest.raises(validation.ConfigError) as error:
    validation.check_config(config)
  message = str(error.value)
  assert message.startswith("RoutingConfig.drop_layers: with ToE (after layer 1) drop layers "
                            "must be in 2..12, got (1,)")  # the model's own message
  assert message.endswith("(config.routing with config.toe, phase toe_stage1+routed)")
  config.routing.drop_layers = (2,)
  validation.check_config(config)


def test_a_config_from_before_model_stem_and_gelu_builds_the_patch_stem_and_tanh():
  config = tiny_base()
  with config.unlocked():
    del config.model["stem"]
    del config.model["gelu"]
  validation.check_config(config)
  model = plan_lib.build_model(config, num_classes=3)
  assert (model.stem, model.gelu) == ("patch", "tanh")
  assert plan_lib.resolve_choices(config).model.gelu == "tanh"
