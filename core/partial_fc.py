"""Partial FC: an ArcFace / CosFace head whose class centres are sharded across distributed ranks.

What: `PartialFC(num_classes, embedding_dim, ...)` is the model-parallel margin-softmax head of InsightFace's
Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine"), in plain
torch.distributed. Rank r of N owns the contiguous block of classes [class_start, class_end) (np.array_split
sizes) and only those rows of the (C, D) centre matrix.

Why: a dense head replicates C x D floats, plus their gradient and optimizer state, on every rank; with 1e5
identities that dominates memory. Here a rank holds C/N x D floats (plus C/N x D of gradient and of each
optimizer buffer), and the only traffic is the (B, D) batch of embeddings and three (B,) vectors per step.

Formulas, for the global batch x_1..x_B (gathered from every rank) with labels y_i:
    cos_ij = <x_i / |x_i|, w_j / |w_j|>                     for the centres j of this shard
    target: ArcFace  cos(theta + m), theta = acos(clamp(cos_iy, -1 + eps, 1 - eps))
            CosFace  cos_iy - m                              (only where y_i lives in this shard)
    z_ij  = s * (margin-adjusted cos_ij)
    L     = 1/B sum_i [ M_i + log sum_j exp(z_ij - M_i) - z_iy ],  M_i = max_j z_ij
where the max and the sum over j are all-reduced across ranks (each rank holds some of the j) and z_iy comes
from the rank that owns y_i. With sample_rate < 1 the j of each shard are its positives in the batch plus
uniformly drawn negatives (Partial FC's sampling); the softmax runs over the kept centres only.

Do not wrap this module in DistributedDataParallel: its gradients are per shard and must not be averaged.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from core.distributed import block_bounds as class_bounds
from core.errors import MatchLabError

MARGIN_TYPES = ("arcface", "cosface")
# acos' derivative is infinite at +-1: clamp the target cosine just inside so gradients stay finite.
ACOS_EPS = 1e-6
# The initial centres are drawn in fixed blocks of rows, each from its own generator, so every world size
# gets the same full matrix while a rank materialises only the blocks that overlap its shard.
INIT_BLOCK_ROWS = 8192


def _mix_seed(*parts: int | str) -> int:
    # A stable 63-bit seed from several integers; Python's hash() differs between processes.
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _init_rows(num_classes: int, dim: int, start: int, end: int, seed: int) -> Tensor:
    """Rows [start, end) of the (C, D) initial centres: nn.Linear's U(-1/sqrt(D), 1/sqrt(D)), independent of N."""
    bound = 1.0 / math.sqrt(dim)
    blocks = []
    for b in range(start // INIT_BLOCK_ROWS, (end - 1) // INIT_BLOCK_ROWS + 1):
        lo, hi = b * INIT_BLOCK_ROWS, min((b + 1) * INIT_BLOCK_ROWS, num_classes)
        g = torch.Generator().manual_seed(_mix_seed(seed, "init", b))
        block = (torch.rand(hi - lo, dim, generator=g) * 2 - 1) * bound
        blocks.append(block[max(start, lo) - lo : min(end, hi) - lo])
    return torch.cat(blocks)


def _all_gather_rows(t: Tensor, sizes: list[int]) -> Tensor:
    # gloo and NCCL all_gather need equal shapes: pad every rank's rows to the largest count, cut after.
    most = max(sizes)
    padded = t.contiguous()
    if t.shape[0] < most:
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherBatch(torch.autograd.Function):
    """All-gather of the local embeddings into the global batch; backward returns world_size x the exact grad.

    Every rank computes the same global loss L from the gathered batch, but its backward only holds the part
    of dL/d(global batch) that flows through its own centres. Summing those parts over ranks (all_reduce) and
    taking this rank's rows gives the exact dL/d(local embeddings). The trunk that produced them is wrapped in
    DistributedDataParallel, which AVERAGES parameter gradients over the N ranks: rank r's trunk gradient is
    g_r = dL/dx_r . dx_r/dtheta and DDP leaves (1/N) sum_r g_r = (1/N) dL/dtheta. Multiplying the embedding
    gradient by N here cancels that 1/N, so the trunk receives exactly dL/dtheta: the same update as one
    process on the global batch. (The centre shards are not in DDP and get the exact gradient unscaled.)
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int], rank: int) -> Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_rows(local, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()  # all_reduce is in place; the incoming buffer may be shared
        dist.all_reduce(grad)  # gloo has no reduce_scatter: sum everything, keep our slice
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes), None, None


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over classes spread across ranks; each rank passes its (B, K) logit columns.

    target: (B,) the column of each sample's positive in THIS rank's logits, or -1 where another rank owns it.
    The backward is local: dL/dz_ij = (softmax_ij - [j == y_i]) / B for this rank's columns j.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, world_size: int) -> Tensor:
        distributed = world_size > 1
        row_max = logits.max(dim=1).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits - row_max[:, None]).exp_()
        sum_exp = exp.sum(dim=1)
        owned = target >= 0
        positive = logits.gather(1, target.clamp(min=0)[:, None]).squeeze(1) * owned
        if distributed:
            # One collective for both sums: fewer round trips per step.
            both = torch.stack([sum_exp, positive])
            dist.all_reduce(both)
            sum_exp, positive = both[0], both[1]
        loss = (sum_exp.log() + row_max - positive).mean()
        prob = exp.div_(sum_exp[:, None])  # reuse the buffer: this rank's columns of the global softmax
        ctx.save_for_backward(prob, target)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        prob, target = ctx.saved_tensors
        owned = (target >= 0).to(prob.dtype)
        grad_logits = prob.scatter_add(1, target.clamp(min=0)[:, None], -owned[:, None])
        return grad_logits * (grad / prob.shape[0]), None, None


class PartialFC(nn.Module):
    """Margin-softmax head with the (C, D) centres sharded over the ranks of torch.distributed.

    The shard is fixed at construction: world size and rank from torch.distributed if it is initialised,
    else one process. `weight` (class_end - class_start, D) starts as rows of the same full nn.Linear-style
    matrix for a given `seed` on every world size. forward returns the same scalar loss on every rank.

    margin: radians for "arcface", cosine units for "cosface"; scale: s. sample_rate in (0, 1]: the share of
    this shard's centres used per training step (Partial FC sampling); eval mode always uses all of them.
    The sampling generator is seeded from (seed, rank, step), and `step` is a buffer, so a resumed run draws
    the same classes. Checkpoints across world sizes: save `full_weight()` (and `gather_rows` of optimizer
    buffers) on rank 0, restore with `load_full_weight` (and `shard_rows`).
    """

    step: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin_type: str = "arcface",
        margin: float = 0.5,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        seed: int = 0,
    ) -> None:
        if margin_type not in MARGIN_TYPES:
            raise MatchLabError(f"unknown Partial FC margin_type {margin_type!r}; valid: {', '.join(MARGIN_TYPES)}")
        if margin_type == "arcface" and not 0.0 <= margin < math.pi / 2:
            raise MatchLabError(f"ArcFace margin is in radians and must be in [0, pi/2), got {margin}")
        if margin_type == "cosface" and not 0.0 <= margin < 1.0:
            raise MatchLabError(f"CosFace margin must be in [0, 1) (cosine units), got {margin}")
        if not scale > 0:
            raise MatchLabError(f"Partial FC scale must be > 0, got {scale}")
        if not 0.0 < sample_rate <= 1.0:
            raise MatchLabError(f"Partial FC sample_rate must be in (0, 1], got {sample_rate}")
        if embedding_dim < 1:
            raise MatchLabError(f"Partial FC embedding_dim must be >= 1, got {embedding_dim}")
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        if num_classes < world:
            raise MatchLabError(
                f"Partial FC needs num_classes >= world size (every rank owns at least one class), "
                f"got {num_classes} classes on {world} ranks"
            )
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.margin_type, self.margin, self.scale = margin_type, margin, scale
        self.sample_rate, self.seed = sample_rate, seed
        self.world_size, self.rank = world, rank
        self.class_start, self.class_end = class_bounds(num_classes, world, rank)
        shard = self.class_end - self.class_start
        # round() first: 0.07 * 100 is 7.000000000000001 in floating point, and ceil must give 7.
        self.num_sample = min(shard, max(1, math.ceil(round(sample_rate * shard, 9))))
        self.weight = nn.Parameter(_init_rows(num_classes, embedding_dim, self.class_start, self.class_end, seed))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # Global class ids of the centres the last training forward used; None when it used the whole shard.
        self.sampled_classes: Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, dim={self.embedding_dim}, "
            f"{self.margin_type} m={self.margin} s={self.scale}, sample_rate={self.sample_rate}"
        )

    # ----- checkpoint helpers: tensors shaped like `weight` (the centres or their optimizer buffers) -----

    def _shard_sizes(self) -> list[int]:
        return [e - s for s, e in (class_bounds(self.num_classes, self.world_size, r) for r in range(self.world_size))]

    def shard_rows(self, full: Tensor) -> Tensor:
        """This rank's rows [class_start, class_end) of a whole (C, ...) tensor, as a new tensor (no collective)."""
        if full.dim() < 1 or full.shape[0] != self.num_classes:
            raise MatchLabError(
                f"expected a tensor with {self.num_classes} rows (one per class), got shape {tuple(full.shape)}"
            )
        return full[self.class_start : self.class_end].clone()

    def gather_rows(self, shard: Tensor) -> Tensor:
        """The whole (C, ...) tensor from every rank's (class_end - class_start, ...) shard. Collective: every
        rank must call it, and every rank gets the result."""
        size = self.class_end - self.class_start
        if shard.dim() < 1 or shard.shape[0] != size:
            raise MatchLabError(f"expected this rank's shard of {size} rows, got shape {tuple(shard.shape)}")
        if self.world_size == 1:
            return shard.clone()
        return _all_gather_rows(shard, self._shard_sizes())

    def full_weight(self) -> Tensor:
        """The whole (C, D) centre matrix on every rank (collective), detached."""
        return self.gather_rows(self.weight.detach())

    def load_full_weight(self, weight: Tensor) -> None:
        """Keep this rank's rows of a whole (C, D) centre matrix (e.g. saved by another world size)."""
        if tuple(weight.shape) != (self.num_classes, self.embedding_dim):
            raise MatchLabError(
                f"Partial FC weight must have shape ({self.num_classes}, {self.embedding_dim}), "
                f"got {tuple(weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(self.shard_rows(weight))

    # ----- training -----

    def _gather_batch(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.world_size == 1:
            return x, labels
        counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        sizes = torch.cat(counts).tolist()  # local batches may differ (a short last batch)
        return _GatherBatch.apply(x, sizes, self.rank), _all_gather_rows(labels, sizes)

    def _sample(self, labels: Tensor) -> Tensor | None:
        """Local indices of this step's kept centres (sorted), or None for the whole shard."""
        if not self.training:
            return None
        if self.num_sample >= self.class_end - self.class_start:
            self.step += 1  # in place on the device: no host sync when nothing is sampled
            return None
        step = int(self.step)
        self.step += 1
        local = labels - self.class_start
        positives = torch.unique(local[(local >= 0) & (local < self.class_end - self.class_start)])
        if positives.numel() >= self.num_sample:
            return positives  # every positive stays, even past the budget (torch.unique sorts)
        # Drawn on the CPU so a run samples the same classes on any device; the ranks draw independently.
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.rank, step))
        score = torch.rand(self.class_end - self.class_start, generator=g)
        score[positives.cpu()] = 2.0  # above every uniform draw: positives are always among the top k
        keep = score.topk(self.num_sample).indices.sort().values
        return keep.to(labels.device)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """embeddings: (B_local, D) float; labels: (B_local,) global class ids -> the global-batch mean loss.

        Collective when world size > 1: every rank must call it each step (local batch sizes may differ).
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise MatchLabError(
                f"Partial FC expects embeddings of shape (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise MatchLabError(
                f"Partial FC expects one label per embedding, got labels of shape "
                f"{tuple(labels.shape)} for {embeddings.shape[0]} embeddings"
            )
        # fp32 even inside the trainer's bf16 autocast: softmax over scale-64 logits loses precision in bf16.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x, labels = self._gather_batch(embeddings.float(), labels.long())
            # Checked on the gathered labels, so every rank raises together instead of leaving others waiting.
            if labels.numel() == 0:
                raise MatchLabError("Partial FC got an empty batch on every rank")
            if bool(((labels < 0) | (labels >= self.num_classes)).any()):
                bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
                raise MatchLabError(f"label {bad} is out of range: Partial FC has classes 0..{self.num_classes - 1}")
            rows = self._sample(labels)
            self.sampled_classes = None if rows is None else rows + self.class_start
            # index_select: only the kept centres enter the graph, so only they receive gradient.
            w = self.weight if rows is None else self.weight.index_select(0, rows)
            cos = F.normalize(x, dim=1) @ F.normalize(w.float(), dim=1).T  # (B_global, K)
            local = labels - self.class_start
            owned = (local >= 0) & (local < self.class_end - self.class_start)
            column = local if rows is None else torch.searchsorted(rows, local)
            column = torch.where(owned, column, torch.zeros_like(column))
            target_cos = cos.gather(1, column[:, None]).squeeze(1)
            if self.margin_type == "arcface":
                theta = torch.acos(target_cos.clamp(-1 + ACOS_EPS, 1 - ACOS_EPS))
                with_margin = torch.cos(theta + self.margin)
            else:
                with_margin = target_cos - self.margin
            # Rows whose positive lives on another rank write their own value back: no change, no host sync.
            logits = cos.scatter(1, column[:, None], torch.where(owned, with_margin, target_cos)[:, None])
            target = torch.where(owned, column, torch.full_like(column, -1))
            return _ShardedSoftmaxCE.apply(logits * self.scale, target, self.world_size)

    def class_logits(self, embeddings: Tensor) -> Tensor | None:
        """(B, C) scale * cos(embedding, centre), margin-free, for class accuracy; world size 1 only.

        With world size > 1 each rank holds only some classes, so this returns None: validation runs on rank 0
        alone, where the trainer can build a dense head from `full_weight()` if it needs the logits.
        """
        if self.world_size > 1:
            return None
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.scale * (F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).T)


# ---------------------------------------------------------------- whole training state across ranks


def sharded_heads(loss_fn: nn.Module) -> list[tuple[str, PartialFC]]:
    """(state_dict prefix, module) of every class head whose centres are split over the ranks."""
    return [(f"{name}." if name else "", m) for name, m in loss_fn.named_modules() if isinstance(m, PartialFC)]


def _optimizer_index(opt: torch.optim.Optimizer, param: torch.nn.Parameter) -> int:
    """The number optimizer.state_dict() gives `param` (its position over all parameter groups)."""
    return [id(p) for g in opt.param_groups for p in g["params"]].index(id(param))


def whole_training_state(loss_fn, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The loss's and optimizer's state_dicts with sharded class centres (and their momentum) gathered whole,
    so last.pt does not depend on the world size. A collective: every rank calls it."""
    loss_state, opt_state = loss_fn.state_dict(), opt.state_dict()
    for prefix, head in sharded_heads(loss_fn):
        loss_state[prefix + "weight"] = head.full_weight()
        i = _optimizer_index(opt, head.weight)
        if i in opt_state["state"]:
            opt_state["state"][i] = {
                k: head.gather_rows(v) if torch.is_tensor(v) and v.shape == head.weight.shape else v
                for k, v in opt_state["state"][i].items()
            }
    return loss_state, opt_state


def load_training_state(loss_fn, opt: torch.optim.Optimizer, loss_state: dict, opt_state: dict) -> None:
    """Inverse of whole_training_state: each rank keeps its own rows of the sharded centres."""
    for prefix, head in sharded_heads(loss_fn):
        loss_state[prefix + "weight"] = head.shard_rows(loss_state[prefix + "weight"])
        i = _optimizer_index(opt, head.weight)
        if i in opt_state["state"]:
            whole = (head.num_classes, *head.weight.shape[1:])
            opt_state["state"][i] = {
                k: head.shard_rows(v) if torch.is_tensor(v) and tuple(v.shape) == whole else v
                for k, v in opt_state["state"][i].items()
            }
    loss_fn.load_state_dict(loss_state)
    opt.load_state_dict(opt_state)
