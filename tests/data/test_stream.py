"""core.data.stream: residency choice, and batches streamed from a real memmap in order, shut down cleanly."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import core.data.stream as stream_mod
from core.data.stream import StreamingBatches, choose_residency
from core.errors import MatchLabError

N, RES = 300, 8
CPU = torch.device("cpu")


@pytest.fixture
def images(tmp_path) -> np.ndarray:
    """A read-only (N, RES, RES, 3) uint8 memmap whose every row is distinct (row i starts with i's bytes)."""
    data = np.random.default_rng(0).integers(0, 256, (N, RES, RES, 3), dtype=np.uint8)
    data[:, 0, 0, :2] = np.stack([np.arange(N) // 256, np.arange(N) % 256], axis=1)
    np.save(tmp_path / "images.npy", data)
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def _epoch(n: int, sizes: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(n, (s,), generator=g) for s in sizes]


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("subset", [False, True])
def test_batches_are_exactly_the_indexed_rows_in_order(images, workers, subset):
    rows = np.random.default_rng(1).permutation(N)[:200] if subset else None
    n = 200 if subset else N
    # Varying sizes, a short last batch, a 1-image batch, an empty one, and repeats within a batch.
    sizes = [64, 100, 7, 1, 0, 150, 64, 33]
    epoch = _epoch(n, sizes, seed=workers)
    epoch.append(torch.tensor([5, 5, 3, 3, 0, n - 1]))
    epoch.append(torch.arange(n).flip(0)[:80])  # strictly descending
    epoch.append(torch.arange(40, 90))  # already in row order (no un-permute)
    s = StreamingBatches(images, CPU, rows=rows, workers=workers, depth=2)
    got = list(s.batches(epoch))  # kept all at once: no yielded tensor may be refilled later
    assert len(got) == len(epoch)
    for idx, out in zip(epoch, got):
        want = images[rows[idx.numpy()]] if subset else images[idx.numpy()]
        assert out.dtype == torch.uint8 and out.shape == (len(idx), RES, RES, 3) and out.device == CPU
        np.testing.assert_array_equal(out.numpy(), want)
    s.close()


def test_each_task_reads_its_rows_in_ascending_order_and_stays_depth_batches_ahead(images, monkeypatch):
    reads: list[tuple[int, np.ndarray]] = []
    real_take = np.take

    def spying_take(a, indices, *args, **kw):
        if a is images:
            reads.append((threading.get_ident(), np.asarray(indices).copy()))
        return real_take(a, indices, *args, **kw)

    monkeypatch.setattr(stream_mod.np, "take", spying_take)
    epoch = _epoch(N, [128] * 8, seed=3)
    s = StreamingBatches(images, CPU, workers=2, depth=3)
    it = s.batches(epoch)
    first = next(it)
    np.testing.assert_array_equal(first.numpy(), images[epoch[0].numpy()])
    time.sleep(0.2)  # give the pool every chance to read further than it may
    assert all(threading.get_ident() != tid for tid, _ in reads)  # gathered on the pool, not the consumer
    assert all((np.diff(r) >= 0).all() for _, r in reads)
    # Batch 0 was taken, so batches 1..3 may be read (2 tasks each of 64 rows), batch 4 not yet.
    read_rows = sorted(np.concatenate([r for _, r in reads]).tolist())
    assert read_rows == sorted(torch.cat(epoch[:4]).tolist())
    it.close()


class _DoneEvent:
    def synchronize(self) -> None:
        pass


def test_the_device_side_unpermutation_restores_the_batch_order(images):
    """The CUDA path leaves each task's rows ascending in the pinned slot plus `inv`; checked here on host
    tensors, since the index_select on the device is the only part the CUDA test adds."""
    s = StreamingBatches(images, CPU, workers=4, depth=2)
    s._cuda = True  # plan as for CUDA; fake slots stand in for the pinned ones
    s._slots = [
        stream_mod._Slot(
            torch.empty((256, RES, RES, 3), dtype=torch.uint8), torch.empty(256, dtype=torch.int64), _DoneEvent()
        )
        for _ in range(2)
    ]
    with ThreadPoolExecutor(4) as pool:
        for j, rows in enumerate([np.random.default_rng(5).integers(0, N, 200), np.arange(100, 228), np.array([7])]):
            job = s._submit(pool, j, rows)
            assert len(job.futures) == (4 if len(rows) >= 128 else 1)
            for f in job.futures:
                f.result()
            assert job.unpermute == bool((np.diff(rows) < 0).any())
            out = job.out.index_select(0, job.slot.inv[: len(rows)]) if job.unpermute else job.out
            np.testing.assert_array_equal(out.numpy(), images[rows])


def test_breaking_early_leaves_no_threads(images):
    baseline = threading.active_count()
    s = StreamingBatches(images, CPU, workers=4, depth=3)
    for i, _ in enumerate(s.batches(_epoch(N, [32] * 20, seed=4))):
        assert threading.active_count() > baseline  # the pool is really running
        if i == 1:
            break
    assert threading.active_count() == baseline  # joined, not left for the garbage collector
    # The instance is reusable for the next epoch after a break.
    assert len(list(s.batches(_epoch(N, [16] * 3, seed=5)))) == 3
    assert threading.active_count() == baseline  # joined, not left for the garbage collector


def test_an_exception_in_the_consumer_shuts_the_pool_down(images):
    baseline = threading.active_count()
    s = StreamingBatches(images, CPU, workers=4, depth=3)
    with pytest.raises(ZeroDivisionError):
        for i, _ in enumerate(s.batches(_epoch(N, [32] * 20, seed=6))):
            if i == 1:
                raise ZeroDivisionError("the training step failed")
    assert threading.active_count() == baseline  # joined, not left for the garbage collector


def test_close_and_context_manager_stop_a_suspended_iteration(images):
    baseline = threading.active_count()
    with StreamingBatches(images, CPU, workers=3) as s:
        it = s.batches(_epoch(N, [32] * 20, seed=7))  # held in a variable: a break alone would not close it
        next(it)
        assert threading.active_count() > baseline
    assert threading.active_count() == baseline  # joined, not left for the garbage collector
    assert next(it, None) is None  # the iteration was ended, not left half-running
    with pytest.raises(RuntimeError, match="closed"):
        s.batches([torch.arange(3)])


def test_one_iteration_at_a_time(images):
    s = StreamingBatches(images, CPU, workers=2)
    first = s.batches(_epoch(N, [8] * 5, seed=8))
    next(first)
    with pytest.raises(RuntimeError, match="still open"):
        next(s.batches(_epoch(N, [8] * 5, seed=9)))
    first.close()
    assert len(list(s.batches(_epoch(N, [8] * 5, seed=9)))) == 5
    s.close()


def test_bad_indices_and_arguments_fail_before_any_thread_starts(images):
    baseline = threading.active_count()
    s = StreamingBatches(images, CPU, rows=np.arange(10))
    with pytest.raises(IndexError, match=r"batch 1: .*\[0, 10\)"):
        s.batches([torch.arange(5), torch.tensor([3, 10])])
    with pytest.raises(IndexError):
        s.batches([torch.tensor([-1])])
    with pytest.raises(TypeError):
        s.batches([torch.rand(4)])
    assert threading.active_count() == baseline
    with pytest.raises(IndexError):
        StreamingBatches(images, CPU, rows=np.array([0, N]))
    with pytest.raises(MatchLabError, match="workers=0"):
        StreamingBatches(images, CPU, workers=0)
    with pytest.raises(TypeError):
        StreamingBatches(images.astype(np.float32), CPU)


# ---------------------------------------------------------------------------------------------- residency


def test_auto_on_cpu_keeps_a_small_cache_in_ram_and_streams_an_absurd_one():
    mode, reason = choose_residency(15_052_800, CPU)
    assert mode == "device" and "15.1 MB" in reason and "in-RAM copy" in reason and "available host memory" in reason
    mode, reason = choose_residency(int(1e15), CPU)
    assert mode == "stream" and "1,000,000.0 GB" in reason and "memory-mapped" in reason
    assert "\n" not in reason


def test_auto_uses_the_host_memory_it_reads(monkeypatch):
    monkeypatch.setattr(stream_mod, "_available_host_bytes", lambda: 100e9)
    assert choose_residency(49e9, CPU)[0] == "device"
    mode, reason = choose_residency(51e9, CPU)
    assert mode == "stream" and "51.0 GB" in reason and "50% of available host memory is 50.0 GB" in reason
    assert choose_residency(51e9, CPU, budget_fraction=0.6)[0] == "device"
    # Every rank on a host would hold its own in-RAM copy; a streamed file is cached once per node.
    mode, reason = choose_residency(20e9, CPU, world_size=4)
    assert mode == "stream" and "80.0 GB for 4 ranks" in reason and "all 4 ranks read the same file" in reason


def test_meminfo_is_read():
    host = stream_mod._available_host_bytes()
    assert host is not None and host > 0
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(host - kb * 1024) < 0.2 * kb * 1024  # the same figure, give or take other processes


def test_requested_modes_are_honoured_or_refused():
    mode, reason = choose_residency(1000, CPU, requested="stream")
    assert mode == "stream" and reason.startswith("data.residency=stream was requested") and "MB" in reason
    assert choose_residency(1000, CPU, requested="device")[0] == "device"
    with pytest.raises(MatchLabError) as e:
        choose_residency(int(1e15), CPU, requested="device")
    msg = str(e.value)
    assert "data.residency=stream" in msg and "1,000,000.0 GB" in msg and "\n" not in msg
    with pytest.raises(MatchLabError, match="data.residency='gpu'"):
        choose_residency(1000, CPU, requested="gpu")
    with pytest.raises(MatchLabError, match="budget_fraction"):
        choose_residency(1000, CPU, budget_fraction=0)


# -------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_side_stream_path_yields_the_right_tensors(images):
    dev = torch.device("cuda", torch.cuda.current_device())
    rows = np.random.default_rng(2).permutation(N)[:250]
    # Batches bigger than a first epoch's (the pinned ring must grow), sorted and unsorted ones, indices on the GPU.
    small, big = _epoch(250, [16, 8, 3], seed=10), _epoch(250, [120, 200, 1, 77], seed=11)
    big.append(torch.arange(30, 90))
    s = StreamingBatches(images, dev, rows=rows, workers=4, depth=2)
    for epoch in (small, big, [i.to(dev) for i in big]):
        consumer = torch.cuda.Stream(dev)
        got = []
        with torch.cuda.stream(consumer):  # a non-default consumer stream must be the one made to wait
            for out in s.batches(epoch):
                assert out.is_cuda and out.dtype == torch.uint8
                got.append(out.float().sum(dim=(1, 2, 3)))  # work on the consumer stream right away
                got.append(out.clone())
        torch.cuda.synchronize()
        for idx, total, out in zip(epoch, got[::2], got[1::2]):
            want = images[rows[idx.cpu().numpy()]]
            np.testing.assert_array_equal(out.cpu().numpy(), want)
            np.testing.assert_allclose(total.cpu().numpy(), want.reshape(len(want), -1).sum(1, dtype=np.float64))
    assert all(slot.host.is_pinned() and len(slot.host) == 200 for slot in s._slots)
    s.close()
    assert s._slots == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_choose_residency_reads_free_memory():
    dev = torch.device("cuda", torch.cuda.current_device())
    free, _ = torch.cuda.mem_get_info(dev)
    mode, reason = choose_residency(int(0.4 * free), dev)
    assert mode == "device" and f"copying the cache to {dev}" in reason and f"{dev}'s free memory" in reason
    mode, reason = choose_residency(int(0.6 * free), "cuda")
    assert mode == "stream" and "pinned host buffers" in reason and f"{0.5 * free / 1e9:,.1f} GB" in reason
