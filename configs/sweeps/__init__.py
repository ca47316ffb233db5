"""Sweep definitions, run with `python -m skipvit_jax.sweep` (format: skipvit_jax/sweep.py).

Also the SkipViT paper's row names as config overrides, shared by the sweep files.
"""

from __future__ import annotations

from typing import Any

from skipvit_jax.routing import RoutingConfig


def paper_row(row: str) -> dict[str, Any]:
  """Routing overrides for a Table 1 row name (see RoutingConfig.from_paper_row)."""
  routing = RoutingConfig.from_paper_row(row)
  return {
      "routing.drop_layers": routing.drop_layers,
      "routing.drop_ratios": routing.drop_ratios,
      "routing.return_layer": routing.return_layer or 0,  # 0: none (the fused row)
      "routing.mode": routing.mode,
  }
