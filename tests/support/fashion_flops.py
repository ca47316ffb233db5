"""The Fashion-MNIST race's FLOP target (docs/method.md §10): row=6-55-11's whole-run
FLOP-ideal speedup on configs/fashion_mnist.py, and the run's arguments to flops.run_speedup."""

from configs import fashion_mnist
from skipvit_jax.data import fashion_mnist as fashion_data
from skipvit_jax.data import pipeline
from skipvit_jax.models import flops
from skipvit_jax.train import plan


def target_6_55_11() -> tuple[float, dict]:
  """(6-55-11's run speedup, the recipe's image size, classes, steps and warm-up steps)."""
  config = fashion_mnist.get_config("row=6-55-11")
  model = plan.build_model(config, 10)
  per_epoch = pipeline.steps_per_epoch(fashion_data.NUM_TRAIN, config.batch_size)
  total = plan.total_train_steps(config, per_epoch)
  target = flops.schedule_speedup(
      model.variant, phases=plan.training_phases(config, model, per_epoch, total),
      image_size=28, num_classes=10)
  run = dict(image_size=28, num_classes=10, total_steps=total,
             warmup_steps=plan.drop_warmup_steps(config, per_epoch))
  return target, run
