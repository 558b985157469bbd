"""Bench suite `dashboard_load`: N viewers opening the dashboard's Verification page at the same moment.

Entry point: `suite_dashboard_load(ctx)` (registered in bench.suites.SUITES; `python -m bench.run --suite
dashboard_load`). It starts `streamlit run dashboard/app.py` on a free localhost port over the bundled
checkpoints, times one viewer alone (the baseline, warm), then `--load-viewers` concurrent viewers for
`--load-rounds` rounds through dashboard.warmup's websocket client (a session = one page's script run, from
connect to "script finished"), and reads the server's resident memory after each round: flat memory means
shared computations are cached once, not per session. Localhost only, bounded by rounds x viewers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.suites import Context, SuiteResult, _log

ROOT = Path(__file__).resolve().parents[1]
PAGE = "verification"  # the page the issue measured: ROC, histograms, DET, galleries, k-fold


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    """Resident memory of the server process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def suite_dashboard_load(ctx: Context) -> SuiteResult:
    from dashboard.warmup import open_sessions, wait_healthy

    a = ctx.args
    viewers, rounds = int(a.load_viewers), int(a.load_rounds)
    r = SuiteResult("dashboard_load", "none", repeats=rounds)  # no model arithmetic: precision does not apply
    port = _free_port()
    url = f"http://localhost:{port}"
    checkpoints = Path(os.environ.get("MATCHLAB_CHECKPOINTS") or ROOT / "checkpoints")
    r.conditions = {
        "page": PAGE,
        "viewers": viewers,
        "rounds": rounds,
        "checkpoints": str(checkpoints),
        "server": "streamlit run dashboard/app.py, localhost, fileWatcherType none",
        "client": "dashboard.warmup websocket sessions (script run timed; no browser rendering)",
    }
    log = ctx.work / "dashboard_load_server.log"
    env = {**os.environ, "MATCHLAB_CHECKPOINTS": str(checkpoints), "MATCHLAB_CACHE_DIR": str(ctx.cache_dir)}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "dashboard/app.py",
                "--server.port",
                str(port),
                "--server.address",
                "localhost",
                "--server.headless",
                "true",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url)
        _log(f"dashboard_load: server on {url}, cold first viewer")
        cold = open_sessions(url, PAGE)[0]
        assert cold.ok and cold.heading == "Verification", f"the page did not render: {cold}"
        r.add("cold_first_viewer_s", cold.seconds, "s", "fresh server: imports, artifact reads, figures")
        single = [open_sessions(url, PAGE)[0] for _ in range(3)]
        assert all(s.ok for s in single), single
        base = float(np.median([s.seconds for s in single]))
        r.add("single_viewer_s", base, "s", "one viewer alone on the warm server, median of 3 (the baseline)")
        rss, p95s, worst = [_rss_mib(server.pid)], [], 0.0
        for k in range(rounds):
            _log(f"dashboard_load: round {k + 1}/{rounds}, {viewers} viewers at once")
            res = open_sessions(url, PAGE, viewers)
            failed = [s for s in res if not s.ok or s.heading != "Verification"]
            assert not failed, f"{len(failed)} of {viewers} sessions failed: {failed[0]}"
            secs = np.array([s.seconds for s in res])
            p95s.append(float(np.percentile(secs, 95)))
            worst = max(worst, float(secs.max()))
            rss.append(_rss_mib(server.pid))
        r.add(
            f"viewers{viewers}_p95_s",
            float(np.median(p95s)),
            "s",
            f"95th percentile per round, median of {rounds} rounds",
        )
        r.add(f"viewers{viewers}_max_s", worst, "s", "slowest viewer of all rounds (issue target: < 10 s on 2 cores)")
        r.add(
            "p95_over_single_viewer",
            float(np.median(p95s)) / base,
            "x",
            f"{viewers} concurrent viewers' p95 / one viewer alone, same server, same run",
        )
        r.add("server_rss_after_round1_mib", rss[1], "MiB")
        r.add("server_rss_after_last_round_mib", rss[-1], "MiB")
        r.add("server_rss_growth_after_round1_mib", rss[-1] - rss[1], "MiB", "flat memory: close to 0")
        r.checks = {"rss_mib_per_round": rss, "p95_s_per_round": p95s, "sessions_ok": True}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return r
