"""The `cpu_train` bench suite end to end at a tiny size: every setting's img/s, its ratio to eager fp32 from
the same run, and the untrained model's loss under each setting (channels_last must not change it). bf16 is
timed only on a CPU with native bf16, so the test accepts both sets. No timing assertions: speed is bench's job."""

import json

import pytest

from bench.cpu_train import SETTINGS
from bench.env import native_bf16
from tests.bench_runs import run_bench


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpu_train")
    args = ["--suite", "cpu_train", "--device", "cpu", "--res", "32"]
    args += ["--threads-batch", "4", "--threads-warmup", "1", "--threads-repeats", "2"]
    r = run_bench(args, tmp / "results", cache=tmp / "unused-cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = (tmp / "results").glob("cpu_train-*.json")
    return json.loads(path.read_text())


def test_cpu_train_writes_every_setting_against_eager_fp32(doc):
    assert doc["error"] is None and doc["command"].startswith("python -m bench.run --suite cpu_train")
    settings = [s for s in SETTINGS if native_bf16() or not SETTINGS[s][1]]
    assert doc["conditions"]["native_bf16"] == native_bf16()
    figs = {k: v["value"] for k, v in doc["figures"].items()}
    for task in ("train", "infer"):
        ips = {s: figs[f"{task}_{s}_img_per_s"] for s in settings}
        assert all(isinstance(v, float) and v > 0 for v in ips.values()), ips
        for s in settings[1:]:  # the ratio is the two figures of the same run, not measured apart
            assert figs[f"{task}_{s}_over_fp32"] == pytest.approx(ips[s] / ips["fp32"])
    assert len(figs) == 2 * (2 * len(settings) - 1)
    assert all(len(v) == 2 for v in doc["checks"]["seconds"].values())  # 2 timed repeats, warm-up not kept


def test_channels_last_computes_the_same_loss(doc):
    losses = doc["checks"]["first_loss"]
    # an untrained 400-way head's loss is at least ln(400) ~ 6 (more with a margin); channels_last reorders
    # the same float32 sums: measured differences are ~1e-6, and 1e-4 still fails on any real change
    assert 5.0 < losses["fp32"] < 30.0
    assert doc["checks"]["first_loss_abs_diff_to_fp32"]["channels_last"] < 1e-4
