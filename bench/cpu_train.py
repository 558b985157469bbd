"""Bench suite `cpu_train`: the face recipe's training step on the CPU, eager fp32 against the other settings.

Entry point: `suite_cpu_train(ctx)` (registered in bench.suites.SUITES; `python -m bench.run --suite cpu_train
--device cpu`). Settings timed in one process on synthetic tensors, each on its own freshly built model
(bench.cpu_threads.recipe_steps): eager fp32 (the baseline), channels_last, bf16 autocast, and both. The order
rotates every round, so a drift in the machine's other load favours none of them. bf16 is timed only where
the CPU has native bf16 instructions (AVX512_BF16 or AMX); elsewhere oneDNN emulates it, about 10x slower.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.cpu_threads import RECIPE_CLASSES, recipe_steps, time_calls
from bench.env import native_bf16

if TYPE_CHECKING:
    from bench.suites import Context, SuiteResult

SETTINGS = {  # name -> (channels_last, bf16)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "channels_last_bf16": (True, True),
}


def suite_cpu_train(ctx: Context) -> SuiteResult:
    from bench.suites import SuiteResult, _log

    a = ctx.args
    settings = [s for s in SETTINGS if native_bf16() or not SETTINGS[s][1]]
    r = SuiteResult("cpu_train", "fp32-bf16", repeats=a.threads_repeats * a.threads_rounds)
    times: dict[tuple[str, str], list[float]] = {}
    losses: dict[str, float] = {}
    for k in range(a.threads_rounds):
        order = settings[k % len(settings) :] + settings[: k % len(settings)]
        for name in order:
            _log(f"cpu_train: {name}, round {k + 1}/{a.threads_rounds}")
            channels_last, bf16 = SETTINGS[name]
            steps = recipe_steps(a.threads_batch, a.res, channels_last=channels_last, bf16=bf16)
            losses.setdefault(name, steps["loss"]())  # same seed, weights and batch in every setting
            for task in ("train", "infer"):
                times.setdefault((name, task), []).extend(time_calls(steps[task], a.threads_warmup, a.threads_repeats))
    for task in ("train", "infer"):
        ips = {s: a.threads_batch / float(np.median(times[(s, task)])) for s in settings}
        for s in settings:
            r.add(f"{task}_{s}_img_per_s", ips[s], "img/s", f"median of {len(times[(s, task)])} steps")
            if s != "fp32":
                r.add(f"{task}_{s}_over_fp32", ips[s] / ips["fp32"], "x", "images/s against eager fp32, same run")
    if len(settings) < len(SETTINGS):
        r.notes.append("no native bf16 on this CPU (avx512_bf16 / amx_bf16): the bf16 settings were not timed")
    r.conditions = {
        "model": "configs/faces_cfp.yaml's model and loss",
        "res": a.res,
        "batch": a.threads_batch,
        "classes": RECIPE_CLASSES,
        "warmup_steps_untimed": a.threads_warmup,
        "repeats_per_round": a.threads_repeats,
        "rounds": a.threads_rounds,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "native_bf16": native_bf16(),
        "inputs": "synthetic tensors (throughput only)",
        "train_step": "core.train.TrainStep forward (under autocast for bf16) + backward + SGD from make_optimizer",
        "infer_step": "eval forward_features, torch.no_grad",
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }
    r.checks = {
        "seconds": {"/".join(k): v for k, v in times.items()},
        # the untrained model's loss on one batch: channels_last is the same arithmetic in another memory
        # order (float noise apart); bf16 rounds every product to 8 bits of mantissa
        "first_loss": losses,
        "first_loss_abs_diff_to_fp32": {s: abs(v - losses["fp32"]) for s, v in losses.items() if s != "fp32"},
    }
    return r
