"""How a run proceeds: config -> plan -> data -> step -> metrics, checkpoints and evaluation.

`loop.train_and_evaluate(config, workdir)` is the trainer; `plan` turns a validated config into
the model, its phases and the optimizer; `step` is the compiled training step.
"""
