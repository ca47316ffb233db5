"""Input data: the embedded synthetic dataset (`synthetic`), built with TFDS.

Submodules import tensorflow_datasets; this package does not, so `skipvit_jax` imports
without the data stack.
"""
