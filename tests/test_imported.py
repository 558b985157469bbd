"""Bring your own scores or embeddings (issue 11): `import-scores` and `import-embeddings` on the bundled
orl_demo evaluation's own pairs and embeddings must reproduce its numbers, make an evaluation folder the
dashboard reads, and turn every malformed file into one line `error: FILE:LINE: ...`.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import layout
from core.cli import main
from tests.exported_models import Trap

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
DEMO_EVAL = ROOT / "checkpoints" / "orl_demo" / "eval" / "orl_faces"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


@pytest.fixture(scope="module")
def demo():
    return {
        "summary": json.loads((DEMO_EVAL / "summary.json").read_text()),
        "pairs": pd.read_parquet(DEMO_EVAL / "pairs.parquet"),
        "samples": pd.read_parquet(DEMO_EVAL / "samples.parquet"),
        "embeddings": np.load(DEMO_EVAL / "embeddings.npy"),
    }


def test_import_scores_reproduces_the_evaluation(demo, capsys, tmp_path):
    pairs = demo["pairs"][["path_a", "path_b", "label", "score"]].assign(
        slice=np.where(np.arange(len(demo["pairs"])) % 2, "odd", "even")
    )
    csv = tmp_path / "vendor.csv"
    pairs.to_csv(csv, index=False)
    rc, out, err = run_cli(capsys, "import-scores", csv, "--name", "vendor", "--data", ORL, "--out", tmp_path, "--json")
    assert rc == 0, err
    s = json.loads(out)
    want = demo["summary"]["verification"]
    # the same scores through the same metric code: the ranking is identical, so the rates are exact; the
    # EER threshold is a score, read back from CSV text as float64 (measured 3e-9 from its float32 value)
    for k in ("auc", "eer", "n_genuine", "n_impostor"):
        assert s["verification"][k] == pytest.approx(want[k], abs=1e-12), k
    assert s["verification"]["eer_threshold"] == pytest.approx(want["eer_threshold"], abs=1e-6)
    assert set(s["slices"]) == {"even", "odd"} and s["images_found"] == {"checked": 80, "found": 80}
    run = layout.RunFiles(tmp_path / "vendor")
    assert layout.read_config(run.dir)["kind"] == "scores"
    files = run.eval(s["key"])
    assert layout.list_evaluations(run.dir) == ["orl_faces"] and files.pairs.is_file() and files.calibration.is_file()
    table = pd.read_parquet(files.pairs)
    np.testing.assert_array_equal(table["score"].to_numpy(), pairs["score"].to_numpy(np.float32))
    # the same file as Parquet, without --data: no pictures, and the summary says so
    pairs.to_parquet(tmp_path / "vendor.parquet")
    rc, out, err = run_cli(capsys, "import-scores", tmp_path / "vendor.parquet", "--name", "v2", "--out", tmp_path)
    assert rc == 0, err and "without pictures" in out
    # a scores folder is not a model
    rc, _, err = run_cli(
        capsys, "verify", tmp_path / "vendor", ORL / "s1" / "1.pgm", ORL / "s1" / "2.pgm", "--threshold", "0.5"
    )
    one_line_error(rc, err, "holds imported scores, not a model")


def test_import_embeddings_reproduces_the_evaluation(demo, capsys, tmp_path):
    samples, emb = demo["samples"], demo["embeddings"]
    frame = pd.DataFrame({"path": samples["path"], "label": samples["class_name"], "embedding": list(emb)})
    frame.to_parquet(tmp_path / "emb.parquet")
    protocol = tmp_path / "pairs.csv"
    demo["pairs"][["path_a", "path_b", "label"]].to_csv(protocol, index=False)
    rc, out, err = run_cli(
        capsys,
        "import-embeddings",
        tmp_path / "emb.parquet",
        "--name",
        "emb",
        "--data",
        ORL,
        "--pairs",
        protocol,
        "--pairs-format",
        "csv",
        "--out",
        tmp_path,
        "--json",
    )
    assert rc == 0, err
    s = json.loads(out)
    want = demo["summary"]
    assert s["knn_accuracy"] == pytest.approx(want["knn_accuracy"], abs=1e-9)
    assert s["retrieval"]["mean_average_precision_at_r"] == pytest.approx(
        want["retrieval"]["mean_average_precision_at_r"], abs=1e-6
    )
    # cosines recomputed from the stored unit embeddings: float32 rounding only
    assert s["verification"]["auc"] == pytest.approx(want["verification"]["auc"], abs=1e-6)
    files = layout.RunFiles(tmp_path / "emb").eval(s["key"])
    for f in (files.embeddings, files.samples, files.confusion, files.per_class, files.pairs):
        assert f.is_file(), f
    np.testing.assert_allclose(np.load(files.embeddings), emb, atol=1e-6)
    # .npy + a CSV of paths and labels; pairs generated from the labels (all 79,800 of 400 images)
    np.save(tmp_path / "emb.npy", emb)
    frame[["path", "label"]].to_csv(tmp_path / "labels.csv", index=False)
    rc, out, err = run_cli(
        capsys,
        "import-embeddings",
        tmp_path / "emb.npy",
        "--labels",
        tmp_path / "labels.csv",
        "--name",
        "npy",
        "--out",
        tmp_path,
        "--json",
    )
    assert rc == 0, err
    s = json.loads(out)
    assert s["verification"]["n_genuine"] + s["verification"]["n_impostor"] == 400 * 399 // 2
    assert s["knn_accuracy"] == pytest.approx(want["knn_accuracy"], abs=1e-9)


SCORES_HEADER = "path_a,path_b,label,score\n"


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("path_a,path_b,label\ns1/1.pgm,s1/2.pgm,1\n", ["scores.csv:1: missing column(s) score"]),
        (
            SCORES_HEADER + "s1/1.pgm,s1/2.pgm,1,0.9\n\ns1/1.pgm,s2/1.pgm,0,high\n",
            ["scores.csv:4: score is not a finite number"],
        ),
        (SCORES_HEADER + "s1/1.pgm,s1/2.pgm,1,0.9\ns1/1.pgm,s2/1.pgm,yes,0.1\n", ["scores.csv:3: label must be 1"]),
        (SCORES_HEADER + "s1/1.pgm,,1,0.9\n", ["scores.csv:2: empty path_b"]),
        (SCORES_HEADER + "s1/1.pgm,s1/2.pgm,1\n", ["scores.csv:2: 3 field(s) where the header has 4"]),
        (SCORES_HEADER + "s1/1.pgm,s1/2.pgm,1,nan\n", ["scores.csv:2: score is not a finite number"]),
        (SCORES_HEADER + "s1/1.pgm,s1/2.pgm,1,0.9\n", ["both genuine and impostor pairs"]),
        (SCORES_HEADER, ["scores.csv: no rows"]),
    ],
)
def test_malformed_scores_files(capsys, tmp_path, text, fragments):
    path = tmp_path / "scores.csv"
    path.write_text(text)
    rc, _, err = run_cli(capsys, "import-scores", path, "--name", "x", "--out", tmp_path / "ck")
    one_line_error(rc, err, *fragments)
    assert not (tmp_path / "ck" / "x").exists()


def test_malformed_parquet_and_embeddings(demo, capsys, tmp_path):
    bad = pd.DataFrame(
        {"path_a": ["s1/1.pgm", "s1/1.pgm"], "path_b": ["s1/2.pgm", "s2/1.pgm"], "label": [1, 0], "score": ["0.9", "x"]}
    )
    bad.to_parquet(tmp_path / "s.parquet")
    rc, _, err = run_cli(capsys, "import-scores", tmp_path / "s.parquet", "--name", "x", "--out", tmp_path)
    one_line_error(rc, err, "s.parquet:row 2: score is not a finite number")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "s.parquet").read_bytes()[:40])
    rc, _, err = run_cli(capsys, "import-scores", tmp_path / "cut.parquet", "--name", "x", "--out", tmp_path)
    one_line_error(rc, err, "cut.parquet: not a readable Parquet file")

    samples, emb = demo["samples"].head(20), demo["embeddings"][:20]
    labels = tmp_path / "labels.csv"
    samples[["path", "class_name"]].rename(columns={"class_name": "label"}).to_csv(labels, index=False)
    np.save(tmp_path / "short.npy", emb[:19])
    rc, _, err = run_cli(
        capsys, "import-embeddings", tmp_path / "short.npy", "--labels", labels, "--name", "x", "--out", tmp_path
    )
    one_line_error(rc, err, "short.npy has 19 rows but", "has 20")
    nan = emb.copy()
    nan[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    rc, _, err = run_cli(
        capsys, "import-embeddings", tmp_path / "nan.npy", "--labels", labels, "--name", "x", "--out", tmp_path
    )
    one_line_error(rc, err, "nan.npy: row 5", "labels.csv:6", "not finite")
    ragged = pd.DataFrame(
        {
            "path": samples["path"],
            "label": samples["class_name"],
            "embedding": [list(e) if i != 3 else list(e[:5]) for i, e in enumerate(emb)],
        }
    )
    ragged.to_parquet(tmp_path / "ragged.parquet")
    rc, _, err = run_cli(capsys, "import-embeddings", tmp_path / "ragged.parquet", "--name", "x", "--out", tmp_path)
    one_line_error(rc, err, "ragged.parquet:row 4: embedding length differs")


def test_an_object_npy_is_never_unpickled(capsys, tmp_path):
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "obj.npy", np.array([Trap(marker), Trap(marker)], dtype=object), allow_pickle=True)
    (tmp_path / "labels.csv").write_text("path,label\ns1/1.pgm,s1\ns1/2.pgm,s1\n")
    rc, _, err = run_cli(
        capsys,
        "import-embeddings",
        tmp_path / "obj.npy",
        "--labels",
        tmp_path / "labels.csv",
        "--name",
        "x",
        "--out",
        tmp_path,
    )
    one_line_error(rc, err, "obj.npy", "never")
    assert not marker.exists()
