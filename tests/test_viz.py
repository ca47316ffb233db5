"""skipvit_jax.tools.viz (maps, compare, plots): attention maps on the patch grid, kept-patch
overlays, ToE seeds / order / merge groups (toe.merge_assignment against
tests/support/toe_reference.py), the Pareto front, swept parameters, runs tables, evaluation
histories and the plots of all of them."""

import math

import jax
import numpy as np
import pytest

from skipvit_jax import RoutingConfig, ViT
from skipvit_jax.models import toe
from skipvit_jax.tools.viz import compare, plots
from skipvit_jax.tools.viz import maps as patch_maps
from skipvit_jax.train.metrics import MetricWriter
from tests.support import toe_reference

HIGHEST = jax.lax.Precision.HIGHEST
TINY = dict(variant="Te/4", image_size=32, num_classes=8)  # 64 patches of 4x4 pixels
SKIP = RoutingConfig((6,), (0.5,), 11)  # keep 32 of 64 at layer 6, back before layer 11
TOE_SCHEDULE = dict(expansion_epochs=(0, 1, 2), keep_rates=(0.5, 0.75, 1.0), init_rate=0.25,
                    substeps=2)
STAGE1 = toe.make_plan(64, epoch=0, **TOE_SCHEDULE)  # 16 seeds + 8 + 8 -> 32 of 64 patches


def _forward(model, batch=2, seed=0):
  images = jax.random.normal(jax.random.key(seed), (batch, 32, 32, 3))
  params = model.init(jax.random.key(1), images, train=False)["params"]
  _, aux = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False,
                                            capture_attention=True))(params, images)
  return jax.device_get(aux)


@pytest.fixture(scope="module")
def skip_aux():
  return _forward(ViT(**TINY, routing=SKIP))


@pytest.fixture(scope="module")
def toe_skip_aux():
  return _forward(ViT(**TINY, routing=SKIP, toe=STAGE1), seed=3)


# --------------------------------------------------------------------------------------------
# [CLS] attention maps.


def test_cls_rows_sum_to_one_and_maps_cover_the_patch_grid(skip_aux):
  rows = patch_maps.cls_attention_rows(skip_aux)
  assert [r.shape for r in rows] == [(2, 65)] * 6 + [(2, 33)] * 4 + [(2, 65)] * 2
  for row in rows:  # float32 softmax rows of <= 65 entries: sums ~sqrt(65) * 2^-24 from 1
    np.testing.assert_allclose(row.sum(axis=1), 1.0, rtol=1e-5)

  maps = patch_maps.cls_attention_maps(skip_aux, 64)
  assert maps.shape == (12, 2, 64) and maps.dtype == np.float32
  present = ~np.isnan(maps)
  assert present[:6].all() and present[10:].all()
  kept = skip_aux["routing"][0]["kept_positions"]
  for layer in range(7, 11):  # only the kept patches have tokens between drop and return
    np.testing.assert_array_equal(present[layer - 1], patch_maps.kept_mask(skip_aux, 0, 64))
    for b in range(2):
      np.testing.assert_array_equal(maps[layer - 1, b, kept[b]], rows[layer - 1][b, 1:])
  # What is not on the grid is exactly [CLS]'s attention to itself.
  np.testing.assert_allclose(np.nansum(maps, axis=2), 1.0 - np.stack([r[:, 0] for r in rows]),
                             rtol=1e-5)


def _fake_aux(seen_at):
  """One image whose [CLS] row at layer l gives token j the value 100 l + j (unnormalised, so
  every value says where it came from), its tokens at the patch positions `seen_at`."""
  attention = []
  for layer, seen in enumerate(seen_at, start=1):
    n = 1 + len(seen)
    probs = np.zeros((1, 2, n, n), np.float32)
    probs[:, :, 0, :] = 100 * layer + np.arange(n)
    attention.append(probs)
  return {"attention": tuple(attention),
          "token_positions": tuple(np.array([seen], np.int32) for seen in seen_at)}


@pytest.mark.parametrize("seen_at", [
    # ToE keeps patches 2, 0, 3 of 4 (1 merged); layer 3 keeps two of them; all come back.
    [(0, 1, 2, 3), (2, 0, 3), (2, 0, 3), (2, 3), (2, 0, 3)],
    # EViT: a fused token (no patch, -1) appended after the kept ones.
    [(0, 1, 2, 3), (2, 0, 3), (2, 0, 3), (2, 3, -1), (2, 3, -1)],
])
def test_maps_put_each_tokens_attention_on_its_patch(seen_at):
  maps = patch_maps.cls_attention_maps(_fake_aux(seen_at), 4)
  for layer, seen in enumerate(seen_at, start=1):
    want = np.full(4, np.nan, np.float32)
    for j, position in enumerate(seen):
      if position >= 0:
        want[position] = 100 * layer + 1 + j  # key 1 + j is the j-th non-[CLS] token
    np.testing.assert_array_equal(maps[layer - 1, 0], want)


@pytest.mark.slow
def test_toe_positions_follow_out_index_and_keep_idx(toe_skip_aux):
  positions = toe_skip_aux["token_positions"]
  toe_positions = toe_skip_aux["toe"]["out_index"][:, 1:] - 1
  assert [p.shape[1] for p in positions] == [64] + [32] * 5 + [16] * 4 + [32] * 2
  for layer in (2, 6, 11, 12):
    np.testing.assert_array_equal(positions[layer - 1], toe_positions)
  record = toe_skip_aux["routing"][0]
  np.testing.assert_array_equal(
      np.take_along_axis(positions[5], record["keep_idx"], axis=1), record["kept_positions"])
  maps = patch_maps.cls_attention_maps(toe_skip_aux, 64)
  assert (~np.isnan(maps)).sum(axis=2).tolist() == [
      [n, n] for n in [64] + [32] * 5 + [16] * 4 + [32] * 2]


# --------------------------------------------------------------------------------------------
# Kept patches.


def test_overlay_paints_exactly_the_kept_and_dropped_patches(skip_aux):
  record = skip_aux["routing"][0]
  # Without ToE the sequence at layer 6 is in patch order: positions are the indices.
  np.testing.assert_array_equal(record["kept_positions"], record["keep_idx"])
  fates = patch_maps.patch_fates(skip_aux, 0, 64)
  kept = patch_maps.kept_mask(skip_aux, 0, 64)
  assert (kept.sum(axis=1) == 32).all()
  assert all(kept[b, record["keep_idx"][b]].all() for b in range(2))
  red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
  for b in range(2):
    painted = patch_maps.overlay_patches(np.zeros((32, 32, 3), np.uint8), fates[b], 4,
                                         {patch_maps.KEPT: red, patch_maps.DROPPED: blue},
                                         alpha=1.0)
    for position in range(64):
      row, column = divmod(position, 8)
      block = painted[4 * row:4 * (row + 1), 4 * column:4 * (column + 1)]
      want = red if position in record["keep_idx"][b] else blue
      assert position in record["keep_idx"][b] or position in record["drop_idx"][b]
      np.testing.assert_array_equal(block, np.broadcast_to(want, (4, 4, 3)))


def test_overlay_blends_and_leaves_uncoloured_labels():
  image = np.full((4, 4, 3), 0.5, np.float32)
  labels = np.array([True, False, False, True])  # a 2x2 patch grid of 2x2 pixels
  out = patch_maps.overlay_patches(image, labels, 2, {False: (1.0, 1.0, 1.0), True: None},
                                   alpha=0.5)
  assert (image == 0.5).all()  # painted on a copy
  np.testing.assert_array_equal(out[:2, :2], image[:2, :2])
  np.testing.assert_allclose(out[:2, 2:], 0.75)
  np.testing.assert_allclose(out[2:, :2], 0.75)


def test_fates_mark_toe_merged_patches_absent(toe_skip_aux):
  fates = patch_maps.patch_fates(toe_skip_aux, 0, 64)
  rank = patch_maps.toe_selection_rank(toe_skip_aux["toe"]["out_index"], 64)
  np.testing.assert_array_equal(fates == patch_maps.ABSENT, rank < 0)
  assert ((fates == patch_maps.KEPT).sum(axis=1) == 16).all()
  assert ((fates == patch_maps.DROPPED).sum(axis=1) == 16).all()


# --------------------------------------------------------------------------------------------
# ToE.


def _toe_input(seed, batch=2, num_patches=64, width=8):
  return np.asarray(jax.random.normal(jax.random.key(seed), (batch, 1 + num_patches, width)))


@pytest.mark.parametrize("epoch", [0, 1])  # stages 1 and 2: 32 and 48 of 64 patches
def test_merge_assignment_matches_the_reference(epoch):
  plan = toe.make_plan(64, epoch=epoch, **TOE_SCHEDULE)
  x = _toe_input(seed=epoch)
  slots = np.asarray(jax.jit(toe.merge_assignment, static_argnames=("plan", "precision"))(
      x, plan, precision=HIGHEST))
  assert slots.shape == (2, 64) and slots.dtype == np.int32
  for b in range(2):
    selected, remaining, hosts, margin = toe_reference.select(x[b, 1:], plan.seeds, plan.adds)
    assert margin > 1e-5  # decisions are not near-ties at float32
    want = np.zeros(64, np.int64)
    want[selected] = np.arange(1, 1 + len(selected))
    want[remaining] = 1 + np.array(hosts)
    np.testing.assert_array_equal(slots[b], want)


def test_merge_assignment_groups_are_the_merged_tokens():
  x = _toe_input(seed=5)
  out, out_index = toe.expand_tokens(x, STAGE1, precision=HIGHEST)
  slots = np.asarray(toe.merge_assignment(x, STAGE1, precision=HIGHEST))
  for b in range(2):
    for slot in range(1, 1 + STAGE1.num_selected):
      members = np.flatnonzero(slots[b] == slot)
      assert out_index[b, slot] - 1 in members  # the selected token heads its own group
      # A float32 mean of a few tokens, recomputed in numpy: a few ulps (seen exact).
      np.testing.assert_allclose(out[b, slot], x[b, 1 + members].mean(axis=0), rtol=1e-5,
                                 atol=1e-6)


def test_merge_assignment_of_an_inactive_plan_is_the_identity():
  plan = toe.make_plan(64, epoch=2, **TOE_SCHEDULE)
  assert not plan.active
  np.testing.assert_array_equal(toe.merge_assignment(_toe_input(0), plan),
                                np.broadcast_to(np.arange(1, 65), (2, 64)))


def test_selection_rank_and_expansion_step():
  x = _toe_input(seed=7)
  _, out_index = toe.expand_tokens(x, STAGE1, precision=HIGHEST)
  rank = patch_maps.toe_selection_rank(np.asarray(out_index), 64)
  steps = patch_maps.toe_expansion_step(rank, STAGE1)
  for b in range(2):
    selected, remaining, _, _ = toe_reference.select(x[b, 1:], STAGE1.seeds, STAGE1.adds)
    np.testing.assert_array_equal(rank[b, selected], np.arange(32))
    assert (rank[b, remaining] == -1).all() and (steps[b, remaining] == -1).all()
    # 16 seeds, then sub-steps of 8 and 8 (STAGE1.adds).
    np.testing.assert_array_equal(steps[b, selected], [0] * 16 + [1] * 8 + [2] * 8)
    np.testing.assert_array_equal(np.flatnonzero(steps[b] == 0), STAGE1.seeds)


def test_expansion_step_skips_empty_substeps():
  plan = toe.ToEPlan(1, True, (0, 4), (0, 2), 4, 8)
  rank = np.array([[0, -1, 2, -1, 1, 3, -1, -1]])
  np.testing.assert_array_equal(patch_maps.toe_expansion_step(rank, plan),
                                [[0, -1, 2, -1, 0, 2, -1, -1]])


# --------------------------------------------------------------------------------------------
# Runs compared.


def test_pareto_front_of_a_hand_made_set():
  points = np.array([
      [1.0, 0.80],  # 0: dense baseline, most accurate
      [1.2, 0.79],  # 1: front
      [1.2, 0.75],  # 2: same speed as 1, less accurate
      [1.1, 0.78],  # 3: dominated by 1
      [1.5, 0.70],  # 4: front
      [1.4, 0.70],  # 5: dominated by 4 (same accuracy, slower)
      [1.5, 0.70],  # 6: equal to 4: both kept
      [0.9, 0.60],  # 7: dominated by 0
  ])
  np.testing.assert_array_equal(compare.pareto_front(points), [0, 1, 4, 6])
  assert compare.pareto_front(np.zeros((0, 2))).tolist() == []
  with pytest.raises(ValueError, match=r"\(N, 2\)"):
    compare.pareto_front(np.zeros((3,)))


def _row(name, status="done", overrides=None, **metrics):
  """A result row as tools/sweep/results.py reads it back (the fields viz reads)."""
  return {"name": name, "seed": 0, "base": "configs/default.py:baseline",
          "overrides": overrides or {}, "status": status, "top1": None,
          "speedup_measured": None, "speedup_ideal": None, **metrics}


def test_swept_parameters_and_their_labels():
  routed = _row("4.7-30.30-10", overrides={"routing.drop_layers": (4, 7),
                                           "routing.drop_ratios": (0.3, 0.3),
                                           "routing.return_layer": 10})
  assert compare.sweep_parameter(routed, "routing.return_layer") == 10
  assert compare.sweep_parameter(_row("dense"), "routing.return_layer") is None  # the base's
  labels = [compare.parameter_label(compare.sweep_parameter(routed, name))
            for name in compare.SWEEP_PARAMETERS]
  assert labels == ["4,7", "0.3,0.3", "10"]
  assert compare.parameter_label(None) == "base" and compare.parameter_label(()) == "-"


def test_runs_table_shows_every_row_with_its_overrides_or_base():
  table = compare.runs_table([
      _row("dense", top1=0.3104, speedup_measured=1.0, speedup_ideal=1.0),
      _row("6-55-11", top1=0.2951, speedup_measured=1.234, speedup_ideal=1.31,
           overrides={"routing.drop_ratios": (0.55,)}),
      _row("bad", status="failed", top1_all_tokens=0.1)])
  lines = table.splitlines()
  assert len(lines) == 4 and lines[0].split() == [
      "run", "seed", "status", "top-1", "%", "speedup", "ideal", "config"]
  assert lines[1].split() == ["dense", "0", "done", "31.0", "1.00x", "1.00x",
                              "configs/default.py:baseline"]
  assert lines[2].split() == ["6-55-11", "0", "done", "29.5", "1.23x", "1.31x",
                              "routing.drop_ratios=0.55"]
  assert lines[3].split()[2:6] == ["failed", "-", "-", "-"]
  all_tokens = compare.runs_table([_row("bad", status="failed", top1_all_tokens=0.1)],
                                  accuracy="top1_all_tokens")
  assert all_tokens.splitlines()[1].split()[3] == "10.0"


def test_plots_draw_without_a_display(skip_aux):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  images = np.zeros((2, 32, 32, 3), np.uint8)
  maps = patch_maps.cls_attention_maps(skip_aux, 64)
  x = _toe_input(seed=1)
  _, out_index = toe.expand_tokens(x, STAGE1)
  rank = patch_maps.toe_selection_rank(np.asarray(out_index), 64)
  figures = [
      plots.plot_cls_attention(images, maps, 4, masks=np.zeros((2, 32, 32)), drop_layers=(6,),
                             return_layer=11),
      plots.plot_routing(images, [patch_maps.patch_fates(skip_aux, 0, 64)], 4, drop_layers=(6,)),
      plots.plot_toe(images, patch_maps.toe_expansion_step(rank, STAGE1), rank,
                   np.asarray(toe.merge_assignment(x, STAGE1)), 4),
      plots.plot_parameter_effects([
          {"top1": 0.3, "speedup_measured": 1.0, "overrides": {}},
          {"top1": 0.2, "speedup_measured": 1.3, "overrides": {"routing.drop_ratios": (0.7,)}},
      ]),
      plots.plot_pareto([{"name": "a", "top1": 0.3, "speedup_measured": 1.0}]).figure,
  ]
  assert all(len(f.axes) for f in figures)
  plt.close("all")


def test_eval_history_maps_steps_to_epochs_and_keeps_the_last_of_a_resumed_eval(tmp_path):
  records = [{"step": 0, "flops/ideal_speedup": 1.2},
             {"step": 50, "train/loss": 1.0, "train/epoch": 0.5},
             {"step": 50, "eval/top1": 0.2, "eval/kept_object_recall_0": 0.6},
             {"step": 100, "eval/top1": 0.3},  # routing not active yet: no recall
             {"step": 100, "eval/top1": 0.35},  # evaluated again after a resume
             {"step": 150, "train/epoch": 1.5, "train/loss": 0.9},
             {"step": 150, "eval/top1": 0.4, "eval/kept_object_recall_0": 0.7},
             {"step": 200, "eval/top1": float("nan")}]  # diverged: a NaN point
  writer = MetricWriter(str(tmp_path), enabled=True)  # metrics.jsonl as the trainer writes it
  for record in records:
    writer.write(record["step"], {k: v for k, v in record.items() if k != "step"})
  writer.close()
  epochs, top1 = compare.eval_history(tmp_path, "eval/top1")
  np.testing.assert_allclose(epochs, [0.5, 1.0, 1.5, 2.0])
  np.testing.assert_allclose(top1[:3], [0.2, 0.35, 0.4])
  assert math.isnan(top1[3])
  epochs, recall = compare.eval_history(tmp_path, "eval/kept_object_recall_0")
  np.testing.assert_allclose(epochs, [0.5, 1.5])
  np.testing.assert_allclose(recall, [0.6, 0.7])
  ax = plots.plot_eval_history({"run": (epochs, recall)}, ylabel="recall", reference=0.45)
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.6, 0.7])
  assert ax.lines[1].get_ydata()[0] == 0.45
  with pytest.raises(FileNotFoundError):
    compare.eval_history(tmp_path / "never_started", "eval/top1")


def test_pareto_plot_labels_the_front_or_every_run():
  records = [{"name": "dense", "top1": 0.30, "speedup_measured": 1.0},
             {"name": "slow", "top1": 0.29, "speedup_measured": 1.1},  # dominated by "fast"
             {"name": "fast", "top1": 0.31, "speedup_measured": 1.2}]
  front_only = plots.plot_pareto(records)
  assert sorted(t.get_text() for t in front_only.texts) == ["fast"]
  every = plots.plot_pareto(records, label_all=True)
  assert sorted(t.get_text() for t in every.texts) == ["dense", "fast", "slow"]


def test_pareto_plot_draws_each_methods_marker_and_error_bars():
  records = [{"name": "dense", "method": "dense", "top1": 0.30, "speedup_measured": 1.0,
              "top1_sd": 0.01, "speedup_sd": None},
             {"name": "a1", "method": "A", "top1": 0.29, "speedup_measured": 1.1,
              "top1_sd": 0.02, "speedup_sd": 0.05},
             {"name": "a2", "method": "A", "top1": 0.295, "speedup_measured": 1.2,
              "top1_sd": 0.03, "speedup_sd": 0.04}]
  ax = plots.plot_pareto(records, x_err_key="speedup_sd", y_err_key="top1_sd",
                         group_key="method")
  handles, labels = ax.get_legend_handles_labels()
  assert sorted(labels) == ["A", "Pareto front", "dense"]
  by_label = dict(zip(labels, handles))
  assert by_label["dense"].lines[0].get_marker() != by_label["A"].lines[0].get_marker()
  np.testing.assert_allclose(by_label["A"].lines[0].get_xdata(), [1.1, 1.2])
  # The vertical bars of group A span mean ± sd.
  y_bars = by_label["A"].lines[2][-1].get_segments()
  np.testing.assert_allclose([(seg[0][1], seg[1][1]) for seg in y_bars],
                             [(0.27, 0.31), (0.265, 0.325)])
  front = [line for line in ax.lines if line.get_label() == "Pareto front"][0]
  np.testing.assert_allclose(front.get_xdata(), [1.0, 1.2])  # a1 is dominated by dense
