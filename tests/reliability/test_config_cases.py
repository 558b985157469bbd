"""Bad recipes and overrides: refused up front with one line naming the key or file, before anything is
written (the run folder of a refused `train` does not even exist), and an existing run is never replaced
without --overwrite."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import assert_refused, make_faces, run_cli, tree_hash

# (override(s), what the error must name)
OVERRIDES = [
    (["train.lr=-1"], "train.lr"),
    (["train.lr=nan"], "train.lr"),
    (["train.lr=inf"], "train.lr"),
    (["train.weight_decay=-0.1"], "train.weight_decay"),
    (["train.crop_padding=-1"], "train.crop_padding"),
    (["train.crop_scale=0"], "train.crop_scale"),
    (["train.color_jitter=1"], "train.color_jitter"),
    (["train.num_threads=-1"], "train.num_threads"),
    (["train.threshold_rule=far=abc"], "train.threshold_rule"),
    (["train.threshold_rule=far=2"], "train.threshold_rule"),
    (["train.threshold_rule=median"], "train.threshold_rule"),
    (["data.res=100000"], "GiB"),
    (["data.res=8"], "data.res"),
    (["loss.name=arcface", "loss.kwargs.margin=abc"], "loss.kwargs.margin"),
    (["loss.name=arcface", "loss.kwargs.margin=3"], "margin"),
    (["loss.name=arcface", "loss.kwargs.nope=1"], "nope"),
    (["model.kwargs.depth=2"], "depth"),
    (["train.lrr=1"], "train.lrr"),
    (["trian.lr=1"], "trian"),
    (["train.epochs=0"], "train.epochs"),
    (["train.epochs=2.5"], "train.epochs"),
    (["train.batch_size=abc"], "train.batch_size"),
    (["data.crop=0"], "data.crop"),
    (["data.crop=1.5"], "data.crop"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["data.split=random"], "data.split"),
    (["data.train=/nonexistent/faces"], "/nonexistent/faces"),
    (["model.name=nope"], "nope"),
    (["loss.name=nope"], "nope"),
    (["train.optimizer=adam"], "train.optimizer"),
    (["train.device=tpu"], "train.device"),
    (["data.max_pixels=0"], "data.max_pixels"),
    (["train.momentum=1.5"], "train.momentum"),
    (["lr=0.1"], "lr=0.1"),
]


@pytest.mark.parametrize("overrides,named", OVERRIDES, ids=[" ".join(o) for o, _ in OVERRIDES])
def test_bad_override_is_refused_before_anything_is_written(world, tmp_path, overrides, named):
    r = run_cli("train", world.config, *overrides, "--name", "new", "--out", tmp_path)
    assert_refused(r, named)
    assert not (tmp_path / "new").exists()


RECIPES = {
    "top-level list": b"- data\n- train\n",
    "top-level scalar": b"just words\n",
    "not UTF-8": b"data: {train: \xff\xfe\xfa}\n",
    "YAML syntax": b"data: {train: [unclosed\n",
    "section not a mapping": b"train: 5\n",
    "unknown section": b"trainer: {lr: 1}\n",
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_bad_recipe_file_is_refused_naming_it(world, tmp_path, name):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(RECIPES[name])
    assert_refused(run_cli("train", recipe, "--name", "new", "--out", tmp_path), recipe)
    assert not (tmp_path / "new").exists()


def test_missing_recipe_and_one_class_folder(world, tmp_path):
    assert_refused(run_cli("train", tmp_path / "missing.yaml", "--out", tmp_path), "missing.yaml")
    one = make_faces(tmp_path / "one", identities=1)
    assert_refused(run_cli("train", world.config, f"data.train={one}", "--name", "new", "--out", tmp_path), one)
    assert not (tmp_path / "new").exists()


def test_lr_zero_trains_with_a_warning(world, tmp_path):
    r = run_cli("train", world.config, "train.lr=0", "train.epochs=1", "--name", "still", "--out", tmp_path)
    assert r.rc == 0, r.err[-2000:]
    assert "warning: train.lr=0" in r.err


def test_existing_run_needs_resume_or_overwrite(world, tmp_path):
    before = tree_hash(world.base)
    assert_refused(run_cli("train", world.config, "--name", "base", "--out", world.runs), world.base, "--overwrite")
    # A bundled run (no last.pt) cannot be resumed, and is not replaced by trying.
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for name in ("best.safetensors", "config.yaml", "threshold.json"):
        (bundled / name).write_bytes((world.base / name).read_bytes())
    bundled_before = tree_hash(bundled)
    assert_refused(run_cli("train", "--resume", bundled), "last.pt")
    assert_refused(run_cli("train", world.config, "--name", "bundled", "--out", tmp_path), bundled)
    assert_refused(run_cli("train", "--resume", bundled, "--overwrite"), "--overwrite")
    assert tree_hash(bundled) == bundled_before and tree_hash(world.base) == before


def test_overwrite_replaces_the_run_and_its_evaluations_only_once_validated(world, run_copy):
    out, name = run_copy.parent, run_copy.name
    before = tree_hash(run_copy)
    # A bad override with --overwrite: refused, and the old run is untouched.
    assert_refused(
        run_cli("train", world.config, "train.lr=-1", "--name", name, "--out", out, "--overwrite"), "train.lr"
    )
    assert tree_hash(run_copy) == before
    r = run_cli("train", world.config, "train.epochs=1", "--name", name, "--out", out, "--overwrite")
    assert r.rc == 0, r.err[-2000:]
    assert not (run_copy / "eval").exists()  # the old evaluations described the old weights
    assert (run_copy / "best.safetensors").read_bytes() != (world.base / "best.safetensors").read_bytes()
    assert len((run_copy / "metrics.jsonl").read_text().splitlines()) == 1
