"""core.data.cache: decode once, reuse while nothing changed, skip or fail on bad files, exact stats."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import core.data.cache as cache_mod
from core.data.cache import build_or_load_cache, cache_location, cache_status, load_image_arrays
from core.errors import MatchLabError
from tests import messy_images as mi


def _build(messy, cache_dir, **kw):
    kw.setdefault("progress", False)
    return build_or_load_cache(messy["root"], 24, cache_dir=cache_dir, **kw)


def test_skip_mode_reports_each_bad_file_and_keeps_the_rest(messy, cache_dir, capsys):
    cache = _build(messy, cache_dir)
    err = capsys.readouterr().err
    for rel in messy["bad"]:
        assert f"skipped {messy['root'] / rel}: " in err
    assert {p for p, _ in cache.skipped} == set(messy["bad"])
    assert all(reason for _, reason in cache.skipped)
    assert sorted(cache.paths) == messy["good"]
    assert cache.images.shape == (len(messy["good"]), 24, 24, 3) and cache.images.dtype == np.uint8
    assert cache.labels.dtype == np.int64 and len(cache) == len(cache.labels)
    assert [cache.class_names[y] for y in cache.labels] == [p.split("/")[0] for p in cache.paths]
    manifest = json.loads((cache.cache_path / "manifest.json").read_text())
    assert {s["path"] for s in manifest["skipped"]} == set(messy["bad"])
    assert len(manifest["files"]) == len(messy["good"]) + len(messy["bad"])
    assert all(len(f["sha1"]) == 40 and f["size"] > 0 for f in manifest["files"])
    assert manifest["res"] == 24 and manifest["dataset_hash"] == cache.dataset_hash


def test_fail_mode_names_the_first_bad_file_and_leaves_no_valid_cache(messy, cache_dir):
    with pytest.raises(MatchLabError) as e:
        _build(messy, cache_dir, on_bad_image="fail")
    msg = str(e.value)
    assert str(messy["root"] / mi.TRUNCATED) in msg and "data.on_bad_image=skip" in msg and "\n" not in msg
    assert cache_status(messy["root"], 24, cache_dir) == "missing"


def test_fail_mode_on_a_cache_built_in_skip_mode_still_fails(messy, cache_dir):
    _build(messy, cache_dir)
    with pytest.raises(MatchLabError, match="truncated.jpg"):
        _build(messy, cache_dir, on_bad_image="fail")


def test_second_call_reuses_without_decoding(messy, cache_dir, monkeypatch):
    first = _build(messy, cache_dir)
    assert cache_status(messy["root"], 24, cache_dir) == "fresh"

    def no_decoding(*args, **kwargs):
        raise AssertionError("a fresh cache must not decode")

    monkeypatch.setattr(cache_mod, "_decode_file", no_decoding)
    again = _build(messy, cache_dir)
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.images, first.images)
    assert again.paths == first.paths and again.dataset_hash == first.dataset_hash
    assert again.skipped == first.skipped


def test_changed_added_removed_files_trigger_a_rebuild(messy, cache_dir, capsys):
    root = messy["root"]
    cache = _build(messy, cache_dir)
    old_hash = cache.dataset_hash
    i = cache.paths.index("c1/good0.jpg")
    Image.new("RGB", (30, 30), (255, 255, 255)).save(root / "c1/good0.jpg")
    os.utime(root / "c1/good0.jpg", ns=(1, 1))  # mtime differs even on a coarse-clock file system
    assert cache_status(root, 24, cache_dir) == "stale"
    capsys.readouterr()
    cache = _build(messy, cache_dir)
    assert "cache stale: 1 file changed; rebuilding" in capsys.readouterr().err
    assert (cache.images[i] == 255).all()
    assert cache.dataset_hash != old_hash

    Image.new("RGB", (30, 30)).save(root / "c2/new.png")
    (root / "c0/good0.jpg").unlink()
    assert cache_status(root, 24, cache_dir) == "stale"
    capsys.readouterr()
    cache = _build(messy, cache_dir)
    assert "cache stale: 1 file added, 1 removed;" in capsys.readouterr().err
    assert "c2/new.png" in cache.paths and "c0/good0.jpg" not in cache.paths
    assert cache_status(root, 24, cache_dir) == "fresh"


def test_other_resolution_is_another_cache(messy, cache_dir):
    _build(messy, cache_dir)
    assert cache_status(messy["root"], 16, cache_dir) == "missing"
    assert cache_location(messy["root"], 16, cache_dir) != cache_location(messy["root"], 24, cache_dir)


def test_a_killed_rebuild_never_looks_valid(messy, cache_dir, monkeypatch):
    _build(messy, cache_dir)
    os.utime(messy["root"] / "c0/good1.jpg", ns=(2, 2))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died after writing the arrays

    monkeypatch.setattr(cache_mod, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(messy, cache_dir)
    assert cache_status(messy["root"], 24, cache_dir) == "missing"


def test_mean_std_match_numpy(messy, cache_dir):
    cache = _build(messy, cache_dir)
    x = np.asarray(cache.images, dtype=np.float64) / 255.0
    np.testing.assert_allclose(cache.mean, x.mean(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache.std, x.std(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    assert cache.mean.shape == cache.std.shape == (3,)


def test_class_left_without_images_is_an_error(tmp_path, cache_dir):
    for cls in ["a", "b"]:
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "x.png")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_text("not a jpeg")
    with pytest.raises(MatchLabError, match=r"class folder .*c: every image in it is unreadable"):
        build_or_load_cache(tmp_path, 8, cache_dir=cache_dir, progress=False)


def test_bad_arguments_are_one_line_errors(messy, cache_dir):
    with pytest.raises(MatchLabError, match="use one of skip, fail"):
        _build(messy, cache_dir, on_bad_image="ignore")
    with pytest.raises(MatchLabError, match="positive integer"):
        build_or_load_cache(messy["root"], 0, cache_dir=cache_dir)
    with pytest.raises(MatchLabError, match="does not exist"):
        build_or_load_cache(messy["root"] / "nope", 8, cache_dir=cache_dir)


def test_cache_dir_from_environment(messy, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHLAB_CACHE_DIR", str(tmp_path / "env-cache"))
    cache = build_or_load_cache(messy["root"], 8, progress=False)
    assert cache.cache_path.parent == tmp_path / "env-cache"
    monkeypatch.delenv("MATCHLAB_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert cache_location(messy["root"], 8).parent == tmp_path / ".matchlab_cache"


def test_subset_and_single_image_decoding_match_the_cache(messy, cache_dir):
    cache = _build(messy, cache_dir)
    sub = cache.subset([3, 0])
    assert sub.paths == [cache.paths[3], cache.paths[0]] and sub.labels.tolist() == cache.labels[[3, 0]].tolist()
    np.testing.assert_array_equal(sub.images, cache.images[[3, 0]])
    assert len(sub) == 2 and sub.res == 24
    np.testing.assert_array_equal(sub.mean, cache.mean)
    arrays = load_image_arrays([messy["root"] / p for p in sub.paths], 24)
    np.testing.assert_array_equal(arrays, sub.images)
    with pytest.raises(MatchLabError, match="notes.jpg"):
        load_image_arrays([messy["root"] / mi.NOT_AN_IMAGE], 24)
    upload = (messy["root"] / sub.paths[0]).read_bytes()
    np.testing.assert_array_equal(load_image_arrays([upload], 24)[0], sub.images[0])
    with pytest.raises(MatchLabError, match="upload 1"):
        load_image_arrays([upload, b"junk"], 24)


def test_orl_faces_smoke_with_worker_processes(orl_faces, cache_dir):
    cache = build_or_load_cache(orl_faces, 32, cache_dir=cache_dir, workers=2, progress=False)
    assert cache.images.shape == (400, 32, 32, 3) and cache.skipped == []
    assert len(cache.class_names) == 40 and np.bincount(cache.labels).tolist() == [10] * 40
    # Gray faces stay gray, and the pool decodes exactly like this process does.
    assert (cache.images[..., 0] == cache.images[..., 2]).all()
    np.testing.assert_array_equal(load_image_arrays([orl_faces / cache.paths[123]], 32)[0], cache.images[123])
    assert 0.3 < cache.mean[0] < 0.6 and 0.1 < cache.std[0] < 0.3
    assert cache_status(orl_faces, 32, cache_dir) == "fresh"


def test_worker_pool_skips_and_fails_like_one_process(messy, tmp_path, monkeypatch):
    one = _build(messy, tmp_path / "one", workers=1)
    monkeypatch.setattr(cache_mod, "_MIN_FILES_FOR_POOL", 0)
    pooled = _build(messy, tmp_path / "pool", workers=2)
    np.testing.assert_array_equal(pooled.images, one.images)
    assert pooled.skipped == one.skipped and pooled.dataset_hash == one.dataset_hash
    with pytest.raises(MatchLabError, match="truncated.jpg"):
        _build(messy, tmp_path / "pool-fail", workers=2, on_bad_image="fail")
