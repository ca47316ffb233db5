"""Draws docs/results.md's figures and prints its tables from a reproduction sweep directory.

  python docs/figures.py --sweep_dir docs/reproduction/synthetic --out docs/figures/synthetic

Writes accuracy_vs_speedup.png (top-1 against measured training speedup, mean over each run's
seeds, the Pareto front joined) and recall_vs_epoch.png (kept-object recall of the first drop
layer over training, seed 0, against the keep ratio a random router would recall). Prints the
summary table docs/results.md shows (markdown), then the claims' contrasts as JSON: for each
pair of runs (CONTRASTS), the paired difference over the seeds both finished, with its 95% t
interval (skipvit_jax.tools.sweep.runner.paired_difference).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from skipvit_jax.tools.sweep import runner
from skipvit_jax.tools.viz import plots, sweeps

RECALL = "eval/kept_object_recall_0"
KEEP_RATIO = "eval/keep_ratio_0"
# (run, reference, metric): the comparisons docs/results.md judges the claims by.
CONTRASTS = (
    ("6-45-11", "6-45-fused", "top1"),  # skip connection against the fused token
    ("6-55-11", "dense", "top1"),  # dropping tokens against none
    ("6-55-11", "6-55-11_warmup0", "top1"),  # drop warm-up against none
    ("6-55-11", "6-55-11_random", "top1"),  # [CLS]-attention ranking against a random subset
    ("6-55-11", "6-55-11_random", "kept_object_recall_0"),
    ("toe", "dense", "top1"),  # ToE against none
    ("toe+6-55-11", "toe", "top1"),  # SkipViT on top of ToE
)
RECALL_RUNS = ("6-55-11", "6-55-11_warmup0", "6-55-11_random", "6-45-11", "4.7-30.30-10",
               "toe+6-55-11")


def contrasts(rows: list[dict]) -> list[dict]:
  """CONTRASTS over the finished runs of results.json's per-run rows."""
  return [{"run": run, "reference": reference, "metric": metric,
           **runner.paired_difference(runner.seed_values(rows, run, metric),
                                     runner.seed_values(rows, reference, metric))}
          for run, reference, metric in CONTRASTS]


def _mean_sd(entry: dict, column: str, scale: float = 1.0, digits: int = 1) -> str:
  mean, sd = entry.get(f"{column}_mean"), entry.get(f"{column}_std")
  if mean is None:
    return "-"
  return f"{scale * mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


def summary_table(means: list[dict], rows: list[dict]) -> str:
  """docs/results.md's table: per run, mean ± sd over seeds and the paired difference to dense
  (`means`: results.json's mean_std_over_seeds; `rows`: its per-run rows)."""
  keep_ratio = {r["name"]: r["keep_ratio_0"] for r in rows if r.get("keep_ratio_0") is not None}
  lines = ["| run | seeds | top-1 % routed | top-1 % all tokens | routed - dense, same seed "
           "(points, 95% CI) | kept-object recall (keep ratio) | measured speedup | "
           "FLOP-ideal |", "|---|---|---|---|---|---|---|---|"]
  for m in means:
    if not m["seeds"]:
      continue
    diff = m.get("top1_vs_dense") or {}
    if diff.get("mean") is None:
      paired = "-"
    elif diff["ci95"] is None:
      paired = f"{100 * diff['mean']:+.2f} (1 pair)"
    else:
      paired = f"{100 * diff['mean']:+.2f} ± {100 * diff['ci95']:.2f}"
    recall = _mean_sd(m, "kept_object_recall_0", digits=3)
    if recall != "-":
      recall += f" ({keep_ratio[m['name']]:.3f})"
    lines.append(
        f"| {m['name']} | {m['seeds']} | {_mean_sd(m, 'top1', 100, 2)} | "
        f"{_mean_sd(m, 'top1_all_tokens', 100, 2)} | {paired} | {recall} | "
        f"{_mean_sd(m, 'speedup_measured', digits=2)}x | {m['speedup_ideal_mean']:.2f}x |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sweep_dir", required=True)
  parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.sweep_dir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  means = results["mean_std_over_seeds"]
  print(summary_table(means, results["runs"]))
  print(json.dumps(contrasts(results["runs"]), indent=1))

  points = [{"name": m["name"], sweeps.SPEEDUP: m["speedup_measured_mean"],
             sweeps.ACCURACY: 100 * m["top1_mean"]}
            for m in means if m["seeds"] and m["speedup_measured_mean"] is not None]
  ax = plots.plot_pareto(points, label_all=True)
  ax.set_xlabel("measured training speedup over dense (same seed)")
  ax.set_ylabel("top-1 % with the run's routing (mean over seeds)")
  ax.figure.tight_layout()
  ax.figure.savefig(os.path.join(args.out, "accuracy_vs_speedup.png"), dpi=150)

  histories, keep_ratio = {}, None
  for name in RECALL_RUNS:
    run_dir = os.path.join(args.sweep_dir, f"{name}_seed0")
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
      histories[name] = sweeps.eval_history(run_dir, RECALL)
      if name == "6-55-11":
        keep_ratio = sweeps.eval_history(run_dir, KEEP_RATIO)[1][-1]
  ax = plots.plot_eval_history(histories, ylabel="kept-object recall, first drop layer",
                               reference=keep_ratio, reference_label="keep ratio of 6-55-11")
  ax.figure.tight_layout()
  ax.figure.savefig(os.path.join(args.out, "recall_vs_epoch.png"), dpi=150)


if __name__ == "__main__":
  main()
