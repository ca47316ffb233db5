"""Exports a training workdir's latest parameters as a `.npz` other ViT code reads.

  python -m skipvit_jax.tools.export --workdir /tmp/dense --out /tmp/dense.npz
  python -m skipvit_jax.tools.export --workdir /tmp/dense --out /tmp/dense.npz --format big_vision

A SkipViT or ToE run is an ordinary ViT at test time, so its export loads wherever a
vision_transformer (or big_vision) checkpoint does, `config.init_from` included. The formats are
described in skipvit_jax/models/pretrained.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from skipvit_jax.models import pretrained


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m skipvit_jax.tools.export",
      description="Exports a training workdir's latest parameters as a .npz other tools read.")
  parser.add_argument("--workdir", required=True, help="a skipvit_jax workdir or checkpoint dir")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--format", default="vision_transformer",
                      choices=pretrained.EXPORT_FORMATS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parse_args(argv)
  params = pretrained.workdir_params(args.workdir)
  path = pretrained.save(params, args.out, args.format)
  print(f"wrote {path} ({args.format}, {pretrained.num_arrays(params)} arrays)")


if __name__ == "__main__":
  main()
