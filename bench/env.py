"""Provenance and clocks for the benchmark: what machine, which versions, how long.

`describe(device)` -> hardware and version dicts written beside every figure; `Clock` times device
work (CUDA events on a GPU, so the timed region has no host sync; perf_counter on a CPU);
`device_slug(device)` names result files by the machine they were measured on.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """`with Clock(device) as c: ...` then `c.seconds`. On CUDA the queue is drained before the start
    event so earlier work is not billed, and once after the end event (the only sync)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> Clock:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def repeat_timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn after `warmup` untimed calls (allocator, cuBLAS plans)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with Clock(device) as c:
            fn()
        times.append(c.seconds)
    return times


def summary(times: list[float]) -> dict:
    """median / min / max seconds of repeated timings (the median is the figure reported)."""
    t = np.asarray(times, dtype=np.float64)
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()), "repeats": len(times)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def native_bf16() -> bool:
    """Whether this CPU executes bf16 natively (Linux's flags avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def usable_cores() -> int:
    """Cores this process may run on (a container's affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_slug(device: torch.device) -> str:
    """'nvidia-h100-80gb-hbm3' or 'cpu-amd-epyc-2c': the machine a result file was measured on."""
    if device.type == "cuda":
        return _slug(torch.cuda.get_device_name(device))
    return f"cpu-{_slug(_cpu_model())}-{usable_cores()}c"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()} ({usable_cores()} cores)"


def torch_version() -> str:
    return torch.__version__.split("+")[0]


def _git() -> dict:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": run("rev-parse", "HEAD") or None,
        "dirty": bool(run("status", "--porcelain", "--", "core", "bench")),
    }


def describe(device: torch.device) -> dict:
    """Hardware, versions and git state of this run, for the JSON beside every figure."""
    import PIL
    import torchvision

    hw = {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": _cpu_model(),
        "cpu_cores_usable": usable_cores(),
        "cpu_count_host": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        hw["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        # The load before the run: a shared machine's other work shows up here, and in the figures.
        hw["load_average_1m_at_start"] = os.getloadavg()[0]
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_sms=props.multi_processor_count,
        )
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    return {"hardware": hw, "versions": versions, "git": _git()}
