"""Training data: decode (or reuse) the cache, split it, write split.json, and put each part on the device.

Entry point: `prepare_data(cfg, run_dir, device) -> (splits, class_names, cache)`, called by core.train.fit.
A `Split` is one part (train / val) as uint8 images on the training device, or streamed from the cache's
memory-mapped file when it does not fit; pair models, and embedding models given data.pairs_format, split
whole connected groups of pairs so no identity lands on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from core import distributed, layout
from core.config import Config
from core.data.cache import ImageCache, build_or_load_cache
from core.data.fixes import apply_fixes
from core.data.splits import save_split, split_by_identity, split_by_image
from core.data.stream import StreamingBatches, choose_residency
from core.errors import MatchLabError
from core.models import model_kind


@dataclass
class Split:
    """Images of one part of the data: resident on the training device, or streamed from the cache file."""

    images: torch.Tensor | None  # (N, H, W, 3) uint8; None when streamed
    labels: torch.Tensor  # (N,) int64 on the training device, indices into the run's class_names (or the part's own)
    paths: list[str]
    classes_known: bool  # labels index the trained classes, so class accuracy is defined
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # pair models: (idx_a, idx_b, label)
    # embedding models with data.pairs_format, validation part: the protocol's pairs among its rows
    protocol_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    stream: StreamingBatches | None = None  # data.residency=stream: batches read from the memory-mapped cache

    def fetch(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images of rows `idx` on the training device (streamed splits read them synchronously)."""
        if self.stream is None:
            return cast(torch.Tensor, self.images)[idx]  # images is None only for a streamed split
        reader = self.stream.batches([idx.cpu()])
        try:
            return next(reader)
        finally:
            reader.close()  # one reader at a time: the epoch's must be able to start


def _to_device(
    cache: ImageCache, idx: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(cache.images[idx])).to(device), torch.from_numpy(
        labels.astype(np.int64)
    ).to(device)


def component_groups(n_classes: int, class_a: np.ndarray, class_b: np.ndarray) -> np.ndarray:
    """Connected components of classes linked by pairs: splitting by component keeps every pair, and every
    identity it touches, on one side (a shoe student's three pairs stay together)."""
    parent = list(range(n_classes))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(class_a.tolist(), class_b.tolist()):
        parent[find(a)] = find(b)
    return np.array([find(i) for i in range(n_classes)])


def prepare_data(
    cfg: Config, run_dir: Path, device: torch.device, pending: list[Callable[[], object]] | None = None
) -> tuple[dict[str, Split], list[str], ImageCache]:
    """Decode (or reuse) the cache, split it, write split.json, and move each part to `device`.
    pending: when given, the split.json write is appended to it instead of done (fit writes nothing into
    the run folder until everything is validated)."""
    d = cfg.data

    def load(root: str) -> ImageCache:  # the training and a separate validation folder, decoded alike
        return build_or_load_cache(
            root,
            d.res,
            on_bad_image=d.on_bad_image,
            max_pixels=d.max_pixels,
            align=d.align,
            on_no_face=d.on_no_face,
            device=str(device),
        )

    cache = load(d.train)
    seed = split_seed(cfg)
    kind = model_kind(cfg.model.name)

    if kind == "pair":
        if d.exclude or d.relabel:
            raise MatchLabError(
                "data.exclude / data.relabel apply to image models; a pair model trains on its pairs file"
            )
        return _prepare_pairs(cfg, run_dir, device, cache, pending)
    labels, kept = apply_fixes(cache, d.exclude, d.relabel)  # the audit's fixes, checked before any training

    protocol = None
    if cfg.train.sanity_overfit:
        n = min(cfg.train.sanity_overfit, len(cache))
        idx = np.sort(np.random.default_rng(seed).permutation(len(cache))[:n])
        parts = {"train": idx, "val": idx}
        mode = "sanity"
    elif d.val:
        parts, mode = {"train": np.arange(len(cache))}, "folders"
    elif d.split == "image":
        train_idx, val_idx = split_by_image(labels, d.val_fraction, seed)
        parts, mode = {"train": train_idx, "val": val_idx}, "image"
    elif d.pairs_format:
        # Hold out whole protocol groups (a shoe student's three pairs): the protocol's impostors are drawn
        # within a group, so validation can score exactly the kind of pair the test protocol scores.
        protocol = _protocol_rows(cfg, cache)
        groups = component_groups(len(cache.class_names), labels[protocol[0]], labels[protocol[1]])
        parts, mode = split_by_identity(groups[labels], d.val_fraction, d.test_fraction, seed), "pair-groups"
    else:
        parts, mode = split_by_identity(labels, d.val_fraction, d.test_fraction, seed), "identity"
    parts = {part: idx[kept[idx]] for part, idx in parts.items()}  # excluded images leave every part
    if distributed.current().is_main:
        _write_or_defer(pending, save_split, layout.RunFiles(run_dir).split, cache.paths, parts, mode, seed)

    train_classes = np.unique(labels[parts["train"]])
    class_names = [cache.class_names[c] for c in train_classes]
    remap = -np.ones(len(cache.class_names), dtype=np.int64)
    remap[train_classes] = np.arange(len(train_classes))
    train_idx = parts["train"]
    residency, why = choose_residency(
        len(train_idx) * cache.images[0].nbytes, device, distributed.current().world_size, d.residency
    )
    distributed.log(f"data: {why}")
    if residency == "stream":
        # Validation and evaluation stay on the host: embed_all() copies one batch at a time to the device.
        splits = {
            "train": Split(
                None,
                torch.from_numpy(remap[labels[train_idx]]).to(device),
                [cache.paths[i] for i in train_idx],
                True,
                stream=StreamingBatches(cache.images, device, rows=train_idx),
            )
        }
        device = torch.device("cpu")
    else:
        splits = {
            "train": Split(
                *_to_device(cache, train_idx, remap[labels[train_idx]], device),
                [cache.paths[i] for i in train_idx],
                True,
            )
        }
    if d.val:
        val_cache = load(d.val)
        name_to_id = {n: i for i, n in enumerate(class_names)}
        known = all(n in name_to_id for n in val_cache.class_names)
        vlab = np.asarray(val_cache.labels)
        if known:
            vlab = np.array([name_to_id[val_cache.class_names[c]] for c in vlab])
        splits["val"] = Split(
            *_to_device(val_cache, np.arange(len(val_cache)), vlab, device), list(val_cache.paths), known
        )
    elif len(parts.get("val", [])):
        vidx = parts["val"]
        known = mode in ("image", "sanity")
        vlab = remap[labels[vidx]] if known else labels[vidx]
        splits["val"] = Split(*_to_device(cache, vidx, vlab, device), [cache.paths[i] for i in vidx], known)
        if protocol is not None:
            splits["val"].protocol_pairs = _protocol_pairs_within(protocol, vidx)
    return splits, class_names, cache


def _protocol_rows(cfg: Config, cache: ImageCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """data.pairs_format's pairs over data.train as cache rows: (idx_a, idx_b, label), label 1 = same."""
    from core.pairs import read_pairs

    pairs = read_pairs(cfg.data.pairs_format, cfg.data.pairs_file or None, cfg.data.train)
    idx_a, idx_b = pairs.index_into(cache.paths)
    return idx_a, idx_b, np.asarray(pairs.labels, dtype=np.int8)


def _protocol_pairs_within(
    protocol: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The protocol pairs with both images among cache `rows`, as positions in `rows`."""
    position = -np.ones(int(max(rows.max(), protocol[0].max(), protocol[1].max())) + 1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    a, b = position[protocol[0]], position[protocol[1]]
    inside = (a >= 0) & (b >= 0)
    return a[inside], b[inside], protocol[2][inside]


def _write_or_defer(pending: list | None, write: Callable, *args) -> None:
    if pending is None:
        write(*args)
    else:
        pending.append(lambda: write(*args))


def split_seed(cfg: Config) -> int:
    """The seed of the train / validation / test split: data.split_seed, or train.seed when it is -1."""
    return cfg.train.seed if cfg.data.split_seed < 0 else cfg.data.split_seed


def _prepare_pairs(cfg: Config, run_dir: Path, device: torch.device, cache: ImageCache, pending: list | None = None):
    d = cfg.data
    if not d.pairs_format:
        raise MatchLabError(f"model {cfg.model.name} takes image pairs: set data.pairs_format (e.g. shoes)")
    idx_a, idx_b, pair_labels = _protocol_rows(cfg, cache)
    labels = np.asarray(cache.labels)
    groups = component_groups(len(cache.class_names), labels[idx_a], labels[idx_b])
    seed = split_seed(cfg)
    rng = np.random.default_rng(seed)
    unique_groups = rng.permutation(np.unique(groups))
    n_val = max(1, round(len(unique_groups) * d.val_fraction))
    val_groups = set(unique_groups[:n_val].tolist())
    is_val = np.array([groups[c] in val_groups for c in labels[idx_a]])
    image_parts = {
        "train": np.unique(np.concatenate([idx_a[~is_val], idx_b[~is_val]])),
        "val": np.unique(np.concatenate([idx_a[is_val], idx_b[is_val]])),
    }
    if distributed.current().is_main:
        _write_or_defer(
            pending, save_split, layout.RunFiles(run_dir).split, cache.paths, image_parts, "pair-groups", seed
        )
    images = cache.images_tensor(device)
    all_labels = torch.from_numpy(labels.astype(np.int64)).to(device)

    def part(mask: np.ndarray) -> Split:
        t = lambda a: torch.from_numpy(a[mask].astype(np.int64)).to(device)  # noqa: E731
        return Split(images, all_labels, list(cache.paths), False, pairs=(t(idx_a), t(idx_b), t(pair_labels)))

    return {"train": part(~is_val), "val": part(is_val)}, ["different", "same"], cache
