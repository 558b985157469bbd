"""Distillation from teachers (core/distill.py, train.distill_from): the relational loss, and training with it."""

import json

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.distill import relational_loss
from core.errors import MatchLabError
from core.train import fit
from tests.test_train import ROOT, TINY


def test_relational_loss_compares_cosine_similarities_whatever_each_teacher_s_rotation():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(16, 8), dim=1)
    assert relational_loss(emb, [emb]).item() == pytest.approx(0, abs=1e-6)
    # a seed's embedding space is rotated against another's; the similarities, the target, are not
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert relational_loss(emb, [emb @ rotation]).item() == pytest.approx(0, abs=1e-6)
    # the target is the teachers' mean similarity; the diagonal (always 1) is not counted
    other = F.normalize(torch.randn(16, 5), dim=1)
    target = (emb @ emb.T + other @ other.T) / 2
    student = torch.randn(16, 8, requires_grad=True)
    s = F.normalize(student, dim=1)
    off = ~torch.eye(16, dtype=torch.bool)
    expected = (s @ s.T - target)[off].pow(2).mean()
    loss = relational_loss(student, [emb, other])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_training_with_a_teacher_learns_its_similarities(tmp_path):
    teacher = tmp_path / "teacher"
    fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=3"]), teacher)
    # the student leaves out (data.exclude) an image the teacher trained on: not a held-out image, so no leak
    excluded = tmp_path / "exclude.csv"
    excluded.write_text("path\n" + json.loads((teacher / "split.json").read_text())["train"][0] + "\n")
    distil = [f"train.distill_from={teacher}", "train.distill_weight=100", f"data.exclude={excluded}"]
    fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=4", *distil]), tmp_path / "student")
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    # measured: the mean squared cosine difference falls from 0.73 to 0.03 (x 100) in four epochs
    assert rows[-1]["loss/distill"] < rows[0]["loss/distill"] / 4
    assert all(r["loss/total"] == pytest.approx(r["loss/ce"] + r["loss/distill"], rel=1e-4) for r in rows)


def test_a_teacher_that_saw_the_held_out_people_is_refused(tmp_path):
    teacher = tmp_path / "teacher"
    fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=1", "train.seed=1"]), teacher)
    cfg = load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=1", f"train.distill_from={teacher}"])
    with pytest.raises(MatchLabError, match="trained on .* images this run holds out"):
        fit(cfg, tmp_path / "student")
    assert not (tmp_path / "student").exists()  # refused before anything was written


def test_a_teacher_that_sees_other_crops_is_refused(tmp_path):
    teacher = tmp_path / "teacher"
    fit(load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=1"]), teacher)
    config = teacher / "config.yaml"  # as if trained on MTCNN-aligned faces, while this run uses whole images
    config.write_text(config.read_text().replace("align: none", "align: mtcnn"))
    cfg = load_config(ROOT / "configs" / "orl.yaml", TINY + ["train.epochs=1", f"train.distill_from={teacher}"])
    with pytest.raises(MatchLabError, match="expects faces aligned 'mtcnn' but data.align=none"):
        fit(cfg, tmp_path / "student")


def test_ensemble_script_averages_the_runs_scores_of_the_same_pairs(tmp_path):
    """scripts/ensemble_scores.py: README's ensemble row, the ceiling distillation learns from."""
    import numpy as np
    import pandas as pd

    from core.metrics.verification import verification_report
    from scripts.ensemble_scores import ensemble

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    pairs = pd.DataFrame({"path_a": [f"a{i}" for i in range(400)], "path_b": [f"b{i}" for i in range(400)]})
    pairs = pairs.assign(label=labels, slice=np.where(np.arange(400) < 200, "ff", "fp"), fte=False)
    scores = [labels + rng.normal(0, 1, 400) for _ in range(2)]
    for name, s in zip(("one", "two"), scores):
        (tmp_path / name / "eval" / "images").mkdir(parents=True)
        pairs.assign(score=s).to_parquet(tmp_path / name / "eval" / "images" / "pairs.parquet")
    out = ensemble([str(tmp_path / "one"), str(tmp_path / "two")], "images")
    mean = (scores[0] + scores[1]) / 2
    for name, rows in (("ff", slice(0, 200)), ("fp", slice(200, 400))):
        expected = verification_report(mean[rows], labels[rows], None, balance_kfold=True)
        assert out["mean"][name]["auc"] == round(expected["auc"], 4)
        assert out["mean"][name]["kfold_accuracy"] == round(expected["kfold_accuracy_mean"], 4)
    assert out["mean"]["ff"]["auc"] > max(out[str(tmp_path / r)]["ff"]["auc"] for r in ("one", "two"))
    pairs.assign(score=scores[1], path_b="c").to_parquet(tmp_path / "two" / "eval" / "images" / "pairs.parquet")
    with pytest.raises(MatchLabError, match="scored other pairs"):
        ensemble([str(tmp_path / "one"), str(tmp_path / "two")], "images")
