"""`python -m bench.run --gpu-checklist --out DIR`: every GPU measurement issues #5 and #7 asked for, in one
process, at reduced but meaningful sizes, into ONE JSON (issue 17).

Entry point: `run_checklist(args, device, command, provenance, out) -> int`. Steps, cheapest and most
asked-for first: ROC at 1e7 and 1e8 scores, search 1e4 x 1e6 (bf16), train at 64 px baseline vs ours
with MFU plus extraction from that run, the same at 112 px, and the NCCL-free parts of `scale` (exact
search in a 1e6 memmap gallery, all pairs, extraction). A step that would start after `--time-budget`
seconds is recorded as skipped, so the file always comes back within the device tool's limit. On a
CPU (`--device cpu`, tiny sizes given on the command line) it runs the same steps, so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.env import device_name, device_slug
from bench.suites import SUITES, Context

# Step name, suite, argument overrides applied on CUDA unless the command line set them (issue sizes
# cut where the full size alone would take minutes: scale probes 1e5 -> 1e4, all-pairs images 1e5 -> 5e4).
GPU_STEPS: list[tuple[str, str, dict]] = [
    ("roc", "roc", {"roc_sizes": "1e7,1e8"}),
    ("search", "search", {"search_probes": 10_000, "search_gallery": 1_000_000, "search_dtype": "bf16"}),
    ("train_{res}", "train", {"images": 20_000, "classes": 500, "batch": 256, "steps": 50, "warmup": 10}),
    ("embed_{res}", "embed", {}),
    (
        "scale",
        "scale",
        {
            "scale_gallery": 1_000_000,
            "scale_probes": 10_000,
            "scale_pairs_images": 50_000,
            "scale_embed_images": 20_000,
        },
    ),
]


def steps_for(
    args: argparse.Namespace, device: torch.device, explicit: set[str]
) -> list[tuple[str, str, argparse.Namespace]]:
    """(name, suite, args) per step: the GPU sizes on CUDA where the command line did not set them;
    the train and embed steps once per resolution in --checklist-res."""
    resolutions = [int(r) for r in str(args.checklist_res).split(",") if r.strip()]
    fixed = [step for step in GPU_STEPS if "{res}" not in step[0]]
    per_res = [step for step in GPU_STEPS if "{res}" in step[0]]
    # roc and search first, then train + embed at each resolution in turn (embed loads the run train
    # just wrote), scale last (the longest)
    order = (
        [(step, args.res) for step in fixed[:-1]]
        + [(step, res) for res in resolutions for step in per_res]
        + [(fixed[-1], args.res)]
    )
    out = []
    for (name, suite, sizes), res in order:
        a = argparse.Namespace(**vars(args))
        a.res = res
        if device.type == "cuda":
            for key, value in sizes.items():
                if key not in explicit:
                    setattr(a, key, value)
        out.append((name.format(res=res), suite, a))
    return out


def run_checklist(
    args: argparse.Namespace,
    device: torch.device,
    command: str,
    provenance: dict,
    out: Path,
    explicit: set[str],
    work: Path,
) -> int:
    """Run every step in this process; write out/gpu-checklist-<device>.json; 1 if a step failed."""
    t0 = time.perf_counter()
    contexts: dict[int, Context] = {}  # one per resolution: train's run folder feeds embed's step
    steps, failed = [], False
    for name, suite, a in steps_for(args, device, explicit):
        elapsed = time.perf_counter() - t0
        row = {"step": name, "suite": suite, "started_s": round(elapsed, 1), "res": a.res}
        if elapsed > args.time_budget:
            row["skipped"] = f"time budget of {args.time_budget:.0f} s spent before this step"
            steps.append(row)
            continue
        ctx = contexts.setdefault(a.res, Context(a, device, work / f"res{a.res}", work / f"res{a.res}" / "cache"))
        ctx.args = a
        print(f"[checklist] {name} ({suite}) on {device_name(device)}", flush=True)
        load = os.getloadavg()
        try:
            r = SUITES[suite](ctx)
            row.update(
                precision=r.precision,
                repeats=r.repeats,
                figures=r.figures,
                checks=r.checks,
                conditions=r.conditions,
                notes=r.notes,
                error=None,
            )
        except Exception as e:  # noqa: BLE001 - one step's failure must not lose the other figures
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"
            failed = True
        row["seconds"] = round(time.perf_counter() - t0 - elapsed, 2)
        row["load_average"] = {"start_1_5_15m": list(load), "end_1_5_15m": list(os.getloadavg())}
        steps.append(row)
    doc = {
        "checklist": "gpu",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": device_name(device),
        "total_s": round(time.perf_counter() - t0, 1),
        "time_budget_s": args.time_budget,
        "steps": steps,
        **provenance,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-checklist-{device_slug(device)}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"[checklist] wrote {path} ({doc['total_s']} s)", flush=True)
    for row in steps:
        state = row.get("skipped") or row.get("error") or f"{row['seconds']} s, {len(row['figures'])} figures"
        print(f"  {row['step']:<12} {state}")
    return 1 if failed else 0
