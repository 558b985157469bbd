"""Measure how long each dashboard page takes to render on a run: `python -m dashboard.measure_render`.

Runs the app headless through Streamlit's AppTest in one fresh process, the way a server does: the first
page load (imports, caches cold), then for each page its first visit and the median of `--repeat` reruns
(caches warm, e.g. after moving a slider). Prints a Markdown table (or JSON with --json) for docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = ["overview", "embeddings", "confusion", "verification", "ablation", "live", "compare"]


def _timed_runs(at, repeat: int) -> tuple[float, list[float]]:
    """Seconds of one first rerun of the AppTest page, then of `repeat` warm reruns."""
    t = time.perf_counter()
    at.run()
    first = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - t)
    return first, warm


def measure(repeat: int = 5, settle_s: float = 8.0, live_images: list[str] | None = None) -> dict:
    """Seconds per page: {"startup": s, "pages": {page: {"first": s, "warm_median": s, "warm_max": s}}}."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "dashboard" / "app.py"), default_timeout=120)
    t = time.perf_counter()
    at.run()
    startup = time.perf_counter() - t
    # The app imports core.metrics (torch) in a background thread at startup; a person reads the first page
    # meanwhile. Wait for it so the per-page figures below are the steady state, and report it separately.
    time.sleep(settle_s)
    out: dict = {"startup": startup, "pages": {}}
    for page in PAGES:
        if page != "overview":
            at.switch_page(f"app_pages/{page}.py")
        first, warm = _timed_runs(at, repeat)
        if at.exception:
            raise RuntimeError(f"page {page} raised: {at.exception[0].value}")
        out["pages"][page] = {"first": first, "warm_median": statistics.median(warm), "warm_max": max(warm)}
        if page == "live" and live_images and at.file_uploader:
            # The live page with two photos: its first run loads the model, later runs hit the score cache.
            for uploader, path in zip(at.file_uploader, live_images):
                uploader.set_value((Path(path).name, Path(path).read_bytes(), "image/x-portable-graymap"))
            first, warm = _timed_runs(at, repeat)
            if at.exception or not any(m.label == "similarity score" for m in at.metric):
                raise RuntimeError("the live page did not score the two images")
            out["pages"]["live, two images"] = {
                "first": first,
                "warm_median": statistics.median(warm),
                "warm_max": max(warm),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="warm reruns per page (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--live-images",
        nargs=2,
        default=[str(REPO_ROOT / "data/orl_faces/s1/1.pgm"), str(REPO_ROOT / "data/orl_faces/s1/2.pgm")],
        help="two images uploaded on the Live match page",
    )
    args = parser.parse_args()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    result = measure(args.repeat, live_images=args.live_images)
    result.update(
        cpu=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
        checkpoints=os.environ.get("MATCHLAB_CHECKPOINTS", "checkpoints"),
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"first page load (imports, cold caches): {result['startup']:.2f} s\n")
    print("| page | first visit (s) | warm rerun, median (s) | warm rerun, max (s) |")
    print("| --- | --- | --- | --- |")
    for page, r in result["pages"].items():
        print(f"| {page} | {r['first']:.2f} | {r['warm_median']:.2f} | {r['warm_max']:.2f} |")


if __name__ == "__main__":
    main()
