"""Draws docs/results.md's figures and prints its tables from a reproduction sweep directory.

  python docs/figures.py --sweep_dir docs/reproduction/synthetic --out docs/figures/synthetic
  python docs/figures.py --sweep_dir docs/reproduction/race_fashion_mnist \
      --out docs/figures/race_fashion_mnist --no_recall

Writes accuracy_vs_speedup.png (top-1 against measured training speedup, mean ± sd over each
run's seeds, one marker per method, the Pareto front joined) and, unless --no_recall,
recall_vs_epoch.png (kept-object recall of the first drop layer over training, seed 0, against
the keep ratio a random router would recall). Prints the
summary table docs/results.md shows (markdown), then the claims' contrasts as JSON: for each
pair of runs (CONTRASTS), the paired difference over the seeds both finished, with its 95% t
interval (skipvit_jax.tools.sweep.stats.paired_difference).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from skipvit_jax.tools.sweep import results, schema, stats
from skipvit_jax.tools.viz import compare, plots
from skipvit_jax.train.metrics import metrics_path

RECALL = "eval/kept_object_recall_0"  # the trainer's metric over evaluations
KEEP_RATIO = "eval/keep_ratio_0"
TOP1, RECALL_0 = schema.TOP1, schema.kept_object_recall(0)
# (run, reference, metric): the comparisons docs/results.md judges the claims by.
CONTRASTS = (
    ("6-45-11", "6-45-fused", TOP1),  # skip connection against the fused token
    ("6-55-11", "dense", TOP1),  # dropping tokens against none
    ("6-55-11", "6-55-11_warmup0", TOP1),  # drop warm-up against none
    ("6-55-11", "6-55-11_random", TOP1),  # [CLS]-attention ranking against a random subset
    ("6-55-11", "6-55-11_random", RECALL_0),
    ("toe", "dense", TOP1),  # ToE against none
    ("toe+6-55-11", "toe", TOP1),  # SkipViT on top of ToE
    # The race at 6-55-11's FLOPs (configs/sweeps/race_fashion_mnist.py), then at more saving.
    ("tome_3i0.2_from3", "6-55-11", TOP1),
    ("patchdrop_40of49", "6-55-11", TOP1),
    ("tome_3i0.2_from3", "patchdrop_40of49", TOP1),
    ("tome_3i0.2_from3", "6-55-11", schema.SPEEDUP),
    ("patchdrop_40of49", "6-55-11", schema.SPEEDUP),
    ("tome_3", "patchdrop_31of49", TOP1),
    ("tome_3", "patchdrop_31of49", schema.SPEEDUP),
)
RECALL_RUNS = ("6-55-11", "6-55-11_warmup0", "6-55-11_random", "6-45-11", "4.7-30.30-10",
               "toe+6-55-11")


def method(run: str) -> str:
  """The method a run name in the reproduction sweeps belongs to (the figure's marker)."""
  for prefix, name in (("dense", "dense"), ("tome", "ToMe"), ("patchdrop", "PatchDropout"),
                       ("toe+", "ToE + SkipViT"), ("toe", "ToE")):
    if run.startswith(prefix):
      return name
  return "random selection" if run.endswith("_random") else "SkipViT"


def contrasts(rows: list[dict]) -> list[dict]:
  """CONTRASTS over the finished runs of results.json's per-run rows."""
  return [{"run": run, "reference": reference, "metric": metric,
           **stats.paired_difference(stats.seed_values(rows, run, metric),
                                     stats.seed_values(rows, reference, metric))}
          for run, reference, metric in CONTRASTS]


def _mean_sd(entry: dict, column: str, scale: float = 1.0, digits: int = 1) -> str:
  mean, sd = entry.get(schema.mean_field(column)), entry.get(schema.std_field(column))
  if mean is None:
    return "-"
  return f"{scale * mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


def summary_table(means: list[dict], rows: list[dict]) -> str:
  """docs/results.md's table: per run, mean ± sd over seeds and the paired difference to dense
  (`means`: results.json's mean_std_over_seeds; `rows`: its per-run rows)."""
  keep_ratio = {r[schema.NAME]: r[schema.keep_ratio(0)] for r in rows
                if r.get(schema.keep_ratio(0)) is not None}
  lines = [("| run | seeds | top-1 % routed | top-1 % all tokens | routed - dense, same seed "
            "(points, 95% CI) | kept-object recall (keep ratio) | measured speedup | "
            "FLOP-ideal |"), "|---|---|---|---|---|---|---|---|"]
  for m in means:
    if not m[schema.SEEDS]:
      continue
    diff = m.get(schema.vs_dense_field(TOP1)) or {}
    if diff.get("mean") is None:
      paired = "-"
    elif diff["ci95"] is None:
      paired = f"{100 * diff['mean']:+.2f} (1 pair)"
    else:
      paired = f"{100 * diff['mean']:+.2f} ± {100 * diff['ci95']:.2f}"
    recall = _mean_sd(m, RECALL_0, digits=3)
    if recall != "-":
      recall += f" ({keep_ratio[m[schema.NAME]]:.3f})"
    lines.append(
        f"| {m[schema.NAME]} | {m[schema.SEEDS]} | {_mean_sd(m, TOP1, 100, 2)} | "
        f"{_mean_sd(m, schema.TOP1_ALL_TOKENS, 100, 2)} | {paired} | {recall} | "
        f"{_mean_sd(m, schema.SPEEDUP, digits=2)}x | "
        f"{m[schema.mean_field(schema.IDEAL_SPEEDUP)]:.2f}x |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sweep_dir", required=True)
  parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
  parser.add_argument("--no_recall", action="store_true",
                      help="skip recall_vs_epoch.png (a sweep without SkipViT's ablations)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  sweep = results.read_results(args.sweep_dir)
  means = sweep.mean_std_over_seeds
  print(summary_table(means, sweep.runs))
  print(json.dumps([c for c in contrasts(sweep.runs) if c["pairs"]], indent=1))

  speedup, top1 = schema.mean_field(schema.SPEEDUP), schema.mean_field(TOP1)
  speedup_sd, top1_sd = schema.std_field(schema.SPEEDUP), schema.std_field(TOP1)
  points = [{schema.NAME: m[schema.NAME], "method": method(m[schema.NAME]),
             schema.SPEEDUP: m[speedup], TOP1: 100 * m[top1], "speedup_sd": m[speedup_sd],
             "top1_sd": None if m[top1_sd] is None else 100 * m[top1_sd]}
            for m in means if m[schema.SEEDS] and m[speedup] is not None]
  ax = plots.plot_pareto(points, label_all=True, x_err_key="speedup_sd", y_err_key="top1_sd",
                         group_key="method")
  ax.set_xlabel("measured training speedup over dense (same seed), mean ± sd")
  ax.set_ylabel("top-1 % with the run's routing, mean ± sd over seeds")
  ax.figure.tight_layout()
  ax.figure.savefig(os.path.join(args.out, "accuracy_vs_speedup.png"), dpi=150)
  if args.no_recall:
    return

  histories, keep_ratio = {}, None
  for name in RECALL_RUNS:
    run_dir = os.path.join(args.sweep_dir, f"{name}_seed0")
    if os.path.exists(metrics_path(run_dir)):
      histories[name] = compare.eval_history(run_dir, RECALL)
      if name == "6-55-11":
        keep_ratio = compare.eval_history(run_dir, KEEP_RATIO)[1][-1]
  ax = plots.plot_eval_history(histories, ylabel="kept-object recall, first drop layer",
                               reference=keep_ratio, reference_label="keep ratio of 6-55-11")
  ax.figure.tight_layout()
  ax.figure.savefig(os.path.join(args.out, "recall_vs_epoch.png"), dpi=150)


if __name__ == "__main__":
  main()
