"""Several processes, one training run: torchrun + torch.distributed, and the few collectives MatchLab needs.

Entry point: `init_from_env(device)` -> `Dist`. Outside torchrun (no WORLD_SIZE > 1 in the environment) it is
a no-op returning a one-process `Dist`, so every caller can use the same code path. Under
`torchrun --nproc_per_node=N -m core train ...` it joins the process group torchrun describes (NCCL on CUDA,
gloo on the CPU) and pins this process to its GPU.

The contract that keeps a run of N processes equal to one process with the same global batch:
- every rank computes the same epoch of global batches (seeded from (seed, epoch)) and takes its contiguous
  slice (`Dist.share`); augmentation randomness is drawn for the whole global batch and sliced the same way;
- per-sample losses are local means and DistributedDataParallel averages their gradients, which equals the
  gradient of the global mean because every slice has the same size; losses that couple the samples of a
  batch (contrastive, triplet mining) see the whole gathered batch (`gather_with_grad`);
- BatchNorm statistics are over the global batch (`sync_batchnorm`): torch's SyncBatchNorm on CUDA, and
  `GlooSyncBatchNorm` on the CPU, where torch's refuses to run;
- only rank 0 writes the run folder; every rank reads last.pt to resume, so any world size resumes any run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from core.errors import MatchLabError

# A rank waits this long in a collective (e.g. while rank 0 validates and writes last.pt) before giving up.
TIMEOUT = timedelta(minutes=30)


class RankStopped(Exception):
    """This process was told to stop (SIGTERM from torchrun because another rank failed, or a cancelled job)."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) when training on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def share(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch of indices (rank r takes rows r*B .. (r+1)*B)."""
        if not self.enabled:
            return global_batch
        per_rank = len(global_batch) // self.world_size
        return global_batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def resume_hint(self, run_dir: Any) -> str:
        launcher = f"torchrun --nproc_per_node={self.world_size} -m core" if self.enabled else "python -m core"
        return f"{run_dir} keeps every finished epoch; continue with: {launcher} train --resume {run_dir}"


_current = Dist()


def block_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s contiguous block of n items: np.array_split sizes (the first n % N ranks
    get one more). Class-centre shards and extraction shards are cut this way."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def current() -> Dist:
    return _current


def init_from_env(device: torch.device) -> Dist:
    """Join torchrun's process group if this process was started by it; returns this process's `Dist`."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return _current
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MatchLabError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                f"lower torchrun --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    _current = Dist(rank, world, local_rank)

    def stop(signum: int, frame: Any) -> None:
        raise RankStopped(f"rank {rank} received signal {signum}")

    # torchrun sends SIGTERM to the surviving ranks when one fails: turn it into a clean, explained exit.
    signal.signal(signal.SIGTERM, stop)
    return _current


def peer_failure(error: RuntimeError) -> str | None:
    """The short reason when `error` is a collective failing because another rank died, else None."""
    text = str(error).strip()
    if not (
        isinstance(error, dist.DistError) or re.search(r"connection|closed by peer|gloo|nccl|timed? ?out", text, re.I)
    ):
        return None
    first = re.sub(
        r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(error).__name__
    )  # drop "[pair.cc:561]"
    return first.split(". ")[0]


def exit_now_if_distributed(code: int) -> None:
    """After a failure under torchrun: exit at once. A normal exit would tear down a process group whose
    peers are gone, which can block until torchrun kills this process."""
    if _current.enabled:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def shutdown() -> None:
    global _current
    if dist.is_initialized():
        # Tear down together: a gloo rank destroying its group while a peer still sends can abort the process.
        dist.barrier()
        dist.destroy_process_group()
    _current = Dist()


def barrier() -> None:
    if _current.enabled:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Each node's local rank 0 runs the block first (e.g. decodes the image cache into that node's cache
    folder); the node's other ranks run it once it has finished, so they find its results instead of
    repeating the work at the same time."""
    first = _current.local_rank == 0
    if _current.enabled and not first:
        dist.barrier()
    yield
    if _current.enabled and first:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a small picklable value: a run name, a metrics row)."""
    if not _current.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returned for chaining)."""
    if _current.enabled:
        dist.all_reduce(t)
    return t


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0, in rank order; gradients flow back to each rank's own rows.

    The backward sums the incoming gradients over ranks. When every rank computes the same global loss from
    the gathered batch, a rank's rows therefore get world_size x d(loss)/d(rows), which DDP's averaging of
    parameter gradients divides back: the update equals one process's on the global batch.
    """
    if not _current.enabled:
        return t
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # its functional-collectives replacement has no autograd on gloo yet
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(t))


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0 (no gradient; e.g. labels)."""
    if not _current.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(_current.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the global batch of all ranks, on any device.

    torch.nn.SyncBatchNorm only runs on GPUs; this one all-reduces (sum, sum of squares, count) in one
    autograd-aware collective, so gradients also flow through the shared statistics exactly as in one
    process. Eval mode uses the running statistics and communicates nothing.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _current.enabled):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*all_reduce is deprecated", category=FutureWarning)
            total = all_reduce(local)
        c = self.num_features
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises with
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        # None only with track_running_stats=False: there are no running statistics to update then
        if tracked is not None and running_mean is not None and running_var is not None:
            with torch.no_grad():
                tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                running_mean.mul_(1 - m).add_(m * mean.detach())
                running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with its global-batch version (torch's on CUDA, ours elsewhere).

    Parameter and buffer names are unchanged, so checkpoints load into the plain model and back.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def log(msg: str) -> None:
    """One line to stderr from rank 0 only (every rank may call it)."""
    if current().is_main:
        print(msg, file=sys.stderr, flush=True)


def check_global_batches(batches: list[torch.Tensor], world_size: int) -> None:
    """Every global batch must split evenly over the ranks (each takes an equal slice)."""
    uneven = next((len(b) for b in batches if len(b) % world_size), None)
    if uneven is not None:
        raise MatchLabError(
            f"a global batch of {uneven} does not split evenly over {world_size} processes: make "
            f"train.batch_size (or loss.pk_p x loss.pk_k) a multiple of {world_size}"
        )


def wrap_ddp(step: torch.nn.Module, device: torch.device, *, sync_bn: bool) -> torch.nn.Module:
    """The training step under DistributedDataParallel, leaving Partial FC's sharded class centres local."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    from core.partial_fc import sharded_heads

    ctx = current()
    log(
        f"distributed: {ctx.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
        f"BatchNorm statistics {'over the global batch' if sync_bn else 'per process'}"
    )
    # With global-batch BatchNorm every rank already holds the same running statistics: no per-step buffer
    # broadcast. torch 2.14 renamed the switch; older releases (the GPU machine's 2.11) know the old name.
    name = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    # Sharded class centres differ per rank by design: DDP must neither broadcast nor average them.
    loss_fn = cast(torch.nn.Module, step.loss_fn)  # the step's loss submodule (its parameters are named loss_fn.*)
    local = [
        f"loss_fn.{prefix}{n}"
        for prefix, head in sharded_heads(loss_fn)
        for n, _ in list(head.named_parameters()) + list(head.named_buffers())
    ]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, local)
    switch: dict[str, Any] = {name: not sync_bn}
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None, **switch)
