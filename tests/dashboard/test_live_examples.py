"""Live match's built-in example pairs (issue 18): a first visit shows the genuine example's score with
nothing uploaded, the impostor example is one click away, both are the scores README's table gives for the
demo run, and the examples step aside once the user gives an image."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import APP
from tests.test_faces_cfp import _readme_example_scores


def _score(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "similarity score")


def test_a_first_visit_scores_the_example_pairs_readme_shows(app_env: Path, face_bytes):
    genuine, impostor = _readme_example_scores()["orl_demo"]
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    at.switch_page("app_pages/live.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="run").value == "orl_demo"
    # the page prints 4 decimals, as README does: the same rounding of the same score
    assert _score(at) == f"{genuine:.4f}"
    assert any(s.value.startswith("**Same**") for s in at.success)
    at.segmented_control(key="live_example").set_value("two people").run()
    assert _score(at) == f"{impostor:.4f}"
    assert any(e.value.startswith("**Different**") for e in at.error)
    examples = lambda: [c for c in at.get("button_group") if getattr(c, "key", None) == "live_example"]  # noqa: E731
    assert examples()
    # an image of the user's own: the examples step aside and nothing is scored until the second one
    at.file_uploader(key="live_up_A").set_value(("a.pgm", face_bytes[0], "image/x-portable-graymap")).run()
    assert not any(m.label == "similarity score" for m in at.metric)
    assert not examples()


def test_the_example_pairs_are_scored_with_alignment_on_too(app_env: Path):
    # the bundled face model is trained on aligned faces, so its Live match opens with alignment on: the
    # examples must still give a first visit a score, MTCNN finding the face in each ORL photo
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    at.switch_page("app_pages/live.py")
    at.run()
    unaligned = _score(at)
    at.toggle(key="live_align").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    aligned = _score(at)
    assert aligned != unaligned  # really scored again, on the aligned crops
    assert any("faces aligned" in c.value for c in at.caption)
    assert any(s.value.startswith("**Same**") for s in at.success)
