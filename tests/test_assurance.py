"""Issue 13 end to end: `evaluate` with intervals, costs, calibration and an attributes file on a copy of
the bundled demo run; `verify --json` with P(same) and LR; one-line errors for bad costs, priors and
attributes files naming missing images."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.core_cli import cli_in_process as cli

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
DEMO = ROOT / "checkpoints" / "orl_demo"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (DEMO / "best.safetensors").is_file():
        pytest.skip("the bundled demo run is missing")
    base = tmp_path_factory.mktemp("assure")
    dst = base / "orl_demo"
    dst.mkdir()
    for f in DEMO.iterdir():  # the model, not its evaluations
        if f.is_file():
            shutil.copy(f, dst / f.name)
    attrs = base / "attributes.csv"
    # an attribute per person (odd / even subject number) and one image-level column
    rows = [
        (
            p.relative_to(ORL).as_posix(),
            "odd" if int(p.parent.name[1:]) % 2 else "even",
            "early" if int(p.stem) <= 5 else "late",
        )
        for p in sorted(ORL.glob("s*/*.pgm"))
    ]
    pd.DataFrame(rows, columns=["path", "parity", "shot"]).to_csv(attrs, index=False)
    r = cli(
        "evaluate",
        dst,
        "--data",
        ORL,
        "--bootstrap",
        "300",
        "--attributes",
        attrs,
        "--prior",
        "0.1",
        "--cost-fa",
        "10",
        "--json",
        "--device",
        "cpu",
        cache=base / "cache",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return {"dir": dst, "summary": json.loads(r.stdout), "cache": base / "cache", "base": base}


def test_evaluate_json_has_intervals_cost_calibration_and_groups(run):
    v = run["summary"]["verification"]
    assert v["auc_ci95"][0] <= v["auc"] <= v["auc_ci95"][1] and v["eer_ci95"][0] <= v["eer"] <= v["eer_ci95"][1]
    iv = v["intervals"]
    assert iv["default"] == "identities" and iv["n_boot"] == 300 and {"identities", "pairs"} <= set(iv)
    # clustered pairs: the subject bootstrap is wider than the pair bootstrap
    width = {m: iv[m]["auc"][1] - iv[m]["auc"][0] for m in ("identities", "pairs")}
    assert width["identities"] > width["pairs"]
    assert v["tar_at_far"]["0.1"]["ci95"] is not None and v["tar_at_far"]["1e-06"]["ci95"] is None
    mc = v["min_cost"]
    assert (mc["prior"], mc["cost_fa"], mc["cost_fr"]) == (0.1, 10.0, 1.0) and mc["ci95"][0] <= mc["dcf"] <= mc["ci95"][
        1
    ]
    assert 0 <= v["calibration"]["min_cllr"] <= v["calibration"]["cllr"]
    files = run["dir"] / "eval" / "orl_faces"
    cal = json.loads((files / "calibration.json").read_text())
    assert cal["map"]["method"] == "isotonic" and cal["data"] == str(ORL.resolve())
    groups = json.loads((files / "groups.json").read_text())["attributes"]
    assert set(groups) >= {"parity", "shot"} and "cross_fmr" in groups["shot"]
    assert {g["group"] for g in groups["parity"]["groups"]} <= {"odd", "even"}
    assert run["summary"]["groups"]["shot"]["groups"] == 2


def test_verify_json_shows_p_same_and_lr(run):
    r = cli(
        "verify",
        run["dir"],
        ORL / "s31" / "1.pgm",
        ORL / "s31" / "2.pgm",
        "--json",
        "--device",
        "cpu",
        cache=run["cache"],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads(r.stdout)["calibrated"]
    assert 0 < c["p_same"] < 1 and c["lr"] > 0 and c["evaluation"] == "orl_faces" and "warning" not in c
    outside = run["base"] / "a.pgm"
    shutil.copy(ORL / "s31" / "1.pgm", outside)
    r = cli("verify", run["dir"], outside, ORL / "s31" / "2.pgm", "--json", "--device", "cpu", cache=run["cache"])
    assert "not from" in json.loads(r.stdout)["calibrated"]["warning"] and "warning:" in r.stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--prior", "1.5"], "--prior 1.5"),
        (["--prior", "0"], "--prior 0"),
        (["--cost-fa", "0"], "--cost-fa 0"),
        (["--cost-fr", "-1"], "--cost-fr -1"),
        (["--ci-level", "95"], "--ci-level 95"),
    ],
)
def test_bad_costs_and_levels_are_one_line_errors(run, flags, message):
    r = cli("evaluate", run["dir"], "--data", ORL, *flags, cache=run["cache"])
    assert r.returncode == 2 and r.stderr.strip().startswith(f"error: {message}")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_attributes_naming_missing_images_is_a_one_line_error(run, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,gender\ns1/1.pgm,f\ns99/1.pgm,m\n")
    before = (run["dir"] / "eval" / "orl_faces" / "summary.json").read_bytes()
    r = cli("evaluate", run["dir"], "--data", ORL, "--attributes", bad, "--device", "cpu", cache=run["cache"])
    assert r.returncode == 2 and "names 1 images that are not in the evaluated folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (run["dir"] / "eval" / "orl_faces" / "summary.json").read_bytes() == before  # nothing lost
