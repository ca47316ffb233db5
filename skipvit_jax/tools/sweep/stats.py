"""A sweep's numbers over seeds: mean and sample standard deviation per run name, and the
paired difference to the dense run with its 95% t interval.

The spread over seeds can hide what a routing choice changes, so a routed run is compared
with the dense run of the same seed (same initialisation and data order) and the interval is
Student's t over the paired differences: mean ± t_{0.975, n-1} s / sqrt(n) for
n seeds both finished, with the exact quantile (scipy), not a normal or tabulated one.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as scipy_stats

from skipvit_jax.tools.sweep import schema

# Top-1 columns compared with the dense run of the same seed.
PAIRED = (schema.TOP1, schema.TOP1_ALL_TOKENS)


def t_975(df: int) -> float:
  """Student's t quantile t_{0.975} with `df` >= 1 degrees of freedom: the half-width of a 95%
  interval of a mean of df + 1 values, in standard errors."""
  if df < 1:
    raise ValueError(f"need df >= 1, got {df}")
  return float(scipy_stats.t.ppf(0.975, df))


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]
                      ) -> dict[str, float | int | None]:
  """Mean of values[seed] - reference[seed] over the seeds both have.

  Returns:
    {"mean", "ci95": the half-width of its 95% t interval, "pairs": how many seeds}; "mean"
    is None without pairs, "ci95" with fewer than two.
  """
  diffs = [values[seed] - reference[seed] for seed in values if seed in reference]
  if not diffs:
    return {"mean": None, "ci95": None, "pairs": 0}
  ci = (t_975(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        if len(diffs) > 1 else None)
  return {"mean": statistics.fmean(diffs), "ci95": ci, "pairs": len(diffs)}


def seed_values(rows: Sequence[Mapping[str, Any]], name: str, column: str) -> dict[int, float]:
  """{seed: column} over the finished runs called `name` that report `column`."""
  return {r[schema.SEED]: r[column] for r in rows
          if r[schema.NAME] == name and r[schema.STATUS] == schema.DONE
          and r.get(column) is not None}


def aggregate(rows: Sequence[Mapping[str, Any]], dense: str | None = None) -> list[dict]:
  """Per run name, in first-seen order, over its finished runs: the mean and sample std of
  every metric column (schema.metric_columns; std None with one seed), and with `dense`, each
  PAIRED column's paired difference to the dense run of the same seed (field names:
  schema.mean_field, std_field, vs_dense_field)."""
  reference = {column: seed_values(rows, dense, column) for column in PAIRED} if dense else {}
  out = []
  for name in dict.fromkeys(r[schema.NAME] for r in rows):
    finished = [r for r in rows if r[schema.NAME] == name and r[schema.STATUS] == schema.DONE]
    entry = {schema.NAME: name, schema.SEEDS: len(finished)}
    for column in schema.metric_columns(rows):
      values = [r[column] for r in finished if r.get(column) is not None]
      entry[schema.mean_field(column)] = statistics.fmean(values) if values else None
      entry[schema.std_field(column)] = statistics.stdev(values) if len(values) > 1 else None
    if dense and name != dense:
      for column in PAIRED:
        entry[schema.vs_dense_field(column)] = paired_difference(
            seed_values(rows, name, column), reference[column])
    out.append(entry)
  return out
