"""Bad inputs to verify, identify, evaluate and the data folder: one line naming the file or value, no
traceback, nothing saved changed; a user's file is never echoed; special files (FIFO, broken or looping
links) and decompression bombs are skipped with a reason, never read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.reliability.helpers import ROOT, Result, assert_refused, huge_png, make_faces, run_cli, tree_hash

SECRET = "root:$6$s3cr3tHash:19000:0:99999:7:::"


@pytest.fixture
def bad_images(tmp_path):
    """name -> path of an image argument that must be refused, naming it."""
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    return {
        "missing": tmp_path / "missing.jpg",
        "text": text,
        "truncated": truncated,
        "dangling link": dangling,
        "link loop": loop,
        "folder": tmp_path,
        "100 megapixels": huge_png(tmp_path / "bomb.png"),
    }


def test_verify_refuses_bad_images_and_options(world, bad_images, tmp_path):
    before = tree_hash(world.base)
    for name, path in bad_images.items():
        error = assert_refused(run_cli("verify", world.base, world.image_a, path, "--device", "cpu"), path)
        if name == "100 megapixels":
            assert "megapixels" in error and "40" in error
    for crop in ("0", "5", "-1", "nan"):
        assert_refused(run_cli("verify", world.base, world.image_a, world.image_b, "--crop", crop), "--crop")
    assert_refused(run_cli("verify", world.base, world.image_a, world.image_b, "--threshold-file", tmp_path), tmp_path)
    not_json = tmp_path / "point.json"
    not_json.write_text(SECRET)
    error = assert_refused(
        run_cli("verify", world.base, world.image_a, world.image_b, "--threshold-file", not_json), not_json
    )
    assert "s3cr3t" not in error
    assert_refused(run_cli("verify", tmp_path / "norun", world.image_a, world.image_b), tmp_path / "norun")
    assert tree_hash(world.base) == before


def test_verify_accepts_a_tiny_image_with_a_warning(world, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (90, 90, 90)).save(tiny)
    r = run_cli("verify", world.base, world.image_a, tiny, "--device", "cpu")
    assert r.rc == 0 and "warning:" in r.err and "1 x 1" in r.err, r.err[-1000:]


def test_identify_refuses_bad_truth_holdout_and_out(world, tmp_path):
    gallery, probes = world.data, make_faces(tmp_path / "probes", identities=2, per_identity=2, seed=1)
    names = sorted(p.relative_to(probes).as_posix() for p in probes.rglob("*.png"))
    base = ["identify", world.base, "--gallery", gallery, "--probes", probes, "--device", "cpu"]
    short = tmp_path / "short.csv"
    short.write_text("image,identity\n" + "\n".join(names[:1] + [f"{n},id0" for n in names[1:]]) + "\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"image,identity\n" + "".join(f"{n},id\xe9\n" for n in names).encode("latin-1"))
    secret = tmp_path / "shadow.csv"
    secret.write_text(SECRET + "\n")
    for truth in (short, latin, secret):
        error = assert_refused(run_cli(*base, "--truth", truth), truth)
        assert "s3cr3t" not in error
    for holdout in ("0", "1", "1.5", "-0.2"):
        assert_refused(
            run_cli("identify", world.base, "--holdout-from", world.data, "--holdout", holdout, "--device", "cpu"),
            "--holdout",
        )
    folder = tmp_path / "out_is_a_folder"
    folder.mkdir()
    assert_refused(run_cli(*base, "--out", folder), folder)
    # Truth rows for images that are not probes are reported, not silently ignored.
    extra = tmp_path / "extra.csv"
    extra.write_text(
        "image,identity\n"
        + "".join(f"{n},{n.split('/')[0] if i else 'n000000'}\n" for i, n in enumerate(names))
        + "ghost/1.png,id0\nghost/2.png,id1\n"
    )
    r = run_cli(*base, "--truth", extra)
    assert r.rc == 0, r.err[-2000:]
    assert "2 image(s)" in r.err and "ghost/1.png" in r.err


def test_pairs_file_contents_are_never_echoed(world, tmp_path):
    before = tree_hash(world.base)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\nbin:*:19000:0:99999:7:::\n")
    for fmt in ("lfw", "csv"):
        error = assert_refused(
            run_cli(
                "evaluate",
                world.base,
                "--data",
                world.data,
                "--pairs",
                secret,
                "--pairs-format",
                fmt,
                "--device",
                "cpu",
            ),
            secret,
        )
        assert "s3cr3t" not in error and "99999" not in error and "bin:" not in error
    assert tree_hash(world.base) == before


def test_evaluate_refuses_another_folder_of_the_same_name_without_overwrite(world, run_copy, tmp_path):
    other = make_faces(tmp_path / "elsewhere" / world.data.name, seed=7)  # same basename, other images
    before = tree_hash(run_copy)
    assert_refused(
        run_cli("evaluate", run_copy, "--data", other, "--device", "cpu"),
        "--overwrite",
        run_copy / "eval" / world.data.name,
    )
    assert tree_hash(run_copy) == before
    r = run_cli("evaluate", run_copy, "--data", other, "--device", "cpu", "--overwrite", "--bootstrap", "0")
    assert r.rc == 0, r.err[-2000:]
    assert str(other) in (run_copy / "eval" / world.data.name / "manifest.json").read_text()


def test_a_failed_evaluation_leaves_the_previous_one_intact(world, run_copy, monkeypatch):
    """A kill between any two artifact writes: the old folder is whole, no half-new folder appears."""
    import core.atomic

    evaluation = run_copy / "eval" / world.data.name
    (evaluation / "projections").mkdir()
    (evaluation / "projections" / "pca.parquet").write_bytes(b"derived from these embeddings")
    before = tree_hash(run_copy)
    real, calls = core.atomic.save_parquet_atomic, []

    def dies_on_the_third_write(path, frame):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return real(path, frame)

    monkeypatch.setattr(core.atomic, "save_parquet_atomic", dies_on_the_third_write)
    r = run_cli("evaluate", run_copy, "--data", world.data, "--device", "cpu", "--bootstrap", "0")
    assert r.rc != 0 and len(calls) == 3
    assert tree_hash(run_copy) == before
    assert sorted(p.name for p in (run_copy / "eval").iterdir()) == [world.data.name]
    # Re-evaluating the same weights on the same images keeps work derived from them (projections/).
    monkeypatch.setattr(core.atomic, "save_parquet_atomic", real)
    assert run_cli("evaluate", run_copy, "--data", world.data, "--device", "cpu", "--bootstrap", "0").rc == 0
    assert (evaluation / "projections" / "pca.parquet").read_bytes() == b"derived from these embeddings"


def test_special_files_in_a_data_folder_are_skipped_not_read(world, tmp_path):
    """A FIFO named pipe.jpg used to hang the cache build; links that lead nowhere used to crash its stat
    scan; a 100-megapixel file decoded with only a warning. The build runs in its own process (without
    torch: fast to start) so that a regression fails on the timeout instead of hanging the suite."""
    data = tmp_path / "odd"
    shutil.copytree(world.data, data)
    os.mkfifo(data / "id0" / "pipe.jpg")
    (data / "id1" / "dangling.jpg").symlink_to(data / "id1" / "gone.jpg")
    (data / "id2" / "loop.jpg").symlink_to(data / "id2" / "loop.jpg")
    huge_png(data / "id3" / "bomb.png")
    code = f"from core.data.cache import build_or_load_cache\nprint(len(build_or_load_cache({str(data)!r}, 32)))"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.strip() == "36"  # every ordinary image, none of the odd files
    r = Result(r.returncode, r.stdout, r.stderr)
    for name, why in (
        ("pipe.jpg", "named pipe"),
        ("dangling.jpg", "broken symbolic link"),
        ("loop.jpg", "symbolic link loop"),
        ("bomb.png", "megapixels"),
    ):
        line = next((x for x in r.err.splitlines() if name in x), "")
        assert line.startswith("skipped") and why in line, (name, r.err[-3000:])


def test_max_pixels_is_a_config_key(world, tmp_path):
    data = tmp_path / "big"
    shutil.copytree(world.data, data)
    Image.new("RGB", (300, 300), (1, 2, 3)).save(data / "id0" / "large.png")  # 90,000 pixels
    r = run_cli(
        "train",
        world.config,
        f"data.train={data}",
        "data.max_pixels=50000",
        "train.epochs=1",
        "--name",
        "mp",
        "--out",
        tmp_path,
    )
    assert r.rc == 0, r.err[-2000:]
    assert any("large.png" in x and "megapixels" in x and x.startswith("skipped") for x in r.err.splitlines())
    r = run_cli(
        "train",
        world.config,
        f"data.train={data}",
        "data.max_pixels=50000",
        "data.on_bad_image=fail",
        "--name",
        "mp2",
        "--out",
        tmp_path,
    )
    assert_refused(r, "large.png", "data.max_pixels")
    assert not (tmp_path / "mp2").exists()
