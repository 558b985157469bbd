"""Training end to end on the bundled ORL faces: loss goes down, kill -9 + resume reproduces the
uninterrupted run, messy folders train in skip mode and fail cleanly in fail mode, sanity overfit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.data.prepare import prepare_data
from core.errors import MatchLabError
from core.train import fit
from tests import core_cli
from tests.messy_images import make_messy_folder

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
TINY = [
    "model.name=convnet_tiny",
    "data.res=32",
    "train.batch_size=64",
    "train.lr=0.05",
    "model.embedding_dim=32",
    f"data.train={ORL}",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MATCHLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def cli(*args, check=True) -> subprocess.CompletedProcess:
    """The CLI in this process (tests/core_cli.py), with the module's cache; the kill test starts its own."""
    return core_cli.cli(*args, cache=Path(os.environ["MATCHLAB_CACHE_DIR"]), check=check)


def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path):
    cfg = load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=4"])
    summary = fit(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss/total"] < rows[0]["loss/total"] * 0.8
    for key in ("loss/ce", "lr", "train_acc", "val_auc", "images_per_s", "train_gflop_per_image"):
        assert key in rows[0], key
    for name in ("config.yaml", "best.safetensors", "last.pt", "split.json", "threshold.json"):
        assert (tmp_path / "run" / name).is_file(), name
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    train_ids = {p.split("/")[0] for p in split["train"]}
    assert train_ids.isdisjoint({p.split("/")[0] for p in split["test"] + split["val"]})
    assert summary["best_epoch"] >= 1 and not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())


def test_data_split_seed_fixes_the_people_while_train_seed_changes(tmp_path):
    # Seeds of one recipe compared on the same validation and test people (README's lever table).
    def split_of(name: str, *overrides: str) -> dict:
        cfg = load_config(ROOT / "configs" / "orl.yaml", [*TINY, "data.test_fraction=0.2", *overrides])
        prepare_data(cfg, tmp_path / name, torch.device("cpu"))
        return json.loads((tmp_path / name / "split.json").read_text())

    base = split_of("seed0")
    same = split_of("seed1_split0", "train.seed=1", "data.split_seed=0")
    assert all(same[part] == base[part] for part in ("train", "val", "test"))
    other = split_of("seed1", "train.seed=1")
    assert other["val"] != base["val"] and other["test"] != base["test"]
    with pytest.raises(MatchLabError, match="data.split_seed=-2"):
        load_config(None, ["data.split_seed=-2"])


def _final_weights(run: Path) -> dict:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_kill_9_then_resume_matches_the_uninterrupted_run(tmp_path):
    args = ["train", str(ROOT / "configs" / "orl.yaml"), *TINY, "train.epochs=4", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli(*args, "--name", "straight")
    victim = subprocess.Popen(
        [sys.executable, "-m", "core", *args, "--name", "killed"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    # Wait for the condition (two epochs written), not for a time: on a loaded CI machine an epoch can take
    # minutes. The ceiling only turns a hang into a failure.
    deadline = time.time() + 1200
    while (
        time.time() < deadline
        and victim.poll() is None
        and not (metrics.exists() and metrics.read_text().count("\n") >= 2)
    ):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = metrics.read_text().count("\n")
    assert 2 <= done < 4, f"the kill landed after {done} epochs; the test needs it mid-run"
    r = cli("train", "--resume", str(tmp_path / "killed"), "--json")
    assert json.loads(r.stdout)["epochs"] == 4
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    straight = [json.loads(x)["loss/total"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss/total"] for x in metrics.read_text().splitlines()]
    assert resumed == pytest.approx(straight, rel=1e-4)


def test_messy_folder_trains_in_skip_mode_and_fails_naming_the_file_in_fail_mode(tmp_path):
    info = make_messy_folder(tmp_path / "messy")
    base = [
        "train",
        str(ROOT / "configs" / "orl.yaml"),
        *TINY,
        f"data.train={tmp_path / 'messy'}",
        "data.split=image",
        "data.val_fraction=0.25",
        "train.epochs=1",
        "--out",
        str(tmp_path / "runs"),
    ]
    r = cli(*base, "--name", "skip", "--json")
    summary = json.loads(r.stdout)
    assert summary["skipped_images"] == len(info["bad"])
    for bad in info["bad"]:
        assert Path(bad).name in r.stderr  # every skipped file is reported by name
    r = cli(*base, "data.on_bad_image=fail", "--name", "fail", check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert any(Path(bad).name in r.stderr for bad in info["bad"])


def test_a_separate_validation_folder_of_unseen_people_validates_by_verification(tmp_path):
    people = sorted(p.name for p in ORL.iterdir() if p.is_dir())
    for part, names in (("train", people[:12]), ("val", people[12:16])):
        for name in names:
            (tmp_path / part).mkdir(exist_ok=True)
            (tmp_path / part / name).symlink_to(ORL / name)
    cfg = load_config(
        ROOT / "configs" / "orl.yaml",
        TINY + [f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}", "train.epochs=1"],
    )
    fit(cfg, tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["mode"] == "folders" and {p.split("/")[0] for p in split["train"]} == set(people[:12])
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= row["val_auc"] <= 1 and "val_acc" not in row  # other people: no class accuracy to report


def test_sanity_overfit_memorises_a_few_images(tmp_path):
    r = cli(
        "train",
        str(ROOT / "configs" / "orl.yaml"),
        *TINY,
        "train.sanity_overfit=16",
        "train.epochs=25",
        "train.lr=0.02",
        "train.schedule=constant",
        "--out",
        str(tmp_path),
        "--json",
    )
    sanity = json.loads(r.stdout)["sanity"]
    assert sanity["images"] == 16 and sanity["memorised"], sanity


def test_user_errors_are_one_line(tmp_path):
    r = cli("train", str(ROOT / "configs" / "orl.yaml"), f"data.train={tmp_path / 'nowhere'}", check=False)
    assert r.returncode == 2 and "nowhere" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(MatchLabError, match="model.init_from"):
        fit(load_config(ROOT / "configs" / "orl.yaml", TINY + [f"model.init_from={tmp_path}"]), tmp_path / "r")
    # a grouping only P x K batches use would be silently ignored by cross-entropy's random batches
    with pytest.raises(MatchLabError, match=r"loss.pk_group='\^s1' groups P x K batches"):
        fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["loss.pk_group=^s1"]), tmp_path / "grouped")
    assert not (tmp_path / "grouped").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "verify", "ablate", "identify", "predict", "embed"])
def test_every_command_has_help(command):
    r = cli(command, "--help")
    assert "usage: python -m core " + command in r.stdout
    if command == "train":
        assert "train.epochs=30" in r.stdout and "data.on_bad_image" in r.stdout


def test_two_stage_recipe_fine_tunes_a_classifier_with_a_metric_loss(tmp_path):
    """shared/seeds/000 and /003: classify first, then contrastive fine-tuning from those weights."""
    from safetensors.torch import load_file

    stage1 = tmp_path / "ce"
    fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=1"]), stage1)
    cfg = load_config(
        ROOT / "configs" / "orl.yaml",
        TINY
        + [
            "train.epochs=1",
            "loss.name=contrastive",
            "loss.kwargs={}",
            "loss.pk_p=8",
            "loss.pk_k=4",
            f"model.init_from={stage1}",
            "model.freeze_backbone=true",
        ],
    )
    fit(cfg, tmp_path / "contrastive")
    before, after = (
        load_file(str(stage1 / "best.safetensors")),
        load_file(str(tmp_path / "contrastive" / "best.safetensors")),
    )
    trunk = [k for k in after if k.startswith("trunk.") and after[k].dtype.is_floating_point and "running" not in k]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # frozen backbone kept
    assert "head.weight" not in after  # a metric loss has no class head
    neck = [k for k in after if k.startswith("neck.") and "running" not in k and after[k].dtype.is_floating_point]
    assert any(not torch.equal(before[k], after[k]) for k in neck)  # the embedding layer did train


def test_streaming_from_the_memory_mapped_cache_trains_exactly_like_the_resident_cache(tmp_path, capsys):
    runs = {}
    for residency in ("device", "stream"):
        cfg = load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=2", f"data.residency={residency}"])
        fit(cfg, tmp_path / residency)
        runs[residency] = _final_weights(tmp_path / residency)
    assert "data: data.residency=stream was requested" in capsys.readouterr().err
    for k, v in runs["device"].items():
        assert torch.equal(v, runs["stream"][k]), k
    with pytest.raises(MatchLabError, match="data.residency"):
        fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["data.residency=gpu"]), tmp_path / "bad")
