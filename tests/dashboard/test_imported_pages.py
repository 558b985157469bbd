"""The dashboard on imported runs (issue 11), with Streamlit's AppTest: an imported ONNX model (the demo
network), imported pair scores and imported embeddings. Every page renders without an error; Overview shows
the model file, its hash and preprocessing; Confusion says why a classifier view does not apply; Live match
scores two faces exactly as the native demo run does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.cli import main
from tests.dashboard.conftest import APP
from tests.dashboard.imported_runs import MODEL, ORL, make_imported_model, make_imported_results

PAGES = ["overview", "embeddings", "confusion", "verification", "ablation", "live", "compare"]
# every page on the imported model; on imported results, the pages whose content depends on what was imported
CASES = [(MODEL, p) for p in PAGES] + [
    (run, p) for run in ("vendor-scores", "vendor-embeddings") for p in ("overview", "embeddings", "verification")
]


@pytest.fixture(scope="module")
def imported_root(tmp_path_factory: pytest.TempPathFactory, demo_run: Path) -> Path:
    root = tmp_path_factory.mktemp("imported") / "checkpoints"
    root.mkdir()
    (root / "orl_demo").symlink_to(demo_run.resolve(), target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("MATCHLAB_CACHE_DIR", str(root.parent / "cache"))
    run = make_imported_model(demo_run, root)
    assert main(["evaluate", str(run), "--data", str(ORL), "--bootstrap", "0", "--json"]) == 0
    make_imported_results(demo_run, root)
    yield root
    mp.undo()


def open_page(root: Path, run: str, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(root))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.selectbox(key="run").set_value(run).run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.parametrize("run, page", CASES)
def test_every_page_renders_on_imported_runs(imported_root: Path, monkeypatch, run: str, page: str):
    at = open_page(imported_root, run, page, monkeypatch)
    assert at.selectbox(key="run").value == run
    text = " ".join(m.value for m in at.markdown) + " ".join(i.value for i in at.info)
    if page == "overview":
        assert "not trained in MatchLab" in text and "sha256" in text
        if run == MODEL:
            assert "Preprocessing" in text and any(t.value is not None for t in at.table)
    if page == "verification":
        assert len(at.slider) == 1  # the threshold workbench works on any imported evaluation
    if page == "confusion" and run == MODEL:
        assert "no class head" in text and at.get("plotly_chart")
    if page in ("embeddings", "confusion") and run == "vendor-scores":
        assert "imported pair scores" in text
    if page == "embeddings" and run != "vendor-scores":
        assert at.get("plotly_chart")


def test_live_match_on_an_imported_model_gives_the_native_score(
    imported_root: Path, demo_run: Path, monkeypatch, face_bytes
):
    from core.embedder import load_embedder
    from core.verify import score_images

    same_a, same_b, _ = face_bytes
    native = score_images(load_embedder(demo_run, device="cpu"), same_a, same_b)["score"]
    at = open_page(imported_root, MODEL, "live", monkeypatch)
    at.file_uploader(key="live_up_A").set_value(("a.pgm", same_a, "image/x-portable-graymap"))
    at.file_uploader(key="live_up_B").set_value(("b.pgm", same_b, "image/x-portable-graymap"))
    at.run()
    assert not at.exception and not at.error
    shown = next(m.value for m in at.metric if m.label == "similarity score")
    assert float(shown) == pytest.approx(native, abs=1e-4)  # shown to 4 decimals; ONNX agrees to 4e-7
