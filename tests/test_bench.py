"""The benchmark harness end to end at tiny sizes on the CPU: `python -m bench.run` runs every suite,
passes its own equal-work and correctness checks, and writes one JSON per suite (with hardware,
versions, command and repeats) plus rows in results.csv. Speed itself is not tested here."""

import csv
import json

from tests.bench_runs import TINY_SCALE, TINY_SUITES, run_bench

TINY = ["--device", "cpu", "--res", "32", *TINY_SUITES]
FIGURES = {
    "cache": "build_images_per_s",
    "train": "speedup_vs_baseline",
    "embed": "ratio_embed_to_train",
    "roc": "core_time_over_sort_time_2e3",
    "search": "speedup_open_set_vs_plain",
}


def test_bench_runs_every_suite_and_writes_its_results(tmp_path):
    r = run_bench(TINY, tmp_path / "results", cache=tmp_path / "unused-cache", timeout=300)
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


SCALE_TINY = ["--suite", "scale", "--device", "cpu", *TINY_SCALE, "--embed-batch", "4"]


def test_scale_suite_runs_at_a_tiny_size_and_checks_its_figures(tmp_path):
    r = run_bench(SCALE_TINY, tmp_path / "results", cache=tmp_path / "unused-cache", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.rstrip().splitlines()[-1].startswith("scale") and "reduced" not in r.stdout
    (path,) = (tmp_path / "results").glob("scale-*.json")
    assert path.name.startswith("scale-resnet18_small-32px-fp32-")  # named by the embedding resolution
    doc = json.loads(path.read_text())
    assert doc["error"] is None and doc["conditions"]["gallery"] == 600 and doc["conditions"]["pairs"] == 300 * 299 // 2
    for name in (
        "exact_probes_per_s",
        "allpairs_pairs_per_s",
        "embed_images_per_s",
        "peak_rss_gib",
        "exact_rank1_identity_accuracy",
    ):
        assert isinstance(doc["figures"][name]["value"], float) and doc["figures"][name]["value"] > 0, name
    checks = doc["checks"]
    assert checks["exact_vs_numpy"]["identical_lists"] == 1.0 and checks["exact_vs_numpy"]["probes_checked"] == 40
    assert checks["allpairs"]["n_genuine"] == checks["allpairs"]["expected_genuine"] == 30 * 45
    assert checks["embed"] == {"images": 6, "output_shapes": [[2, 128], [4, 128]], "unit_norm": True}
    if doc["conditions"]["faiss"]:
        assert 0 < doc["figures"]["ivf_recall_at_1_vs_exact"]["value"] <= 1 and checks["ivf"]["sorted_descending"]


def test_scale_sizes_are_the_issues_on_a_gpu_and_reduced_on_a_cpu():
    from bench.run import SCALE_SIZES, build_parser, resolve

    args, _ = resolve(build_parser().parse_args(["--device", "cpu", "--suite", "scale", "--scale-probes", "7"]))
    assert args.suites == ["scale"] and args.scale_probes == 7 and "probes" not in args.scale_reduced
    assert args.scale_reduced["gallery"] == (args.scale_gallery, 1_000_000) and args.scale_gallery < 1_000_000
    assert SCALE_SIZES["scale_pairs_images"][0] == 100_000
    default, _ = resolve(build_parser().parse_args(["--device", "cpu"]))
    assert "scale" not in default.suites  # minutes even on a GPU: only when named
