"""Packaging: the wheel installs one import name (`matchlab`) and a `matchlab` command that works from any
folder, next to a user's own package called `core`; pyproject's ranges admit requirements.txt's pins."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_pyproject_ranges_admit_every_pin_in_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(d).name.lower(): Requirement(d) for d in project["dependencies"]}
    pins = _pins()
    assert set(pins) == set(ranges), f"only pinned: {set(pins) - set(ranges)}, only ranged: {set(ranges) - set(pins)}"
    for name, version in pins.items():
        assert ranges[name].specifier.contains(version, prereleases=True), (name, version, str(ranges[name]))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the built wheel (--no-deps); the test venv's packages are visible through a
    .pth file, as they would be in a user's environment that already has torch."""
    tmp = tmp_path_factory.mktemp("pkg")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True,
        cwd=tmp,
        timeout=600,
    )
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "test_venv_packages.pth").write_text(ours + "\n")
    wheel = next(wheels.glob("matchlab-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return venv


def _run(venv: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "matchlab"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_wheel_installs_the_matchlab_command_beside_a_users_own_core_package(installed, tmp_path):
    # The user's own top-level package called `core`, first on their path.
    (tmp_path / "theirs" / "core").mkdir(parents=True)
    (tmp_path / "theirs" / "core" / "__init__.py").write_text("WHOSE = 'the user'\n")
    env = {"PYTHONPATH": str(tmp_path / "theirs")}
    py = installed / "bin" / "python"
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert sorted(
        p.name
        for p in site.iterdir()
        if p.name.startswith(("core", "dashboard", "matchlab")) and not p.name.endswith(".dist-info")
    ) == ["matchlab"]
    who = subprocess.run(
        [str(py), "-c", "import core; print(core.WHOSE)"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=60,
    )
    assert who.stdout.strip() == "the user", who.stderr

    r = _run(installed, "--help", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: matchlab") and "dashboard" in r.stdout and "verify" in r.stdout

    faces = ROOT / "data" / "orl_faces"
    r = _run(
        installed,
        "verify",
        str(ROOT / "checkpoints" / "orl_demo"),
        str(faces / "s1" / "1.pgm"),
        str(faces / "s1" / "2.pgm"),
        "--json",
        "--device",
        "cpu",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    score = float(re.search(r'"score":\s*(-?[0-9.e-]+)', r.stdout).group(1))
    assert -1.0 <= score <= 1.0
    # the installed copy ran, not the checkout
    r = subprocess.run(
        [str(py), "-c", "import matchlab.cli; print(matchlab.cli.HERE)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert str(site) in r.stdout, r.stderr
