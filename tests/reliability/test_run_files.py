"""Damaged, foreign and hostile files in a run folder: last.pt is never unpickled (a crafted one runs no
code), every damaged file is named in one line, and a refused command changes nothing; an epoch's writes
are ordered so that a resume never sees a mix; killed writers' temporary files are cleaned up."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from core.run import read_last_checkpoint
from core.train import TrainState, _finish_epoch_writes, _pending_name
from tests.reliability.helpers import assert_refused, flip_bytes, run_cli, tree_hash


class _Payload:
    """Unpickling this calls os.system: what a crafted last.pt would do to an unsafe torch.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damage_last(run, how: str, tmp_path) -> None:
    last = run / "last.pt"
    size = last.stat().st_size
    if how == "truncated":
        last.write_bytes(last.read_bytes()[: size // 2])
    elif how == "empty":
        last.write_bytes(b"")
    elif how == "text":
        last.write_text("this is not a checkpoint\n")
    elif how == "flipped middle":  # inside the tensor data: only the digest notices
        flip_bytes(last, size // 2)
    elif how == "flipped start":  # the zip header
        flip_bytes(last, 0, 16)
    elif how == "pickle":  # a plain pickle (no zip): refused by weights_only even without a payload
        last.write_bytes(pickle.dumps({"model": {}}))
    elif how == "not a dict":
        torch.save([1, 2, 3], last)
    elif how == "foreign keys":
        torch.save({"model": {}, "epoch": 3}, last)
    elif how == "other model":
        ckpt = torch.load(last, weights_only=True)
        ckpt["model"] = {"weight": torch.zeros(3)}
        from core.run import write_last_checkpoint

        write_last_checkpoint(last, {k: v for k, v in ckpt.items() if k != "digest"})
    elif how == "nan weights":
        ckpt = torch.load(last, weights_only=True)
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
        from core.run import write_last_checkpoint

        write_last_checkpoint(last, {k: v for k, v in ckpt.items() if k != "digest"})


LAST_CASES = [
    "truncated",
    "empty",
    "text",
    "flipped middle",
    "flipped start",
    "pickle",
    "not a dict",
    "foreign keys",
    "other model",
    "nan weights",
]


@pytest.mark.parametrize("how", LAST_CASES)
def test_damaged_last_pt_is_refused_on_resume(run_copy, tmp_path, how):
    _damage_last(run_copy, how, tmp_path)
    before = tree_hash(run_copy)
    error = assert_refused(run_cli("train", "--resume", run_copy, "train.epochs=3"), run_copy / "last.pt")
    if how == "nan weights":
        assert "weights give NaN" in error
    assert tree_hash(run_copy) == before


def test_crafted_last_pt_runs_no_code_on_resume_or_sweep(world, run_copy, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "state": _Payload(marker)}, run_copy / "last.pt")
    with open(run_copy / "last.pt", "rb") as f:  # the payload is live: an unsafe load would run it
        assert b"system" in f.read()
    before = tree_hash(run_copy)
    assert_refused(run_cli("train", "--resume", run_copy, "train.epochs=3"), run_copy / "last.pt")
    assert not marker.exists() and tree_hash(run_copy) == before
    # sweep re-reads last.pt of every run folder in the sweep to decide what to skip
    from core.sweep import parse_grid, plan_runs

    run_name = plan_runs(str(world.config), parse_grid(["train.lr=0.05"]), [], None)[0].name
    shutil.copytree(run_copy, tmp_path / "sw" / run_name)
    r = run_cli("sweep", world.config, "--grid", "train.lr=0.05", "--out", tmp_path, "--name", "sw", "--no-eval")
    assert_refused(r, tmp_path / "sw" / run_name / "last.pt")
    assert not marker.exists()


def test_read_last_checkpoint_is_weights_only(run_copy):
    ckpt = read_last_checkpoint(run_copy / "last.pt")  # what train and sweep use
    assert ckpt["state"]["epoch"] == 2
    torch.load(run_copy / "last.pt", weights_only=True)  # loadable by anyone without trusting it


@pytest.mark.parametrize(
    "name,content",
    [
        ("threshold.json", b"{not json"),
        ("threshold.json", b"[1, 2]"),
        ("threshold.json", b'{"threshold": "high"}'),
        ("threshold.json", b"\xff\xfe"),
        ("config.yaml", b"data: [unclosed\n"),
        ("config.yaml", b"- a list\n"),
        ("config.yaml", b"\xff\xfe\x00"),
        ("best.safetensors", b""),
        ("best.safetensors", b"plain text, not weights"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[:12].decode("latin-1"),
)
def test_damaged_run_file_is_named_by_verify(world, run_copy, name, content):
    (run_copy / name).write_bytes(content)
    before = tree_hash(run_copy)
    assert_refused(run_cli("verify", run_copy, world.image_a, world.image_b, "--device", "cpu"), run_copy / name)
    assert tree_hash(run_copy) == before


def test_weights_with_overwritten_tensor_bytes_give_nan(world, run_copy):
    weights = run_copy / "best.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    flip_bytes(weights, header + 16, 256, value=0xFF)  # 0xFFFFFFFF is a float32 NaN
    before = tree_hash(run_copy)
    error = assert_refused(run_cli("verify", run_copy, world.image_a, world.image_b, "--device", "cpu"), weights)
    assert "weights give NaN" in error
    assert_refused(run_cli("evaluate", run_copy, "--data", world.data, "--device", "cpu"), "weights give NaN")
    assert tree_hash(run_copy) == before


def test_resume_on_a_corrupt_config_names_it(run_copy):
    (run_copy / "config.yaml").write_bytes(b"\xff\xfe not utf-8")
    before = tree_hash(run_copy)
    assert_refused(run_cli("train", "--resume", run_copy), run_copy / "config.yaml")
    assert tree_hash(run_copy) == before


def test_an_interrupted_epoch_is_finished_or_dropped_on_resume(world, run_copy):
    """Each kill point of the epoch write order (core/train.py): the files end up agreeing with last.pt."""
    state = TrainState(**read_last_checkpoint(run_copy / "last.pt")["state"])
    best = (run_copy / "best.safetensors").read_bytes()
    # Killed after the pending best of epoch 3 was written, before last.pt: epoch 3 never happened.
    (run_copy / _pending_name("best.safetensors", 3)).write_bytes(b"epoch 3 weights")
    (run_copy / _pending_name("threshold.json", 3)).write_text('{"threshold": 0.5, "epoch": 3}')
    _finish_epoch_writes(run_copy, state)
    assert (run_copy / "best.safetensors").read_bytes() == best
    assert not list(run_copy.glob(".*.pending"))
    # Killed after last.pt committed epoch 3 as the best, before the renames: they are completed.
    state.epoch = state.best_epoch = 3
    state.history.append({**state.history[-1], "epoch": 3})
    (run_copy / _pending_name("best.safetensors", 3)).write_bytes(b"epoch 3 weights")
    (run_copy / _pending_name("threshold.json", 3)).write_text('{"threshold": 0.5, "epoch": 3}')
    _finish_epoch_writes(run_copy, state)
    assert (run_copy / "best.safetensors").read_bytes() == b"epoch 3 weights"
    assert json.loads((run_copy / "threshold.json").read_text())["epoch"] == 3
    assert len((run_copy / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_removes_killed_writers_temporary_files(world, run_copy):
    dead = 2**22 + 7  # above the kernel's default pid_max: no such process
    for name in (f".last.pt.{dead}.abc123.tmp", ".metrics.jsonl.xyz.tmp"):  # the latter: no pid (older MatchLab)
        (run_copy / name).write_bytes(b"")
    (run_copy / f".best.safetensors.{os.getpid()}.live.tmp").write_bytes(b"")  # a live writer's: kept
    r = run_cli("train", "--resume", run_copy, "train.epochs=3")
    assert r.rc == 0, r.err[-2000:]
    left = sorted(p.name for p in run_copy.glob(".*.tmp"))
    assert left == [f".best.safetensors.{os.getpid()}.live.tmp"]
    assert read_last_checkpoint(run_copy / "last.pt")["state"]["epoch"] == 3


def test_weights_with_flipped_bytes_are_named_damaged(world, run_copy):
    """Flipping bits usually gives finite but wrong weights: the checksum in the metadata names the file."""
    weights = run_copy / "best.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    flip_bytes(weights, header + 16, 8)
    before = tree_hash(run_copy)
    error = assert_refused(run_cli("verify", run_copy, world.image_a, world.image_b, "--device", "cpu"), weights)
    assert "damaged" in error or "weights give NaN" in error
    assert tree_hash(run_copy) == before


def test_a_kill_between_the_two_renames_of_an_evaluation_is_undone(tmp_path):
    """replaced_dir swaps by renaming old -> .<key>.<pid>.old, then staging -> <key>: a kill in between
    leaves no <key>; the next writer renames the old one back and drops dead writers' staging folders."""
    from core.atomic import recover_dirs, replaced_dir

    dead = 2**22 + 7
    evals = tmp_path / "eval"
    (evals / f".faces.{dead}.old").mkdir(parents=True)
    (evals / f".faces.{dead}.old" / "summary.json").write_text("{}")
    (evals / f".other.{dead}.staging").mkdir()
    (evals / f".other.{dead}.staging" / "half.npy").write_bytes(b"")
    recover_dirs(evals)
    assert sorted(p.name for p in evals.iterdir()) == ["faces"]
    assert (evals / "faces" / "summary.json").read_text() == "{}"
    with pytest.raises(KeyboardInterrupt), replaced_dir(evals / "faces") as staging:
        (staging / "summary.json").write_text('{"new": 1}')
        raise KeyboardInterrupt
    assert sorted(p.name for p in evals.iterdir()) == ["faces"]
    assert (evals / "faces" / "summary.json").read_text() == "{}"
    with replaced_dir(evals / "faces") as staging:
        (staging / "summary.json").write_text('{"new": 1}')
    assert sorted(p.name for p in evals.iterdir()) == ["faces"]
    assert (evals / "faces" / "summary.json").read_text() == '{"new": 1}'
