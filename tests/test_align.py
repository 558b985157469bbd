"""Face detection and alignment on real faces (bundled ORL): landmarks, geometry, no-face modes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.align.faces import Aligner, align_face, choose_face
from core.align.mtcnn import Faces
from core.align.transform import ARCFACE_112, apply, template, umeyama
from core.errors import MatchLabError

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
# One photo of each of ten people (ORL is frontal or near-frontal, 92 x 112 grayscale).
ORL_FILES = [ORL / f"s{i}" / "1.pgm" for i in range(1, 11)]


@pytest.fixture(scope="module")
def aligner() -> Aligner:
    return Aligner(112, on_no_face="skip")


@pytest.fixture(scope="module")
def orl_results(aligner):
    return aligner.align([str(p) for p in ORL_FILES])


def _no_face_image() -> np.ndarray:
    """A smooth colour gradient: nothing in it looks like a face."""
    y, x = np.mgrid[0:160, 0:200]
    return np.stack([x * 255 // 199, y * 255 // 159, np.full_like(x, 90)], axis=2).astype(np.uint8)


def test_landmarks_on_orl_faces_lie_inside_the_face_in_anatomical_order(orl_results):
    for path, r in zip(ORL_FILES, orl_results):
        assert r.status == "aligned", f"no face found in {path}"
        box, pts = r.faces.boxes[r.chosen], r.faces.landmarks[r.chosen]
        h, w = r.size
        assert (h, w) == (112, 92)
        assert r.faces.probs[r.chosen] > 0.9
        # every landmark inside the face box and the image
        assert np.all(pts[:, 0] >= box[0]) and np.all(pts[:, 0] <= box[2]), path
        assert np.all(pts[:, 1] >= box[1]) and np.all(pts[:, 1] <= box[3]), path
        assert np.all(pts >= 0) and np.all(pts[:, 0] < w) and np.all(pts[:, 1] < h), path
        left_eye, right_eye, nose, mouth_l, mouth_r = pts
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), path
        assert left_eye[0] < nose[0] < right_eye[0], path
        assert mouth_l[0] < mouth_r[0], path


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    angle, scale, shift = np.deg2rad(23.0), 0.37, np.array([-41.5, 17.25])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = umeyama(src, dst)
    # float64 SVD round-off on coordinates of ~100: measured errors are ~1e-14; 1e-9 leaves room.
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    np.testing.assert_allclose(apply(m, src), dst, atol=1e-9)


def test_template_sizes_follow_res_including_the_112x96_variant():
    np.testing.assert_allclose(template(112), ARCFACE_112)
    np.testing.assert_allclose(template((112, 96)), ARCFACE_112 - [8.0, 0.0])
    np.testing.assert_allclose(template(56), ARCFACE_112 / 2)


def test_alignment_is_idempotent_in_shape_and_dtype_and_puts_landmarks_on_the_template(orl_results):
    image = np.asarray(Image.open(ORL_FILES[0]).convert("RGB"))
    r = orl_results[0]
    for res, shape in ((112, (112, 112, 3)), ((112, 96), (112, 96, 3)), (64, (64, 64, 3))):
        once = align_face(image, r.faces.landmarks[r.chosen], res)
        assert once.shape == shape and once.dtype == np.uint8
        again = Aligner(res).align_arrays([once])[0]
        assert again.status == "aligned" and again.crop.shape == shape and again.crop.dtype == np.uint8
    # Re-detecting on the aligned crops finds the landmarks where alignment put them. Measured on 80 ORL faces
    # (s1..s40, photos 1 and 5): mean error 2 px, worst single point 7.6 px; a face aligned with the wrong
    # points (eyes and mouth swapped, a 3x scale error) is off by 20-40 px.
    crops = [x.crop for x in orl_results]
    errors = np.stack([np.abs(a.faces.landmarks[a.chosen] - template(112)) for a in Aligner(112).align_arrays(crops)])
    assert errors.mean() < 3.0 and errors.max() < 10.0


def test_every_on_no_face_mode_on_an_image_without_a_face():
    blank = _no_face_image()
    skip = Aligner(64, on_no_face="skip").align_arrays([blank], ["blank.png"])[0]
    assert skip.status == "no_face" and skip.crop is None and not skip.found and len(skip.faces) == 0
    centre = Aligner((64, 48), on_no_face="centre").align_arrays([blank], ["blank.png"])[0]
    assert centre.status == "centre" and centre.crop.shape == (64, 48, 3) and not centre.found
    with pytest.raises(MatchLabError) as err:
        Aligner(64, on_no_face="fail").align_arrays([blank], ["blank.png"])
    assert "blank.png" in str(err.value) and "no face found" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MatchLabError, match="on_no_face='maybe'"):
        Aligner(64, on_no_face="maybe")


def test_a_corrupt_photo_gives_a_one_line_error_naming_it(tmp_path, aligner):
    good = ORL_FILES[0].read_bytes()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    for source, name in ((str(bad), "broken.jpg"), (b"GIF89a" + good[:40], "upload 0")):
        with pytest.raises(MatchLabError) as err:
            aligner.align([source])
        assert name in str(err.value) and "\n" not in str(err.value)


def test_the_largest_most_central_face_is_chosen():
    boxes = np.array([[0, 0, 30, 30], [80, 80, 120, 120], [150, 0, 200, 60]], np.float32)
    faces = Faces(boxes, np.ones(3, np.float32), np.zeros((3, 5, 2), np.float32))
    assert choose_face(faces, 200, 200) == 1  # central beats the larger one in the corner
    assert choose_face(Faces(boxes[[0, 2]], np.ones(2, np.float32), np.zeros((2, 5, 2), np.float32)), 200, 200) == 1
    assert choose_face(Faces(boxes[:0], np.ones(0, np.float32), np.zeros((0, 5, 2), np.float32)), 200, 200) == -1


def test_the_decode_once_cache_stores_aligned_crops_once_and_applies_on_no_face(tmp_path):
    from core.data.cache import build_or_load_cache, cache_status

    root = tmp_path / "photos"
    for person in ("s1", "s2"):
        (root / person).mkdir(parents=True)
        for k in (1, 2, 3):
            (root / person / f"{k}.pgm").write_bytes((ORL / person / f"{k}.pgm").read_bytes())
    Image.fromarray(_no_face_image()).save(root / "s2" / "blank.png")
    (root / "s1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    cache_dir = tmp_path / "cache"
    built = build_or_load_cache(
        root, (112, 96), cache_dir=cache_dir, align="mtcnn", on_no_face="centre", progress=False
    )
    assert built.images.shape == (7, 112, 96, 3) and built.align == "mtcnn"
    assert built.no_face == ["s2/blank.png"] and [p for p, _ in built.skipped] == ["s1/broken.jpg"]
    # Aligned and plain caches are different caches; the aligned one is reused as is (no detection again).
    assert cache_status(root, (112, 96), cache_dir, align="mtcnn") == "fresh"
    assert cache_status(root, (112, 96), cache_dir) == "missing"
    skipped = build_or_load_cache(root, (112, 96), cache_dir=cache_dir, align="mtcnn", on_no_face="skip")
    assert len(skipped) == 6 and "s2/blank.png" not in skipped.paths and skipped.no_face == ["s2/blank.png"]
    np.testing.assert_array_equal(skipped.images, built.images[[built.paths.index(p) for p in skipped.paths]])
    with pytest.raises(MatchLabError, match="blank.png: no face found"):
        build_or_load_cache(root, (112, 96), cache_dir=cache_dir, align="mtcnn", on_no_face="fail")
    # The crops are the faces the aligner makes from the same files.
    direct = Aligner((112, 96)).align([str(root / "s1" / "1.pgm")])[0].crop
    np.testing.assert_array_equal(built.images[built.paths.index("s1/1.pgm")], direct)
