"""Sweep definitions, run with `python -m skipvit_jax.sweep` (format: skipvit_jax/sweep.py).

Also the SkipViT paper's row names as config overrides, shared by the sweep files.
"""

from __future__ import annotations

from typing import Any


def paper_row(row: str) -> dict[str, Any]:
  """Routing overrides for a Table 1 row name, as configs/skipvit_s16_imagenet.py reads it.

  "6-55-11": drop 55% of the tokens at layer 6, return them before layer 11; "4.7-30.30-10":
  30% at layers 4 and 7, back before 10; "6-45-fused": 45% at layer 6 into EViT's fused token
  (nothing returns). tests/test_sweep.py checks that both readings agree.
  """
  layers, ratios, back = row.split("-")
  overrides: dict[str, Any] = {
      "routing.drop_layers": tuple(int(layer) for layer in layers.split(".")),
      "routing.drop_ratios": tuple(int(r) / 100 for r in ratios.split(".")),
  }
  if back == "fused":
    overrides["routing.mode"] = "fused"
  else:
    overrides["routing.return_layer"] = int(back)
  return overrides
