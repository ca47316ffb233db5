"""Tools that read and drive training workdirs: sweeps (`python -m skipvit_jax.tools.sweep`),
checkpoint export (`python -m skipvit_jax.tools.export`), `inspect_run` and `viz` for the
notebooks. Tools call `train` and `models`; neither imports tools."""
