"""The evaluation commands on a small run trained here: JSON contracts, artifacts, honesty of generated
pairs, verify/identify/predict/ablate, and a pair model on the shoe rule."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.core_cli import cli

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
SHOES = ROOT.parent / "shared" / "datasets" / "shoes"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    cache = base / "cache"
    cli(
        "train",
        ROOT / "configs" / "orl.yaml",
        "model.name=convnet_tiny",
        "data.res=32",
        "train.epochs=3",
        "train.batch_size=64",
        "train.lr=0.05",
        "model.embedding_dim=32",
        f"data.train={ORL}",
        "--out",
        base,
        "--name",
        "tiny",
        cache=cache,
    )
    return {"run": base / "tiny", "cache": cache, "base": base}


def test_evaluate_json_contract_and_artifacts(env):
    r = cli("evaluate", env["run"], "--data", ORL, "--json", cache=env["cache"])
    s = json.loads(r.stdout)
    v = s["verification"]
    for key in (
        "auc",
        "eer",
        "eer_threshold",
        "tar_at_far",
        "kfold_accuracy_mean",
        "kfold_accuracy_std",
        "n_genuine",
        "n_impostor",
        "threshold",
        "accuracy",
        "far",
        "frr",
        "artifacts",
    ):
        assert key in v, key
    assert set(v["tar_at_far"]) >= {"0.1", "0.01", "0.001"} and "tar" in v["tar_at_far"]["0.01"]
    assert not v["tar_at_far"]["0.0001"]["reachable"]  # 2,800 impostor pairs cannot show FAR 1e-4
    # 360 genuine vs 2,800 impostor pairs: the k-fold protocol runs on a balanced sample, as LFW's folds are
    assert "balanced" in v["kfold_note"] and sum(v["kfold"]["fold_sizes"]) == 2 * v["n_genuine"]
    assert "classification" in s and "knn_accuracy" in s
    out = Path(v["artifacts"])
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert {"path_a", "path_b", "label", "score", "fold"} <= set(pairs.columns)
    # Generated pairs come only from identities the run never trained on.
    split = json.loads((env["run"] / "split.json").read_text())
    trained = {p.split("/")[0] for p in split["train"]}
    assert not trained & set(pairs.path_a.str.split("/").str[0])
    assert v["n_genuine"] == int(pairs.label.sum()) and v["n_impostor"] == int((pairs.label == 0).sum())
    assert v["auc"] == pytest.approx(roc_auc_score(pairs.label, pairs.score), abs=1e-9)
    # (roc.parquet and sweep.parquet are no longer written: no page read them; the dashboard's ROC and
    # threshold sweep come from pairs.parquet)
    for name in (
        "summary.json",
        "manifest.json",
        "samples.parquet",
        "embeddings.npy",
        "confusion.npy",
        "per_class.parquet",
    ):
        assert (out / name).is_file(), name
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (400, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_flip_tta_and_crop_make_their_own_artifacts(env):
    s = json.loads(
        cli(
            "evaluate", env["run"], "--data", ORL, "--tta", "flip", "--crop", "0.8", "--json", cache=env["cache"]
        ).stdout
    )
    assert s["key"] == "orl_faces-flip-crop80" and s["crop"] == 0.8


def test_all_pairs_streamed_match_the_exact_auc(env):
    s = json.loads(cli("evaluate", env["run"], "--data", ORL, "--all-pairs", "--json", cache=env["cache"]).stdout)
    emb = np.load(Path(s["verification"]["artifacts"]) / "embeddings.npy")
    labels = pd.read_parquet(Path(s["verification"]["artifacts"]) / "samples.parquet").label.to_numpy()
    ia, ib = np.triu_indices(len(labels), 1)
    exact = roc_auc_score(labels[ia] == labels[ib], np.einsum("pd,pd->p", emb[ia], emb[ib]))
    a = s["all_pairs"]
    assert a["n_genuine"] + a["n_impostor"] == len(ia) == 79_800
    assert a["auc"] == pytest.approx(exact, abs=1e-3)  # histogram bins of 3e-5 in cosine


def test_verify_accepts_an_exported_operating_point(env, tmp_path):
    a, b = ORL / "s1" / "1.pgm", ORL / "s1" / "2.pgm"
    plain = json.loads(cli("verify", env["run"], a, b, "--json", cache=env["cache"]).stdout)
    assert set(plain) >= {"score", "threshold", "same"} and -1 <= plain["score"] <= 1
    point = tmp_path / "op.json"
    point.write_text(json.dumps({"threshold": plain["score"] + 0.01, "checkpoint_hash": plain["checkpoint_hash"]}))
    assert (
        json.loads(cli("verify", env["run"], a, b, "--threshold-file", point, "--json", cache=env["cache"]).stdout)[
            "same"
        ]
        is False
    )
    point.write_text(json.dumps({"threshold": 0.1, "checkpoint_hash": "0000"}))
    r = cli("verify", env["run"], a, b, "--threshold-file", point, cache=env["cache"], check=False)
    assert r.returncode == 2 and "export the operating point again" in r.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    r = cli("verify", env["run"], a, bad, cache=env["cache"], check=False)
    assert r.returncode == 2 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr


def test_identify_open_set_on_the_seed_001_layout(env, tmp_path):
    """A known folder, a flat probe folder and a truth CSV with a no-match label (shared/seeds/001)."""
    known, probes = tmp_path / "known", tmp_path / "probes"
    rows = ["image,identity"]
    for i in range(1, 41):
        person = f"s{i}"
        if i <= 30:  # known people: 2 gallery images, 1 probe
            (known / person).mkdir(parents=True)
            for k in (1, 2):
                shutil.copy(ORL / person / f"{k}.pgm", known / person / f"{k}.pgm")
        probes.mkdir(exist_ok=True)
        shutil.copy(ORL / person / "5.pgm", probes / f"{person}.pgm")
        rows.append(f"{person}.pgm,{person if i <= 30 else 'n000000'}")
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    r = cli(
        "identify",
        env["run"],
        "--gallery",
        known,
        "--probes",
        probes,
        "--truth",
        tmp_path / "truth.csv",
        "--out",
        tmp_path / "pred.csv",
        "--json",
        cache=env["cache"],
    )
    rep = json.loads(r.stdout)
    assert {"rank1", "dir_at_fpir", "open_set_accuracy", "threshold"} <= set(rep)
    assert set(rep["dir_at_fpir"]) == {"0.01", "0.1"} and rep["n_mated"] == 30 and rep["n_nonmated"] == 10
    pred = pd.read_csv(tmp_path / "pred.csv")
    truth = pd.read_csv(tmp_path / "truth.csv")
    merged = pred.merge(truth, on="image", suffixes=("_pred", "_true"))
    assert (merged.identity_pred == merged.identity_true).mean() == pytest.approx(rep["open_set_accuracy"])
    (tmp_path / "truth.csv").write_text("image,identity\ns1.pgm,nobody\n")
    r = cli(
        "identify",
        env["run"],
        "--gallery",
        known,
        "--probes",
        probes,
        "--truth",
        tmp_path / "truth.csv",
        cache=env["cache"],
        check=False,
    )
    assert r.returncode == 2 and "truth.csv:2" in r.stderr


def test_predict_writes_a_submission_csv(env, tmp_path):
    flat = tmp_path / "test"
    flat.mkdir()
    for i in (1, 2, 3):
        shutil.copy(ORL / f"s{i}" / "9.pgm", flat / f"{i:04d}.pgm")
    cli("predict", env["run"], "--data", flat, "--out", tmp_path / "sub.csv", cache=env["cache"])
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["file", "label", "score"] and len(sub) == 3
    assert sub.label.str.match(r"s\d+").all() and ((sub.score > 0) & (sub.score <= 1)).all()


def test_ablation_curves(env):
    r = json.loads(cli("ablate", env["run"], "--data", ORL, "--crops", "30,100", "--json", cache=env["cache"]).stdout)
    assert r["crops"] == [30, 100] and len(r["centre"]["auc"]) == 2 and r["outer"]["auc"][1] is None
    assert 0 <= r["grayscale"]["auc"] <= 1 and len(r["class_deltas"]) == 40
    examples = env["run"] / "eval" / "orl_faces" / "ablation"
    assert all((examples / p).is_file() for p in r["examples"]["30"]["centre"])


@pytest.mark.skipif(not SHOES.is_dir(), reason="shared/datasets/shoes is not beside the repository")
def test_pair_model_on_the_shoe_rule(env):
    cli(
        "train",
        ROOT / "configs" / "shoes_pair.yaml",
        f"data.train={SHOES / 'train'}",
        "train.epochs=2",
        "data.res=32",
        "model.kwargs.n=4",
        "--out",
        env["base"],
        "--name",
        "shoes",
        cache=env["cache"],
    )
    s = json.loads(
        cli(
            "evaluate",
            env["base"] / "shoes",
            "--data",
            SHOES / "test_w",
            "--pairs-format",
            "shoes",
            "--json",
            cache=env["cache"],
        ).stdout
    )
    v = s["verification"]
    assert v["n_genuine"] == 30 and v["n_impostor"] == 30 and s["kind"] == "pair"
    assert 0 <= v["accuracy_positives"] <= 1 and 0 <= v["accuracy_negatives"] <= 1


@pytest.mark.skipif(not SHOES.is_dir(), reason="shared/datasets/shoes is not beside the repository")
def test_embedding_model_validates_on_the_shoe_rule(env):
    """data.pairs_format on an embedding model: whole students are held out, and the threshold is chosen on
    the rule's pairs among them (3 genuine + 3 same-student impostors each), not on all pairs of val images."""
    cli(
        "train",
        ROOT / "configs" / "shoes_siamese.yaml",
        f"data.train={SHOES / 'train'}",
        "data.pairs_format=shoes",
        "train.epochs=1",
        "data.res=32",
        "model.name=convnet_tiny",
        "--out",
        env["base"],
        "--name",
        "shoes-siamese",
        cache=env["cache"],
    )
    run = env["base"] / "shoes-siamese"
    split = json.loads((run / "split.json").read_text())
    students = {part: {p.split("_")[0] for p in split[part]} for part in ("train", "val")}
    assert split["mode"] == "pair-groups" and students["val"] and not students["train"] & students["val"]
    assert len(split["val"]) == 6 * len(students["val"])  # three pairs of two shoes per student
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["n_genuine"] == threshold["n_impostor"] == 3 * len(students["val"])


def test_ablation_starts_from_the_run_crop_and_fill_is_an_option(env):
    import yaml

    from core.ablation import _fill_value
    from core.embedder import Preprocess

    pre = Preprocess(res=(32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25), channels="BGR")
    assert _fill_value("train-mean", pre, np.array([0.1, 0.2, 0.3])) == 0.0
    # BGR model: the folder's RGB mean is reversed before normalising with the model's (B, G, R) stats
    np.testing.assert_allclose(
        _fill_value("data-mean", pre, np.array([0.1, 0.2, 0.3])).numpy(),
        [(0.3 - 0.5) / 0.2, (0.2 - 0.4) / 0.2, (0.1 - 0.3) / 0.25],
        rtol=1e-6,
    )
    r = json.loads(
        cli(
            "ablate",
            env["run"],
            "--data",
            ORL,
            "--crops",
            "50,100",
            "--fill",
            "data-mean",
            "--json",
            cache=env["cache"],
        ).stdout
    )
    crop = yaml.safe_load((env["run"] / "config.yaml").read_text())["data"].get("crop", 1.0)
    assert r["start_crop"] == crop and r["fill"] == "data-mean" and "evaluated folder" in r["fill_note"]


def test_identify_mean_templates_option(env):
    r = cli("identify", env["run"], "--holdout-from", ORL, "--template", "mean", "--json", cache=env["cache"])
    rep = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rep["template"] == "mean" and 0 <= rep["rank1"] <= rep["rank5"] <= 1
    r = cli("identify", env["run"], "--holdout-from", ORL, "--template", "median", cache=env["cache"], check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
