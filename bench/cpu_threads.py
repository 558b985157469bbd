"""Bench suite `cpu_threads`: OpenMP's default spin-waiting against OMP_WAIT_POLICY=PASSIVE on the CPU.

Entry point: `suite_cpu_threads(ctx)` (registered in bench.suites.SUITES; `python -m bench.run --suite
cpu_threads`). core/__init__.py sets OMP_WAIT_POLICY=PASSIVE; this checks that the choice pays. libgomp reads
the variable once, when torch loads it, so each policy runs in a fresh `python -m bench.cpu_threads` child
(variable removed, or PASSIVE), timing train steps and eval forwards of the faces_cfp recipe's model, with the
machine as it is and with one core kept busy by a busy-loop process the suite starts and always kills.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch  # before any `core` import: torch loads libgomp, which reads OMP_WAIT_POLICY now, not later

ROOT = Path(__file__).resolve().parents[1]
if TYPE_CHECKING:  # bench.suites is imported late at run time: see the torch import above
    from bench.suites import Context, SuiteResult

RECIPE = ROOT / "configs" / "faces_cfp.yaml"
# CFP's 500 identities less the recipe's 10% validation and 10% test identities: the head the recipe trains.
RECIPE_CLASSES = 400
POLICIES = {"default": None, "passive": "PASSIVE"}  # None: the variable removed (libgomp's own default)
CONDITIONS = ("as_is", "one_core_busy")


def recipe_steps(
    batch: int, res: int, *, channels_last: bool = False, bf16: bool = False
) -> dict[str, Callable[[], None]]:
    """One train step, one eval forward and the first loss of the faces_cfp recipe's model on synthetic
    tensors (a throughput figure: decoding is not what these settings change). Model, loss, optimiser and
    step are core's own; channels_last: NHWC model and input; bf16: the step's forward under CPU autocast."""
    from contextlib import nullcontext

    from core.config import load_config
    from core.losses import create_loss
    from core.train import TrainStep, build_model, make_optimizer

    torch.manual_seed(0)
    cfg = load_config(RECIPE)
    loss_fn = create_loss(
        cfg.loss.name, num_classes=RECIPE_CLASSES, embedding_dim=cfg.model.embedding_dim, **dict(cfg.loss.kwargs)
    )
    model, _ = build_model(cfg, RECIPE_CLASSES, getattr(loss_fn, "needs_head", False))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step = TrainStep(model, loss_fn, pair=False)
    opt = make_optimizer(cfg, list(step.named_parameters()), fused=False)
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=fmt)
    y = torch.randint(0, RECIPE_CLASSES, (batch,))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    # image models are EmbeddingNets: forward_features is a method nn.Module's typing cannot see
    features = cast(Callable[..., torch.Tensor], model.forward_features)

    def train() -> None:
        step.train()
        with autocast():
            terms, _ = step(x, y)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    def infer() -> None:
        step.eval()
        with torch.no_grad(), autocast():
            features(x)

    def loss() -> float:  # the untrained model's training loss: what a setting must not change
        step.train()
        with torch.no_grad(), autocast():
            return float(step(x, y)[0]["total"])

    return {"train": train, "infer": infer, "loss": loss}


def time_calls(fn: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones (allocator, oneDNN primitive caches,
    OpenMP pool start-up)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _measure(batch: int, res: int, warmup: int, repeats: int) -> dict:
    """In the child: seconds of each timed train step and eval forward (recipe_steps, fp32)."""
    steps = recipe_steps(batch, res)
    return {f"{task}_s": time_calls(steps[task], warmup, repeats) for task in ("train", "infer")}


def _child(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    seen = os.environ.get("OMP_WAIT_POLICY")  # what libgomp read when torch loaded it, above
    result = _measure(spec["batch"], spec["res"], spec["warmup"], spec["repeats"])
    result.update(omp_wait_policy_at_torch_load=seen, torch_threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(policy: str, *, spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_WAIT_POLICY", None)  # the parent imported core, which set it
    value = POLICIES[policy]
    if value is not None:
        env["OMP_WAIT_POLICY"] = value
    p = subprocess.run(
        [sys.executable, "-m", "bench.cpu_threads", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"{policy} child failed (rc {p.returncode}): {p.stderr[-500:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["omp_wait_policy_at_torch_load"] == POLICIES[policy], result  # the child ran the policy asked
    return result


def suite_cpu_threads(ctx: Context) -> SuiteResult:
    from bench.suites import SuiteResult, _log

    a = ctx.args
    spec = {"batch": a.threads_batch, "res": a.res, "warmup": a.threads_warmup, "repeats": a.threads_repeats}
    r = SuiteResult("cpu_threads", "fp32", repeats=a.threads_repeats * a.threads_rounds)
    times: dict[tuple[str, str, str], list[float]] = {}
    loads: dict[str, list[float]] = {}
    threads = set()
    conditions = [c for c in CONDITIONS if c in a.threads_conditions.split(",")]
    assert conditions, f"--threads-conditions {a.threads_conditions!r}: use some of {', '.join(CONDITIONS)}"
    for c, condition in enumerate(conditions):
        busy = None
        if condition == "one_core_busy":  # what a browser, the dashboard server or another CI job does
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for k in range(a.threads_rounds):
                # Alternate which policy goes first, so a drift in the machine's other load favours neither.
                order = list(POLICIES) if (c + k) % 2 == 0 else list(POLICIES)[::-1]
                for policy in order:
                    _log(f"cpu_threads: {condition}, OMP_WAIT_POLICY {policy}, round {k + 1}/{a.threads_rounds}")
                    res = _run_child(policy, spec=spec, timeout=600)
                    threads.add(res["torch_threads"])
                    for task in ("train", "infer"):
                        times.setdefault((condition, policy, task), []).extend(res[f"{task}_s"])
            loads[condition] = [round(x, 2) for x in os.getloadavg()]
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    for condition in conditions:
        for task in ("train", "infer"):
            ips = {p: a.threads_batch / float(np.median(times[(condition, p, task)])) for p in POLICIES}
            for p in POLICIES:
                r.add(
                    f"{task}_{condition}_{p}_img_per_s",
                    ips[p],
                    "img/s",
                    f"median of {len(times[(condition, p, task)])}",
                )
            r.add(
                f"{task}_{condition}_passive_over_default",
                ips["passive"] / ips["default"],
                "x",
                "images/s with OMP_WAIT_POLICY=PASSIVE / with it unset, same run; > 1: PASSIVE faster",
            )
    r.conditions = {
        "model": "configs/faces_cfp.yaml's model (resnet18_small, width 0.5, strides 2,2,2,1)",
        "res": a.res,
        "batch": a.threads_batch,
        "classes": RECIPE_CLASSES,
        "warmup_steps_untimed": a.threads_warmup,
        "repeats_per_child": a.threads_repeats,
        "rounds": a.threads_rounds,
        "torch_threads": sorted(threads),
        "inputs": "synthetic tensors (throughput only)",
        "train_step": "core.train.TrainStep + the recipe's loss + SGD from make_optimizer",
        "infer_step": "eval forward_features, torch.no_grad",
        "policies": {p: v or "(unset)" for p, v in POLICIES.items()},
        "busy_core": "one `python -c 'while True: pass'` process for the one_core_busy condition",
        "load_average_1_5_15_after": loads,
    }
    r.checks = {"seconds": {"/".join(k): v for k, v in times.items()}}
    return r


if __name__ == "__main__":  # the child: `python -m bench.cpu_threads SPEC_JSON`
    _child(sys.argv[1:])
