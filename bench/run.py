"""`python -m bench.run`: MatchLab against the hand-written pipeline, every suite in one process.

Entry point: `main(argv) -> int`. Sizes default by device (GPU: the issue's sizes; CPU: small enough
to finish in minutes, and the scale suite says which sizes it reduced). Each suite writes
bench/results/<suite>-<model>-<res>px-<precision>-torch<ver>-<device>.json with the hardware, versions
and exact command, appends its figures to results.csv, and a short table is printed last. A failed check stops that suite (recorded as an error), not the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.align import ALIGN_SUITES
from bench.checklist import run_checklist
from bench.env import describe, device_name, device_slug, torch_version, usable_cores
from bench.pipeline import PIPELINE_SUITES
from bench.suites import SUITES, Context, SuiteResult

RESULTS = Path(__file__).resolve().parent / "results"
# Suites run in this order whatever --suite says: cache first, so train reuses the cache it built
# (and the cold build is timed once), train before embed, which loads train's run folder.
ORDER = (
    "cache",
    "train",
    "embed",
    "roc",
    "search",
    "scale",
    "audit",
    "dashboard_load",
    "evaluate",
    "infer",
    "live",
    "align",
    "bootstrap",
    "import",
    "cpu_threads",
    "cpu_train",
)
SUITES = {**SUITES, **PIPELINE_SUITES, **ALIGN_SUITES}  # evaluate, infer, live, align: only when named
# scale (a 1e6-image gallery, 5e9 pairs) takes minutes even on a GPU: it runs only when named.
DEFAULT_SUITES = ("cache", "train", "embed", "roc", "search")
# The scale sizes, reduced on a CPU so `--suite scale` finishes in a couple of minutes on 2 cores.
SCALE_SIZES = {
    "scale_gallery": (1_000_000, 100_000),
    "scale_probes": (100_000, 2_000),
    "scale_pairs_images": (100_000, 5_000),
    "scale_embed_images": (100_000, 48),
}
DEFAULTS = {
    "cuda": dict(
        images=20_000,
        classes=500,
        batch=256,
        steps=50,
        warmup=10,
        repeats=5,
        roc_sizes="1e7,1e8",
        search_probes=10_000,
        search_gallery=1_000_000,
        search_dtype="bf16",
        embed_batch=1024,
        **{k: gpu for k, (gpu, _) in SCALE_SIZES.items()},
    ),
    "cpu": dict(
        images=512,
        classes=16,
        batch=32,
        steps=4,
        warmup=1,
        repeats=3,
        roc_sizes="1e6,1e7",
        search_probes=1_000,
        search_gallery=100_000,
        search_dtype="fp32",
        embed_batch=256,
        **{k: cpu for k, (_, cpu) in SCALE_SIZES.items()},
    ),
}
CSV_FIELDS = [
    "created",
    "suite",
    "figure",
    "value",
    "unit",
    "model",
    "res",
    "precision",
    "device",
    "torch",
    "command",
    "json",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--suite",
        default=",".join(DEFAULT_SUITES),
        help="comma list of: " + ", ".join(ORDER) + " (scale only when named)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="resnet18_small", help="a name from core.models.list_models()")
    p.add_argument("--res", type=int, default=64, help="image side in pixels")
    p.add_argument("--data", help="a real ImageFolder to use instead of the synthetic JPEGs (e.g. data/orl_faces)")
    p.add_argument("--images", type=int, help="synthetic JPEGs to write (GPU 20000, CPU 512)")
    p.add_argument("--classes", type=int, help="synthetic classes (GPU 500, CPU 16)")
    p.add_argument("--batch", type=int, help="training batch (GPU 256, CPU 32)")
    p.add_argument("--steps", type=int, help="timed training steps per path (GPU 50, CPU 4)")
    p.add_argument("--warmup", type=int, help="untimed training steps before them (GPU 10, CPU 1)")
    p.add_argument("--workers", type=int, default=max(1, usable_cores() - 1), help="baseline DataLoader workers")
    p.add_argument("--val-fraction", type=float, default=0.05, help="images per class fit holds out (data.split=image)")
    p.add_argument(
        "--compile",
        default="auto",
        choices=("auto", "on", "off"),
        help="also time train.compile=true (auto: on CUDA only)",
    )
    p.add_argument("--embed-batch", type=int, help="core.embedder.embed_all batch (GPU 1024, CPU 256)")
    p.add_argument(
        "--repeats", type=int, help="timed repeats for embed, roc, search (GPU 5, CPU 3); the median is reported"
    )
    p.add_argument("--roc-sizes", help="comma list of score counts (GPU 1e7,1e8; CPU 1e6,1e7)")
    p.add_argument("--search-probes", type=int, help="GPU 1e4, CPU 1e3")
    p.add_argument("--search-gallery", type=int, help="GPU 1e6, CPU 1e5")
    p.add_argument("--search-dtype", choices=("bf16", "fp32"), help="gallery dtype (GPU bf16, CPU fp32)")
    p.add_argument("--search-chunk", type=int, default=256, help="probes per matmul chunk, both paths")
    p.add_argument("--scale-gallery", type=int, help="scale: gallery embeddings (GPU 1e6, CPU 1e5)")
    p.add_argument("--scale-probes", type=int, help="scale: probe embeddings (GPU 1e5, CPU 2e3)")
    p.add_argument("--scale-pairs-images", type=int, help="scale: images whose all pairs are scored (GPU 1e5, CPU 5e3)")
    p.add_argument("--scale-embed-images", type=int, help="scale: synthetic images embedded (GPU 1e5, CPU 48)")
    p.add_argument("--scale-res", type=int, default=112, help="scale: image side for the embedding figure")
    p.add_argument("--scale-topk", type=int, default=10, help="scale: k of the top-k search")
    p.add_argument(
        "--scale-budget-mib", type=float, help="scale: exact search memory budget (default: core.search.default_budget)"
    )
    p.add_argument("--audit-images", type=int, default=100_000, help="audit: synthetic images audited (issue: 1e5)")
    p.add_argument(
        "--audit-baseline-images",
        type=int,
        default=3_000,
        help="audit: images the scikit-learn + cleanlab baseline and ours both audit, for the ratio",
    )
    p.add_argument("--load-viewers", type=int, default=20, help="dashboard_load: viewers opening Verification at once")
    p.add_argument("--load-rounds", type=int, default=3, help="dashboard_load: rounds of concurrent viewers")
    p.add_argument(
        "--threads-batch", type=int, default=64, help="cpu_threads, cpu_train: images per train step / forward"
    )
    p.add_argument(
        "--threads-warmup",
        type=int,
        default=1,
        help="cpu_threads, cpu_train: untimed steps per child (setting) and task",
    )
    p.add_argument(
        "--threads-repeats",
        type=int,
        default=5,
        help="cpu_threads, cpu_train: timed steps per child (setting) and task",
    )
    p.add_argument(
        "--threads-rounds",
        type=int,
        default=1,
        help="cpu_threads, cpu_train: rounds (fresh children / models) per setting",
    )
    p.add_argument(
        "--threads-conditions",
        default="as_is,one_core_busy",
        help="cpu_threads: comma list of machine conditions (as_is, one_core_busy)",
    )
    p.add_argument("--eval-pairs", type=int, default=6000, help="evaluate: protocol-style pairs scored (issue 17: 6k)")
    p.add_argument("--infer-images", type=int, default=256, help="infer: images embedded per inference option")
    p.add_argument("--infer-compile", action="store_true", help="infer: also time torch.compile (minutes on a CPU)")
    p.add_argument(
        "--infer-run", help="infer: a trained run folder to measure (e.g. checkpoints/faces_cfp) instead of --model"
    )
    p.add_argument(
        "--infer-default-images",
        type=int,
        default=0,
        help="infer: also time embed_all of this many images (the infer images repeated) with core's CPU "
        "default (auto, export included) against torch; 0: skip",
    )
    p.add_argument(
        "--infer-bf16",
        action="store_true",
        help="infer: time bf16 autocast even on a CPU without native bf16 (emulated: slow)",
    )
    p.add_argument(
        "--gpu-checklist",
        action="store_true",
        help="run every GPU measurement of issues 5 and 7 (ROC 1e8, search 1e4 x 1e6, train 64/112 px with "
        "MFU, extraction, scale) in this process into one JSON under --out (bench/checklist.py)",
    )
    p.add_argument("--checklist-res", default="64,112", help="gpu-checklist: train/embed resolutions")
    p.add_argument(
        "--time-budget",
        type=float,
        default=420.0,
        help="gpu-checklist: seconds after which no new step starts (the device tool allows 10 minutes)",
    )
    p.add_argument("--bootstrap-scores", type=float, default=1e6, help="bootstrap: pair scores (issue 13: 1e6)")
    p.add_argument("--bootstrap-replicates", type=int, default=1000, help="bootstrap: replicates, both paths (1000)")
    p.add_argument("--bootstrap-identities", type=int, default=2000, help="bootstrap: identities the pairs come from")
    p.add_argument(
        "--bootstrap-baseline-replicates",
        type=int,
        help="bootstrap: re-sorts the baseline times (default: all replicates); fewer are scaled up to "
        "all, and said so, when a busy CPU makes 1000 re-sorts of 1e6 scores take minutes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="scratch folder (synthetic data is reused there); default: a temporary one")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON files and results.csv")
    return p


def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, torch.device]:
    from core.run import resolve_device

    device = resolve_device(args.device)
    args.scale_reduced = {}  # scale sizes a CPU run lowered from the issue's: name -> (used, GPU size)
    for key, value in DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            if key in SCALE_SIZES and value != SCALE_SIZES[key][0]:
                args.scale_reduced[key.removeprefix("scale_").replace("_", " ")] = (value, SCALE_SIZES[key][0])
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise SystemExit(f"error: unknown suite {unknown[0] if unknown else '(none)'}; valid: {', '.join(ORDER)}")
    args.suites = [s for s in ORDER if s in suites]
    return args, device


def _res(r: SuiteResult, args: argparse.Namespace) -> int:
    """The resolution a suite ran at (scale embeds at --scale-res, not --res)."""
    return r.conditions.get("res", args.res)


def result_name(r: SuiteResult, args: argparse.Namespace, device: torch.device) -> str:
    return f"{r.suite}-{args.model}-{_res(r, args)}px-{r.precision}-torch{torch_version()}-{device_slug(device)}.json"


def write_result(
    r: SuiteResult | None,
    suite: str,
    *,
    error: str | None,
    args: argparse.Namespace,
    device: torch.device,
    command: str,
    provenance: dict,
    ctx: Context,
    out: Path,
) -> Path:
    """One JSON per suite (named by its conditions) and its figures appended to results.csv."""
    out.mkdir(parents=True, exist_ok=True)
    r = r or SuiteResult(suite, "error", repeats=0)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    doc = {
        "suite": suite,
        "created": created,
        "command": command,
        "device": device_name(device),
        "precision": r.precision,
        "repeats": r.repeats,
        "figures": r.figures,
        "checks": r.checks,
        "conditions": r.conditions,
        "notes": r.notes,
        "error": error,
        "settings": {k: v for k, v in vars(args).items() if k not in ("suite",)},
        "dataset": {
            "folder": str(ctx.folder) if ctx.folder else None,
            "synthetic": not args.data,
            "write_s": ctx.folder_make_s,
        },
        **provenance,
    }
    path = out / result_name(r, args, device)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    table = out / "results.csv"
    new = not table.exists()
    with table.open("a", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        if new:
            w.writeheader()
        for name, fig in r.figures.items():
            w.writerow(
                {
                    "created": created,
                    "suite": suite,
                    "figure": name,
                    "value": fig["value"],
                    "unit": fig["unit"],
                    "model": args.model,
                    "res": _res(r, args),
                    "precision": r.precision,
                    "device": device_slug(device),
                    "torch": torch.__version__,
                    "command": command,
                    "json": path.name,
                }
            )
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def print_table(results: list[tuple[str, SuiteResult | None, str | None]], device: torch.device) -> None:
    print(
        f"\nMatchLab bench on {device_name(device)}, torch {torch.__version__}"
        + ("  [CPU figures: not GPU numbers]" if device.type == "cpu" else "")
    )
    for _, r, _ in results:
        if r is not None and r.banner:
            print(r.banner)
    rows = [("suite", "figure", "value", "unit")]
    for suite, r, error in results:
        if error:
            rows.append((suite, "ERROR", error.splitlines()[-1][:80], ""))
            continue
        for name, fig in r.figures.items():
            rows.append((suite, name, _fmt(fig["value"]), fig["unit"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parsed = build_parser().parse_args(argv)
    explicit = {k for k, v in vars(parsed).items() if v is not None}  # what the command line set (sizes default None)
    args, device = resolve(parsed)
    command = "python -m bench.run " + shlex.join(argv)
    provenance = describe(device)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="matchlab-bench-") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache_dir = work / "cache"
        # fit finds its cache through this variable: the run's private cache, never ./.matchlab_cache.
        saved = os.environ.get("MATCHLAB_CACHE_DIR")
        os.environ["MATCHLAB_CACHE_DIR"] = str(cache_dir)
        ctx = Context(args, device, work, cache_dir)
        results = []
        try:
            if args.gpu_checklist:
                return run_checklist(args, device, command, provenance, out, explicit, work)
            for suite in args.suites:
                print(f"[bench] {suite} on {device_name(device)}", file=sys.stderr, flush=True)
                load_start = os.getloadavg()  # a shared machine's other work shows here, per suite
                try:
                    r, error = SUITES[suite](ctx), None
                except Exception as e:  # noqa: BLE001 - one suite's failure must not lose the others' figures
                    traceback.print_exc()
                    r, error = None, f"{type(e).__name__}: {e}"
                load = {
                    "start_1_5_15m": list(load_start),
                    "end_1_5_15m": list(os.getloadavg()),
                    "cores_usable": provenance["hardware"]["cpu_cores_usable"],
                }
                path = write_result(
                    r,
                    suite,
                    error=error,
                    args=args,
                    device=device,
                    command=command,
                    provenance={**provenance, "load_average": load},
                    ctx=ctx,
                    out=out,
                )
                print(f"[bench] wrote {path}", file=sys.stderr, flush=True)
                results.append((suite, r, error))
        finally:
            if saved is None:
                os.environ.pop("MATCHLAB_CACHE_DIR", None)
            else:
                os.environ["MATCHLAB_CACHE_DIR"] = saved
    print_table(results, device)
    return 1 if any(e for _, _, e in results) else 0


if __name__ == "__main__":  # the decode pool and the JPEG writer use forkserver: workers re-import this module
    sys.exit(main())
