"""`python -m bench.run --gpu-checklist` on the CPU at tiny sizes (issue 17): every step runs in one process
and lands in one JSON, so the command is ready the day a GPU is lent. Speed itself is not tested."""

import json

from tests.bench_runs import TINY_SCALE, TINY_SUITES, run_bench

TINY = ["--gpu-checklist", "--device", "cpu", "--checklist-res", "32", *TINY_SUITES, *TINY_SCALE]


def test_gpu_checklist_runs_every_step_into_one_json(tmp_path):
    r = run_bench(TINY, tmp_path / "out", cache=tmp_path / "unused-cache", timeout=600)
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
