"""The dashboard behaviours a first-time user stumbled on (issue 21) and its one-line failures (issue 15),
driven through Streamlit's AppTest on the bundled demo run: the URL round trip, the Compare page's pair-set
warning and equal-FAR comparison, the x10 target-FAR control, the errors-only gallery, the evaluate form's
default folder and its data roots, one line naming each corrupt artifact instead of a traceback, and a
warning (with a button that evaluates again the same way) when an evaluation describes older weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import APP, demo_key, make_second_run
from tests.dashboard.test_pages import assert_clean, open_page


def _app(**params: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.query_params.update(params)
    at.run()
    return at


def _brute_far(scores: np.ndarray, labels: np.ndarray, tau: float) -> float:
    return float(((scores >= tau) & (labels == 0)).sum() / (labels == 0).sum())


# --------------------------------------------------------------------------------------------- URL
def test_url_round_trip_keeps_page_run_evaluation_and_tau(app_env: Path, demo_run: Path):
    key = demo_key(demo_run)
    at = _app(page="verification", run="orl_demo_b", eval=key, tau="0.55")
    assert_clean(at)
    assert at.title[0].value == "Verification"
    assert at.selectbox(key="run").value == "orl_demo_b" and at.selectbox(key="eval_key").value == key
    assert at.slider[0].value == pytest.approx(0.55)
    assert at.query_params == {"run": "orl_demo_b", "eval": key, "tau": "0.5500"}
    at.slider[0].set_value(0.61).run()
    assert at.query_params["tau"] == "0.6100"
    # the link written back opens the same view in a new session
    again = _app(page="verification", **at.query_params)
    assert again.selectbox(key="run").value == "orl_demo_b" and again.slider[0].value == pytest.approx(0.61)


def test_invalid_url_values_fall_back_with_one_line_each(app_env: Path):
    at = _app(run="no_such_run", tau="abc", page="nowhere")
    assert_clean(at)
    notes = [i.value for i in at.info]
    assert any("`no_such_run` is not here" in n for n in notes)
    assert any("`tau=abc` is not a number" in n for n in notes)
    assert any("`nowhere` does not exist" in n for n in notes)
    assert at.selectbox(key="run").value == "orl_demo" and at.title[0].value == "Overview"
    assert all("\n" not in n for n in notes)


# ------------------------------------------------------------------------------------------ compare
@pytest.fixture
def mismatched_checkpoints(tmp_path: Path, demo_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """orl_demo beside a run whose evaluation of the same key kept only some of the pairs."""
    from core.metrics.verification import verification_report

    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "orl_demo").symlink_to(demo_run.resolve(), target_is_directory=True)
    other = make_second_run(demo_run, root / "fewer_pairs", seed=3)
    ev = other / "eval" / demo_key(demo_run)
    pairs = pd.read_parquet(ev / "pairs.parquet")
    keep = pairs[(pairs["label"] == 1) | (np.arange(len(pairs)) % 4 == 0)]  # every genuine, 1 in 4 impostors
    keep.to_parquet(ev / "pairs.parquet", index=False)
    summary = json.loads((ev / "summary.json").read_text())
    summary["verification"] = verification_report(keep["score"].to_numpy(), keep["label"].to_numpy())
    (ev / "summary.json").write_text(json.dumps(summary, default=lambda o: o.tolist()))
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(root))
    return root


def test_compare_warns_when_the_pair_sets_differ(mismatched_checkpoints: Path, demo_run: Path):
    pairs = pd.read_parquet(demo_run / "eval" / demo_key(demo_run) / "pairs.parquet")
    n_gen, n_imp = int(pairs["label"].sum()), int((pairs["label"] == 0).sum())
    kept_imp = int(((pairs["label"] == 0) & (np.arange(len(pairs)) % 4 == 0)).sum())
    at = open_page("compare")
    assert len(at.warning) == 1
    text = at.warning[0].value
    assert f"A has {n_gen:,} genuine / {n_imp:,} impostor" in text
    assert f"B has {n_gen:,} / {kept_imp:,}" in text and f"share {n_gen:,} / {kept_imp:,}" in text
    assert "uses only the shared pairs" in text
    assert any(m.value == f"**Metrics on the {n_gen + kept_imp:,} shared pairs**" for m in at.markdown)


def test_compare_at_equal_far_holds_both_runs_to_the_level(app_env: Path, demo_run: Path):
    key = demo_key(demo_run)
    a = pd.read_parquet(demo_run / "eval" / key / "pairs.parquet")
    b = pd.read_parquet(app_env / "orl_demo_b" / "eval" / key / "pairs.parquet")
    at = open_page("compare")
    at.segmented_control(key="cmp_mode").set_value("equal FAR").run()
    at.select_slider(key="cmp_far").set_value(1e-1).run()
    assert_clean(at)
    labels = a["label"].to_numpy()

    def lowest_tau(scores: np.ndarray) -> float:  # brute force: the lowest score keeping FAR <= 0.1
        return min(t for t in np.unique(scores) if _brute_far(scores, labels, t) <= 0.1)

    sa, sb = a["score"].to_numpy(np.float64), b["score"].to_numpy(np.float64)  # same pairs, same order
    ta, tb = lowest_tau(sa), lowest_tau(sb)
    right_a, right_b = (sa >= ta) == (labels == 1), (sb >= tb) == (labels == 1)
    heads = [m.value for m in at.markdown if m.value.startswith("**right by")]
    assert heads == [
        f"**right by A, wrong by B ({int((right_a & ~right_b).sum()):,})**",
        f"**right by B, wrong by A ({int((~right_a & right_b).sum()):,})**",
    ]
    assert any(f"A τ = {ta:.3f}, B τ = {tb:.3f}" in m.value for m in at.markdown)


def test_compare_offers_to_evaluate_another_run_when_none_has_this_data(tmp_path: Path, demo_run: Path, monkeypatch):
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "orl_demo").symlink_to(demo_run.resolve(), target_is_directory=True)
    fresh = root / "fresh"
    fresh.mkdir()
    for name in ("best.safetensors", "config.yaml", "split.json", "threshold.json"):
        shutil.copy(demo_run / name, fresh / name)
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(root))
    at = open_page("compare")
    assert any("No other run has an evaluation" in i.value for i in at.info)
    button = at.button(key="cmp_eval_go")
    assert button.label.startswith("Evaluate fresh on")
    button.click().run(timeout=240)
    assert_clean(at)
    assert (fresh / "eval" / demo_key(demo_run) / "summary.json").is_file()
    assert at.selectbox(key="compare_run").value.name == "fresh" and at.success


# ------------------------------------------------------------------------------------- verification
def test_target_far_steps_by_ten_and_the_gallery_shows_only_errors(app_env: Path, demo_run: Path):
    pairs = pd.read_parquet(demo_run / "eval" / demo_key(demo_run) / "pairs.parquet")
    at = open_page("verification")
    assert at.select_slider(key="target_far").options == ["1e-1", "1e-2", "1e-3", "1e-4", "1e-5", "1e-6"]
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy()
    tau = round(float(np.sort(s[y == 0])[-3]) - 0.0005, 3)  # three impostors at or above it
    at.slider[0].set_value(tau).run()
    assert_clean(at)
    fp, fn = int(((s >= tau) & (y == 0)).sum()), int(((s < tau) & (y == 1)).sum())
    assert fp == 3
    # the two galleries (one st.image element each, one caption per pair) hold errors only
    assert sum(len(im.captions) for im in at.get("image")) == min(fp, 12) + min(fn, 12)


# ------------------------------------------------------------------------------------ evaluate form
def test_evaluate_form_defaults_to_the_last_evaluation_and_keeps_to_data_roots(app_env: Path, demo_run: Path):
    summary = json.loads((demo_run / "eval" / demo_key(demo_run) / "summary.json").read_text())
    at = open_page("overview")
    form = at.text_input(key="new_eval_data::orl_demo")
    assert form.value == summary["data"]
    form.set_value("/etc").run()
    at.button(key="new_eval_go").click().run()
    assert not at.exception and len(at.error) == 1
    assert "/etc is outside the allowed data roots" in at.error[0].value and "\n" not in at.error[0].value


def test_a_run_with_no_evaluation_is_offered_its_test_folder_not_its_training_folder(
    tmp_path: Path, demo_run: Path, monkeypatch
):
    import yaml

    shoes = tmp_path / "shoes"
    for split in ("train", "test_m", "test_w"):
        (shoes / split).mkdir(parents=True)
    run = tmp_path / "ckpt" / "shoes_like"
    run.mkdir(parents=True)
    config = yaml.safe_load((demo_run / "config.yaml").read_text())
    config["data"]["train"] = str(shoes / "train")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(demo_run / "best.safetensors", run / "best.safetensors")
    (run / "split.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(tmp_path / "ckpt"))
    at = open_page("verification")
    assert at.text_input(key="new_eval_data::shoes_like").value == str(shoes / "test_m")
    assert [b.label for b in at.button if b.label.startswith("Evaluate on")] == [f"Evaluate on {shoes / 'test_m'}"]


# ------------------------------------------------------------------------------------ corrupt files
@pytest.mark.parametrize(
    "name, page, recompute",
    [
        ("summary.json", "overview", True),
        ("pairs.parquet", "verification", True),
        ("embeddings.npy", "embeddings", True),
        ("config.yaml", "overview", False),
        ("threshold.json", "verification", False),
    ],
)
def test_a_corrupt_artifact_is_one_line_naming_it(tmp_path: Path, demo_run: Path, monkeypatch, name, page, recompute):
    run = tmp_path / "ckpt" / "orl_demo"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("ablation", "audit", "projections"))
    target = run / name if name in ("config.yaml", "threshold.json") else run / "eval" / demo_key(demo_run) / name
    target.write_bytes(b"\x93NUMPY{not what it says: secret-token-123")
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(tmp_path / "ckpt"))
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    if page != "overview" and not at.error:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert name in message and "\n" not in message and "secret-token" not in message
    assert any(b.label == "Re-run this evaluation" for b in at.button) == recompute


def test_an_evaluation_of_older_weights_is_flagged_and_redone_the_same_way(tmp_path: Path, demo_run: Path, monkeypatch):
    from core.layout import file_hash

    run = tmp_path / "ckpt" / "orl_demo"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("ablation", "audit", "projections"))
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(tmp_path / "ckpt"))
    stale = lambda at: [w.value for w in at.warning if "weights are now" in w.value]  # noqa: E731
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    assert not stale(at)  # the bundled evaluation describes the bundled weights
    # as if the run had been resumed after this evaluation (made with flip TTA and a 90% crop)
    summary_path = run / "eval" / demo_key(demo_run) / "summary.json"
    summary = {**json.loads(summary_path.read_text()), "checkpoint_hash": "0" * 16, "tta": "flip", "crop": 0.9}
    summary_path.write_text(json.dumps(summary))
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (warning,) = stale(at)
    assert "0" * 16 in warning and file_hash(run / "best.safetensors") in warning
    calls = []

    def evaluate_run(run_dir, data, **options):  # records what the dashboard asks core to do (seconds, not minutes)
        calls.append((data, options))
        return {"key": demo_key(demo_run)}

    monkeypatch.setattr("core.evaluate.evaluate_run", evaluate_run)
    at.button(key="re_evaluate").click().run()
    ((data, options),) = calls
    assert Path(data).name == Path(summary["data"]).name
    assert (options["tta"], options["crop"], options["align"]) == ("flip", 0.9, summary["align"])


def test_data_roots_accept_project_data_and_the_runs_folders_only(tmp_path: Path, monkeypatch):
    from core.errors import MatchLabError
    from dashboard import access

    shoes = tmp_path / "shoes"
    (shoes / "train").mkdir(parents=True)
    (shoes / "test_m").mkdir()
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setenv(access.ROOTS_ENV, str(extra))
    roots = access.data_roots({"data": {"train": str(shoes / "train")}})
    assert access.check_under_roots("data/orl_faces", roots) == (access.REPO_ROOT / "data" / "orl_faces").resolve()
    assert access.check_under_roots(str(shoes / "test_m"), roots) == (shoes / "test_m").resolve()
    assert access.check_under_roots(str(extra), roots) == extra.resolve()
    (extra / "escape").symlink_to("/etc", target_is_directory=True)
    for bad in ("/etc", "data/../../../etc", str(extra / "escape"), ""):
        with pytest.raises(MatchLabError) as e:
            access.check_under_roots(bad, roots)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------- confusion
def test_each_error_is_shown_beside_the_neighbour_that_caused_it(app_env: Path, demo_run: Path):
    from dashboard import views

    ev = demo_run / "eval" / demo_key(demo_run)
    samples = pd.read_parquet(ev / "samples.parquet")
    emb = np.load(ev / "embeddings.npy")
    wrong = samples[~samples["correct"]]
    causes = views.causing_neighbours(emb, samples, wrong["sample_id"].tolist())
    for _, c in causes.iterrows():  # a leave-one-out 1-NN vote: the cause is the nearest image of all
        sims = emb @ emb[int(c["sample_id"])]
        sims[int(c["sample_id"])] = -np.inf
        assert int(np.argmax(sims)) == int(c["neighbour_id"])

    val = samples[samples["split"] == "val"]
    bad = val[~val["correct"]].iloc[0]
    at = open_page("confusion")
    at.segmented_control(key="cm_split").set_value("val").run()
    n_wrong = int((~val["correct"]).sum())
    assert any(
        f"over {len(val):,} images" in c.value and f"{n_wrong} misclassified image" in c.value for c in at.caption
    )
    at.selectbox(key="cm_true").set_value(int(bad["label"])).run()
    at.selectbox(key="cm_pred").set_value(int(bad["pred"])).run()
    assert_clean(at)
    cause = causes.set_index("sample_id").loc[int(bad["sample_id"])]
    captions = [c for im in at.get("image") for c in im.captions]
    assert any(f"{bad['path']} → nearest" in c and str(cause["neighbour_path"]) in c for c in captions), captions


# --------------------------------------------------------------------------------------- live match
def test_live_match_warns_when_uploads_do_not_resemble_the_reference(app_env: Path, face_bytes):
    import io

    from PIL import Image

    grey = Image.open(io.BytesIO(face_bytes[0])).convert("L")
    # the same face as a large colour photo: tinted channels, 10x the reference images' size
    colour = Image.merge("RGB", [grey.point(lambda v: int(v * g)) for g in (1.0, 0.7, 0.4)]).resize((920, 1120))
    buf = io.BytesIO()
    colour.save(buf, format="PNG")
    at = open_page("live")
    at.file_uploader(key="live_up_A").set_value(("photo.png", buf.getvalue(), "image/png"))
    at.file_uploader(key="live_up_B").set_value(("b.pgm", face_bytes[1], "image/x-portable-graymap"))
    at.run()
    assert not at.exception and any(m.label == "similarity score" for m in at.metric)
    assert len(at.warning) == 1
    text = at.warning[0].value
    assert "A (photo.png) is in colour" in text and "920x1120 px" in text and "B (b.pgm)" not in text
    assert at.selectbox(key="live_ref::orl_demo").value == "orl_faces"


def test_live_match_dataset_source_scores_nothing_until_an_image_is_chosen(app_env: Path, face_bytes):
    at = open_page("live")
    at.file_uploader(key="live_up_A").set_value(("a.pgm", face_bytes[0], "image/x-portable-graymap"))
    at.file_uploader(key="live_up_B").set_value(("b.pgm", face_bytes[1], "image/x-portable-graymap"))
    at.run()
    assert any(m.label == "similarity score" for m in at.metric)
    at.segmented_control(key="live_src_B").set_value("Dataset").run()
    assert_clean(at)
    assert not any(m.label == "similarity score" for m in at.metric)  # no stale or default pair scored
    at.selectbox(key="live_ds_B").set_value(3).run()
    assert any(m.label == "similarity score" for m in at.metric)
    at.toggle(key="live_crop_on").set_value(True).run()
    assert at.slider(key="live_crop").value < 1.0  # the crop starts where it changes something


# ------------------------------------------------------------------------------------ core verify
def test_verify_prints_the_far_an_exported_threshold_implies(demo_run: Path, tmp_path: Path):
    import os
    import subprocess
    import sys

    from dashboard import artifacts, views
    from tests.dashboard.conftest import ROOT

    ev = demo_run / "eval" / demo_key(demo_run)
    pairs = pd.read_parquet(ev / "pairs.parquet")
    points = views.pair_points(pairs)
    op = views.operating_point(points, views.threshold_for_target_far(points, 1e-2))
    point = views.export_operating_point(
        op,
        demo_key(demo_run),
        artifacts.checkpoint_hash(demo_run, json.loads((ev / "manifest.json").read_text())),
        demo_run.name,
        chosen_by="target_far",
        target_far=1e-2,
    )
    path = tmp_path / "op.json"
    path.write_text(json.dumps(point))
    faces = ROOT / "data" / "orl_faces"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(tmp_path / "cache")}
    args = [
        sys.executable,
        "-m",
        "core",
        "verify",
        str(demo_run),
        str(faces / "s1" / "1.pgm"),
        str(faces / "s1" / "2.pgm"),
        "--threshold-file",
        str(path),
        "--device",
        "cpu",
    ]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    n_imp = int((pairs["label"] == 0).sum())
    assert f"implies FAR {op['far']:.2e} ({op['fp']:,} of {n_imp:,} impostor pairs accepted)" in r.stdout
    assert "target FAR 1e-02" in r.stdout and f"threshold {point['threshold']:.4f}" in r.stdout
