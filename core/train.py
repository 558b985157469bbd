"""Training: plain functions and a visible loop (`train_one_epoch`, `validate`, `fit`).

Entry point: `fit(cfg, run_dir, resume=False) -> dict`. Batches are gathered from the uint8 image cache
held on the training device and augmented there (no DataLoader, no per-step host sync); every epoch
appends one line to metrics.jsonl and rewrites last.pt atomically, so `--resume` after any kill
reproduces the uninterrupted run: each epoch's sampling and augmentation are seeded from (seed, epoch).

Under torchrun the same function trains with DistributedDataParallel: `train.batch_size` is the global
batch, each rank takes its slice of every global batch, and only rank 0 validates and writes the run
folder (core/distributed.py states the contract that keeps N processes equal to one).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from core import distributed, layout
from core.atomic import atomic_write_json, atomic_write_text, atomic_write_yaml, remove_stale_tmp
from core.config import Config
from core.crops import centre_crop
from core.data.augment import BatchAugment, training_augment
from core.data.fixes import apply_fixes
from core.data.images import as_hw
from core.data.prepare import Split, prepare_data
from core.data.samplers import balanced_pair_batches, class_groups, epoch_generator, pk_batches, random_batches
from core.distill import relational_loss, teacher_embeddings
from core.errors import MatchLabError
from core.lock import run_lock
from core.losses import create_loss
from core.metrics import verification as vm
from core.models import create_model, model_kind
from core.partial_fc import load_training_state, whole_training_state
from core.run import (
    BEST,
    LAST,
    METRICS,
    RUN_FILES,
    THRESHOLD,
    file_hash,
    read_last_checkpoint,
    resolve_device,
    save_best_weights,
    write_last_checkpoint,
)

# Dense bf16 rate that an 8192^3 matrix product reached on the project's reference GPU, an H200 (not
# re-measured by MatchLab yet: docs/performance.md). The H100 entry reuses it: H100 SXM and H200 have the
# same datasheet dense-bf16 peak (989 TFLOP/s). MFU is reported against it.
PEAK_BF16_FLOPS = {"H100": 790e12, "H200": 790e12}
MAX_VAL_PAIRS = 500_000  # all validation pairs up to this many, else a balanced seeded sample


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best: float = -math.inf
    best_epoch: int = -1
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: Config, num_classes: int, loss_needs_head: bool) -> tuple[torch.nn.Module, dict]:
    m = cfg.model
    kwargs: dict = dict(m.kwargs)
    if model_kind(m.name) == "image":
        kwargs.update(
            num_classes=num_classes if loss_needs_head else 0,
            embedding_dim=m.embedding_dim,
            dropout=m.dropout,
            width=m.width,
        )
    model = create_model(m.name, **kwargs)
    if m.init_from:
        _init_from(model, Path(m.init_from), m.freeze_backbone)
    return model, kwargs


def _init_from(model: torch.nn.Module, run_dir: Path, freeze_backbone: bool) -> None:
    """Two-stage recipes: start from another run's best weights; the class head is re-initialised when its
    shape differs (a metric loss has none), and the backbone may be frozen."""
    from safetensors.torch import load_file

    weights = run_dir / BEST
    if not weights.is_file():
        raise MatchLabError(f"model.init_from={run_dir}: {weights} not found")
    source = load_file(str(weights))
    own = model.state_dict()
    shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    trunk = [k for k in own if k.startswith("trunk.")]
    if not trunk or any(k not in shared for k in trunk):
        raise MatchLabError(
            f"model.init_from={run_dir}: its weights do not fit {type(model).__name__} "
            f"({len(shared)} of {len(own)} tensors match); use a run of the same model.name"
        )
    model.load_state_dict(shared, strict=False)
    if freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = not name.startswith("trunk.")


def make_optimizer(cfg: Config, params: list[tuple[str, torch.nn.Parameter]], fused: bool) -> torch.optim.Optimizer:
    t = cfg.train

    # Weight decay on norms and biases only shrinks scales that the next layer would undo, and on
    # center-loss centres it would drag every class centre towards the origin; skip them.
    def decays(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim > 1 and "center" not in name

    decay = [p for n, p in params if p.requires_grad and decays(n, p)]
    no_decay = [p for n, p in params if p.requires_grad and not decays(n, p)]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **extra)
    return torch.optim.AdamW(groups, lr=t.lr, **extra)


def make_scheduler(cfg: Config, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns (scheduler, per_step): per-step schedules advance every batch, the others every epoch."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warm = int(t.warmup_epochs * steps_per_epoch)
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t.lr, total_steps=total, pct_start=min(0.3, max(warm, 1) / total)
        ), True
    if t.schedule == "cosine":

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        return torch.optim.lr_scheduler.LambdaLR(opt, f), True
    if t.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=max(1, t.restart_epochs * steps_per_epoch)
        ), True
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.gamma), False
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=t.gamma, patience=2), False
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0), True


def flops_per_image(step: TrainStep, x: torch.Tensor, y: torch.Tensor) -> float:
    """Training FLOPs per image (forward + backward), counted once by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Eval mode: the probe must not move BatchNorm statistics or draw dropout randomness, or a resumed
    # run (which probes again) would drift from an uninterrupted one.
    step.eval()
    with counter:
        terms, _ = step(x, y)
        terms["total"].backward()
    step.zero_grad(set_to_none=True)
    step.train()
    images = 2 * x[0].shape[0] if step.pair else x.shape[0]  # a pair input is two images
    return counter.get_total_flops() / images


# ----------------------------------------------------------------------------------------------- loop


class TrainStep(torch.nn.Module):
    """One training forward pass, model and loss in one module: DistributedDataParallel wraps this, so the
    loss's own parameters (margin-head and center-loss centres) are synchronised like the model's.

    forward(x, y, teachers=None) -> (loss terms, prediction logits): (B, C) class logits, (B,) pair logits, or
    None; with teachers (train.distill_from), a "distill" term is added to the total.
    """

    def __init__(
        self, model: torch.nn.Module, loss_fn, pair: bool, compile: bool = False, distill_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.model, self.loss_fn, self.pair, self.distill_weight = model, loss_fn, pair, distill_weight
        # image models are EmbeddingNets (forward_features is a method, which nn.Module's typing cannot see)
        run = model.forward if pair else cast(Callable[..., torch.Tensor], model.forward_features)
        # A compiled function, not a module attribute: the state_dict keys stay those of the plain model.
        self._run: Callable[..., torch.Tensor] = torch.compile(run) if compile else run

    def forward(self, x, y, teachers=None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """teachers: the batch's rows of each teacher's embeddings (train.distill_from), or None."""
        logits: torch.Tensor | None
        if self.pair:
            logits = self._run(x[0], x[1]).float()
            return self.loss_fn(None, logits, y), logits
        emb = self._run(x).float()
        head = getattr(self.model, "head", None)
        logits = head(emb).float() if head is not None else None
        if self.loss_fn.couples_batch and distributed.current().enabled:
            # Pairs and triplets are mined in the global batch, as one process would.
            all_logits = distributed.gather_with_grad(logits) if logits is not None else None
            terms = self.loss_fn(distributed.gather_with_grad(emb), all_logits, distributed.gather(y))
        else:
            terms = self.loss_fn(emb, logits, y)
        if teachers is not None:
            distill = self.distill_weight * relational_loss(emb, teachers)
            terms = {**terms, "distill": distill, "total": terms["total"] + distill}
        return terms, self.loss_fn.class_logits(emb, logits)


def _count_correct(pred: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    if pred is None:
        return None
    if pred.ndim == 1:  # pair logit: "same" when positive
        return ((pred > 0).float() == y).sum()
    return (pred.argmax(1) == y).sum()


def _batches(
    cfg: Config, split: Split, loss_fn, epoch: int, sanity: bool, groups: np.ndarray | None = None
) -> list[torch.Tensor]:
    gen = epoch_generator(cfg.train.seed, epoch)
    if split.pairs is not None:
        return balanced_pair_batches(split.pairs[2].cpu().numpy(), cfg.train.batch_size, gen)
    n = len(split.labels)
    if getattr(loss_fn, "batch_sampler", "random") == "pk" and not sanity:
        return pk_batches(split.labels.cpu().numpy(), cfg.loss.pk_p, cfg.loss.pk_k, gen, groups)
    return random_batches(n, min(cfg.train.batch_size, n), gen, drop_last=n > cfg.train.batch_size)


def _inputs(
    split: Split,
    idx: torch.Tensor,
    augment: BatchAugment,
    *,
    crop: float,
    train: bool,
    generator: torch.Generator | None,
    part: tuple[int, int] = (0, 1),
    streamed: torch.Tensor | None = None,
):
    """Batch indices -> model input(s) and targets, augmented on the training device (`part`: BatchAugment's).
    streamed: the batch's uint8 images when the split streams them (already read ahead)."""

    def images(i: torch.Tensor) -> torch.Tensor:
        batch = streamed if streamed is not None else split.fetch(i)
        return centre_crop(augment(batch, train=train, generator=generator, part=part), crop)

    if split.pairs is not None:
        a, b, lab = (t[idx] for t in split.pairs)
        return (images(a), images(b)), lab.float()
    return images(idx), split.labels[idx]


def train_one_epoch(
    step_module,
    loss_fn,
    opt,
    sched,
    *,
    per_step: bool,
    split: Split,
    augment: BatchAugment,
    cfg: Config,
    epoch: int,
    autocast,
    sanity: bool,
    groups: np.ndarray | None = None,
    teachers: list[torch.Tensor] | None = None,
) -> dict:
    """One pass over `split`. step_module: a TrainStep, or DistributedDataParallel around one; the
    returned loss means, accuracy and throughput are over all ranks. groups: `class_groups` for PK batches;
    teachers: each teacher's embeddings of the split's images (core.distill), for the distillation term."""
    ctx = distributed.current()
    step_module.train()
    pair = split.pairs is not None
    batches = _batches(cfg, split, loss_fn, epoch, sanity, groups)
    device = split.labels.device
    mine = [ctx.share(b) for b in batches]
    # Streamed splits read each batch ahead on host threads while the previous step computes.
    streamed = split.stream.batches(mine) if split.stream is not None else iter([None] * len(mine))
    aug_gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 100_003 + epoch)
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    correct = torch.zeros((), device=device)
    seen = 0
    has_accuracy = False
    bar = tqdm(
        mine,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=None if ctx.is_main else True,
    )
    start = time.perf_counter()
    last_post = start
    for idx, images in zip(bar, streamed):
        idx = idx.to(device, non_blocking=True)
        x, y = _inputs(
            split,
            idx,
            augment,
            crop=cfg.data.crop,
            train=not sanity,
            generator=aug_gen,
            part=(ctx.rank, ctx.world_size),
            streamed=images,
        )
        with autocast():
            terms, pred = step_module(x, y, None if teachers is None else [t[idx] for t in teachers])
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        if per_step:
            sched.step()
        for k, v in terms.items():
            sums[k] += v.detach().float()
        hits = _count_correct(pred.detach() if pred is not None else None, y)
        if hits is not None:
            correct += hits
            has_accuracy = True
        seen += len(idx)
        now = time.perf_counter()
        if now - last_post > 1.0:  # host sync at most once a second, only to refresh the progress bar
            post = {"loss": f"{terms['total'].item():.3f}", "img_s": f"{seen / (now - start):.0f}"}
            if has_accuracy:
                post["acc"] = f"{correct.item() / seen:.3f}"
            bar.set_postfix(post)
            last_post = now
    # The epoch's only required sync (timing and the logged means), and its only extra collective.
    keys = sorted(sums)
    totals = distributed.sum_across_ranks(
        torch.stack([sums[k] for k in keys] + [correct, torch.tensor(float(seen), device=device)]).double()
    ).tolist()
    elapsed = time.perf_counter() - start
    bar.close()
    n_steps = max(1, len(batches)) * ctx.world_size
    out = {f"loss/{k}": v / n_steps for k, v in zip(keys, totals)}
    seen = int(totals[-1])
    out["train_acc"] = totals[-2] / max(seen, 1) if has_accuracy else None
    out["images_per_s"] = seen * (2 if pair else 1) / max(elapsed, 1e-9)
    out["epoch_s"] = elapsed
    return out


@torch.no_grad()
def validate(
    model, loss_fn, split: Split, *, run_mean, run_std, cfg: Config, device: torch.device
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Validation metrics plus the (scores, labels) of the validation pairs used to pick a threshold."""
    from core.embedder import Preprocess, RunEmbedder, embed_all
    from core.pair_scores import pair_scores_from_embeddings, score_pair_model
    from core.pairs import all_or_sampled_pairs

    # Preprocess normalises res (an int or [H, W]) itself
    preprocess = Preprocess(res=as_hw(cfg.data.res), mean=tuple(run_mean), std=tuple(run_std), crop=cfg.data.crop)
    out: dict = {}
    if split.pairs is not None:
        ia, ib, lab = (t.cpu().numpy() for t in split.pairs)
        scores = score_pair_model(model, split.images, ia, ib, preprocess=preprocess, device=device, amp=cfg.train.amp)
        labels = lab.astype(np.int8)
        out["val_acc"] = float(((scores >= 0.5) == (labels == 1)).mean())
    else:
        # only the training split streams; validation keeps its images on the host
        ex = embed_all(
            RunEmbedder(model, preprocess, device=device, amp=cfg.train.amp), cast(torch.Tensor, split.images)
        )
        y = split.labels.cpu().numpy()
        if split.classes_known and ex.logits is not None:
            out["val_acc"] = float((ex.logits.argmax(1) == y).mean())
        elif split.classes_known and hasattr(loss_fn, "class_logits"):
            cl = loss_fn.class_logits(torch.from_numpy(ex.embeddings).to(device), None)
            if cl is not None:
                out["val_acc"] = float((cl.argmax(1).cpu().numpy() == y).mean())
        if split.protocol_pairs is not None:  # the test protocol's kind of pair, so the threshold suits it
            ia, ib, labels = split.protocol_pairs
        else:
            ia, ib, _ = all_or_sampled_pairs(
                y, split.paths, max_all=MAX_VAL_PAIRS, n_sampled=MAX_VAL_PAIRS, seed=cfg.train.seed
            )
            labels = (y[ia] == y[ib]).astype(np.int8)
        scores = pair_scores_from_embeddings(ex.embeddings, ia, ib)
    if 0 < labels.sum() < len(labels):
        points = vm.roc_points(scores, labels)
        out["val_auc"] = vm.auc(points)
        out["val_eer"] = vm.eer(points)[0]
    return out, scores, labels


def recommended_threshold(rule: str, scores: np.ndarray, labels: np.ndarray) -> dict:
    """Pick the run's operating threshold on its own validation pairs, as `train.threshold_rule` says."""
    points = vm.roc_points(scores, labels)
    if rule == "eer":
        tau = vm.eer(points)[1]
    elif rule == "best_accuracy":
        tau = vm.best_accuracy_threshold(points)[0]
    else:
        tau = vm.threshold_for_far(points, float(rule.split("=", 1)[1]))
    at = vm.counts_at_threshold(points, tau)
    return {
        "threshold": float(tau),
        "rule": rule,
        "val_far": at["far"],
        "val_frr": at["frr"],
        "val_accuracy": at["accuracy"],
        "n_genuine": int(labels.sum()),
        "n_impostor": int(len(labels) - labels.sum()),
    }


def _select_key(cfg: Config, splits: dict[str, Split]) -> str:
    if cfg.train.select_metric != "auto":
        return cfg.train.select_metric
    val = splits.get("val")
    return "val_acc" if val is not None and (val.classes_known or val.pairs is not None) else "val_auc"


def _rng_state() -> dict:
    # numpy's state as a tensor and plain numbers: last.pt must load with torch.load(weights_only=True).
    # the default legacy=True gives this tuple for MT19937; numpy's stub types a plain call as the dict form
    _, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_bf16_flops(device: torch.device) -> float | None:
    """PEAK_BF16_FLOPS of the device's card, or None (a CPU, or a card without a figure): MFU's denominator."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def fit(cfg: Config, run_dir: Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train as `cfg` says into `run_dir` (resuming from its last.pt if asked) and return a summary.

    An existing run folder is refused unless `resume` or `overwrite` (which replaces its run files and
    evaluations once the new run has validated). Rank 0 holds the folder's lock (core/lock.py) throughout,
    and writes nothing into it until the data, model, loss, optimizer and checkpoint have all been set up.
    """
    run_dir = Path(run_dir)
    with ExitStack() as held:
        return _fit(cfg, run_dir, resume, overwrite, held)


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder holding a run unless told to resume it or overwrite it."""
    if resume:
        if not (run_dir / LAST).is_file() and (run_dir / BEST).is_file():
            raise MatchLabError(
                f"--resume {run_dir}: it has no {LAST} (a bundled or pruned run cannot be resumed); "
                f"train a new run, or pass --overwrite instead of --resume to replace it"
            )
        return
    if not overwrite and any((run_dir / f).exists() for f in RUN_FILES):
        raise MatchLabError(
            f"run folder {run_dir} already holds a run; use --resume {run_dir} to continue it, "
            f"--overwrite to replace it, or another --name"
        )


def _start_run_folder(run_dir: Path, resume: bool, overwrite: bool, held: ExitStack) -> None:
    """Rank 0, before reading or writing the folder: take its lock, check it, and remove the temporary
    files of killed writers."""
    held.enter_context(run_lock(run_dir))
    check_run_folder(run_dir, resume, overwrite)
    remove_stale_tmp(run_dir)


def _fit(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, held: ExitStack) -> dict:
    device = resolve_device(cfg.train.device)
    ctx = distributed.init_from_env(device)
    device = ctx.device(device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    # An existing folder is locked and checked now; a new one is created only once everything is validated.
    locked = ctx.is_main and run_dir.exists()
    if locked:
        _start_run_folder(run_dir, resume, overwrite, held)
    pending: list[Callable[[], object]] = []  # run-folder writes held back until everything is validated

    with distributed.main_first():  # rank 0 decodes the cache; the others then load it
        splits, class_names, cache = prepare_data(cfg, run_dir, device, pending)
    train = splits["train"]
    kind = model_kind(cfg.model.name)
    loss_kwargs = dict(cfg.loss.kwargs)
    if cfg.loss.center_weight:
        loss_kwargs["center_weight"] = cfg.loss.center_weight
    loss_fn = create_loss(
        cfg.loss.name, num_classes=len(class_names), embedding_dim=cfg.model.embedding_dim, **loss_kwargs
    ).to(device)
    draws_pk = train.pairs is None and getattr(loss_fn, "batch_sampler", "random") == "pk"
    if cfg.loss.pk_group and not draws_pk:  # it would be silently ignored: say so before anything is written
        raise MatchLabError(
            f"loss.pk_group={cfg.loss.pk_group!r} groups P x K batches, which loss.name={cfg.loss.name} on this"
            " data does not draw: use a metric loss (contrastive, triplet) or remove loss.pk_group"
        )
    model, model_kwargs = build_model(cfg, len(class_names), getattr(loss_fn, "needs_head", False))
    if ctx.enabled and cfg.train.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    model.to(device)
    cuda = device.type == "cuda"
    if cfg.train.channels_last:  # CPUs too: 1.4x train images/s on a 2-core Xeon (bench cpu_train)
        model.to(memory_format=torch.channels_last)
    params = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    opt = make_optimizer(cfg, params, fused=cuda)
    groups = class_groups(class_names, cfg.loss.pk_group)
    first_epoch = _batches(cfg, train, loss_fn, 0, bool(cfg.train.sanity_overfit), groups)
    distributed.check_global_batches(first_epoch, ctx.world_size)
    sched, per_step = make_scheduler(cfg, opt, len(first_epoch))
    mean, std = cache.mean.tolist(), cache.std.tolist()
    plain = bool(cfg.train.sanity_overfit)  # memorising: no augmentation
    augment = training_augment(
        mean,
        std,
        flip=cfg.train.flip and not plain,
        crop_padding=0 if plain else cfg.train.crop_padding,
        crop_scale=1.0 if plain else cfg.train.crop_scale,
        color_jitter=0.0 if plain else cfg.train.color_jitter,
        random_erasing=0.0 if plain else cfg.train.random_erasing,
        out_res=cfg.data.res,
        channels_last=cfg.train.channels_last,
    )
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and cfg.train.amp else nullcontext
    select = _select_key(cfg, splits)

    state = TrainState()
    if resume and (run_dir / LAST).is_file():
        state = _resume(cfg, run_dir, device=device, model=model, loss_fn=loss_fn, opt=opt, sched=sched)
        # metrics.jsonl, best.safetensors and threshold.json may hold an epoch written after last.pt, or
        # one that last.pt committed but a kill kept from its final name: make them agree with last.pt.
        pending.append(lambda: _finish_epoch_writes(run_dir, state))
        distributed.log(f"resuming {run_dir} after epoch {state.epoch}/{cfg.train.epochs}")
    teachers = None
    if cfg.train.distill_from:
        if kind == "pair":
            raise MatchLabError("train.distill_from distils embeddings; a pair model has none: remove it")
        _, kept = apply_fixes(cache, cfg.data.exclude)  # images left out by data.exclude are not held out
        held_out = {path for path, keep in zip(cache.paths, kept) if keep} - set(train.paths)
        teachers = teacher_embeddings(
            cfg.train.distill_from, train, held_out, data_root=cfg.data.train, align=cfg.data.align, device=device
        )
    step = TrainStep(model, loss_fn, kind == "pair", cfg.train.compile, cfg.train.distill_weight)
    step_module = distributed.wrap_ddp(step, device, sync_bn=cfg.train.sync_bn) if ctx.enabled else step

    flops = None
    if state.epoch < cfg.train.epochs:
        probe = (
            train.pairs[0][:2] if train.pairs is not None else torch.arange(min(2, len(train.labels)), device=device)
        )
        with autocast():
            x, y = _inputs(train, probe, augment, crop=cfg.data.crop, train=False, generator=None)
            flops = flops_per_image(step, x, y)
    peak = peak_bf16_flops(device)
    if ctx.is_main:  # everything validated: now the run folder may be written
        if not locked:  # a new folder: create it, locked
            _start_run_folder(run_dir, resume, overwrite, held)
        if overwrite and not resume:
            _remove_run_files(run_dir)
        atomic_write_yaml(layout.RunFiles(run_dir).config, cfg.to_dict())
        for write in pending:
            write()

    for epoch in range(state.epoch, cfg.train.epochs):
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update(
            train_one_epoch(
                step_module,
                loss_fn,
                opt,
                sched,
                per_step=per_step,
                split=train,
                augment=augment,
                cfg=cfg,
                epoch=epoch,
                autocast=autocast,
                sanity=bool(cfg.train.sanity_overfit),
                groups=groups,
                teachers=teachers,
            )
        )
        if flops:
            row["train_gflop_per_image"] = flops / 1e9
            row["mfu"] = flops * row["images_per_s"] / (peak * ctx.world_size) if peak else None
        val_scores = val_labels = None
        if "val" in splits and ctx.is_main:  # the other ranks wait for its metrics below
            val_metrics, val_scores, val_labels = validate(
                model, loss_fn, splits["val"], run_mean=mean, run_std=std, cfg=cfg, device=device
            )
            row.update(val_metrics)
        row = distributed.broadcast_object(row)
        metric = row.get(select)
        if metric is None:
            metric = -row["loss/total"]  # no validation metric: fall back on the training loss
        row["val_metric"] = metric
        if not per_step:
            sched.step(metric) if cfg.train.schedule == "plateau" else sched.step()
        state.epoch = epoch + 1
        state.history.append(row)
        if metric > state.best:
            state.best, state.best_epoch, state.stale_epochs = metric, epoch + 1, 0
        else:
            state.stale_epochs += 1
        loss_state, opt_state = whole_training_state(loss_fn, opt)
        if ctx.is_main:
            _save_epoch(
                run_dir,
                cfg,
                state,
                model=model,
                model_kwargs=model_kwargs,
                loss_state=loss_state,
                opt_state=opt_state,
                sched=sched,
                class_names=class_names,
                mean=mean,
                std=std,
                val_scores=val_scores,
                val_labels=val_labels,
                kind=kind,
            )
        distributed.log(_epoch_line(row, cfg.train.epochs))
        if cfg.train.early_stop and state.stale_epochs >= cfg.train.early_stop:
            distributed.log(f"early stop: {select} has not improved for {state.stale_epochs} epochs")
            break

    summary: dict[str, Any] = {
        "run": str(run_dir),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "select_metric": select,
        "best": state.best,
        "last": state.history[-1] if state.history else {},
        "checkpoint_hash": file_hash(run_dir / BEST) if (run_dir / BEST).exists() else None,
        "skipped_images": len(cache.skipped),
        "world_size": ctx.world_size,
    }
    if cfg.train.sanity_overfit:
        acc = summary["last"].get("val_acc")
        summary["sanity"] = {
            "images": cfg.train.sanity_overfit,
            "accuracy": acc,
            "memorised": acc is not None and acc >= 0.99,
        }
    return summary


def _resume(cfg: Config, run_dir: Path, *, device: torch.device, model, loss_fn, opt, sched) -> TrainState:
    """Load last.pt (weights_only: a crafted file cannot run code) into the model, loss, optimizer,
    scheduler and RNGs; a file that does not fit is a MatchLabError naming it."""
    path = run_dir / LAST
    ckpt = read_last_checkpoint(path, device)
    try:
        was = ckpt["config"]["train"]["epochs"]
    except (KeyError, TypeError):
        raise MatchLabError(f"{path} holds no train.epochs in its config; it was not written by MatchLab") from None
    if cfg.train.schedule == "onecycle" and cfg.train.epochs != was:
        raise MatchLabError(
            f"train.epochs={cfg.train.epochs} on resume, but {run_dir} was planned for {was}: the "
            f"onecycle schedule has a fixed length; resume with train.epochs={was}, or train a "
            f"longer run with train.schedule=cosine"
        )
    weights = ckpt["model"] if isinstance(ckpt["model"], dict) else {}
    bad = next(
        (
            k
            for k, t in weights.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
        ),
        None,
    )
    if bad is not None:
        raise MatchLabError(
            f"{path}: the weights give NaN (tensor {bad} holds NaN or inf); the file is damaged: "
            f"train again with --overwrite"
        )
    try:
        model.load_state_dict(ckpt["model"])
        load_training_state(loss_fn, opt, ckpt["loss"], ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        _set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MatchLabError(
            f"{path} does not fit this run's model, loss or optimizer ({first[:200]}); resume "
            f"with the run's own config, or train again with --overwrite"
        ) from None
    return state


# The order of an epoch's writes (docs/architecture.md, "Run folder"); last.pt is the commit point:
# 1. when the epoch improved, best.safetensors and threshold.json are written under pending names that
#    carry the epoch; 2. last.pt is replaced (its state names the best epoch); 3. the pending files are
#    renamed into place; 4. metrics.jsonl is rewritten from last.pt's history. Whatever two steps a kill
#    falls between, `_finish_epoch_writes` (step 3-4, run again on resume) makes every file agree with last.pt.
PENDING = ".pending"


def _pending_name(name: str, epoch: int) -> str:
    return f".{name}.epoch{epoch}{PENDING}"


def _finish_epoch_writes(run_dir: Path, state: TrainState) -> None:
    for name in (BEST, THRESHOLD):
        for pending in run_dir.glob(f".{name}.epoch*{PENDING}"):
            epoch = pending.name[len(f".{name}.epoch") : -len(PENDING)]
            if epoch.isdigit() and int(epoch) == state.best_epoch:
                os.replace(pending, run_dir / name)
            else:  # an epoch that last.pt never committed
                pending.unlink()
    atomic_write_text(run_dir / METRICS, "".join(json_line(h) for h in state.history))


def _remove_run_files(run_dir: Path) -> None:
    """--overwrite: the old run's files and evaluations go once the new run has validated."""
    import shutil

    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for pending in run_dir.glob(f".*{PENDING}"):
        pending.unlink()


def _save_epoch(
    run_dir: Path,
    cfg: Config,
    state: TrainState,
    *,
    model,
    model_kwargs: dict,
    loss_state: dict,
    opt_state: dict,
    sched,
    class_names: list[str],
    mean,
    std,
    val_scores,
    val_labels,
    kind: str,
) -> None:
    """Rank 0's writes after an epoch, in the order above."""
    if state.best_epoch == state.epoch:
        save_best_weights(
            run_dir,
            model,
            model_name=cfg.model.name,
            model_kwargs=model_kwargs,
            class_names=class_names,
            res=cfg.data.res,
            crop=cfg.data.crop,
            mean=mean,
            std=std,
            name=_pending_name(BEST, state.epoch),
        )
        if val_scores is not None and 0 < val_labels.sum() < len(val_labels):
            info = recommended_threshold(cfg.train.threshold_rule, val_scores, val_labels)
            atomic_write_json(
                run_dir / _pending_name(THRESHOLD, state.epoch),
                {**info, "epoch": state.epoch, "score": "probability" if kind == "pair" else "cosine"},
            )
    write_last_checkpoint(
        run_dir / LAST,
        {
            "model": model.state_dict(),
            "loss": loss_state,
            "optimizer": opt_state,
            "scheduler": sched.state_dict(),
            "state": dict(state.__dict__),
            "rng": _rng_state(),
            "config": cfg.to_dict(),
        },
    )
    _finish_epoch_writes(run_dir, state)


def json_line(row: dict) -> str:
    import json

    return json.dumps(row) + "\n"


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss/total']:.4f}"]
    for key in ("train_acc", "val_acc", "val_auc", "val_eer"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    if row.get("mfu"):
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    return " | ".join(parts)
