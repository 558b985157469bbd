"""The Data audit page with Streamlit's AppTest: its compute button runs the audit (core.audit) on a copy of
the demo run and the page then shows the ranked tables and the downloads; the Overview warns when the
audit found leakage; the pure helpers behind the table (dashboard.views) are checked directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import views
from tests.dashboard.conftest import APP, ROOT, demo_key


@pytest.fixture(scope="module")
def audit_checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_run: Path) -> Path:
    """A checkpoints folder with one copy of the demo run whose evaluation has no audit yet."""
    root = tmp_path_factory.mktemp("audit_checkpoints")
    run = root / "orl_demo"
    run.mkdir()
    for name in ("best.safetensors", "config.yaml", "split.json", "threshold.json", "metrics.jsonl"):
        if (demo_run / name).is_file():
            shutil.copy(demo_run / name, run / name)
    key = demo_key(demo_run)
    shutil.copytree(demo_run / "eval" / key, run / "eval" / key, ignore=shutil.ignore_patterns("audit"))
    return root


@pytest.fixture
def audit_env(audit_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MATCHLAB_CHECKPOINTS", str(audit_checkpoints))
    monkeypatch.setenv("MATCHLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "audit_page_cache"))
    return audit_checkpoints


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_button_computes_the_audit_then_the_tables_show(audit_env: Path):
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    at.switch_page("app_pages/audit.py").run()
    _clean(at)
    audit_dir = audit_env / "orl_demo" / "eval" / "orl_faces" / "audit"
    if not (audit_dir / "summary.json").is_file():
        button = next(b for b in at.button if b.label == "Run the data audit")
        button.click().run()
        _clean(at)
    assert (audit_dir / "summary.json").is_file()
    assert at.title[0].value == "Data audit"
    assert len(at.dataframe) >= 1  # the ranked table of the first issue type
    labels = [b.label for b in at.get("download_button")]
    assert "Download suggested fixes (fixes.csv)" in labels
    # every issue type present in issues.parquet is offered, leakage first
    issues = pd.read_parquet(audit_dir / "issues.parquet")
    options = at.selectbox(key="audit_issue").options
    assert len(options) == issues["issue"].nunique()
    at.selectbox(key="audit_issue").set_value("quality").run()
    _clean(at)
    at.toggle(key="audit_flagged").set_value(False).run()  # the whole ranking, least sharp first
    _clean(at)
    shown = at.dataframe[0].value
    assert len(shown) == min(500, len(issues[issues["issue"] == "quality"]))
    assert shown["score"].is_monotonic_increasing


def test_overview_warns_when_the_audit_found_leakage(audit_env: Path):
    summary_path = audit_env / "orl_demo" / "eval" / "orl_faces" / "audit" / "summary.json"
    if not summary_path.is_file():  # run alone (or first): audit as the page's button does, through core
        from core.audit.run import audit_run

        run = audit_env / "orl_demo"
        evaluated = json.loads((run / "eval" / "orl_faces" / "summary.json").read_text())
        audit_run(
            run,
            ROOT / "data" / "orl_faces",
            pairs_file=evaluated.get("pairs_file"),
            pairs_format=evaluated.get("pairs_format"),
            device="cpu",
        )
    original = summary_path.read_text()
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    _clean(at)
    found = json.loads(original)
    assert any("Data leakage" in w.value for w in at.warning) == bool(found["leakage"])
    try:
        summary_path.write_text(json.dumps({**found, "leakage": True, "leaking_pairs": 3}))
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        _clean(at)
        assert any("3 duplicate image pairs between train and val/test" in w.value for w in at.warning)
    finally:
        summary_path.write_text(original)


def test_audit_rows_filters_and_ranks():
    issues = pd.DataFrame(
        {
            "issue": ["label"] * 4 + ["outlier"],
            "rank": [2, 0, 1, 3, 0],
            "path": ["s1/1.pgm", "s2/1.pgm", "s1/2.pgm", "s3/1.pgm", "s1/1.pgm"],
            "class_name": ["s1", "s2", "s1", "s3", "s1"],
            "split": ["train", "val", "train", "test", "train"],
            "flagged": [True, True, False, True, True],
        }
    )
    rows = views.audit_rows(issues, "label")
    assert rows["path"].tolist() == ["s2/1.pgm", "s1/1.pgm", "s3/1.pgm"]  # flagged, by rank
    assert views.audit_rows(issues, "label", flagged_only=False)["rank"].tolist() == [0, 1, 2, 3]
    assert views.audit_rows(issues, "label", splits=["train"])["path"].tolist() == ["s1/1.pgm"]
    assert views.audit_rows(issues, "label", flagged_only=False, text="S1")["path"].tolist() == ["s1/2.pgm", "s1/1.pgm"]
    assert views.selected_row({"rows": [1]}, rows)["path"] == "s1/1.pgm"
    assert views.selected_row({"rows": []}, rows) is None and views.selected_row({"rows": [9]}, rows) is None
    assert views.audit_leakage_note({"leakage": False}) is None
    note = views.audit_leakage_note({"leakage": True, "leaking_pairs": 1, "leaking_identities": 2})
    assert "1 duplicate image pair between" in note and "2 identities matching" in note
