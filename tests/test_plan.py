"""The run's plan: every step count and phase boundary derived once from the config."""

import pytest

from configs import default
from skipvit_jax.data import pipeline
from skipvit_jax.train import plan, validation

# 130 examples in batches of 32: 4 steps per epoch (the incomplete last batch is dropped).
INFO = pipeline.DatasetInfo("synthetic", num_classes=8, num_train=130, num_eval=10,
                            has_object_masks=True)


def config_with(**fields):
  config = default.get_config()  # 6-55-11 after a drop warm-up
  config.update_from_flattened_dict({
      "data.image_size": 32, "model.variant": "Te/8", "data.synthetic.num_train": 130,
      "batch_size": 32, "eval_batch_size": 2, **fields})
  return config


def test_epochs_become_the_nearest_step_everywhere():
  config = config_with(num_epochs=2.5, drop_warmup_epochs=1.3, eval_every_epochs=0.6,
                       **{"optimizer.warmup_epochs": 0.5, "optimizer.warmup_lr": 0.0,
                          "optimizer.lr": 1e-3})
  validation.check_config(config)
  run = plan.RunPlan.build(config, INFO)
  assert (run.steps_per_epoch, run.total_steps, run.eval_every_steps) == (4, 10, 2)
  # The drop warm-up: 1.3 epochs of 4 steps is 5 steps, all tokens, then the routing.
  assert [(p.name, p.start_step, p.end_step) for p in run.phases] == [
      ("drop_warmup", 0, 5), ("routed", 5, 10)]
  assert run.phases[1].routing == run.model.routing and run.model.routing.routes
  # The learning-rate warm-up: 0.5 epochs is 2 steps, to the peak.
  assert float(run.learning_rate(0)) == 0.0
  assert float(run.learning_rate(2)) == pytest.approx(1e-3)


def test_num_train_steps_overrides_the_epochs():
  run = plan.RunPlan.build(config_with(num_train_steps=7, drop_warmup_epochs=1.0), INFO)
  assert run.total_steps == 7
  assert [(p.start_step, p.end_step) for p in run.phases] == [(0, 4), (4, 7)]


def test_validation_rejects_the_warmup_the_plan_counts_as_the_whole_run():
  config = config_with(num_epochs=2.5, drop_warmup_epochs=2.4)  # round(9.6) = 10 of 10 steps
  assert plan.drop_warmup_steps(config, 4) == plan.total_train_steps(config, 4) == 10
  with pytest.raises(validation.ConfigError, match="drop warm-up lasts 10"):
    validation.check_run_length(config, INFO.num_train)


def test_fields_a_config_predates_read_as_every_earlier_run_had_them():
  config = config_with()
  with config.unlocked():
    del config.model["stem"]
  assert plan.config_value(config, "model.stem") == plan.ADDED_FIELDS["model.stem"] == "patch"
  config.model.variant = "Te/4"
  assert plan.config_value(config, "model.variant") == "Te/4"
  with pytest.raises(KeyError):
    plan.config_value(config, "model.no_such_field")  # only the table's fields have defaults
