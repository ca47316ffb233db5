"""results.md: a sweep's rows as Markdown tables. One table per run dir; with several seeds, a
table of the mean ± std over seeds and the paired difference to dense (stats.py); then the
failed runs with the end of their logs. Cells are rounded for reading: results.json keeps the
full values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from skipvit_jax.tools.sweep import schema, spec, stats
from skipvit_jax.train.throughput import format_duration

_TITLES = {
    schema.TOP1: "top-1 %", schema.TOP1_ALL_TOKENS: "top-1 all tokens %",
    schema.IMAGES_PER_SEC: "train img/s", schema.SPEEDUP: "measured speedup",
    schema.IDEAL_SPEEDUP: "FLOP-ideal speedup", schema.WALL_TIME: "wall",
    schema.NUM_EXAMPLES: "eval examples",
}
# The per-run table's metric columns, in order.
_RUN_METRICS = (schema.TOP1, schema.TOP1_ALL_TOKENS, schema.IMAGES_PER_SEC, schema.SPEEDUP,
                schema.IDEAL_SPEEDUP, schema.WALL_TIME, schema.NUM_EXAMPLES)


def _fmt(column: str, value: Any) -> str:
  """A cell: top-1 in percent, speedups as "1.23x", recall and keep ratio to 3 digits."""
  if value is None:
    return "-"
  if column in (schema.TOP1, schema.TOP1_ALL_TOKENS):
    return f"{100 * value:.1f}"
  if column in (schema.SPEEDUP, schema.IDEAL_SPEEDUP):
    return f"{value:.2f}x"
  if column == schema.WALL_TIME:
    return format_duration(value)
  if column == schema.IMAGES_PER_SEC:
    return f"{value:.0f}"
  if column.startswith((schema.KEPT_OBJECT_RECALL, schema.KEEP_RATIO)):
    return f"{value:.3f}"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def _markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]


def _recall_cell(row: Mapping[str, Any], recalls: Sequence[str]) -> str:
  """"0.753 (0.453)": recall at each drop layer with its keep ratio, a random choice's recall."""
  cells = []
  for key in recalls:
    if row.get(key) is not None:
      ratio = row.get(key.replace(schema.KEPT_OBJECT_RECALL, schema.KEEP_RATIO))
      cells.append(f"{_fmt(key, row[key])} ({_fmt(key, ratio)})")
  return " / ".join(cells) or "-"


def _mean_std_cell(column: str, entry: Mapping[str, Any]) -> str:
  mean, std = entry[schema.mean_field(column)], entry[schema.std_field(column)]
  if mean is None:
    return "-"
  return _fmt(column, mean) if std is None else f"{_fmt(column, mean)} ± {_fmt(column, std)}"


def _paired_cell(difference: Mapping[str, Any] | None) -> str:
  """"+0.4 ± 0.9 (3)": mean paired difference in points of top-1, 95% half-width, pairs."""
  if not difference or difference["mean"] is None:
    return "-"
  mean = f"{100 * difference['mean']:+.1f}"
  if difference["ci95"] is None:
    return f"{mean} ({difference['pairs']})"
  return f"{mean} ± {100 * difference['ci95']:.1f} ({difference['pairs']})"


def markdown(sweep: spec.Sweep, rows: Sequence[Mapping[str, Any]],
             means: Sequence[Mapping[str, Any]],
             overrides: Mapping[str, Any] | None = None) -> str:
  """results.md from the result rows and `means` (stats.aggregate(rows, sweep.dense));
  `overrides`: the sweep-wide ones, listed above the tables."""
  recalls = [c for c in schema.columns(rows) if c.startswith(schema.KEPT_OBJECT_RECALL)]
  show_base = len({r[schema.BASE] for r in rows}) > 1
  lines = [f"# Sweep {sweep.path}", ""]
  if overrides:
    every = " ".join(f"`{k}={spec.format_value(v)}`" for k, v in overrides.items())
    lines += [f"Every run: {every}", ""]
  header = ["run", "seed", "status", *(_TITLES[c] for c in _RUN_METRICS),
            "kept-object recall (keep ratio)",
            *(["base"] if show_base else []), "overrides"]
  cells = [[r[schema.NAME], str(r[schema.SEED]), r[schema.STATUS],
            *(_fmt(c, r[c]) for c in _RUN_METRICS), _recall_cell(r, recalls),
            *([r[schema.BASE]] if show_base else []),
            spec.overrides_text(r[schema.OVERRIDES]) or "-"]
           for r in rows]
  lines += _markdown_table(header, cells)
  if len({r[schema.SEED] for r in rows}) > 1:
    columns = schema.metric_columns(rows)
    paired = [c for c in stats.PAIRED if sweep.dense]
    cells = [[m[schema.NAME], str(m[schema.SEEDS]), *(_mean_std_cell(c, m) for c in columns),
              *(_paired_cell(m.get(schema.vs_dense_field(c))) for c in paired)]
             for m in means]
    titles = [_TITLES.get(c, c.replace(f"{schema.KEPT_OBJECT_RECALL}_", "kept-object recall "))
              for c in columns]
    titles += [f"{_TITLES[c]} - dense, same seed (95% CI)" for c in paired]
    lines += ["", "## Mean ± std over seeds", "",
              *_markdown_table(["run", "seeds", *titles], cells)]
  failed = [r for r in rows if r[schema.STATUS] == schema.FAILED]
  if failed:
    lines += ["", "## Failed runs"]
    for r in failed:
      lines += ["", f"{r[schema.NAME]} seed {r[schema.SEED]} ({r[schema.RUN_DIR]}):", "", "```",
                r[schema.ERROR], "```"]
  return "\n".join(lines) + "\n"
