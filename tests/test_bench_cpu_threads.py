"""The `cpu_threads` bench suite end to end at a tiny size, in its as_is condition only: two fresh children
(OMP_WAIT_POLICY unset and PASSIVE; each a torch import) write every img/s figure and the passive/default
ratios. The one_core_busy condition runs the same code beside a busy loop the suite starts and kills; here it
would take the CI machine's last free core, so the test only checks that no busy loop is left behind.
No timing assertions: speed is bench's job."""

import json
from pathlib import Path

import pytest

from tests.bench_runs import run_bench

BUSY_LOOP = "while True: pass"


def _busy_loops() -> list[int]:
    """pids of live `python -c 'while True: pass'` processes (the suite's busy core)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and len(argv) >= 3 and argv[1] == b"-c" and argv[2] == BUSY_LOOP.encode():
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpu_threads")
    args = ["--suite", "cpu_threads", "--device", "cpu", "--res", "32"]
    args += ["--threads-batch", "4", "--threads-warmup", "1", "--threads-repeats", "2"]
    args += ["--threads-conditions", "as_is"]
    before = set(_busy_loops())
    r = run_bench(args, tmp / "results", cache=tmp / "unused-cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(_busy_loops()) <= before, "the busy-loop process outlived the suite"
    (path,) = (tmp / "results").glob("cpu_threads-*.json")
    return json.loads(path.read_text())


def test_cpu_threads_writes_every_figure_and_ratio(doc):
    assert doc["error"] is None and doc["command"].startswith("python -m bench.run --suite cpu_threads")
    assert doc["hardware"]["cpu_cores_usable"] >= 1 and doc["versions"]["torch"]
    assert len(doc["load_average"]["start_1_5_15m"]) == 3
    figs = {k: v["value"] for k, v in doc["figures"].items()}
    for condition in ("as_is",):
        for task in ("train", "infer"):
            ips = {p: figs[f"{task}_{condition}_{p}_img_per_s"] for p in ("default", "passive")}
            assert all(isinstance(v, float) and v > 0 for v in ips.values()), ips
            # the ratio is the two figures of the same run, not measured apart
            assert figs[f"{task}_{condition}_passive_over_default"] == pytest.approx(ips["passive"] / ips["default"])
    assert len(figs) == 6
    seconds = doc["checks"]["seconds"]
    assert len(seconds) == 4 and all(len(v) == 2 for v in seconds.values())  # 2 timed repeats, warm-up not kept
    c = doc["conditions"]
    assert c["batch"] == 4 and c["res"] == 32 and c["policies"] == {"default": "(unset)", "passive": "PASSIVE"}
    assert set(c["load_average_1_5_15_after"]) == {"as_is"}
