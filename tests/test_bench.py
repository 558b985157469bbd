"""The benchmark harness end to end at tiny sizes on the CPU: `python -m bench.run` runs every suite,
passes its own equal-work and correctness checks, and writes one JSON per suite (with hardware,
versions, command and repeats) plus rows in results.csv. Speed itself is not tested here."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--res", "32", "--images", "24", "--classes", "3", "--batch", "8", "--steps", "1",
        "--warmup", "1", "--workers", "1", "--repeats", "1", "--roc-sizes", "2000", "--search-probes", "16",
        "--search-gallery", "500", "--embed-batch", "16"]
FIGURES = {"cache": "build_images_per_s", "train": "speedup_vs_baseline", "embed": "ratio_embed_to_train",
           "roc": "core_time_over_sort_time_2e3", "search": "speedup_open_set_vs_plain"}


def test_bench_runs_every_suite_and_writes_its_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(tmp_path / "unused-cache")}
    r = subprocess.run([sys.executable, "-m", "bench.run", *TINY, "--out", str(tmp_path / "results")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.rstrip().splitlines()[-1].startswith("search")  # the table comes last
    files = {p.name.split("-")[0]: p for p in (tmp_path / "results").glob("*.json")}
    assert set(files) == set(FIGURES)
    for suite, path in files.items():
        doc = json.loads(path.read_text())
        assert path.name.startswith(f"{suite}-resnet18_small-32px-") and "-torch" in path.name and "-cpu-" in path.name
        assert doc["error"] is None and doc["command"].startswith("python -m bench.run --device cpu")
        assert doc["repeats"] >= 1 and doc["hardware"]["cpu_cores_usable"] >= 1 and doc["versions"]["torch"]
        assert isinstance(doc["figures"][FIGURES[suite]]["value"], float), (suite, doc["figures"])
    train = json.loads(files["train"].read_text())
    assert train["checks"]["same_model_weights_shapes"] and train["checks"]["input_shape"] == [8, 3, 32, 32]
    assert json.loads(files["roc"].read_text())["checks"]["sklearn"]["pass"]
    cache = json.loads(files["cache"].read_text())["checks"]
    assert cache["status_after_build"] == "fresh" and cache["decoded_second_call"] == 0
    rows = list(csv.DictReader((tmp_path / "results" / "results.csv").open()))
    assert {row["suite"] for row in rows} == set(FIGURES) and all(row["command"] for row in rows)
    assert not (tmp_path / "unused-cache").exists()  # the harness keeps its caches in its own scratch folder
