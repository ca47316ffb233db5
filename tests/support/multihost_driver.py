"""One process of the two-process test (tests/test_multihost.py): trains the tiny config and
saves this process's final parameters.

  python -m tests.support.multihost_driver DATA OUT
"""

import sys

import numpy as np

from skipvit_jax.train import loop
from tests import test_train


def main(data_dir: str, out_dir: str) -> None:
  config = test_train.tiny_config(data_dir)
  result = loop.train_and_evaluate(config, f"{out_dir}/workdir")
  import jax  # only after the trainer initialised the distributed runtime

  leaves = {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(result.params))}
  np.savez(f"{out_dir}/params_{jax.process_index()}.npz", step=result.step,
           process_count=jax.process_count(), local_devices=jax.local_device_count(),
           top1=result.eval_metrics["eval/top1"],
           num_examples=result.eval_metrics["eval/num_examples"], **leaves)


if __name__ == "__main__":
  main(*sys.argv[1:])
