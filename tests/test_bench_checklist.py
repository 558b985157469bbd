"""`python -m bench.run --gpu-checklist` on the CPU at tiny sizes (issue 17): every step runs in one process
and lands in one JSON, so the command is ready the day a GPU is lent. Speed itself is not tested."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--gpu-checklist",
    "--device",
    "cpu",
    "--checklist-res",
    "32",
    "--images",
    "24",
    "--classes",
    "3",
    "--batch",
    "8",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--workers",
    "1",
    "--repeats",
    "1",
    "--roc-sizes",
    "2000",
    "--search-probes",
    "16",
    "--search-gallery",
    "500",
    "--embed-batch",
    "16",
    "--scale-gallery",
    "600",
    "--scale-probes",
    "40",
    "--scale-pairs-images",
    "300",
    "--scale-embed-images",
    "6",
    "--scale-res",
    "32",
]


def test_gpu_checklist_runs_every_step_into_one_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHLAB_CACHE_DIR": str(tmp_path / "unused-cache")}
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", *TINY, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("gpu-checklist-cpu-*.json")
    doc = json.loads(path.read_text())
    assert [s["step"] for s in doc["steps"]] == ["roc", "search", "train_32", "embed_32", "scale"]
    for step in doc["steps"]:
        assert step["error"] is None and step["figures"], step["step"]
        assert len(step["load_average"]["start_1_5_15m"]) == 3
    by = {s["step"]: s for s in doc["steps"]}
    assert by["roc"]["checks"]["sklearn"]["pass"] and by["search"]["checks"]["top1_core_equals_plain"] == 1.0
    assert "speedup_vs_baseline" in by["train_32"]["figures"] and "embed_images_per_s" in by["embed_32"]["figures"]
    assert by["scale"]["checks"]["exact_vs_numpy"]["identical_lists"] == 1.0
    assert (
        doc["hardware"]["cpu_cores_usable"] >= 1
        and doc["versions"]["torch"]
        and doc["command"].startswith("python -m bench.run --gpu-checklist")
    )
    assert not (tmp_path / "unused-cache").exists()


def test_gpu_sizes_apply_on_cuda_unless_given():
    import torch

    from bench.checklist import steps_for
    from bench.run import build_parser, resolve

    parsed = build_parser().parse_args(["--device", "cpu", "--search-probes", "7"])
    args, _ = resolve(parsed)
    steps = steps_for(args, torch.device("cuda"), {"search_probes"})
    by = {name: a for name, _, a in steps}
    assert list(by) == ["roc", "search", "train_64", "embed_64", "train_112", "embed_112", "scale"]
    assert by["roc"].roc_sizes == "1e7,1e8" and by["search"].search_gallery == 1_000_000
    assert by["search"].search_probes == 7  # given on the command line: kept
    assert by["train_112"].res == 112 and by["train_112"].images == 20_000 and by["scale"].scale_probes == 10_000
