"""The benchmark suites: cache, train, embed, roc, search, scale (`SUITES`, each `suite_<name>(ctx) -> SuiteResult`).

Each suite times MatchLab's own code path and the baseline people write by hand on the same inputs,
in this process, checks that both did the same work (an AssertionError otherwise: a figure from two
different jobs is not a ratio), and returns its figures with units. `Context` carries what suites
share: the image folder, its decode-once cache, and the training run that `embed` loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.env import Clock, repeat_timed, summary
from bench.synthetic import make_jpeg_folder

if TYPE_CHECKING:
    from core.audit.analysis import AuditInput

GENUINE_SHARE = 0.1  # roc: share of genuine pairs among the random scores
SEARCH_TOPK = 5  # search: the baseline's top-k (the issue's "plain chunked matmul + top-5")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the seed-style Normalize


@dataclass
class SuiteResult:
    """figures: name -> {"value", "unit", "note"}; checks: the equal-work and correctness evidence."""

    suite: str
    precision: str
    repeats: int
    figures: dict[str, dict] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    banner: str = ""  # one line printed above the figure table (e.g. sizes reduced for a CPU)

    def add(self, name: str, value: Any, unit: str, note: str = "") -> None:
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        self.figures[name] = {"value": value, "unit": unit, **({"note": note} if note else {})}

    def value(self, name: str) -> Any:
        return self.figures.get(name, {}).get("value")


@dataclass
class Context:
    """What the suites of one run share. work: scratch folder (synthetic data, caches, run folders)."""

    args: argparse.Namespace
    device: torch.device
    work: Path
    cache_dir: Path
    folder: Path | None = None
    folder_make_s: float | None = None
    cache_build_s: float | None = None
    run_dir: Path | None = None  # train's run folder, loaded by embed
    train_images_per_s: float | None = None
    train_compiled_images_per_s: float | None = None

    def dataset(self) -> Path:
        """The image folder: --data as given, else the synthetic JPEG folder (written once per run)."""
        if self.folder is None:
            a = self.args
            if a.data:
                self.folder = Path(a.data).resolve()
            else:
                root = self.work / f"synthetic-{a.images}img-{a.classes}cls-{a.res}px-s{a.seed}"
                with Clock(torch.device("cpu")) as c:
                    self.folder = make_jpeg_folder(root, a.images, a.classes, a.res, seed=a.seed)
                self.folder_make_s = c.seconds
        return self.folder

    def cache(self):
        """The folder's decode-once cache at --res, built here (and timed) when no suite built it yet."""
        from core.data.cache import build_or_load_cache, cache_status

        folder = self.dataset()
        if cache_status(folder, self.args.res, self.cache_dir) != "fresh":
            with Clock(torch.device("cpu")) as c:
                build_or_load_cache(folder, self.args.res, cache_dir=self.cache_dir, progress=False)
            self.cache_build_s = c.seconds
        return build_or_load_cache(folder, self.args.res, cache_dir=self.cache_dir, progress=False)


def _log(msg: str) -> None:
    import sys

    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _precision(device: torch.device) -> str:
    # MatchLab trains and embeds with bf16 autocast on CUDA and fp32 on a CPU (core.embedder.autocast_for).
    return "bf16" if device.type == "cuda" else "fp32"


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- cache


def suite_cache(ctx: Context) -> SuiteResult:
    """Decode-once cache: build rate from nothing, then a second call that must find it fresh and
    decode nothing (counted by wrapping the decoder), in a fraction of the time."""
    import core.data.cache as dc

    a, cpu = ctx.args, torch.device("cpu")
    folder = ctx.dataset()
    shutil.rmtree(dc.cache_location(folder, a.res, ctx.cache_dir), ignore_errors=True)  # a cold build
    decoded = [0]
    real = dc._decode_all

    def counting(*args, **kwargs) -> Iterator:
        for item in real(*args, **kwargs):
            decoded[0] += 1
            yield item

    dc._decode_all = counting  # _build looks the decoder up by name, so this sees every decoded file
    try:
        status_before = dc.cache_status(folder, a.res, ctx.cache_dir)
        with Clock(cpu) as first:
            cache = dc.build_or_load_cache(folder, a.res, cache_dir=ctx.cache_dir, progress=False)
        decoded_first, decoded[0] = decoded[0], 0
        status_after = dc.cache_status(folder, a.res, ctx.cache_dir)
        with Clock(cpu) as second:
            again = dc.build_or_load_cache(folder, a.res, cache_dir=ctx.cache_dir, progress=False)
        decoded_second = decoded[0]
    finally:
        dc._decode_all = real
    ctx.cache_build_s = first.seconds
    n = len(cache)
    r = SuiteResult("cache", "uint8", repeats=1)
    r.conditions = {
        "images": n,
        "classes": len(cache.class_names),
        "res": a.res,
        "folder": str(folder),
        "decode_workers": os.cpu_count(),
    }
    r.add("build_s", first.seconds, "s", "scan + decode + hash + stats + save, from no cache")
    r.add("build_images_per_s", n / first.seconds, "img/s")
    r.add("second_call_s", second.seconds, "s", "stat every file, read the manifest, memory-map")
    r.add("second_to_first", second.seconds / first.seconds, "fraction")
    r.checks = {
        "status_before": status_before,
        "status_after_build": status_after,
        "decoded_first_call": decoded_first,
        "decoded_second_call": decoded_second,
        "same_dataset_hash": cache.dataset_hash == again.dataset_hash,
    }
    assert status_after == "fresh", f"cache_status after a build is {status_after!r}, not 'fresh'"
    assert decoded_second == 0, f"the second call decoded {decoded_second} files"
    assert decoded_first == n + len(cache.skipped), f"the first call decoded {decoded_first} of {n} files"
    return r


# ---------------------------------------------------------------------------------------------- train


def _forever(loader) -> Iterator:
    while True:
        yield from loader


def _baseline_train(
    folder: Path,
    *,
    model_name: str,
    n_classes: int,
    res: int,
    batch: int,
    warmup: int,
    steps: int,
    device: torch.device,
    workers: int,
) -> dict:
    """The seed-style loop: ImageFolder + PIL transforms + DataLoader workers, fp32, plain SGD."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from core.models import create_model

    cuda = device.type == "cuda"
    tf = T.Compose(
        [
            T.Resize(res),
            T.CenterCrop(res),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = ImageFolder(str(folder), transform=tf)
    # persistent workers: an epoch boundary inside the timed steps does not restart them (kind to the baseline)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=cuda,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=len(ds.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    batches = _forever(loader)
    shapes = set()

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        shapes.add(tuple(x.shape))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with Clock(device) as w:
        for _ in range(warmup):
            step()
    with Clock(device) as t:
        for _ in range(steps):
            step()
    out = {
        "seconds": t.seconds,
        "warmup_s": w.seconds,
        "images_per_s": steps * batch / t.seconds,
        "input_shapes": sorted(shapes),
        "state_shapes": _shapes(model),
        "classes": len(ds.classes),
        "images": len(ds),
        "model_class": type(model).__name__,
    }
    loader = batches = None  # stop the workers before the next model (closures above read these names)
    return out


def _trained_model(step: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside the core.train.TrainStep that fit hands train_one_epoch (one process here)."""
    return step.model


class _MeasurementDone(Exception):
    """Raised by the wrapped train_one_epoch on fit's second epoch: the timed window is over."""


def _matchlab_train(ctx: Context, compile: bool) -> dict:
    """Run `core.train.fit` exactly as `python -m core train` does, with train_one_epoch wrapped so its
    first epoch runs `warmup` steps, then `steps` timed steps, with the very objects fit built (model,
    loss head, fused optimiser, schedule, GPU augmentation, autocast, compile). fit then logs that epoch
    to metrics.jsonl (images/s, MFU), validates and checkpoints as usual."""
    import core.train as ct
    from core.config import load_config
    from core.data.prepare import Split
    from core.data.splits import split_by_image

    a = ctx.args
    cache = ctx.cache()
    n_train = len(split_by_image(np.asarray(cache.labels), a.val_fraction, 0)[0])
    per_epoch = n_train // a.batch
    if per_epoch < 1:
        raise ValueError(f"--batch {a.batch} is larger than the {n_train} training images; use more --images")
    # The one-cycle schedule must span the steps taken, or it raises past its end.
    epochs = max(1, math.ceil((a.warmup + a.steps) / per_epoch))
    overrides = [
        f"data.train={ctx.dataset()}",
        f"data.res={a.res}",
        "data.split=image",
        f"data.val_fraction={a.val_fraction}",
        f"model.name={a.model}",
        f"train.batch_size={a.batch}",
        f"train.device={a.device}",
        f"train.compile={str(compile).lower()}",
        f"train.epochs={epochs}",
    ]
    cfg = load_config(None, overrides)
    run_dir = ctx.work / ("run-compiled" if compile else "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    real = ct.train_one_epoch
    got: dict = {}

    def timed_epoch(
        model, loss_fn, opt, sched, *, per_step, split, augment, cfg, epoch, autocast, sanity, groups, teachers
    ):
        if got:
            raise _MeasurementDone
        dev = split.images.device
        order = np.random.default_rng(cfg.train.seed).permutation(len(split.labels))

        def part(n_steps: int, offset: int):
            # Random training images, repeated when steps x batch exceeds the set; gathered before timing.
            idx_np = np.resize(np.roll(order, -offset), n_steps * cfg.train.batch_size)
            idx = torch.from_numpy(idx_np).to(dev)
            return Split(split.images[idx], split.labels[idx], [split.paths[i] for i in idx_np], split.classes_known)

        warm, timed = part(a.warmup, 0), part(a.steps, a.warmup * cfg.train.batch_size)
        probe = torch.arange(cfg.train.batch_size, device=dev)
        gen = torch.Generator(device=dev).manual_seed(0)
        x, _ = ct._inputs(timed, probe, augment, crop=cfg.data.crop, train=True, generator=gen)  # the loop's own
        got.update(
            input_shape=tuple(x.shape),
            input_dtype=str(x.dtype),
            channels_last=bool(x.is_contiguous(memory_format=torch.channels_last)) and x.shape[1] > 1,
            state_shapes=_shapes(_trained_model(model)),
            model_class=type(_trained_model(model)).__name__,
            optimizer=type(opt).__name__,
            fused=bool(opt.defaults.get("fused")),
            loss=type(loss_fn).__name__,
            compiled=cfg.train.compile,
            classes=len(split.labels.unique()),
            train_images=len(split.labels),
        )
        with Clock(dev) as w:
            real(
                model,
                loss_fn,
                opt,
                sched,
                per_step=per_step,
                split=warm,
                augment=augment,
                cfg=cfg,
                epoch=epoch,
                autocast=autocast,
                sanity=sanity,
                groups=groups,
            )
        with Clock(dev) as t:
            out = real(
                model,
                loss_fn,
                opt,
                sched,
                per_step=per_step,
                split=timed,
                augment=augment,
                cfg=cfg,
                epoch=epoch,
                autocast=autocast,
                sanity=sanity,
                groups=groups,
            )
        got.update(
            warmup_s=w.seconds,
            seconds=t.seconds,
            loop_images_per_s=out["images_per_s"],
            images_per_s=a.steps * cfg.train.batch_size / t.seconds,
        )
        return out

    ct.train_one_epoch = timed_epoch  # fit calls it by module global: this is the only change to fit
    try:
        ct.fit(cfg, run_dir)
    except _MeasurementDone:
        pass
    finally:
        ct.train_one_epoch = real
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    got.update(metrics_row=row, overrides=overrides, run_dir=str(run_dir), epochs_configured=epochs)
    return got


def suite_train(ctx: Context) -> SuiteResult:
    a, device = ctx.args, ctx.device
    cache = ctx.cache()
    folder = ctx.dataset()
    n_classes = len(cache.class_names)
    _log(
        f"train: baseline (ImageFolder + PIL + DataLoader x{a.workers}, fp32), {a.warmup}+{a.steps} steps of {a.batch}"
    )
    base = _baseline_train(
        folder,
        model_name=a.model,
        n_classes=n_classes,
        res=a.res,
        batch=a.batch,
        warmup=a.warmup,
        steps=a.steps,
        device=device,
        workers=a.workers,
    )
    _log(f"train: MatchLab (core.train.fit, {_precision(device)}), {a.warmup}+{a.steps} steps of {a.batch}")
    ours = _matchlab_train(ctx, compile=False)
    compiled = None
    if a.compile == "on" or (a.compile == "auto" and device.type == "cuda"):
        _log("train: MatchLab with train.compile=true (warm-up includes compilation)")
        compiled = _matchlab_train(ctx, compile=True)
    ctx.run_dir = Path(ours["run_dir"])
    ctx.train_images_per_s = ours["images_per_s"]

    # Equal work: same model (every weight shape), batch, resolution and class count on both paths.
    expected = (a.batch, 3, a.res, a.res)
    assert base["input_shapes"] == [expected], f"baseline fed {base['input_shapes']}, expected {expected}"
    for name, run in (("eager", ours), ("compiled", compiled)):
        if run is None:
            continue
        assert run["input_shape"] == expected, f"MatchLab ({name}) fed {run['input_shape']}, expected {expected}"
        assert run["state_shapes"] == base["state_shapes"], f"MatchLab ({name}) trains another model than the baseline"
        assert run["model_class"] == base["model_class"] and run["classes"] == base["classes"] == n_classes

    r = SuiteResult("train", _precision(device), repeats=1)
    r.conditions = {
        "model": a.model,
        "res": a.res,
        "batch": a.batch,
        "warmup_steps": a.warmup,
        "timed_steps": a.steps,
        "images": len(cache),
        "classes": n_classes,
        "folder": str(folder),
        "synthetic": not a.data,
        "baseline_workers": a.workers,
        "baseline": "torchvision ImageFolder + Resize/CenterCrop (no-ops at the folder's size) + "
        "RandomHorizontalFlip + ToTensor + Normalize, DataLoader(shuffle, pin_memory on CUDA, "
        "persistent workers), fp32, contiguous, SGD(nesterov) not fused, F.cross_entropy",
        "matchlab": "core.train.fit(load_config(None, overrides)) with train_one_epoch timed; "
        "what `python -m core train <recipe> <overrides>` runs",
        "core_train_overrides": ours["overrides"],
        "matchlab_loop": {
            k: ours[k] for k in ("optimizer", "fused", "loss", "channels_last", "input_dtype", "train_images")
        },
    }
    flops = ours["metrics_row"].get("train_gflop_per_image")
    from core.train import peak_bf16_flops

    peak = peak_bf16_flops(device)
    r.add("baseline_images_per_s", base["images_per_s"], "img/s")
    r.add("matchlab_images_per_s", ours["images_per_s"], "img/s")
    r.add("speedup_vs_baseline", ours["images_per_s"] / base["images_per_s"], "x", "MatchLab img/s / baseline img/s")
    r.add("baseline_step_ms", 1000 * base["seconds"] / a.steps, "ms")
    r.add("matchlab_step_ms", 1000 * ours["seconds"] / a.steps, "ms")
    r.add("matchlab_warmup_s", ours["warmup_s"], "s", f"{a.warmup} untimed step(s)")
    if compiled:
        r.add("matchlab_compiled_images_per_s", compiled["images_per_s"], "img/s")
        r.add("speedup_compiled_vs_baseline", compiled["images_per_s"] / base["images_per_s"], "x")
        r.add("compiled_warmup_s", compiled["warmup_s"], "s", f"{a.warmup} untimed step(s), compilation included")
        ctx.train_compiled_images_per_s = compiled["images_per_s"]
    r.add(
        "train_gflop_per_image",
        flops,
        "GFLOP",
        "forward + backward, torch.utils.flop_counter (core.train.flops_per_image)",
    )
    if peak and flops:
        r.add(
            "mfu_baseline", flops * 1e9 * base["images_per_s"] / peak, "fraction", f"of {peak / 1e12:.0f} TFLOP/s bf16"
        )
        r.add(
            "mfu_matchlab", flops * 1e9 * ours["images_per_s"] / peak, "fraction", f"of {peak / 1e12:.0f} TFLOP/s bf16"
        )
        if compiled:
            r.add("mfu_matchlab_compiled", flops * 1e9 * compiled["images_per_s"] / peak, "fraction")
    else:
        r.notes.append(
            "MFU not reported: no bf16 peak known for this device (core.train.PEAK_BF16_FLOPS; CPU has none)"
        )
    r.add(
        "metrics_jsonl_images_per_s",
        ours["metrics_row"]["images_per_s"],
        "img/s",
        "what fit logged for the timed epoch (train_one_epoch's own clock)",
    )
    if ours["metrics_row"].get("mfu") is not None:
        r.add("metrics_jsonl_mfu", ours["metrics_row"]["mfu"], "fraction")
    if ctx.cache_build_s is not None:
        r.add("cache_build_s", ctx.cache_build_s, "s", "one-time decode for MatchLab; the baseline decodes every epoch")
    if device.type == "cuda":
        r.add("peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
    r.checks = {
        "same_input_shape": True,
        "input_shape": list(expected),
        "same_model_weights_shapes": True,
        "model_class": base["model_class"],
        "classes": n_classes,
        "matchlab_compiled": compiled is not None,
    }
    return r


# ---------------------------------------------------------------------------------------------- embed


def suite_embed(ctx: Context) -> SuiteResult:
    """core.embedder.embed_all over the cached folder, as evaluate runs it (host memory-map in, one
    batch at a time) and from a device-resident copy (as validation runs it)."""
    from core.embedder import Preprocess, RunEmbedder, embed_all, load_embedder
    from core.models import create_model

    a, device = ctx.args, ctx.device
    cache = ctx.cache()
    if ctx.run_dir is not None:
        embedder, source = load_embedder(ctx.run_dir, device=a.device), f"run {ctx.run_dir}"
    else:
        model = create_model(a.model, num_classes=len(cache.class_names)).to(device).eval()
        pre = Preprocess(res=a.res, mean=tuple(cache.mean.tolist()), std=tuple(cache.std.tolist()))
        embedder, source = RunEmbedder(model, pre, device=device), "untrained model"
    res = embedder.preprocess.cache_res
    n = len(cache)
    on_device = torch.from_numpy(np.array(cache.images)).to(device)
    embed_all(embedder, cache.images[: 2 * a.embed_batch], batch_size=a.embed_batch)  # warm-up
    host = repeat_timed(
        lambda: embed_all(embedder, cache.images, batch_size=a.embed_batch), device, a.repeats, warmup=0
    )
    resident = repeat_timed(
        lambda: embed_all(embedder, on_device, batch_size=a.embed_batch), device, a.repeats, warmup=0
    )
    ex = embed_all(embedder, cache.images[:8], batch_size=a.embed_batch)
    r = SuiteResult("embed", _precision(device), repeats=a.repeats)
    r.conditions = {"model": a.model, "res": res, "images": n, "batch": a.embed_batch, "weights": source}
    h, d = summary(host), summary(resident)
    r.add("embed_images_per_s", n / h["median_s"], "img/s", "evaluate's path: uint8 cache memory-map on the host")
    r.add(
        "embed_device_resident_images_per_s",
        n / d["median_s"],
        "img/s",
        "images already on the device (validation's path)",
    )
    if ctx.train_images_per_s:
        r.add("train_images_per_s", ctx.train_images_per_s, "img/s", "MatchLab eager, from the train suite")
        r.add("ratio_embed_to_train", n / h["median_s"] / ctx.train_images_per_s, "x")
        r.add("ratio_embed_device_resident_to_train", n / d["median_s"] / ctx.train_images_per_s, "x")
    else:
        r.notes.append("no train suite in this run: no embed/train ratio")
    r.checks = {
        "timings_host_s": h,
        "timings_device_s": d,
        "embedding_dim": int(ex.embeddings.shape[1]),
        "unit_norm": bool(np.allclose(np.linalg.norm(ex.embeddings, axis=1), 1, atol=1e-3)),
    }
    return r


# ------------------------------------------------------------------------------------------------ roc


def _random_scores(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (n,) float32, genuine (n,) bool), drawn on the CPU so every device sees the same numbers."""
    g = torch.Generator().manual_seed(seed)
    genuine = torch.rand(n, generator=g) < GENUINE_SHARE
    scores = torch.randn(n, generator=g) * 0.15 + genuine.float() * 0.5
    return scores, genuine


def _sklearn_check(scores: np.ndarray, genuine: np.ndarray, device: torch.device) -> dict:
    """EER, AUC and TAR@FAR=1e-3 from core (torch, on the device) against scikit-learn's roc_curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from core.metrics import verification as vm

    p = vm.roc_points(torch.from_numpy(scores).to(device), torch.from_numpy(genuine).to(device))
    ours_eer, ours_auc = vm.eer(p)[0], vm.auc(p)
    ours_tar = vm.tar_at_far(p, [1e-3])["0.001"]["tar"]
    fpr, tpr, _ = roc_curve(genuine, scores, drop_intermediate=False)
    diff = fpr - (1 - tpr)  # FAR - FRR, non-decreasing; interpolate where it crosses 0 (metrics.md)
    i = int(np.searchsorted(diff, 0.0, side="left"))
    t = 0.0 if diff[i] == 0 else -diff[i - 1] / (diff[i] - diff[i - 1])
    sk_eer = float(fpr[i]) if diff[i] == 0 else float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    sk_tar = float(tpr[fpr <= 1e-3].max())
    out = {
        "n": int(scores.shape[0]),
        "eer_core": ours_eer,
        "eer_sklearn": sk_eer,
        "auc_core": ours_auc,
        "auc_sklearn": float(roc_auc_score(genuine, scores)),
        "tar_at_far_1e-3_core": ours_tar,
        "tar_at_far_1e-3_sklearn": sk_tar,
    }
    out["pass"] = bool(
        abs(ours_eer - sk_eer) < 1e-9 and abs(ours_auc - out["auc_sklearn"]) < 1e-9 and abs(ours_tar - sk_tar) < 1e-12
    )
    return out


def suite_roc(ctx: Context) -> SuiteResult:
    """ROC + AUC + EER + TAR@FAR (core.metrics.verification) vs a bare sort + cumsum, per size; the
    sweep table and a streamed all-pairs ROC beside them; EER checked against scikit-learn."""
    from core.metrics import verification as vm
    from core.pairs import iter_all_pair_blocks

    a, device = ctx.args, ctx.device
    r = SuiteResult("roc", "fp32", repeats=a.repeats)
    sizes = [int(float(s)) for s in a.roc_sizes.split(",")]
    r.conditions = {
        "sizes": sizes,
        "genuine_share": GENUINE_SHARE,
        "scores": "N(0, 0.15) impostor, N(0.5, 0.15) genuine, float32",
        "core_path": "roc_points + auc + eer + tar_at_far(6 levels) + sweep_table(n=1001), scores "
        "passed as tensors on the device",
        "baseline": "torch.sort(descending) + cumsum of the sorted labels (the issue's baseline)",
        "baseline_packed": "on a CPU also: np.sort of float32 bits packed with the label in one uint64 "
        "+ cumsum of bit 0 (the fastest bare sort + cumsum we know on this CPU)",
    }
    timings = {}
    for n in sizes:
        scores, genuine = _random_scores(n, a.seed)
        if n == sizes[0]:
            k = min(n, 100_000)
            r.checks["sklearn"] = check = _sklearn_check(scores[:k].numpy(), genuine[:k].numpy(), device)
            assert check["pass"], f"core's ROC numbers differ from scikit-learn's: {check}"
        s, y = scores.to(device), genuine.to(device)
        del scores, genuine
        result = {}

        def ours() -> None:
            p = vm.roc_points(s, y)
            result.update(
                auc=vm.auc(p),
                eer=vm.eer(p)[0],
                tar=vm.tar_at_far(p)["0.001"]["tar"],
                points=len(p),
                sweep_rows=len(vm.sweep_table(p, n=1001)),
            )

        def bare() -> None:
            order = torch.sort(s, descending=True).indices
            torch.cumsum(y[order], 0)

        def bare_packed() -> None:
            keys = np.sort(vm._descending_keys(s_np, y_np))
            np.cumsum(keys.view(np.uint8)[::8] & np.uint8(1), dtype=np.int64)

        _log(f"roc: {n:.0e} scores")
        t_ours = summary(repeat_timed(ours, device, a.repeats))
        t_bare = summary(repeat_timed(bare, device, a.repeats))
        t_packed = None
        if device.type == "cpu" and np.little_endian:
            s_np, y_np = s.numpy(), y.numpy()
            t_packed = summary(repeat_timed(bare_packed, device, a.repeats))
        points = vm.roc_points(s, y)
        t_sweep = summary(repeat_timed(lambda: vm.sweep_table(points, n=1001), device, a.repeats))
        points = None
        key = f"{n:.0e}".replace("+0", "").replace("+", "") if n == float(f"{n:.0e}") else str(n)  # 1e7, or 15000000
        r.add(f"core_roc_eer_tar_{key}_ms", 1000 * t_ours["median_s"], "ms")
        r.add(f"sort_cumsum_{key}_ms", 1000 * t_bare["median_s"], "ms")
        r.add(
            f"core_time_over_sort_time_{key}",
            t_ours["median_s"] / t_bare["median_s"],
            "x",
            "core (ROC, AUC, EER, 6 TAR@FAR, 1001-row sweep) over a bare torch sort + cumsum",
        )
        if t_packed is not None:
            r.add(f"packed_sort_cumsum_{key}_ms", 1000 * t_packed["median_s"], "ms")
            r.add(
                f"core_time_over_packed_sort_time_{key}",
                t_ours["median_s"] / t_packed["median_s"],
                "x",
                "core over the fastest bare sort + cumsum (np.sort of packed keys): the strict ratio",
            )
        r.add(f"sweep_table_1001_{key}_ms", 1000 * t_sweep["median_s"], "ms", "on precomputed points")
        r.add(f"eer_{key}", result["eer"], "rate", "deterministic: same on every device")
        r.add(f"auc_{key}", result["auc"], "")
        timings[key] = {
            "core": t_ours,
            "sort_cumsum": t_bare,
            "packed_sort_cumsum": t_packed,
            "sweep": t_sweep,
            "operating_points": result["points"],
        }
        assert result["sweep_rows"] == 1001
        s = y = None  # release this size's scores before the next (a del would hide them from the closures)
    r.checks["timings"] = timings

    # Streamed all-pairs ROC: embeddings -> blocked pair scores -> histogram ROC, pairs ~ the largest size.
    n_img = math.isqrt(2 * sizes[-1]) + 1
    g = torch.Generator().manual_seed(a.seed)
    labels = torch.arange(n_img) // 10
    centres = torch.randn(labels.max() + 1, 512, generator=g)
    emb = F.normalize(centres[labels] + 1.5 * torch.randn(n_img, 512, generator=g), dim=1)
    emb = emb.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    labels = labels.to(device)
    got = {}

    def stream() -> None:
        roc = vm.StreamingRoc()
        for sc, gen in iter_all_pair_blocks(emb, labels):
            roc.update(sc, gen)
        p = roc.points()
        got.update(eer=vm.eer(p)[0], pairs=p.n_pairs)

    _log(f"roc: streamed all pairs of {n_img} embeddings")
    t_stream = summary(repeat_timed(stream, device, max(1, min(a.repeats, 3))))
    r.add(
        "allpairs_stream_pairs_per_s",
        got["pairs"] / t_stream["median_s"],
        "pairs/s",
        f"{n_img} x 512 embeddings, {got['pairs']:.2e} pairs: iter_all_pair_blocks + StreamingRoc + eer",
    )
    r.checks["allpairs"] = {
        "images": n_img,
        "pairs": got["pairs"],
        "eer": got["eer"],
        "timings_s": t_stream,
        "embedding_dtype": str(emb.dtype),
    }
    return r


# --------------------------------------------------------------------------------------------- search


def suite_search(ctx: Context) -> SuiteResult:
    """1:N search of P probes in a G x 512 gallery: core.metrics.identification (open_set_scores and
    rank_k_accuracy) vs a plain chunked matmul + top-5, same chunk, same inputs; probes/s."""
    from core.metrics import identification as im

    a, device = ctx.args, ctx.device
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.search_dtype]
    P, G, D, chunk = a.search_probes, a.search_gallery, 512, a.search_chunk
    g = torch.Generator().manual_seed(a.seed)
    gallery = F.normalize(torch.randn(G, D, generator=g), dim=1)
    truth = torch.randint(G, (P,), generator=g)
    # A probe is its gallery image plus noise (cosine ~0.82 to it, ~0.2 at most to the other 1e6): one right answer.
    probes = F.normalize(gallery[truth] + 0.7 * F.normalize(torch.randn(P, D, generator=g), dim=1), dim=1)
    gallery, probes = gallery.to(device, dtype), probes.to(device, dtype)
    ids = torch.arange(G, device=device)  # one image per identity, as a 1e6-face distractor gallery
    truth_np = truth.numpy()
    got: dict = {}

    def plain() -> None:
        top = torch.empty(P, SEARCH_TOPK, dtype=torch.long, device=device)
        for s in range(0, P, chunk):
            top[s : s + chunk] = (probes[s : s + chunk] @ gallery.T).topk(SEARCH_TOPK, dim=1).indices
        got["plain"] = top.cpu().numpy()

    def open_set() -> None:
        got["open_set"] = im.open_set_scores(probes, gallery, ids, chunk=chunk)

    def rank_k() -> None:
        got["rank_k"] = im.rank_k_accuracy((probes, gallery, ids), truth_np, ks=(1, 5), chunk=chunk)

    _log(f"search: {P} probes x {G} x {D} gallery, {a.search_dtype}, chunk {chunk}")
    t_plain = summary(repeat_timed(plain, device, a.repeats))
    t_open = summary(repeat_timed(open_set, device, a.repeats))
    t_rank = summary(repeat_timed(rank_k, device, a.repeats))
    # several images per identity (5, shuffled columns): the identity-sorted segment path
    ids5 = torch.from_numpy(np.random.default_rng(a.seed).permutation(G) // 5).to(device)
    t_open5 = summary(
        repeat_timed(
            lambda: got.update(open5=im.open_set_scores(probes, gallery, ids5, chunk=chunk)), device, a.repeats
        )
    )
    t_rank5 = summary(
        repeat_timed(
            lambda: got.update(
                rank5=im.rank_k_accuracy((probes, gallery, ids5), ids5.cpu().numpy()[truth_np], ks=(1, 5), chunk=chunk)
            ),
            device,
            a.repeats,
        )
    )
    top1_plain = got["plain"][:, 0]
    agree = float(np.mean(got["open_set"][0] == top1_plain))
    agree5 = float(np.mean(got["open5"][0] == ids5.cpu().numpy()[top1_plain]))
    r = SuiteResult("search", a.search_dtype, repeats=a.repeats)
    r.conditions = {
        "probes": P,
        "gallery": G,
        "dim": D,
        "dtype": a.search_dtype,
        "chunk": chunk,
        "topk": SEARCH_TOPK,
        "baseline": f"for each chunk: (probes @ gallery.T).topk({SEARCH_TOPK}); indices to host at the end",
        "core_paths": "open_set_scores(probes, gallery, ids) and rank_k_accuracy((probes, gallery, ids), truth, ks=(1, 5))",
    }
    r.add("plain_topk_probes_per_s", P / t_plain["median_s"], "probes/s")
    r.add("core_open_set_probes_per_s", P / t_open["median_s"], "probes/s")
    r.add("core_rank_k_probes_per_s", P / t_rank["median_s"], "probes/s")
    r.add("speedup_open_set_vs_plain", t_plain["median_s"] / t_open["median_s"], "x", "> 1: core faster")
    r.add("speedup_rank_k_vs_plain", t_plain["median_s"] / t_rank["median_s"], "x", "> 1: core faster")
    r.add(
        "speedup_open_set_5_per_id_vs_plain",
        t_plain["median_s"] / t_open5["median_s"],
        "x",
        "gallery of G/5 identities x 5 images, columns shuffled",
    )
    r.add(
        "speedup_rank_k_5_per_id_vs_plain",
        t_plain["median_s"] / t_rank5["median_s"],
        "x",
        "same; host: identities at or above the true one counted, no per-identity max",
    )
    r.add(
        "plain_matmul_tflop_per_s",
        2 * P * G * D / t_plain["median_s"] / 1e12,
        "TFLOP/s",
        "matmul FLOPs over the whole search time",
    )
    r.checks = {
        "top1_core_equals_plain": agree,
        "top1_identity_5_per_id_equals_plain": agree5,
        "rank_1_5_per_id": got["rank5"]["rank_1"],
        "top1_plain_correct": float(np.mean(top1_plain == truth_np)),
        "rank_1": got["rank_k"]["rank_1"],
        "rank_5": got["rank_k"]["rank_5"],
        "timings_s": {
            "plain": t_plain,
            "open_set": t_open,
            "rank_k": t_rank,
            "open_set_5_per_id": t_open5,
            "rank_k_5_per_id": t_rank5,
        },
    }
    if dtype != torch.float32 and device.type != "cuda":
        r.notes.append(
            "off CUDA core.metrics.identification computes in float32 (_unit), so its matmul "
            "runs in fp32 while the baseline's runs in the gallery's dtype"
        )
    assert agree >= 0.999, f"core's best identity differs from the plain top-1 for {1 - agree:.2%} of probes"
    assert agree5 >= 0.999, f"core's best identity (5 per id) differs from the plain top-1's for {1 - agree5:.2%}"
    return r


# ---------------------------------------------------------------------------------------------- scale

SCALE_DIM = 512
SCALE_PER_IDENTITY = 10  # gallery images per synthetic identity (all-pairs images too)
SCALE_NOISE = 1.0  # noise norm per image against a unit identity centre: same-identity cosine ~0.5
SCALE_ROWS = 65_536  # rows generated at a time: bounds the generator's memory, not a search setting
SCALE_CHECK_PROBES = 64  # probes checked against a brute-force numpy top-k over the whole gallery
SCALE_EMBED_POOL = 4  # distinct synthetic image batches the embedding loop cycles through


def _identity_rows(identities: np.ndarray, centres: torch.Tensor, seed: int, out: np.ndarray) -> np.ndarray:
    """Fill out (N, 512) float32 with unit rows: row i = centre of identities[i] + noise of norm
    SCALE_NOISE, drawn on the CPU from `seed` chunk by chunk (same numbers on every machine)."""
    g = torch.Generator().manual_seed(seed)
    for s in range(0, len(identities), SCALE_ROWS):
        ids = torch.from_numpy(identities[s : s + SCALE_ROWS])
        noise = F.normalize(torch.randn(len(ids), SCALE_DIM, generator=g), dim=1) * SCALE_NOISE
        out[s : s + len(ids)] = F.normalize(centres[ids] + noise, dim=1).numpy()
    return out


def _embedding_file(path: Path, identities: np.ndarray, centres: torch.Tensor, seed: int) -> np.ndarray:
    """A read-only .npy memmap of `_identity_rows`, written once (a --work folder reuses it)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(identities), SCALE_DIM))
        _identity_rows(identities, centres, seed, out)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def _brute_topk(probes: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference: every score, a stable full sort (equal scores: lower row first), top k."""
    sims = np.concatenate(
        [probes @ np.asarray(gallery[s : s + SCALE_ROWS]).T for s in range(0, gallery.shape[0], SCALE_ROWS)], axis=1
    )
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _gpu_peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def suite_scale(ctx: Context) -> SuiteResult:
    """Evaluation at scale: exact 1:N top-k of P probes in a G x 512 memory-mapped gallery
    (core.search.exact_topk, and a FAISS IVF index with its recall against exact), verification over
    all pairs of N images (core.evaluate.stream_all_pairs), embedding extraction at --scale-res, and
    peak memory. Embeddings are identity centres + noise, so the recall figures mean something."""
    from core.evaluate import stream_all_pairs
    from core.pairs import all_pairs_counts
    from core.search import build_index, exact_topk, plan_chunks, recall_at_k

    a, device, cpu = ctx.args, ctx.device, torch.device("cpu")
    G, P, N, k = a.scale_gallery, a.scale_probes, a.scale_pairs_images, a.scale_topk
    budget = int(a.scale_budget_mib * 2**20) if a.scale_budget_mib else None
    r = SuiteResult("scale", _precision(device), repeats=1)
    if a.scale_reduced:
        r.banner = (
            "scale: sizes reduced for a CPU from the issue's GPU sizes: "
            + ", ".join(f"{name} {gpu:,} -> {ours:,}" for name, (ours, gpu) in a.scale_reduced.items())
            + " (set them with --scale-*)"
        )
        r.notes.append(r.banner)
        _log(r.banner)

    # --- identification: exact top-k over the memory-mapped gallery
    n_ids = -(-G // SCALE_PER_IDENTITY)
    centres = F.normalize(torch.randn(n_ids, SCALE_DIM, generator=torch.Generator().manual_seed(a.seed)), dim=1)
    folder = ctx.work / f"scale-{G}g-{P}p-s{a.seed}"
    g_ids = np.arange(G) // SCALE_PER_IDENTITY
    p_ids = np.random.default_rng(a.seed).integers(0, n_ids, P)
    _log(f"scale: writing {G:,} gallery + {P:,} probe embeddings (memmaps) under {folder}")
    gallery = _embedding_file(folder / "gallery.npy", g_ids, centres, a.seed + 1)
    probes = _embedding_file(folder / "probes.npy", p_ids, centres, a.seed + 2)
    plan = plan_chunks(P, G, SCALE_DIM, k, device, budget)
    _log(
        f"scale: exact top-{k} of {P:,} probes in {G:,} x {SCALE_DIM}, chunks {plan.probe_chunk} x "
        f"{plan.gallery_chunk}, {'resident' if plan.resident else 'streamed'} gallery, {plan.dtype}"
    )
    # warm-up: reads the memmap into the page cache once, plans cuBLAS, fills the allocator
    exact_topk(probes[: min(P, 256)], gallery, k, device=device, budget_bytes=budget, progress=False)
    _gpu_peak_reset(device)
    with Clock(device) as t_exact:
        scores, index = exact_topk(probes, gallery, k, device=device, budget_bytes=budget)
    r.add(
        "exact_probes_per_s",
        P / t_exact.seconds,
        "probes/s",
        f"core.search.exact_topk, top-{k}, {P:,} probes x {G:,} x {SCALE_DIM} float32 memmap, {plan.dtype}",
    )
    r.add("exact_search_s", t_exact.seconds, "s")
    r.add(
        "exact_rank1_identity_accuracy",
        float(np.mean(g_ids[index[:, 0]] == p_ids)),
        "fraction",
        "the top-1 image's identity is the probe's (deterministic: same on every device)",
    )
    r.add(
        "exact_matmul_tflop_per_s",
        2 * P * G * SCALE_DIM / t_exact.seconds / 1e12,
        "TFLOP/s",
        "matmul FLOPs over the whole search time (memmap reads included)",
    )
    if device.type == "cuda":
        r.add(
            "exact_peak_gpu_memory_gib",
            torch.cuda.max_memory_allocated(device) / 2**30,
            "GiB",
            f"plan estimate {plan.estimated_bytes / 2**30:.2f} GiB of a {plan.budget_bytes / 2**30:.2f} GiB budget",
        )
    sub = np.unique(np.linspace(0, P - 1, min(P, SCALE_CHECK_PROBES)).astype(np.int64))
    _log(f"scale: brute-force numpy top-{k} of {len(sub)} probes for the check")
    ref_s, ref_i = _brute_topk(np.asarray(probes[sub]), gallery, k)
    same_rows = (index[sub] == ref_i).all(1)
    exact_check = {
        "probes_checked": len(sub),
        "recall_at_k_vs_numpy": recall_at_k(index[sub], ref_i, k),
        "identical_lists": float(same_rows.mean()),
        "max_score_diff": float(np.abs(scores[sub][same_rows] - ref_s[same_rows]).max(initial=0.0)),
        "plan": {
            "probe_chunk": plan.probe_chunk,
            "gallery_chunk": plan.gallery_chunk,
            "candidates": plan.candidates,
            "resident": plan.resident,
            "dtype": str(plan.dtype),
            "budget_bytes": plan.budget_bytes,
            "estimated_bytes": plan.estimated_bytes,
        },
    }
    r.checks["exact_vs_numpy"] = exact_check

    # --- identification: approximate FAISS IVF index, recall against exact
    try:
        import faiss  # noqa: F401
    except ImportError:
        faiss_ok = False
        r.notes.append("faiss is not installed: no IVF figures (pip install faiss-cpu)")
    else:
        faiss_ok = True
        _log(f"scale: faiss-ivf index over {G:,} images (CPU)")
        with Clock(cpu) as t_build:
            ivf = build_index(gallery, "faiss-ivf", seed=a.seed, progress=False, budget_bytes=budget)
        ivf.search(probes[: min(P, 256)], k, progress=False)  # warm-up
        with Clock(cpu) as t_ivf:
            ivf_s, ivf_i = ivf.search(probes, k)
        lists, nprobe = ivf.faiss_index.nlist, ivf.faiss_index.nprobe
        r.add(
            "ivf_probes_per_s",
            P / t_ivf.seconds,
            "probes/s",
            f"faiss IVF-Flat on the CPU, nlist {lists}, nprobe {nprobe}",
        )
        r.add("ivf_recall_at_1_vs_exact", recall_at_k(ivf_i, index, 1), "fraction", "IVF top-1 = exact top-1")
        r.add(f"ivf_recall_at_{k}_vs_exact", recall_at_k(ivf_i, index, k), "fraction")
        r.add("ivf_build_s", t_build.seconds, "s", "k-means training + adding every gallery row")
        # its scores must be the fp32 cosines of the rows it returns
        rows = ivf_i[sub]
        found = rows >= 0
        direct = np.einsum(
            "pd,pkd->pk",
            np.asarray(probes[sub]),
            np.asarray(gallery[np.clip(rows, 0, None).ravel()]).reshape(*rows.shape, SCALE_DIM),
        )
        r.checks["ivf"] = {
            "nlist": int(lists),
            "nprobe": int(nprobe),
            "holes": int((ivf_i < 0).sum()),
            "max_score_diff_vs_direct": float(np.abs(ivf_s[sub][found] - direct[found]).max(initial=0.0)),
            "sorted_descending": bool((np.diff(ivf_s, axis=1) <= 0).all()),
        }
        del ivf

    # --- verification: all pairs of N images through the blocked all-pairs stream
    pair_ids = np.arange(N) // SCALE_PER_IDENTITY
    emb = _identity_rows(pair_ids, centres, a.seed + 3, np.empty((N, SCALE_DIM), np.float32))
    total = all_pairs_counts(N)
    _log(f"scale: all {total:,} pairs of {N:,} embeddings")
    stream_all_pairs(emb[:1024], pair_ids[:1024], device)  # warm-up
    _gpu_peak_reset(device)
    with Clock(device) as t_pairs:
        ver = stream_all_pairs(emb, pair_ids, device)
    r.add(
        "allpairs_pairs_per_s",
        total / t_pairs.seconds,
        "pairs/s",
        f"core.evaluate.stream_all_pairs, {N:,} x {SCALE_DIM} embeddings, {total:.3e} pairs",
    )
    r.add("allpairs_s", t_pairs.seconds, "s")
    r.add("allpairs_eer", ver["eer"], "rate", "deterministic: synthetic identities, same on every device")
    if device.type == "cuda":
        r.add("allpairs_peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
    per_id = np.bincount(pair_ids)
    r.checks["allpairs"] = {
        "pairs": total,
        "n_genuine": ver["n_genuine"],
        "n_impostor": ver["n_impostor"],
        "expected_genuine": int((per_id * (per_id - 1) // 2).sum()),
    }
    del emb

    # --- embedding extraction: synthetic uint8 images, generated in batches before the clock starts
    from core.embedder import Preprocess, RunEmbedder, embed_all
    from core.models import create_model

    n_img, res = a.scale_embed_images, a.scale_res
    batch = min(a.embed_batch, n_img)
    model = create_model(a.model, num_classes=0).to(device).eval()
    g = torch.Generator().manual_seed(a.seed)
    pool = [
        torch.randint(0, 256, (batch, res, res, 3), dtype=torch.uint8, generator=g).to(device)
        for _ in range(min(SCALE_EMBED_POOL, -(-n_img // batch)))
    ]
    embedder = RunEmbedder(model, Preprocess(res=res, mean=(0.5,) * 3, std=(0.25,) * 3), device=device)
    embed_all(embedder, pool[0][: min(batch, 8)], batch_size=batch)  # warm-up
    _log(f"scale: embedding {n_img:,} images of {res} px with {a.model}, batch {batch}")
    _gpu_peak_reset(device)
    dims, unit, done = set(), True, 0
    with Clock(device) as t_embed:
        while done < n_img:
            x = pool[(done // batch) % len(pool)][: n_img - done]
            e = embed_all(embedder, x, batch_size=batch).embeddings
            dims.add(e.shape)
            unit &= bool(np.isfinite(e).all() and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-3))
            done += len(e)
    r.add(
        "embed_images_per_s",
        n_img / t_embed.seconds,
        "img/s",
        f"core.embedder.embed_all, untrained {a.model}, {res} px, batch {batch}, images on the device",
    )
    if device.type == "cuda":
        r.add("embed_peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
    r.checks["embed"] = {"images": done, "output_shapes": [list(d) for d in sorted(dims)], "unit_norm": unit}
    r.add("peak_rss_gib", _peak_rss_gib(), "GiB", "peak resident memory of the whole bench process (getrusage)")
    r.conditions = {
        "gallery": G,
        "probes": P,
        "dim": SCALE_DIM,
        "topk": k,
        "pairs_images": N,
        "pairs": total,
        "embed_images": n_img,
        "res": res,
        "model": a.model,
        "budget_bytes": plan.budget_bytes,
        "images_per_identity": SCALE_PER_IDENTITY,
        "noise": SCALE_NOISE,
        "faiss": faiss_ok,
        "embeddings": f"unit(identity centre + noise of norm {SCALE_NOISE}), float32, drawn on the CPU "
        f"from --seed; gallery image i is identity i // {SCALE_PER_IDENTITY}",
        "gallery_file": str(folder / "gallery.npy"),
    }

    # Checks last, so a failure still reports what was measured in the JSON's error text.
    tol = 1e-5
    if plan.dtype == torch.float32:
        assert exact_check["recall_at_k_vs_numpy"] == 1.0 and exact_check["identical_lists"] == 1.0, (
            f"exact_topk differs from the numpy top-{k}: {exact_check}"
        )
    else:  # bf16 selects candidates, fp32 re-scores them: a rare near-tie may swap in a neighbour
        assert exact_check["recall_at_k_vs_numpy"] >= 0.99, f"exact_topk (bf16) misses numpy's top-{k}: {exact_check}"
    assert exact_check["max_score_diff"] <= tol, f"exact_topk scores differ from numpy's by > {tol}: {exact_check}"
    if faiss_ok:
        ivf_check = r.checks["ivf"]
        assert ivf_check["sorted_descending"] and ivf_check["max_score_diff_vs_direct"] <= tol, (
            f"the IVF index returns unsorted or wrong scores: {ivf_check}"
        )
    pairs = r.checks["allpairs"]
    assert pairs["n_genuine"] + pairs["n_impostor"] == total, f"all-pairs counted {pairs}, expected {total} pairs"
    assert pairs["n_genuine"] == pairs["expected_genuine"], f"all-pairs genuine count is wrong: {pairs}"
    assert len({d[1] for d in dims}) == 1, f"embedding widths vary between batches: {sorted(dims)}"
    assert done == n_img and unit, f"embedded {done} of {n_img} images; unit-norm and finite: {unit}"
    return r


AUDIT_PER_IDENTITY = 10  # images per synthetic identity in the audit suite (CFP has 14, ORL 10)
AUDIT_MOVED = 0.03  # share of labels moved to a wrong identity, as in the issue's corrupted CFP
AUDIT_COPIES = 50  # rows duplicated (same embedding, same content hash) across the split boundary
AUDIT_RES = 64  # side of the synthetic uint8 images whose quality is measured
AUDIT_PAIRS = 1_000_000  # evaluation pairs for the error-versus-reject curve (evaluate's sample size)


def _audit_input(n: int, seed: int, work: Path) -> tuple[AuditInput, np.ndarray, np.ndarray]:
    """A synthetic audit input of n images: identity-structured 512-d embeddings (`_identity_rows`),
    identity split (1 in 10 identities test, 1 val), AUDIT_MOVED of the labels moved, AUDIT_COPIES train
    rows copied over held-out rows. Returns (input, moved rows, uint8 images memmap (n, 64, 64, 3))."""
    from core.audit.analysis import AuditInput

    ids = np.arange(n) // AUDIT_PER_IDENTITY
    n_ids = int(ids.max()) + 1
    centres = F.normalize(torch.randn(n_ids, SCALE_DIM, generator=torch.Generator().manual_seed(seed)), dim=1)
    emb = _identity_rows(ids, centres, seed + 1, np.empty((n, SCALE_DIM), np.float32))
    rng = np.random.default_rng(seed)
    split = np.where(ids % 10 == 0, "test", np.where(ids % 10 == 1, "val", "train")).astype(object)
    hashes = np.arange(n).astype(str).astype(object)
    held, train = np.flatnonzero(split != "train"), np.flatnonzero(split == "train")
    src, dst = rng.choice(train, AUDIT_COPIES, replace=False), rng.choice(held, AUDIT_COPIES, replace=False)
    emb[dst], hashes[dst] = emb[src], hashes[src]
    labels = ids.copy()
    pool = np.setdiff1d(np.arange(n), np.concatenate([src, dst]))
    moved = rng.choice(pool, round(AUDIT_MOVED * n), replace=False)
    labels[moved] = (labels[moved] + rng.integers(1, n_ids, len(moved))) % n_ids
    path = work / f"audit-images-{n}-s{seed}.npy"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(
            path.with_suffix(".partial.npy"), mode="w+", dtype=np.uint8, shape=(n, AUDIT_RES, AUDIT_RES, 3)
        )
        for s in range(0, n, SCALE_ROWS // 8):
            e = min(n, s + SCALE_ROWS // 8)
            out[s:e] = rng.integers(0, 256, (e - s, AUDIT_RES, AUDIT_RES, 3), dtype=np.uint8)
        out.flush()
        del out
        os.replace(path.with_suffix(".partial.npy"), path)
    inp = AuditInput(
        emb,
        labels,
        [f"id{i:06d}" for i in range(n_ids)],
        [f"id{i:06d}/{r}.jpg" for i, r in zip(ids, range(n))],
        split,
        hashes,
    )
    return inp, moved, np.load(path, mmap_mode="r")


def _moved_in_top(label_score: np.ndarray, moved: np.ndarray) -> float:
    """Share of the moved rows among the 2 x len(moved) lowest label scores."""
    top = np.argsort(label_score, kind="stable")[: 2 * len(moved)]
    return float(np.isin(moved, top).mean())


def _audit_baseline(inp: AuditInput, k: int) -> tuple[float, np.ndarray]:
    """What the cleanlab tutorials do: out-of-fold probabilities from scikit-learn's cross_val_predict
    with a KNeighborsClassifier (cosine, brute force) on the embeddings, cleanlab's find_label_issues and
    label quality scores, and a NearestNeighbors query for near duplicates. Returns (seconds, scores)."""
    import time

    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    t = time.perf_counter()
    emb, y = np.asarray(inp.embeddings), np.asarray(inp.labels)
    present, y_c = np.unique(y, return_inverse=True)
    probs = cross_val_predict(
        KNeighborsClassifier(k, metric="cosine", algorithm="brute", weights="distance"),
        emb,
        y_c,
        cv=5,
        method="predict_proba",
    )
    probs = 0.99 * probs + 0.01 / probs.shape[1]
    find_label_issues(y_c, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    scores = get_label_quality_scores(y_c, probs)
    NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(emb).kneighbors(emb)
    return time.perf_counter() - t, scores


def suite_audit(ctx: Context) -> SuiteResult:
    """The data audit (issue 14) on N synthetic images from their cached embeddings, each stage timed:
    neighbour search, cross-validated kNN + cleanlab label issues, outliers and identity centroids,
    duplicates and leakage, image quality (on a uint8 memmap), error-versus-reject on 1e6 pairs, and the
    ranked tables. A baseline (scikit-learn cross_val_predict kNN + cleanlab, as its tutorials do) runs on
    a smaller set beside ours, for the ratio; both must find the moved labels equally."""
    import time

    from core.audit.analysis import AuditSettings, analyse
    from core.audit.quality import quality_bins, reject_curve
    from core.audit.run import fixes_table, issue_table, quality_table

    a = ctx.args
    r = SuiteResult("audit", "fp32", repeats=1)
    settings = AuditSettings(budget_bytes=int(a.scale_budget_mib * 2**20) if a.scale_budget_mib else None)
    n, n_base = a.audit_images, min(a.audit_baseline_images, a.audit_images)
    r.conditions = {
        "images": n,
        "identities": -(-n // AUDIT_PER_IDENTITY),
        "dim": SCALE_DIM,
        "res": AUDIT_RES,
        "baseline_images": n_base,
        "pairs": AUDIT_PAIRS,
    }

    _log(f"audit: baseline vs core.audit on {n_base:,} images")
    small, moved_s, _ = _audit_input(n_base, a.seed, ctx.work)
    base_s, base_scores = _audit_baseline(small, settings.k)
    t = time.perf_counter()
    f_small = analyse(small, settings)
    ours_s = time.perf_counter() - t
    r.add("baseline_s", base_s, "s", f"sklearn cross_val_predict kNN + cleanlab + NearestNeighbors, {n_base:,} images")
    r.add("audit_labels_dups_s_same_size", ours_s, "s", f"core.audit.analysis.analyse, {n_base:,} images")
    r.add("speedup_vs_baseline", base_s / ours_s, "x", "baseline seconds / ours, same images, same process")
    r.checks["moved_in_top_2x"] = {
        "ours": _moved_in_top(f_small.images["label_score"].to_numpy(), moved_s),
        "baseline": _moved_in_top(base_scores, moved_s),
    }
    assert r.checks["moved_in_top_2x"]["ours"] >= r.checks["moved_in_top_2x"]["baseline"] - 0.05, r.checks

    _log(f"audit: {n:,} images, {r.conditions['identities']:,} identities, {SCALE_DIM}-d embeddings")
    inp, moved, images = _audit_input(n, a.seed, ctx.work)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    f = analyse(inp, settings)
    stages.update(f.timings)
    t = time.perf_counter()
    q = quality_table(images, ctx.work / "no-such-folder", inp.paths)  # header reads fail fast: no files here
    f.images = pd.concat([f.images, q], axis=1)
    stages["quality"] = time.perf_counter() - t
    t = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    ia, ib = rng.integers(0, n, AUDIT_PAIRS), rng.integers(0, n, AUDIT_PAIRS)
    same = (inp.labels[ia] == inp.labels[ib]).astype(np.int64)
    same[: AUDIT_PAIRS // 2] = 1  # half genuine, as a balanced evaluation sample
    score = np.where(same == 1, rng.normal(0.5, 0.15, AUDIT_PAIRS), rng.normal(0.0, 0.15, AUDIT_PAIRS))
    reject_curve(
        {"sharpness": q["sharpness"].to_numpy(), "contrast": q["contrast"].to_numpy()}, ia, ib, same, score, 0.25
    )
    quality_bins(q["sharpness"].to_numpy(), ia, ib, same, score, 0.25)
    stages["reject_curve_and_bins"] = time.perf_counter() - t
    t = time.perf_counter()
    fixes_table(f), issue_table(f)
    stages["tables"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    for name, sec in stages.items():
        r.add(f"stage_{name}_s", sec, "s")
    r.add(
        "audit_total_s",
        total,
        "s",
        f"{n:,} images from cached embeddings (issue target: 1e5 in <= 600 s on 2 CPU cores)",
    )
    r.add("images_per_s", n / total, "images/s")
    r.checks["moved_in_top_2x_full"] = _moved_in_top(f.images["label_score"].to_numpy(), moved)
    r.checks["copies_found"] = int(f.summary["exact_duplicate_pairs"])
    r.checks["leaking_pairs"] = int(f.summary["leaking_pairs"])
    r.checks["label_flag_method"] = f.summary["label_flag_method"]
    assert r.checks["copies_found"] >= AUDIT_COPIES and r.checks["leaking_pairs"] >= AUDIT_COPIES, r.checks
    if n < 100_000:
        r.banner = (
            f"audit: {n:,} images here; the issue's 1e5 target is checked at --audit-images 100000 "
            "(the stages are ~linear in N except the neighbour search, ~N^2)"
        )
        r.notes.append(r.banner)
    return r


def suite_dashboard_load(ctx: Context) -> SuiteResult:
    """N concurrent viewers of the dashboard's Verification page (bench/dashboard_load.py)."""
    from bench.dashboard_load import suite_dashboard_load as run

    return run(ctx)


def suite_cpu_threads(ctx: Context) -> SuiteResult:
    """OpenMP spin-waiting (default) against OMP_WAIT_POLICY=PASSIVE, idle and with a busy core (bench/cpu_threads.py)."""
    from bench.cpu_threads import suite_cpu_threads as run

    return run(ctx)


def suite_cpu_train(ctx: Context) -> SuiteResult:
    """The face recipe's train step on the CPU: eager fp32 against channels_last and bf16 (bench/cpu_train.py)."""
    from bench.cpu_train import suite_cpu_train as run

    return run(ctx)


def suite_bootstrap(ctx: Context) -> SuiteResult:
    """Subject-bootstrap intervals (core.metrics.uncertainty: one sort, replicates re-weight the sorted pairs
    in a compiled walk) against a plain loop that re-sorts each replicate's resampled pairs, on the same
    identity draws; both produce AUC and EER per replicate, checked equal."""
    import os

    from core.metrics import uncertainty as unc

    a = ctx.args
    n, B, K = int(a.bootstrap_scores), int(a.bootstrap_replicates), int(a.bootstrap_identities)
    B_base = min(B, int(getattr(a, "bootstrap_baseline_replicates", None) or B))
    r = SuiteResult("bootstrap", "fp64", repeats=a.repeats)
    rng = np.random.default_rng(a.seed)
    ia = rng.integers(0, K, n).astype(np.int32)
    ib = np.where(rng.random(n) < GENUINE_SHARE, ia, rng.integers(0, K, n)).astype(np.int32)
    y = ia == ib
    s = rng.normal(size=n) * 0.15 + 0.5 * y  # float64: no ties, so the re-sort baseline's trapezoid is exact
    r.conditions = {
        "scores": n,
        "replicates": B,
        "identities": K,
        "genuine_share": float(y.mean()),
        "threads": unc.THREADS,
        "load_average_1m_before": os.getloadavg()[0],
        "core_path": "prepare (one sort) + replicates(resample=identities): AUC, EER, 6 TAR@FAR, "
        "40 band levels and 1 threshold per replicate",
        "baseline": "for each replicate: pair weights from the same identity draws, drop weight-0 pairs, "
        "np.argsort of the kept scores, weighted cumsums -> AUC and EER (a plain loop of "
        f"{B} re-sorts)",
    }
    ca, cb, k_used = unc.identity_codes(ia, ib)  # the identity numbering prepare() uses: same draws per identity
    W = unc.identity_weights(k_used, B, a.seed)
    got = {}

    def ours() -> None:
        prep = unc.prepare(s, y, ia, ib)
        rep = unc.replicates(
            prep,
            resample="identities",
            n_boot=B,
            seed=a.seed,
            thresholds=[0.3],
            far_levels=list(unc.DEFAULT_FAR_LEVELS) + unc.band_levels(prep.n_impostor),
        )
        got["ours"] = rep

    def baseline() -> None:
        aucs, eers = np.empty(B_base), np.empty(B_base)
        for b in range(B_base):
            w = W[b, ca] * W[b, cb]
            keep = w > 0
            order = np.argsort(-s[keep], kind="stable")
            wk, yk = w[keep][order], y[keep][order]
            tp = np.concatenate([[0.0], np.cumsum(wk * yk)])
            fp = np.concatenate([[0.0], np.cumsum(wk * ~yk)])
            aucs[b] = np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])) / (2 * tp[-1] * fp[-1])
            diff = fp / fp[-1] - (tp[-1] - tp) / tp[-1]
            i = int(np.searchsorted(diff, 0.0))
            far = fp / fp[-1]
            d0, d1 = diff[i - 1], diff[i]
            eers[b] = far[i] if d1 == 0 else far[i - 1] + (-d0 / (d1 - d0)) * (far[i] - far[i - 1])
        got["baseline"] = (aucs, eers)

    import time as _time

    _log(f"bootstrap: {B} replicates over {n:.0e} scores, compiled re-weighting")
    cpu0 = _time.process_time()
    t_ours = summary(repeat_timed(ours, torch.device("cpu"), a.repeats))
    cpu_ours = (_time.process_time() - cpu0) / (a.repeats + 1)  # CPU seconds per call, all threads (warm-up included)
    _log(f"bootstrap: the plain loop of {B_base} re-sorts (once)")
    t_base = summary(repeat_timed(baseline, torch.device("cpu"), 1, warmup=0))
    scale = B / B_base
    auc_diff = float(np.max(np.abs(got["ours"]["auc"][:B_base] - got["baseline"][0])))
    eer_diff = float(np.max(np.abs(got["ours"]["eer"][:B_base] - got["baseline"][1])))
    r.checks = {
        "max_abs_auc_difference": auc_diff,
        "max_abs_eer_difference": eer_diff,
        "timings": {"core": t_ours, "resort_loop": t_base},
    }
    # float64 cumulative sums in a different order: measured differences are ~1e-15
    assert auc_diff < 1e-9 and eer_diff < 1e-9, f"the two paths computed different replicates: {r.checks}"
    r.conditions["load_average_1m_after"] = os.getloadavg()[0]
    r.add("core_bootstrap_s", t_ours["median_s"], "s", f"{B} identity replicates over {n:.0e} scores (incl. the sort)")
    r.add(
        "core_bootstrap_cpu_s",
        cpu_ours,
        "s",
        f"CPU seconds per call summed over {unc.THREADS} threads: the wall time on idle cores is about this / threads",
    )
    r.add(
        "resort_loop_s",
        t_base["median_s"] * scale,
        "s",
        f"{B} re-sorts" + (f", timed on {B_base} and scaled x{scale:g}" if scale != 1 else ", one run"),
    )
    r.add("speedup_over_resort_loop", t_base["median_s"] * scale / t_ours["median_s"], "x")
    return r


# ---------------------------------------------------------------------------------------------- import


def suite_import(ctx: Context) -> SuiteResult:
    """Issue 11: extraction through an imported .pt2 and ONNX file against the same network in eager PyTorch,
    batched, on the same cached images, each through core.embedder.embed_all (the path evaluate takes)."""
    from core.embedder import Preprocess, RunEmbedder, embed_all, load_embedder
    from core.external import import_model
    from core.models import create_model

    a, device = ctx.args, ctx.device
    cache = ctx.cache()
    torch.manual_seed(a.seed)
    model = create_model(a.model, num_classes=len(cache.class_names)).to(device).eval()
    pre = Preprocess(res=(a.res, a.res), mean=tuple(cache.mean.tolist()), std=tuple(cache.std.tolist()))
    native = RunEmbedder(model, pre, device=device, amp=False)  # fp32 on both sides: the same arithmetic

    class Features(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.forward_features(x)

    out = ctx.work / "import"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    example = torch.zeros(2, 3, a.res, a.res, device=device)
    module = Features(model).eval()
    n = torch.export.Dim("n", min=1, max=65536)
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: n},)), out / "model.pt2")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.cpu(),
            (example.cpu(),),
            str(out / "model.onnx"),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    module.to(device)
    embedders = {"eager": native}
    for fmt in ("pt2", "onnx"):
        import_model(out / f"model.{fmt}", name=fmt, preprocess=pre, out=out / "runs", device=a.device)
        embedders[fmt] = load_embedder(out / "runs" / fmt, device=a.device)
    images, b = cache.images, a.embed_batch
    ref = embed_all(native, images[:64], batch_size=b).embeddings
    r = SuiteResult("import", _precision(device) if device.type != "cuda" else "fp32", repeats=a.repeats)
    timings, diffs = {}, {}
    for name, emb in embedders.items():
        diffs[name] = float(np.abs(embed_all(emb, images[:64], batch_size=b).embeddings - ref).max())
        timings[name] = summary(repeat_timed(lambda e=emb: embed_all(e, images, batch_size=b), device, a.repeats))
        r.add(
            f"{name}_images_per_s",
            len(images) / timings[name]["median_s"],
            "img/s",
            {
                "eager": "core RunEmbedder, eager PyTorch",
                "pt2": "torch.export program (graph module)",
                "onnx": "ONNX Runtime, CPU provider" if device.type == "cpu" else "ONNX Runtime",
            }[name],
        )
    for fmt in ("pt2", "onnx"):
        r.add(
            f"ratio_{fmt}_to_eager",
            timings["eager"]["median_s"] / timings[fmt]["median_s"],
            "x",
            "images/s through the imported file / eager PyTorch; >= 1 is the target",
        )
    load = os.getloadavg()
    r.conditions = {
        "model": a.model,
        "res": a.res,
        "images": len(images),
        "batch": b,
        "weights": "untrained (seeded)",
        "load_average_1_5_15": [round(x, 2) for x in load],
        "onnx_exporter": "TorchScript-based (dynamo=False)",
    }
    r.checks = {
        "max_abs_embedding_difference_vs_eager": diffs,
        "timings_s": timings,
        "same_embeddings": bool(max(diffs.values()) < 1e-4),
    }
    if load[0] > (os.cpu_count() or 1):
        r.notes.append(
            f"machine busy during the run (1-min load {load[0]:.1f} on {os.cpu_count()} CPUs): "
            f"the three paths shared it alike, ratios are fairer than absolute images/s"
        )
    return r


SUITES: dict[str, Callable[[Context], SuiteResult]] = {
    "cache": suite_cache,
    "train": suite_train,
    "embed": suite_embed,
    "roc": suite_roc,
    "search": suite_search,
    "scale": suite_scale,
    "audit": suite_audit,
    "dashboard_load": suite_dashboard_load,
    "bootstrap": suite_bootstrap,
    "import": suite_import,
    "cpu_threads": suite_cpu_threads,
    "cpu_train": suite_cpu_train,
}
