"""Live match with face alignment on (issue 12): faces found away from the centre, the face picker, and
the one-line message for a photo without a face. AppTest; the browser test is in test_browser.py."""

from __future__ import annotations

from pathlib import Path

from tests.dashboard.test_pages import metric, open_page
from tests.face_photos import blank_photo, off_centre_photo


def assert_clean(at) -> None:
    """No exception and no error box, except the decision "Different" (st.error) for a low score."""
    assert not at.exception, [e.value for e in at.exception]
    assert all(e.value.startswith("**Different**") for e in at.error), [e.value for e in at.error]


def _upload(at, side: str, name: str, data: bytes) -> None:
    at.file_uploader(key=f"live_up_{side}").set_value((name, data, "image/jpeg"))


def test_live_match_aligns_off_centre_faces_and_lets_the_user_pick_one(app_env: Path):
    at = open_page("live")
    at.toggle(key="live_align").set_value(True)
    _upload(at, "A", "two.jpg", off_centre_photo("s1/1.pgm", at=(40, 30), second="s2/1.pgm"))
    _upload(at, "B", "one.jpg", off_centre_photo("s1/2.pgm", at=(420, 200)))
    at.run()
    assert_clean(at)
    assert any(h.value == "Faces found" for h in at.subheader)
    captions = [c.value for c in at.caption]
    assert any("faces aligned (MTCNN" in c for c in captions), captions
    same = float(metric(at, "similarity score"))
    # A holds two faces: the picker defaults to the larger one (s1, the same person as B)
    radio = next(r for r in at.radio if r.label == "Face to use in A")
    assert radio.options == ["1", "2"] and len(at.radio) == 1
    larger = radio.value
    radio.set_value(2 if larger == 1 else 1).run()
    assert_clean(at)
    assert float(metric(at, "similarity score")) != same  # the other face (another person) is scored


def test_live_match_says_in_one_line_when_a_photo_has_no_face(app_env: Path):
    at = open_page("live")
    at.toggle(key="live_align").set_value(True)
    _upload(at, "A", "a.jpg", off_centre_photo("s1/1.pgm"))
    _upload(at, "B", "B.jpg", blank_photo())
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["no face found in B.jpg; try a closer, frontal photo or turn alignment off"]
    assert not any(m.label == "similarity score" for m in at.metric)
