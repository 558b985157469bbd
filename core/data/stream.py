"""Stream training batches from the memory-mapped uint8 cache when it does not fit on the device.

Entry points: `choose_residency(n_bytes, device)` -> ("device" | "stream", reason) and
`StreamingBatches(images, device, rows).batches(epoch_batches)`. The trainer normally copies the whole
(N, res, res, 3) cache to the device and indexes batches there; a VGGFace2-sized set (3e6 images at
112 px is 113 GB) fits in no GPU, so batches are instead gathered from the memmap (the OS page cache,
else the disk) by a thread pool, `depth` batches ahead of the training step, and copied up while the
previous step computes.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import cast

import numpy as np
import torch

from core.errors import MatchLabError

RESIDENCY = ("auto", "device", "stream")
# Below this many rows per task, handing a batch to several threads costs more than the copy saves.
_MIN_ROWS_PER_TASK = 32


# ---------------------------------------------------------------------------------------------- choosing


def choose_residency(
    n_bytes: int, device: torch.device | str, world_size: int = 1, requested: str = "auto", budget_fraction: float = 0.5
) -> tuple[str, str]:
    """-> (mode, reason): "device" (copy the cache to the device) or "stream" (read batches from the memmap).

    On CUDA the budget is `budget_fraction` of the device's free memory (each rank has its own GPU).
    Elsewhere "device" means an in-RAM copy, budgeted against `budget_fraction` of available host
    memory; with world_size > 1 every rank on a host would hold its own copy, so the need is counted
    world_size times (an upper bound when ranks span nodes). A streamed file is held once per node by
    the page cache however many ranks read it. requested "device" when the cache does not fit raises
    MatchLabError; reason is one sentence with the sizes, for the run log.
    """
    if requested not in RESIDENCY:
        raise MatchLabError(f"data.residency={requested!r} is not valid: use one of {', '.join(RESIDENCY)}")
    if not 0 < budget_fraction <= 1:
        raise MatchLabError(f"budget_fraction={budget_fraction} must be in (0, 1]")
    if n_bytes < 0 or world_size < 1:
        raise ValueError(f"n_bytes={n_bytes} must be >= 0 and world_size={world_size} >= 1")
    device = _normalise(torch.device(device))
    cuda = device.type == "cuda"
    if cuda:
        free, _ = torch.cuda.mem_get_info(device)
        budget, where = budget_fraction * free, f"{device}'s free memory"
    else:
        available = _available_host_bytes()
        budget, where = budget_fraction * (available or 0), "available host memory"
        if available is None:
            where += " (unreadable, taken as 0)"
    need = n_bytes if cuda else n_bytes * world_size
    fits = need <= budget
    size = f"the uint8 cache is {_size(n_bytes)}"
    if need != n_bytes:
        size += f" ({_size(need)} for {world_size} ranks' copies)"
    sizes = f"{size} and {budget_fraction:.0%} of {where} is {_size(budget)}"
    if requested == "device" and not fits:
        raise MatchLabError(
            f"data.residency=device but {sizes}, so it does not fit: "
            "set data.residency=stream (or auto) to stream batches from the memory-mapped cache"
        )
    mode = requested if requested != "auto" else ("device" if fits else "stream")
    if mode == "stream":
        action = (
            "streaming batches from the memory-mapped cache through pinned host buffers"
            if cuda
            else "reading batches straight from the memory-mapped cache"
        )
        if world_size > 1:
            action += f"; all {world_size} ranks read the same file, which the OS page cache holds once per node"
    else:
        action = f"copying the cache to {device}" if cuda else "holding an in-RAM copy of the cache"
        if world_size > 1 and cuda:
            action += f", one copy on each of the {world_size} ranks' GPUs"
    prefix = "" if requested == "auto" else f"data.residency={requested} was requested; "
    return mode, f"{prefix}{sizes}: {action}"


def _normalise(device: torch.device) -> torch.device:
    """cuda -> cuda:<current index>, so messages and streams name one device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _available_host_bytes() -> int | None:
    """MemAvailable (free plus reclaimable page cache) from /proc/meminfo, else sysconf's free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    # GB as the run log speaks of it; a demo-sized cache in MB rather than a useless "0.0 GB".
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


# --------------------------------------------------------------------------------------------- streaming


@dataclass
class _Slot:
    """One pinned staging buffer; `copied` is recorded on the side stream after its last upload."""

    host: torch.Tensor  # (capacity, H, W, 3) uint8, pinned
    inv: torch.Tensor  # (capacity,) int64, pinned: the un-permutation of a batch read in row order
    copied: torch.cuda.Event


@dataclass
class _Job:
    out: torch.Tensor  # the filled host tensor: a slot's pinned buffer (CUDA) or a fresh tensor
    futures: list[Future]
    unpermute: bool  # CUDA: out holds each task's rows in ascending order; slot.inv restores the batch order
    slot: _Slot | None


class StreamingBatches:
    """Gather batches of a (N, H, W, 3) uint8 memmap ahead of the consumer and deliver them on `device`.

    Why: the cache does not fit in device memory (see choose_residency), so each step's images are
    read from the memmap instead of indexed on the device. What overlaps: worker threads gather
    upcoming batches from the page cache or disk (numpy releases the GIL for the copy; each task reads
    its rows in ascending order, which suits the disk's read-ahead) || on CUDA, the host-to-device copy
    of the next batch runs on a side stream || the model computes on the consumer's stream. Memory:
    on CUDA, `depth` pinned buffers of the largest batch (depth x max batch bytes; 3 x 256 images at
    112 px is 29 MB), kept across epochs until close(), plus two batches on the device while one is
    un-permuted. On CPU each batch is gathered into a fresh tensor and yielded as is (a consumer may
    keep it), at most `depth` of them ahead.

    rows maps the caller's index space into memmap rows (a training split is a subset of the cache,
    never copied). Use one `batches` iteration at a time; one left suspended (a generator held in a
    variable) keeps its threads until it is closed, collected, or close() is called.
    """

    def __init__(
        self,
        images: np.ndarray,
        device: torch.device | str,
        rows: np.ndarray | None = None,
        workers: int = 4,
        depth: int = 3,
    ):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim < 2:
            raise TypeError(f"images must be a (N, H, W, 3) uint8 numpy array, got {type(images).__name__}")
        for name, v in (("workers", workers), ("depth", depth)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise MatchLabError(f"{name}={v} must be a positive integer")
        self.images = images
        self.device = _normalise(torch.device(device))
        self.workers, self.depth = int(workers), int(depth)
        if rows is not None:
            rows = np.asarray(rows)
            if rows.ndim != 1 or rows.dtype.kind not in "iu":
                raise TypeError(f"rows must be a 1-D integer array, got {rows.dtype} of shape {rows.shape}")
            if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
                raise IndexError(f"rows must lie in [0, {len(images)}), the cache's rows")
            rows = rows.astype(np.int64, copy=False)
        self.rows = rows
        self._cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if self._cuda else None
        self._slots: list[_Slot] = []
        self._running = False
        self._gen: weakref.ref | None = None
        self._closed = False

    def __len__(self) -> int:
        """Size of the caller's index space."""
        return len(self.rows) if self.rows is not None else len(self.images)

    def batches(self, batch_indices: Iterable[torch.Tensor]) -> Generator[torch.Tensor, None, None]:
        """Yield, in order, (B, H, W, 3) uint8 tensors on the device: images[rows[idx]] for each idx.

        batch_indices: the epoch's index tensors (int, CPU or device; one host copy of them is taken
        here, so device indices cost one sync each up front, none per step). Bad indices raise here.
        """
        if self._closed:
            raise RuntimeError("this StreamingBatches is closed")
        plan = [self._rows_of(i, idx) for i, idx in enumerate(batch_indices)]
        gen = self._stream(plan)
        if not self._running:  # close() must reach the iteration that holds the threads, not a refused one
            self._gen = weakref.ref(gen)
        return gen

    def close(self) -> None:
        """Stop a running iteration (its threads are joined) and release the pinned buffers."""
        gen = self._gen() if self._gen is not None else None
        if gen is not None:
            gen.close()
        self._release_slots()
        self._closed = True

    def __enter__(self) -> StreamingBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- internals

    def _rows_of(self, i: int, idx) -> np.ndarray:
        """One batch's index tensor -> its memmap rows (int64, host), after a bounds check."""
        if isinstance(idx, torch.Tensor):
            idx = idx.detach().to("cpu").numpy()
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.dtype.kind not in "iu" and idx.size):
            raise TypeError(f"batch {i}: indices must be a 1-D integer tensor, got {idx.dtype} of shape {idx.shape}")
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"batch {i}: indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
        idx = idx.astype(np.int64, copy=False)
        return self.rows[idx] if self.rows is not None else idx

    def _stream(self, plan: list[np.ndarray]) -> Generator[torch.Tensor, None, None]:
        if self._running:
            raise RuntimeError("another batches() iteration of this StreamingBatches is still open: finish or close it")
        self._running = True
        pool = None
        try:
            if self._cuda:
                self._ensure_slots(max((len(r) for r in plan), default=0))
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="matchlab-stream")
            pending = deque(self._submit(pool, j, plan[j]) for j in range(min(self.depth, len(plan))))
            for j in range(len(plan)):
                job = pending.popleft()
                for f in job.futures:
                    f.result()  # re-raises a worker's error here, in the consumer
                out = self._deliver(job)
                # Only now may batch j + depth take this batch's slot: its upload is queued behind `copied`.
                if j + self.depth < len(plan):
                    pending.append(self._submit(pool, j + self.depth, plan[j + self.depth]))
                yield out
        finally:
            if pool is not None:
                # break, an exception in the consumer, close(): drop queued reads, join the running ones.
                pool.shutdown(wait=True, cancel_futures=True)
            self._running = False

    def _submit(self, pool: ThreadPoolExecutor, j: int, rows: np.ndarray) -> _Job:
        b = len(rows)
        slot = self._slots[j % self.depth] if self._cuda else None
        if slot is not None:
            out, inv, wait = slot.host[:b], slot.inv[:b].numpy(), slot.copied
        else:
            out, inv, wait = torch.empty((b, *self.images.shape[1:]), dtype=torch.uint8), None, None
        unpermute = inv is not None and bool((np.diff(rows) < 0).any())
        dst = out.numpy()
        bounds = np.linspace(0, b, max(1, min(self.workers, b // _MIN_ROWS_PER_TASK)) + 1).astype(int)
        # unpermute implies inv (a CUDA slot's); the explicit test is for the type checker
        futures = [
            pool.submit(
                self._fill, dst[lo:hi], rows[lo:hi], inv[lo:hi] if unpermute and inv is not None else None, lo, wait
            )
            for lo, hi in pairwise(bounds.tolist())
        ]
        return _Job(out, futures, unpermute, slot)

    def _fill(
        self, dst: np.ndarray, rows: np.ndarray, inv: np.ndarray | None, base: int, wait: torch.cuda.Event | None
    ) -> None:
        """Worker: dst[k] = images[rows[k]], reading the rows in ascending order.

        inv None: the result lands in rows' order (un-permuted on the host if the rows were not sorted).
        inv given (CUDA): dst is left in ascending-row order and inv[k] = base + (position of rows[k] in
        dst), so the device restores the order with one index_select instead of a second host copy.
        """
        if wait is not None:
            wait.synchronize()  # the slot's previous upload must be done before it is overwritten
        if len(rows) < 2 or not (np.diff(rows) < 0).any():
            np.take(self.images, rows, axis=0, out=dst, mode="clip")  # bounds checked in _rows_of
            if inv is not None:
                inv[:] = np.arange(base, base + len(rows))
            return
        order = np.argsort(rows, kind="stable")
        if inv is not None:
            np.take(self.images, rows[order], axis=0, out=dst, mode="clip")
            inv[order] = np.arange(base, base + len(rows))
        else:
            # Two takes, not dst[order] = ...: numpy holds the GIL for a fancy-index assignment.
            in_row_order = np.take(self.images, rows[order], axis=0, mode="clip")
            np.take(in_row_order, np.argsort(order), axis=0, out=dst, mode="clip")

    def _deliver(self, job: _Job) -> torch.Tensor:
        if not self._cuda:
            return job.out if self.device.type == "cpu" else job.out.to(self.device)
        consumer = torch.cuda.current_stream(self.device)
        slot = cast(_Slot, job.slot)  # every CUDA job holds a pinned slot
        with torch.cuda.stream(self._side):
            out = job.out.to(self.device, non_blocking=True)
            if job.unpermute:
                out = out.index_select(0, slot.inv[: len(out)].to(self.device, non_blocking=True))
            slot.copied.record(self._side)
        consumer.wait_event(slot.copied)
        # Allocated on the side stream but used on the consumer's: keep the allocator from handing the
        # memory out again before the consumer's work on it has run.
        out.record_stream(consumer)
        return out

    def _ensure_slots(self, capacity: int) -> None:
        if self._slots and len(self._slots[0].host) >= capacity:
            return
        self._release_slots()
        shape = (max(capacity, 1), *self.images.shape[1:])
        self._slots = [
            _Slot(
                torch.empty(shape, dtype=torch.uint8, pin_memory=True),
                torch.empty(shape[0], dtype=torch.int64, pin_memory=True),
                torch.cuda.Event(),
            )
            for _ in range(self.depth)
        ]

    def _release_slots(self) -> None:
        for slot in self._slots:
            slot.copied.synchronize()  # no upload may still read a buffer that is given back
        self._slots = []
