"""Unit tests of the pure functions behind the dashboard's interactions (dashboard.views, dashboard.figures).

Every threshold number is checked against a brute-force count over the pairs, every selection mapping
against the ids that were put into the figure, on small synthetic data (no Streamlit, no model).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dashboard import figures, views


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def pairs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 2000
    label = (rng.random(n) < 0.2).astype(np.int8)
    score = np.round(rng.normal(0.2 + 0.5 * label, 0.2), 3).astype(np.float32)  # rounded: ties on purpose
    classes = rng.integers(0, 30, size=(n, 2))
    return pd.DataFrame(
        {
            "path_a": [f"s{a}/{i}.pgm" for i, a in enumerate(classes[:, 0])],
            "path_b": [f"s{b}/{i}.pgm" for i, b in enumerate(classes[:, 1])],
            "label": label,
            "score": score,
            "fold": np.full(n, -1, np.int16),
            "slice": np.where(np.arange(n) % 2 == 0, "frontal", "profile"),
            "idx_a": np.arange(n),
            "idx_b": np.arange(n) + n,
        }
    )


@pytest.fixture
def samples() -> pd.DataFrame:
    # 3 classes x 4 images; class 1 image 5 and 6 predicted as class 2, class 2 image 9 as class 0
    label = np.repeat([0, 1, 2], 4)
    pred = label.copy()
    pred[[5, 6]] = 2
    pred[9] = 0
    return pd.DataFrame(
        {
            "sample_id": np.arange(12),
            "path": [f"c{lab}/{i}.png" for i, lab in enumerate(label)],
            "label": label,
            "class_name": [f"c{lab}" for lab in label],
            "pred": pred,
            "pred_score": np.linspace(0.5, 0.99, 12).astype(np.float32),
            "correct": pred == label,
            "split": ["test"] * 12,
        }
    )


def brute(pairs: pd.DataFrame, tau: float) -> dict:
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy()
    tp = int(((s >= tau) & (y == 1)).sum())
    fp = int(((s >= tau) & (y == 0)).sum())
    fn, tn = int((y == 1).sum()) - tp, int((y == 0).sum()) - fp
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "far": fp / (fp + tn),
        "frr": fn / (tp + fn),
        "tar": tp / (tp + fn),
        "accuracy": (tp + tn) / len(s),
    }


# ---------------------------------------------------------------------------------------- selections
def test_selection_ids_come_from_customdata_not_point_index():
    # Two traces (two classes): point_index restarts at 0 in each; the sample id is customdata[0].
    selection = {
        "points": [
            {"curve_number": 0, "point_index": 0, "customdata": [17, "s3", "s3/1.pgm"]},
            {"curve_number": 1, "point_index": 0, "customdata": [42, "s9", "s9/4.pgm"]},
            {"curve_number": 1, "point_index": 1, "customdata": 5},  # scalar customdata
            {"curve_number": 0, "point_index": 0, "customdata": [17]},  # duplicate: dropped
            {"curve_number": 2, "point_index": 3},  # no customdata: ignored
            {"curve_number": 0, "point_index": 2, "customdata": {"1": 0.5, "0": 23}},  # a typed-array row
        ],
        "point_indices": [0, 0, 1, 0, 3, 2],
        "box": [],
        "lasso": [],
    }
    assert views.selected_sample_ids(selection) == [17, 42, 5, 23]
    assert views.selected_sample_ids(None) == []
    assert views.selected_sample_ids({"points": []}) == []


def test_scatter_customdata_roundtrip_gives_the_images_of_the_selected_points(samples):
    points = samples.assign(x=np.arange(12.0), y=np.arange(12.0) ** 2)
    fig = figures.embedding_scatter(points, "class_name")
    assert len(fig.data) == 3  # one trace per class
    # Simulate what Streamlit returns for a lasso over the 2nd point of trace 1 and the 1st of trace 2.
    chosen = [(1, 1), (2, 0)]
    selection = {
        "points": [
            {"curve_number": c, "point_index": i, "customdata": list(fig.data[c].customdata[i])} for c, i in chosen
        ]
    }
    ids = views.selected_sample_ids(selection)
    rows = views.rows_for_ids(samples, ids)
    assert ids == [5, 8]
    assert list(rows["path"]) == ["c1/5.png", "c2/8.png"]


def test_rows_for_ids_keeps_order_and_skips_unknown(samples):
    rows = views.rows_for_ids(samples, [7, 2, 999, 7])
    assert list(rows["sample_id"]) == [7, 2, 7]


def test_confusion_cell_gives_the_misclassified_images_most_confident_first(samples):
    cell = views.confusion_cell_samples(samples, true_label=1, pred_label=2)
    assert list(cell["sample_id"]) == [6, 5]  # pred_score rises with id
    assert not cell["correct"].any()
    assert list(views.confusion_cell_samples(samples, 2, 0)["sample_id"]) == [9]
    assert views.confusion_cell_samples(samples, 0, 1).empty
    diagonal = views.confusion_cell_samples(samples, 0, 0)
    assert set(diagonal["sample_id"]) == {0, 1, 2, 3} and diagonal["correct"].all()


def test_confusion_figure_cells_carry_true_and_predicted_class():
    cm = np.array([[5, 1, 0], [0, 3, 2], [1, 0, 4]])
    fig = figures.confusion_figure(cm, ["a", "b", "c"], classes=[2, 0, 1], normalised=True)
    overlay = fig.data[1]
    cells = {(int(t), int(p)) for t, p, _ in overlay.customdata}
    assert cells == {(t, p) for t in range(3) for p in range(3)}
    i = [tuple(row[:2]) for row in overlay.customdata.tolist()].index((1, 2))
    assert (overlay.y[i], overlay.x[i]) == ("b", "c")
    assert views.cell_from_selection({"points": [{"customdata": list(overlay.customdata[i])}]}) == (1, 2)
    # what the browser really sends for numeric customdata (seen with Streamlit 1.67 / Plotly 7)
    clicked = {"points": [{"curve_number": 1, "point_index": 128, "customdata": {"0": 30, "1": 5, "2": 0}}]}
    assert views.cell_from_selection(clicked) == (30, 5)
    assert views.cell_from_selection({"points": []}) is None
    assert np.allclose(np.asarray(fig.data[0].z).sum(1), 1.0)


def test_top_error_classes_keeps_the_most_confused():
    cm = np.diag([10] * 6)
    cm[4, 1] = 3
    cm[2, 5] = 1
    assert list(views.top_error_classes(cm, 3)) == [1, 2, 4]  # ties (2 and 5) go to the lower index
    assert set(views.top_error_classes(cm, 2)) == {1, 4}
    assert list(views.top_error_classes(cm, 10)) == list(range(6))


def test_nearest_neighbours_excludes_the_query_and_sorts_by_similarity():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids, sims = views.nearest_neighbours(emb, 7, k=5)
    full = emb @ emb[7]
    full[7] = -np.inf
    assert list(ids) == list(np.argsort(-full)[:5])
    assert 7 not in ids and np.all(np.diff(sims) <= 0)


# ------------------------------------------------------------------------------------- threshold logic
@pytest.mark.parametrize("tau", [-0.5, 0.1, 0.333, 0.5, 0.7, 2.0])
def test_slider_value_gives_brute_force_counts(pairs, tau):
    op = views.operating_point(views.pair_points(pairs), tau)
    expected = brute(pairs, tau)
    for k in ("tp", "fp", "tn", "fn"):
        assert op[k] == expected[k], k
    for k in ("far", "frr", "tar", "accuracy"):
        assert op[k] == pytest.approx(expected[k]), k
    assert op["threshold"] == tau and op["n_genuine"] + op["n_impostor"] == len(pairs)


def test_tie_at_the_threshold_is_accepted(pairs):
    tau = float(pairs["score"].iloc[0])  # an observed (and tied) score value
    op = views.operating_point(views.pair_points(pairs), tau)
    assert op["fp"] + op["tp"] == int((pairs["score"] >= tau).sum())


@pytest.mark.parametrize("target", [0.2, 0.05, 0.01, 0.003])
def test_target_far_gives_the_lowest_threshold_under_it(pairs, target):
    points = views.pair_points(pairs)
    tau = views.threshold_for_target_far(points, target)
    assert brute(pairs, tau)["far"] <= target
    # any lower observed score would break the target: tau is the max-TAR choice
    lower = pairs["score"][pairs["score"] < tau].max()
    assert brute(pairs, float(lower))["far"] > target


def test_unreachable_target_far_accepts_nothing(pairs):
    points = views.pair_points(pairs)
    tau = views.threshold_for_target_far(points, 1e-9)
    op = views.operating_point(points, tau)
    assert math.isfinite(tau) and op["fp"] == 0


def test_presets_match_brute_force(pairs):
    points = views.pair_points(pairs)
    presets = views.threshold_presets(points)
    grid = np.unique(pairs["score"].to_numpy(np.float64))
    best = max(brute(pairs, t)["accuracy"] for t in grid)
    assert brute(pairs, presets["best_accuracy"])["accuracy"] == pytest.approx(best)
    at_eer = brute(pairs, presets["eer"])
    assert abs(at_eer["far"] - at_eer["frr"]) < 0.05


def test_threshold_transfer_flags_only_a_threshold_that_got_worse_here(pairs):
    points = views.pair_points(pairs)
    here = brute(pairs, 0.45)
    record = {"threshold": 0.45, "rule": "eer", "val_far": here["far"], "val_frr": here["frr"]}
    same = views.threshold_transfer(points, record)
    assert same is not None and not same["moved"]
    assert (same["far"], same["frr"]) == (pytest.approx(here["far"]), pytest.approx(here["frr"]))
    # validation rates a third of these: over twice the errors here, of either kind
    assert views.threshold_transfer(points, {**record, "val_far": here["far"] / 3})["moved"]
    assert views.threshold_transfer(points, {**record, "val_frr": here["frr"] / 3})["moved"]
    # better here than on validation is not a move
    assert not views.threshold_transfer(points, {**record, "val_far": 0.9, "val_frr": 0.9})["moved"]
    # threshold.json without the validation rates (or with garbage in them) gives nothing to compare
    assert views.threshold_transfer(points, {"threshold": 0.45}) is None
    assert views.threshold_transfer(points, {**record, "val_far": "high"}) is None
    assert views.threshold_transfer(points, {**record, "rule": "far=1e-3"})["rule"] == "far=1e-3"
    assert views.threshold_transfer(points, {**record, "rule": "[click](http://x)"})["rule"] == ""


def test_slider_bounds_cover_scores_and_presets(pairs):
    lo, hi = views.slider_bounds(pairs["score"].to_numpy(), 1.7, None, float("inf"))
    assert lo <= pairs["score"].min() and hi >= 1.7 and hi <= 1.71


def test_hardest_pairs_mark_errors_at_tau(pairs):
    tau = 0.6
    fa = views.hardest_pairs_at(pairs, tau, "false_accept", k=10)
    fr = views.hardest_pairs_at(pairs, tau, "false_reject", k=10)
    assert (fa["label"] == 0).all() and (fr["label"] == 1).all()
    assert fa["score"].is_monotonic_decreasing and fr["score"].is_monotonic_increasing
    assert fa["score"].iloc[0] == pairs.loc[pairs["label"] == 0, "score"].max()
    assert list(fa["error"]) == list(fa["score"] >= tau)
    assert views.error_count(pairs, tau, "false_accept") == brute(pairs, tau)["fp"]
    assert views.error_count(pairs, tau, "false_reject") == brute(pairs, tau)["fn"]


def test_slices_side_by_side(pairs):
    table = views.slice_operating_points(pairs, 0.45)
    assert list(table["slice"]) == ["all", "frontal", "profile"]
    frontal = pairs[pairs["slice"] == "frontal"]
    assert int(table.loc[1, "fp"]) == brute(frontal, 0.45)["fp"]
    assert table["tp"].iloc[1:].sum() == table["tp"].iloc[0]


def test_exported_operating_point_is_what_core_verify_reads(pairs, tmp_path):
    op = views.operating_point(views.pair_points(pairs), 0.5)
    point = views.export_operating_point(op, "orl_faces", "abc123", "orl_demo", "data/orl_faces")
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(point))
    loaded = json.loads(path.read_text())
    assert loaded["threshold"] == 0.5 and loaded["checkpoint_hash"] == "abc123"
    assert loaded["far"] == pytest.approx(brute(pairs, 0.5)["far"])
    assert set(loaded) >= {"threshold", "far", "tar", "frr", "accuracy", "dataset", "checkpoint_hash", "run"}


def test_implied_rates_of_a_live_score(pairs):
    points = views.pair_points(pairs)
    rates = views.implied_rates(points, 0.55)
    assert rates["far"] == pytest.approx(brute(pairs, 0.55)["far"])
    assert rates["tar"] == pytest.approx(brute(pairs, 0.55)["tar"])


def test_summary_tables():
    ver = {
        "tar_at_far": {
            "0.1": {"tar": 0.9, "threshold": 0.4, "far": 0.09, "reachable": True, "stable": True},
            "0.0001": {"tar": None, "threshold": None, "far": None, "reachable": False, "stable": False},
        },
        "kfold": {"fold_accuracies": [0.9, 0.8], "fold_thresholds": [0.3, 0.35], "fold_sizes": [10, 10]},
    }
    tab = views.tar_at_far_table(ver)
    assert list(tab["note"]) == ["", "unreachable"] and math.isnan(tab["TAR"].iloc[1])
    kf = views.kfold_table(ver)
    assert list(kf["fold"]) == [1, 2] and list(kf["accuracy"]) == [0.9, 0.8]


# ------------------------------------------------------------------------------------------- compare
def test_pair_disagreements_each_at_its_own_threshold():
    base = pd.DataFrame({"path_a": ["a", "b", "c", "d"], "path_b": ["e", "f", "g", "h"], "label": [1, 0, 1, 0]})
    a = base.assign(score=[0.9, 0.1, 0.2, 0.8])  # tau 0.5: right, right, wrong, wrong
    b = base.assign(score=[0.3, 0.7, 0.9, 0.1])[::-1]  # tau 0.5: wrong, wrong, right, right (other row order)
    a_only, b_only = views.pair_disagreements(a, b, 0.5, 0.5)
    assert set(a_only["path_a"]) == {"a", "b"} and list(a_only.columns[-3:]) == ["score_a", "score_b", "margin"]
    assert set(b_only["path_a"]) == {"c", "d"}
    a_only, b_only = views.pair_disagreements(a, b, 0.5, 0.05)  # B now accepts everything
    assert set(a_only["path_a"]) == {"b"} and set(b_only["path_a"]) == {"c"}


def test_sample_disagreements(samples):
    other = samples.assign(correct=~samples["correct"])
    a_only, b_only = views.sample_disagreements(samples, other)
    assert len(a_only) == int(samples["correct"].sum()) and len(b_only) == int((~samples["correct"]).sum())


def test_leaderboard_reads_nested_summaries():
    s = {
        "verification": {"auc": 0.9, "tar_at_far": {"0.001": {"tar": 0.5}}, "n_genuine": 3, "n_impostor": 9},
        "knn_accuracy": {"accuracy": 0.7},
        "classification": {"top1": 0.8},
    }
    t = views.leaderboard({"A": s, "B": {}}).set_index("run")
    assert t.loc["A", "AUC"] == 0.9 and t.loc["A", "TAR @ FAR 1e-3"] == 0.5 and t.loc["A", "kNN accuracy"] == 0.7
    assert t.loc["A", "genuine pairs"] == 3 and pd.isna(t.loc["B", "AUC"])
    # a pair model (the shoes) gets no classification columns at all
    pair_only = views.leaderboard({"shoes": {"kind": "pair", "verification": {"auc": 0.8}}})
    assert "top-1" not in pair_only.columns and "kNN accuracy" not in pair_only.columns


# ------------------------------------------------------------------------------------------ ablation
ABLATION = {  # the layout core.ablation writes (a pair model would have no accuracy / per_class)
    "metric": "accuracy",
    "crops": [10, 50, 100],
    "baseline": 0.9,
    "best_crop": 100,
    "best_crop_auc": 50,
    "centre": {
        "accuracy": [0.6, 0.8, 0.9],
        "auc": [0.7, 0.95, 0.93],
        "per_class": {"s1": [0.5, 0.9, 0.8], "s2": [0.7, 0.7, 0.95]},
    },
    "outer": {
        "accuracy": [0.85, 0.7, None],
        "auc": [0.9, 0.8, None],
        "per_class": {"s1": [0.8, 0.6, None], "s2": [0.9, 0.7, None]},
    },
    "grayscale": {"accuracy": 0.88, "auc": 0.92},
    "examples": {
        "50": {"centre": ["examples/centre50_0.png", "examples/centre50_1.png"], "outer": ["examples/outer50_0.png"]}
    },
}


def test_ablation_curves_per_metric_skip_missing_points():
    curves = views.ablation_curves(ABLATION)
    assert len(curves) == 5  # the outer ring at 100% has no result
    assert curves[curves["region"] == "centre"]["value"].tolist() == [0.6, 0.8, 0.9]
    assert views.ablation_curves(ABLATION, "auc")["value"].tolist() == [0.7, 0.95, 0.93, 0.9, 0.8]
    assert views.ablation_metrics(ABLATION) == ["accuracy", "auc"]
    assert views.ablation_reference(ABLATION) == {"baseline": 0.9, "grayscale": 0.88, "best_crop": 100}
    assert views.ablation_reference(ABLATION, "auc") == {"baseline": 0.93, "grayscale": 0.92, "best_crop": 50}
    assert views.ablation_examples(ABLATION, 50) == [
        ("centre", "examples/centre50_0.png"),
        ("centre", "examples/centre50_1.png"),
        ("outer", "examples/outer50_0.png"),
    ]
    assert views.ablation_examples(ABLATION, 10) == []


def test_per_class_change_against_the_full_image():
    change = views.per_class_change(ABLATION, "centre", 50)
    assert list(change["class"]) == ["s1", "s2"]  # s1 gains 0.1, s2 loses 0.25
    assert change["change"].tolist() == pytest.approx([0.1, -0.25])
    outer = views.per_class_change(ABLATION, "outer", 10)  # compared with the centre curve at X = 100
    assert outer.set_index("class")["change"].to_dict() == pytest.approx({"s1": 0.0, "s2": -0.05})
    assert views.per_class_change(ABLATION, "centre", 30).empty


def test_class_counts_from_split():
    split = {"train": ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm"], "val": ["s3/1.pgm"], "test": []}
    counts = views.class_counts(split)
    assert counts.set_index(["class", "split"])["count"].to_dict() == {
        ("s1", "train"): 2,
        ("s2", "train"): 1,
        ("s3", "val"): 1,
    }


def test_thin_indices_keeps_ends_and_low_far_detail():
    idx = views.thin_indices(100_000, 1000)
    assert idx[0] == 0 and idx[-1] == 99_999 and len(idx) <= 1002
    assert np.all(np.diff(idx) > 0) and (idx < 100).sum() > 50  # dense at the start (log FAR axis)
    assert list(views.thin_indices(5)) == [0, 1, 2, 3, 4]


def test_augmentation_preview_keeps_shape():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    out = views.augmentation_preview(images, {"train": {"flip": False, "crop_padding": 0}, "data": {"crop": 1.0}})
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).max() <= 1  # no augmentation: the images come back


# ------------------------------------------------------------------------------------------- figures
def test_figures_build(pairs):
    from core.metrics.verification import det_points, score_histograms

    points = views.pair_points(pairs)
    hist = score_histograms(pairs["score"].to_numpy(), pairs["label"].to_numpy(), bins=20)
    fig = figures.score_histogram(hist, tau=0.5, score=0.7)
    assert len(fig.data) == 2 and len(fig.layout.shapes) == 2  # tau and the live score
    roc = figures.roc_figure({"x": (points.far, points.tar)}, {"τ": (0.0, 0.5)}, min_far=1e-4)
    assert roc.layout.xaxis.type == "log" and min(roc.data[0].x) >= 1e-4
    det = det_points(points)
    assert len(figures.det_figure({"d": (det.far_probit, det.frr_probit)}, {"τ": (0.1, 0.2)}).data) == 2
    metrics = pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss/ce": [2.0, 1.0],
            "loss/total": [2.0, 1.0],
            "lr": [0.1, 0.01],
            "train_acc": [0.2, 0.5],
            "val_auc": [0.8, 0.9],
            "images_per_s": [100, 110],
        }
    )
    names = {t.name for t in figures.training_curves(metrics).data}
    assert names == {"loss/ce", "loss/total", "lr", "train_acc", "val_auc", "images_per_s"}
    assert len(figures.ablation_figure(views.ablation_curves(ABLATION), "accuracy", 0.9, 0.88, 50).data) == 2


def test_scatter_switches_to_one_trace_for_many_classes():
    n = 500
    points = pd.DataFrame(
        {
            "sample_id": np.arange(n),
            "x": np.zeros(n),
            "y": np.zeros(n),
            "class_name": [f"c{i % 100}" for i in range(n)],
            "path": ["p"] * n,
        }
    )
    fig = figures.embedding_scatter(points, "class_name")
    assert len(fig.data) == 1 and list(fig.data[0].customdata[:, 0]) == list(range(n))


def test_run_picker_finds_runs_inside_sweep_folders(tmp_path):
    from dashboard import artifacts

    for run in ("orl_demo", "mine", "orl-losses/loss.name=arcface,seed=0"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("{}")
    (tmp_path / "orl-losses" / "sweep.csv").write_text("run\n")  # the sweep folder itself is not a run
    labels = [artifacts.run_label(p, tmp_path) for p in artifacts.list_run_dirs(tmp_path)]
    assert labels == ["orl_demo", "mine", "orl-losses/loss.name=arcface,seed=0"]


def test_shared_pairs_match_by_paths_in_either_order():
    a = pd.DataFrame(
        {"path_a": ["x", "y", "p"], "path_b": ["y", "z", "q"], "label": [1, 0, 0], "score": [0.9, 0.2, 0.1]}
    )
    b = pd.DataFrame(
        {"path_a": ["y", "z", "m"], "path_b": ["x", "y", "n"], "label": [1, 0, 1], "score": [0.8, 0.4, 0.7]}
    )
    shared = views.shared_pairs(a, b)
    assert len(shared) == 2 and set(shared["score_a"]) == {0.9, 0.2} and set(shared["score_b"]) == {0.8, 0.4}
    overlap = views.pair_overlap(a, b, shared)
    assert (
        overlap["a"] == (1, 2) and overlap["b"] == (2, 1) and overlap["shared"] == (1, 1) and not overlap["identical"]
    )
    message = views.overlap_message(overlap)
    assert "A has 1 genuine / 2 impostor" in message and "share 1 / 1" in message and "67% of A's" in message


def test_equal_far_thresholds_hold_both_runs_to_the_level(pairs):
    rng = np.random.default_rng(1)
    b = pairs.assign(score=pairs["score"] + rng.normal(0, 0.1, len(pairs)))
    shared = views.shared_pairs(pairs, b)
    for level in (0.1, 0.01):
        tau_a, tau_b = views.equal_far_thresholds(shared, level)
        for side, tau in (("a", tau_a), ("b", tau_b)):
            s = shared[f"score_{side}"].to_numpy()
            far = brute(shared.assign(score=s), tau)["far"]
            assert far <= level
            below = s[s < tau].max()  # the next lower score would break the level: tau is the lowest
            assert brute(shared.assign(score=s), below)["far"] > level


def test_exported_operating_point_records_how_and_where(pairs):
    points = views.pair_points(pairs)
    tau = views.threshold_for_target_far(points, 1e-2)
    op = views.operating_point(points, tau)
    point = views.export_operating_point(
        op,
        "orl_faces",
        "abc",
        "orl_demo",
        "data/orl_faces",
        chosen_by="target_far",
        target_far=1e-2,
        pairs="all pairs",
        extra={"interval": [0.1, 0.2]},
    )
    n_imp = int((pairs["label"] == 0).sum())
    assert point["target_far"] == 1e-2 and point["chosen_by"] == "target_far" and point["data"] == "data/orl_faces"
    assert point["stable"] == (n_imp * 1e-2 >= 30) and point["interval"] == [0.1, 0.2]
    manual = views.export_operating_point(op, "k", "abc", "r")
    assert manual["chosen_by"] == "manual" and manual["target_far"] is None


def test_slices_with_the_same_pairs_as_all_are_not_repeated(pairs):
    one = pairs.assign(slice="test_m")
    table = views.slice_operating_points(one, 0.5)
    assert list(table["slice"]) == ["all"]


def test_far_choices_step_by_ten():
    assert [views.far_text(f) for f in views.FAR_CHOICES] == ["1e-1", "1e-2", "1e-3", "1e-4", "1e-5", "1e-6"]
