"""Pallas kernels for skipvit_jax; standalone (nothing here imports skipvit_jax)."""
