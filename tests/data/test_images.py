"""core.data.images: folder scanning, every image mode to RGB, bad files named, square resize."""

import numpy as np
import pytest
from PIL import Image

from core.data.images import BadImageError, load_rgb, resize_square, scan_image_folder
from core.errors import MatchLabError
from tests import messy_images as mi


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "bilevel", "cmyk", "deep16", "exif_rotated", "nested"])
def test_every_mode_becomes_rgb(messy, kind):
    rel = messy["special"][kind]
    img = load_rgb(messy["root"] / rel)
    assert img.mode == "RGB"
    assert np.asarray(img).dtype == np.uint8


def test_16bit_is_scaled_not_clipped(messy):
    a = np.asarray(load_rgb(messy["root"] / mi.DEEP16)).astype(int)
    gray = a[..., 0].ravel()
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert gray[0] == 0 and gray[-1] == 255
    assert (np.diff(gray) >= 0).all()  # the ramp survives
    assert 120 < gray.mean() < 135  # a clip to 255 would give ~255


def test_exif_orientation_is_applied(messy):
    res = messy["res"]
    a = np.asarray(load_rgb(messy["root"] / mi.EXIF_ROTATED)).astype(int)
    assert a.shape == (2 * res, res, 3)  # stored 2r wide x r high, displayed r wide x 2r high
    top, bottom = a[: res // 2].mean((0, 1)), a[-res // 2 :].mean((0, 1))
    assert top[0] > 200 and top[2] < 50  # stored left half (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_transparency_is_composited_on_black(messy):
    res = messy["res"]
    a = np.asarray(load_rgb(messy["root"] / mi.RGBA))
    assert (a[:, : res // 2] == 0).all()
    assert a[:, res // 2 :].max() > 0


@pytest.mark.parametrize("rel", [mi.TRUNCATED, mi.NOT_AN_IMAGE])
def test_bad_file_raises_naming_it(messy, rel):
    with pytest.raises(BadImageError) as e:
        load_rgb(messy["root"] / rel)
    assert isinstance(e.value, MatchLabError)
    assert str(messy["root"] / rel) in str(e.value) and "\n" not in str(e.value)
    assert e.value.path == str(messy["root"] / rel)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")


def test_bytes_source_names_the_file_in_errors():
    with pytest.raises(BadImageError, match="upload.png"):
        load_rgb(b"not an image", name="upload.png")


def test_scan_lists_nested_images_and_ignores_other_extensions(messy):
    scan = scan_image_folder(messy["root"])
    assert scan.class_names == ["c0", "c1", "c2"]
    assert mi.NESTED in scan.paths
    assert mi.IGNORED not in scan.paths
    assert set(scan.paths) == set(messy["good"]) | set(messy["bad"])  # bad files are listed, found bad later
    assert scan.labels.dtype == np.int64
    for p, y in zip(scan.paths, scan.labels):
        assert p.split("/")[0] == scan.class_names[y]
    assert list(scan.labels) == sorted(scan.labels)  # grouped by class


def test_scan_groups_by_class_even_when_names_sort_differently_as_paths(tmp_path):
    # "a/x" sorts after "a-b/x" as a string, yet class "a" comes first: paths must follow class order.
    for cls in ["a", "a-b"]:
        (tmp_path / cls).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / cls / "x.png")
    scan = scan_image_folder(tmp_path)
    assert scan.class_names == ["a", "a-b"] and scan.paths == ["a/x.png", "a-b/x.png"]
    assert scan.labels.tolist() == [0, 1]


def _one_line_error(fn, *args, match: str) -> str:
    with pytest.raises(MatchLabError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_scan_errors_are_one_line(tmp_path):
    _one_line_error(scan_image_folder, tmp_path / "missing", match="does not exist")
    (tmp_path / "file.txt").write_text("x")
    _one_line_error(scan_image_folder, tmp_path / "file.txt", match="not a folder")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "only" / "a.png")
    _one_line_error(scan_image_folder, one, match="at least two")
    (one / "empty").mkdir()
    msg = _one_line_error(scan_image_folder, one, match="holds no images")
    assert str(one / "empty") in msg
    (one / "empty" / "notes.txt").write_text("not an image")  # still no images
    _one_line_error(scan_image_folder, one, match="empty")


def test_resize_square_takes_the_centre():
    # 90 x 30: red | green | blue thirds; the centred square is the green third.
    a = np.zeros((30, 90, 3), dtype=np.uint8)
    a[:, :30, 0], a[:, 30:60, 1], a[:, 60:, 2] = 255, 255, 255
    out = resize_square(Image.fromarray(a), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[2:-2, 2:-2, 1].min() > 240 and out[2:-2, 2:-2, [0, 2]].max() < 15
    tall = resize_square(Image.fromarray(a.transpose(1, 0, 2).copy()), 10)
    assert tall.shape == (10, 10, 3)
