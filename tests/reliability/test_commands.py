"""Every command given a wrong path, folder or option value: one line naming it, exit 2, no traceback,
and the trained run untouched. Cheap cases (each fails before any real work), run in one process."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.reliability.helpers import assert_refused, make_faces, run_cli, tree_hash


def _cases(w, tmp):
    """(id, argv, names the error must contain), built from the session's run and data."""
    missing, a_file = tmp / "missing", tmp / "file.txt"
    a_file.write_text("just text\n")
    folder = tmp / "a_folder"
    folder.mkdir()
    run, data = w.base, w.data
    return [
        ("evaluate: data missing", ["evaluate", run, "--data", missing], [missing]),
        ("evaluate: data is a file", ["evaluate", run, "--data", a_file], [a_file]),
        ("evaluate: run missing", ["evaluate", missing, "--data", data], [missing]),
        ("evaluate: run is not a run", ["evaluate", folder, "--data", data], [folder]),
        (
            "evaluate: pairs file missing",
            ["evaluate", run, "--data", data, "--pairs", missing, "--pairs-format", "lfw"],
            [missing],
        ),
        ("evaluate: crop 0", ["evaluate", run, "--data", data, "--crop", "0"], ["--crop"]),
        ("evaluate: crop 5", ["evaluate", run, "--data", data, "--crop", "5"], ["--crop"]),
        ("ablate: crops out of range", ["ablate", run, "--data", data, "--crops", "0,200"], ["--crops"]),
        ("ablate: crops not numbers", ["ablate", run, "--data", data, "--crops", "a,b"], ["--crops"]),
        ("predict: out is a folder", ["predict", run, "--data", data, "--out", folder], [folder]),
        ("predict: data missing", ["predict", run, "--data", missing, "--out", tmp / "p.csv"], [missing]),
        ("identify: no gallery", ["identify", run, "--probes", data], ["--gallery"]),
        ("identify: gallery missing", ["identify", run, "--gallery", missing, "--probes", data], [missing]),
        ("identify: probes missing", ["identify", run, "--gallery", data, "--probes", missing], [missing]),
        (
            "identify: truth missing",
            ["identify", run, "--gallery", data, "--probes", data, "--truth", missing],
            [missing],
        ),
        (
            "identify: top-k without out",
            ["identify", run, "--gallery", data, "--probes", data, "--top-k", "3"],
            ["--top-k"],
        ),
        ("verify: threshold nan", ["verify", run, w.image_a, w.image_b, "--threshold", "nan"], ["--threshold"]),
        (
            "verify: threshold file missing",
            ["verify", run, w.image_a, w.image_b, "--threshold-file", missing],
            [missing],
        ),
        ("train: no recipe", ["train"], ["recipe"]),
        ("train: resume missing", ["train", "--resume", missing], [missing]),
        ("train: resume not a run", ["train", "--resume", folder], [folder]),
        ("train: resume with a recipe", ["train", w.config, "--resume", run], ["--resume"]),
        ("sweep: grid without values", ["sweep", w.config, "--grid", "train.lr"], ["--grid"]),
        ("sweep: grid unknown key", ["sweep", w.config, "--grid", "train.lrr=1,2"], ["train.lrr"]),
        ("sweep: seeds 0", ["sweep", w.config, "--grid", "train.lr=0.1", "--seeds", "0"], ["--seeds"]),
        ("sweep: eval data missing", ["sweep", w.config, "--grid", "train.lr=0.1", "--eval-data", missing], [missing]),
        ("extract: data missing", ["extract", run, "--data", missing, "--out", tmp / "shards"], [missing]),
    ]


def test_every_command_refuses_bad_paths_and_values_in_one_line(world, tmp_path):
    before = tree_hash(world.base)
    failures = []
    for case, argv, names in _cases(world, tmp_path):
        try:
            assert_refused(run_cli(*argv, *(["--device", "cpu"] if argv[0] not in ("train", "sweep") else [])), *names)
        except AssertionError as e:
            failures.append(f"{case}: {str(e)[:600]}")
    assert not failures, "\n".join(failures)
    assert tree_hash(world.base) == before


@pytest.mark.parametrize("layout", ["empty class", "unreadable class", "images at the top level"])
def test_bad_data_folders_are_named(world, tmp_path, layout):
    data = make_faces(tmp_path / "data", identities=2, per_identity=2)
    if layout == "empty class":
        (data / "id9").mkdir()
        named = data / "id9"
    elif layout == "unreadable class":
        (data / "id9").mkdir()
        (data / "id9" / "x.jpg").write_text("not an image")
        named = data / "id9"
    else:
        for cls in ("id0", "id1"):
            for p in (data / cls).iterdir():
                p.rename(data / f"{cls}_{p.name}")
            (data / cls).rmdir()
        Image.new("RGB", (8, 8)).save(data / "loose.png")
        named = data
    assert_refused(run_cli("train", world.config, f"data.train={data}", "--name", "new", "--out", tmp_path), named)
    assert not (tmp_path / "new").exists()


def test_an_unwritable_cache_folder_is_named(world, tmp_path, monkeypatch):
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("MATCHLAB_CACHE_DIR", str(blocker))
    data = make_faces(tmp_path / "fresh", identities=2, per_identity=2, seed=3)
    assert_refused(run_cli("train", world.config, f"data.train={data}", "--name", "new", "--out", tmp_path), blocker)
    assert not (tmp_path / "new").exists()
