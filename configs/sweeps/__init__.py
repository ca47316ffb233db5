"""Sweep definitions, run with `python -m skipvit_jax.tools.sweep` (the format:
skipvit_jax/tools/sweep/spec.py).

Also the SkipViT paper's row names as config overrides, shared by the sweep files.
"""

from __future__ import annotations

from typing import Any

from skipvit_jax.models.routing import RoutingConfig


def paper_row(row: str) -> dict[str, Any]:
  """Routing overrides for a Table 1 row name (see RoutingConfig.from_paper_row)."""
  routing = RoutingConfig.from_paper_row(row)
  return {
      "routing.drop_layers": routing.drop_layers,
      "routing.drop_ratios": routing.drop_ratios,
      "routing.return_layer": routing.return_layer or 0,  # 0: none (the fused row)
      "routing.mode": routing.mode,
  }


# The rows of the reproduction (docs/results.md): each claim of the two papers has its runs.
REPRODUCTION_ROWS = ("6-55-11", "6-50-11", "6-45-11", "6-45-fused", "4.7-30.30-11",
                     "4.7-30.30-10")


def reproduction_runs(*, dense: str, toe: str, toe_skipvit: str, warmup_epochs: float,
                      every_run: dict[str, Any]) -> list[dict[str, Any]]:
  """The reproduction's runs over one dataset's configs.

  dense, toe, toe_skipvit: the base configs (file:arg) of the dense model, ToE alone and ToE
    with the 6-55-11 routing; every SkipViT row runs over `dense` with the rows' routing, after
    `warmup_epochs` on all tokens (a `_warmup0` run drops from the first step).
  every_run: overrides of every run (e.g. the evaluation cadence).
  """
  def row(name: str, row_name: str, warmup: float, **extra) -> dict[str, Any]:
    return {"name": name, "overrides": {**paper_row(row_name), "drop_warmup_epochs": warmup,
                                        **extra, **every_run}}

  return [
      {"name": "dense", "base": dense, "overrides": every_run},
      *(row(name, name, warmup_epochs) for name in REPRODUCTION_ROWS),
      row("6-55-11_warmup0", "6-55-11", 0.0),
      row("6-55-11_random", "6-55-11", warmup_epochs, **{"routing.score": "random"}),
      {"name": "toe", "base": toe, "overrides": every_run},
      {"name": "toe+6-55-11", "base": toe_skipvit, "overrides": every_run},
  ]
