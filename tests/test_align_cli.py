"""Alignment through the commands: training with data.align=mtcnn, evaluate's failure-to-enrol report
(NIST convention and excluded), `align DIR --out DIR2`, and verify's one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from core.cli import _fte_line
from tests.core_cli import cli
from tests.face_photos import blank_photo, off_centre_photo

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Five ORL people (4 photos each, two of them pasted off-centre into larger photos) plus a photo
    without a face in two of the classes; a tiny model trained on aligned faces."""
    base = tmp_path_factory.mktemp("align")
    data = base / "people"
    for i in range(1, 6):
        (data / f"s{i}").mkdir(parents=True)
        for k in (1, 2):
            (data / f"s{i}" / f"{k}.pgm").write_bytes((ORL / f"s{i}" / f"{k}.pgm").read_bytes())
        for k in (3, 4):
            (data / f"s{i}" / f"photo{k}.jpg").write_bytes(off_centre_photo(f"s{i}/{k}.pgm", at=(30 + 90 * k, 40)))
    for person in ("s1", "s2"):
        (data / person / "blank.jpg").write_bytes(blank_photo())
    cache = base / "cache"
    cli(
        "train",
        ROOT / "configs" / "orl.yaml",
        "model.name=convnet_tiny",
        "data.res=32",
        "train.epochs=1",
        "train.batch_size=16",
        "model.embedding_dim=16",
        "data.split=image",
        f"data.train={data}",
        "data.align=mtcnn",
        "--out",
        base,
        "--name",
        "aligned",
        cache=cache,
    )
    # evaluated on a copy: on its own training folder a run is scored on held-out images only
    shutil.copytree(data, base / "people_eval")
    return {"run": base / "aligned", "data": base / "people_eval", "cache": cache, "base": base}


def test_a_run_trained_on_aligned_faces_records_it_in_its_preprocess(env):
    from core.embedder import load_embedder

    assert load_embedder(env["run"], device="cpu").preprocess.align == "mtcnn"


def test_evaluate_reports_failure_to_enrol_both_ways(env):
    s = json.loads(
        cli("evaluate", env["run"], "--data", env["data"], "--json", "--device", "cpu", cache=env["cache"]).stdout
    )
    f = s["fte"]
    assert s["align"] == "mtcnn" and f["n_images"] == 22 and f["n_no_face"] == 2
    assert f["rate"] == pytest.approx(2 / 22) and sorted(f["no_face"]) == ["s1/blank.jpg", "s2/blank.jpg"]
    pairs = pd.read_parquet(Path(s["verification"]["artifacts"]) / "pairs.parquet")
    fte = pairs["fte"].to_numpy()
    assert fte.sum() == f["pairs_with_fte"] == 21 + 20  # every pair with one of the two blanks (and theirs)
    # NIST convention: those pairs score below every real score, so they are rejected at any threshold
    assert (pairs["score"][fte] < -1).all() and (pairs["score"][~fte] >= -1).all()
    assert s["verification"]["n_genuine"] == int(pairs["label"].sum())  # nothing dropped from the headline
    kept = pairs[~fte]
    assert f["excluded"]["auc"] == pytest.approx(roc_auc_score(kept["label"], kept["score"]), abs=1e-6)
    assert f["excluded"]["n_genuine"] + f["excluded"]["n_impostor"] == len(kept)
    assert "failure to enrol (no face found): 2 of 22 images" in _fte_line(f)  # evaluate's human summary


def test_align_command_writes_aligned_copies_and_a_faces_csv(env, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "two.jpg").write_bytes(off_centre_photo("s3/1.pgm", second="s4/1.pgm"))
    (src / "blank.jpg").write_bytes(blank_photo())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "aligned"
    r = cli("align", src, "--out", out, "--res", "112x96", "--json", "--device", "cpu", cache=env["cache"])
    report = json.loads(r.stdout)
    assert (report["aligned"], report["no_face"], report["unreadable"], report["multi_face"]) == (1, 1, 1, 1)
    assert f"skipped {src / 'broken.jpg'}:" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["faces.csv", "two.png"]
    assert np.asarray(Image.open(out / "two.png")).shape == (112, 96, 3)
    table = pd.read_csv(out / "faces.csv")
    two = table[table["path"] == "two.jpg"]
    assert len(two) == 2 and two["used"].sum() == 1 and (two["prob"] > 0.9).all()
    used = two[two["used"]].iloc[0]
    assert used["x1"] < 200 and used["y1"] < 200  # the larger face, pasted at the top left, is the one used
    assert used["left_eye_y"] < used["nose_y"] < used["mouth_left_y"]
    assert set(table["status"]) == {"aligned", "no_face", "unreadable"}
    bad = cli("align", src, "--out", out, "--res", "9x9", cache=env["cache"], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --res '9x9'") and bad.stderr.count("\n") == 1


def test_verify_with_alignment_scores_faces_and_refuses_a_photo_without_one(env, tmp_path):
    a, b, blank = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "blank.jpg"
    a.write_bytes(off_centre_photo("s1/3.pgm", at=(400, 250)))
    b.write_bytes(off_centre_photo("s1/4.pgm", at=(20, 20)))
    blank.write_bytes(blank_photo())
    r = json.loads(
        cli("verify", env["run"], a, b, "--threshold", "0.5", "--json", "--device", "cpu", cache=env["cache"]).stdout
    )
    assert [f["n_faces"] for f in r["faces"]] == [1, 1] and r["faces"][0]["box"][0] > 300  # found where pasted
    err = cli("verify", env["run"], a, blank, "--threshold", "0.5", "--device", "cpu", cache=env["cache"], check=False)
    assert err.returncode == 2
    assert err.stderr.strip() == "error: no face found in blank.jpg; try a closer, frontal photo or turn alignment off"
