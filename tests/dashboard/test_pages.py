"""Every dashboard page rendered with Streamlit's AppTest on the bundled demo run, and driven: the run
picker, the threshold slider and its buttons, the confusion-cell pickers, the live page's uploaders,
the compute-it-now button of a missing evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import APP, ROOT, demo_key

PAGES = ["overview", "embeddings", "confusion", "verification", "ablation", "live", "compare"]


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def brute(pairs: pd.DataFrame, tau: float) -> dict:
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy()
    return {
        "TP (genuine accepted)": int(((s >= tau) & (y == 1)).sum()),
        "FP (false accepts)": int(((s >= tau) & (y == 0)).sum()),
        "FN (false rejects)": int(((s < tau) & (y == 1)).sum()),
        "TN (impostors rejected)": int(((s < tau) & (y == 0)).sum()),
    }


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_the_demo_run(app_env: Path, page: str):
    at = open_page(page)
    assert at.title[0].value  # the page got as far as its title
    assert at.selectbox(key="run").value == "orl_demo"
    if page in ("overview", "embeddings", "confusion", "verification", "ablation", "compare"):
        assert at.get("plotly_chart"), f"{page} drew no chart"
    if page == "verification":
        assert len(at.slider) == 1 and len(at.download_button) == 1
    if page == "live":
        assert len(at.file_uploader) == 2


def test_run_picker_switches_run(app_env: Path):
    at = open_page("verification")
    auc_a = metric(at, "AUC")
    at.selectbox(key="run").set_value("orl_demo_b").run()
    assert_clean(at)
    assert metric(at, "AUC") != auc_a  # the noisy copy is a worse model
    summary = json.loads(
        (app_env / "orl_demo_b" / "eval" / demo_key(app_env / "orl_demo") / "summary.json").read_text()
    )
    assert metric(at, "AUC") == f"{summary['verification']['auc']:.4f}"


def test_threshold_slider_and_buttons_move_every_count(app_env: Path, demo_run: Path):
    key = demo_key(demo_run)
    pairs = pd.read_parquet(demo_run / "eval" / key / "pairs.parquet")
    summary = json.loads((demo_run / "eval" / key / "summary.json").read_text())
    at = open_page("verification")
    slider = at.slider[0]
    for tau in (float(np.quantile(pairs["score"], 0.5)), float(np.quantile(pairs["score"], 0.95))):
        slider.set_value(round(tau, 3)).run()
        assert_clean(at)
        for label, count in brute(pairs, at.slider[0].value).items():
            assert metric(at, label) == f"{count:,}", label

    at.button[0].click().run()  # τ at EER
    assert at.slider[0].value == pytest.approx(summary["verification"]["eer_threshold"])
    fp, fn = (int(metric(at, k).replace(",", "")) for k in ("FP (false accepts)", "FN (false rejects)"))
    n_imp, n_gen = summary["verification"]["n_impostor"], summary["verification"]["n_genuine"]
    assert abs(fp / n_imp - fn / n_gen) < 0.05  # FAR ~ FRR there

    at.select_slider(key="target_far").set_value(1e-1).run()
    next(b for b in at.button if b.label == "τ at target FAR").click().run()
    tau = at.slider[0].value
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy()
    assert ((s >= tau) & (y == 0)).sum() / (y == 0).sum() <= 0.1
    lower = s[s < tau].max()
    assert ((s >= lower) & (y == 0)).sum() / (y == 0).sum() > 0.1  # the lowest such threshold

    # the chosen threshold survives a page switch and is the one the live page uses
    at.switch_page("app_pages/overview.py").run()
    at.switch_page("app_pages/verification.py").run()
    assert at.slider[0].value == pytest.approx(tau)


def test_a_recommended_threshold_that_does_not_carry_over_is_flagged(app_env: Path, tmp_path: Path, monkeypatch):
    """faces_cfp's threshold was chosen on CFP; read on ORL (its bundled evaluation) it accepts most impostors:
    the Verification and Live match pages say so."""
    at = open_page("verification")  # orl_demo on its own test people: a caption, no warning
    assert any("was chosen (eer) on its validation pairs" in c.value for c in at.caption)
    assert not any("carry over" in w.value for w in at.warning)

    run = ROOT / "checkpoints" / "faces_cfp"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "faces_cfp").symlink_to(run, target_is_directory=True)
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(tmp_path / "runs"))
    at = open_page("verification")
    tau = json.loads((run / "threshold.json").read_text())["threshold"]
    pairs = pd.read_parquet(run / "eval" / "orl_faces" / "pairs.parquet")
    far = brute(pairs, tau)["FP (false accepts)"] / int((pairs["label"] == 0).sum())
    warning = " ".join(w.value for w in at.warning)
    assert f"on these pairs it gives FAR {far:.1%}" in warning and "does not carry over" in warning, warning
    assert far > 0.5  # the figure the warning is about: most ORL impostors pass CFP's threshold
    # Live match scores its example pair against the same threshold and says the same beside the histograms
    at.switch_page("app_pages/live.py").run()
    assert_clean(at)
    assert any(f"on these pairs it gives FAR {far:.1%}" in w.value for w in at.warning)


def test_confusion_cell_pickers_show_that_cells_images(app_env: Path, demo_run: Path):
    key = demo_key(demo_run)
    samples = pd.read_parquet(demo_run / "eval" / key / "samples.parquet")
    wrong = samples[~samples["correct"]].iloc[0]
    at = open_page("confusion")
    assert at.segmented_control(key="cm_split").value == "test"  # held-out identities first
    at.segmented_control(key="cm_split").set_value("all").run()
    at.selectbox(key="cm_true").set_value(int(wrong["label"])).run()
    at.selectbox(key="cm_pred").set_value(int(wrong["pred"])).run()
    assert_clean(at)
    n = int(((samples["label"] == wrong["label"]) & (samples["pred"] == wrong["pred"])).sum())
    noun = "misclassified image" if n == 1 else "misclassified images"
    assert any(f"**{n} {noun}**" in m.value for m in at.markdown)
    assert len(at.dataframe) >= 2  # most-confused pairs and the per-class table


def test_live_page_scores_two_uploads(app_env: Path, face_bytes):
    same_a, same_b, other = face_bytes
    at = open_page("live")
    at.file_uploader(key="live_up_A").set_value(("a.pgm", same_a, "image/x-portable-graymap"))
    at.file_uploader(key="live_up_B").set_value(("b.pgm", same_b, "image/x-portable-graymap"))
    at.run()
    assert_clean(at)
    score_same = float(metric(at, "similarity score"))
    assert -1.0 <= score_same <= 1.0
    assert len(at.slider) == 1 and any("FAR at τ" == m.label for m in at.metric)
    at.file_uploader(key="live_up_B").set_value(("c.pgm", other, "image/x-portable-graymap")).run()
    assert float(metric(at, "similarity score")) < score_same  # another person scores lower


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.png", b"this is not an image", "not an image"),
        ("cut.pgm", None, "truncated"),  # a truncated file: filled in from a real face below
        ("huge.png", b"\x89PNG" + b"0" * (10 * 1024 * 1024 + 1), "the limit is 10 MB"),
    ],
)
def test_live_page_rejects_bad_uploads_with_one_line(app_env: Path, face_bytes, name, data, message):
    data = face_bytes[0][: len(face_bytes[0]) // 3] if data is None else data
    at = open_page("live")
    at.file_uploader(key="live_up_A").set_value((name, data, "image/png"))
    at.file_uploader(key="live_up_B").set_value(("b.pgm", face_bytes[1], "image/x-portable-graymap"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert not any(m.label == "similarity score" for m in at.metric)


def test_compare_page_lists_disagreements(app_env: Path):
    at = open_page("compare")
    assert at.selectbox(key="compare_run").value.name == "orl_demo_b"
    board = at.dataframe(key="cmp_board").value
    assert list(board["run"]) == ["orl_demo", "orl_demo_b"] and "top-1" in board.columns
    assert not at.warning  # the noisy copy scores exactly the demo's pairs: nothing to warn about
    heads = [m.value for m in at.markdown if m.value.startswith("**right by")]
    assert len(heads) == 2 and any(not h.endswith("(0)**") for h in heads)


def test_missing_evaluation_offers_a_button_that_computes_it(tmp_path: Path, demo_run: Path, monkeypatch):
    run = tmp_path / "ckpt" / "fresh"
    run.mkdir(parents=True)
    for name in ("best.safetensors", "config.yaml", "split.json", "threshold.json", "metrics.jsonl"):
        if (demo_run / name).is_file():
            shutil.copy(demo_run / name, run / name)
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(tmp_path / "ckpt"))
    at = open_page("verification")
    assert any("has not been evaluated" in i.value for i in at.info)
    button = next(b for b in at.button if b.label.startswith("Evaluate on"))
    button.click().run(timeout=240)
    assert_clean(at)
    assert (run / "eval" / "orl_faces" / "summary.json").is_file()
    assert at.selectbox(key="eval_key").value == "orl_faces" and len(at.slider) == 1


def test_exported_operating_point_is_accepted_by_core_verify(app_env: Path, demo_run: Path, tmp_path: Path):
    """The download's payload (built by views.export_operating_point on the page) read back by core."""
    from core.run import load_run
    from core.verify import read_threshold_file
    from dashboard import artifacts, views

    key = demo_key(demo_run)
    pairs = pd.read_parquet(demo_run / "eval" / key / "pairs.parquet")
    manifest = json.loads((demo_run / "eval" / key / "manifest.json").read_text())
    op = views.operating_point(views.pair_points(pairs), 0.7)
    point = views.export_operating_point(op, key, artifacts.checkpoint_hash(demo_run, manifest), demo_run.name)
    path = tmp_path / "op.json"
    path.write_text(json.dumps(point))
    assert read_threshold_file(path, load_run(demo_run, device="cpu")) == pytest.approx(0.7)


def test_tsne_map_is_computed_on_request_and_cached(app_env: Path, demo_run: Path):
    from core import projection

    key = demo_key(demo_run)
    cached = projection.projection_path(demo_run / "eval" / key, "tsne", {"perplexity": 12.0}, 20000)
    cached.unlink(missing_ok=True)
    try:
        at = open_page("embeddings")
        at.segmented_control(key="proj_method").set_value("tsne").run()
        at.number_input(key="tsne_perp").set_value(12.0).run()
        assert any("No t-SNE map" in i.value for i in at.info) and not at.get("plotly_chart")
        next(b for b in at.button if b.label == "Compute t-SNE").click().run(timeout=120)
        assert_clean(at)
        assert cached.is_file() and at.get("plotly_chart")
        assert any("Showing all" in c.value for c in at.caption)
    finally:
        cached.unlink(missing_ok=True)  # the demo run's folder is committed: leave no file behind


def test_overview_shows_the_samples_after_training_augmentation(app_env: Path):
    at = open_page("overview")
    before = len(at.get("image"))
    at.button(key="augment").click().run()
    assert_clean(at)
    assert len(at.get("image")) == 2 * before  # the augmented copy of each sample image
