"""What the notebooks show, by job:

  maps    per-patch maps from a model's `aux`: where [CLS] looks at each layer, which patches
          a drop layer kept, ToE's selection order (numpy in, numpy out; no matplotlib);
  sweeps  a sweep's results as rows and tables: finished runs, per-parameter values, the
          accuracy-speed Pareto front, a run's evaluation history;
  plots   matplotlib figures of both (matplotlib is imported when a plot is drawn).
"""
