"""What the notebooks show, by job:

  maps     per-patch maps from a model's `aux`: where [CLS] looks at each layer, which patches
           a drop layer kept, ToE's selection order (numpy in, numpy out; no matplotlib);
  compare  runs side by side (numbers and labels, no matplotlib): the accuracy-speed Pareto
           front, each run's value of a swept parameter, a plain-text runs table, a metric
           over a run's evaluations;
  plots    matplotlib figures of both (matplotlib is imported when a plot is drawn).

A sweep's result rows come from tools/sweep/results.py (`read_results`, `finished_rows`).
"""
