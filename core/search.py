"""k-nearest-neighbour search of probe embeddings in a gallery by cosine similarity, at any size.

Entry points: `exact_topk(probes, gallery, k) -> (scores, indices)`, `identity_topk(...)` (the best k
distinct identities), `build_index(gallery, kind)` -> `SearchIndex` (exact, or FAISS flat / IVF / HNSW)
and `recall_at_k(approx, exact)`. Probes and gallery may be numpy memmaps larger than device memory:
`exact_topk` reads them in probe chunks x gallery chunks that `plan_chunks` sizes so its estimate of
the working memory stays within a budget, and keeps a running top-k per probe. Results are
(P, k) float32 scores and int64 gallery rows, best first, ties to the lower gallery row.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import MatchLabError

KINDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
CPU_BUDGET_BYTES = 1 << 30  # without a budget on a CPU: 1 GiB of working memory
# Bytes one score of a (probe chunk x gallery chunk) block costs at its peak: the fp32 score (4), and
# at most 5 more for the stable sort of a quarter of the rows when scores tie at the k-th place; rounded up.
BYTES_PER_SCORE = 12
# On bf16 each block keeps max(k, this) candidates beyond k for the fp32 re-score: bf16 rounds a cosine
# by ~2e-3, so a true top-k image can rank a little below k on the bf16 scores.
BF16_MARGIN = 16

Array = Any  # numpy array / memmap or torch tensor, (N, D)


@dataclass(frozen=True)
class SearchPlan:
    """How `exact_topk` splits the work. estimated_bytes: its peak working memory (<= budget_bytes)."""

    probe_chunk: int
    gallery_chunk: int
    candidates: int  # kept per probe from each gallery chunk (k, or k + margin re-scored in fp32)
    resident: bool  # gallery chunks loaded once and kept on the device across probe chunks
    dtype: torch.dtype  # the matmul's input dtype
    budget_bytes: int
    estimated_bytes: int


def default_budget(device: torch.device) -> int:
    """A quarter of the GPU's free memory (the rest stays for the model and other work); 1 GiB on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 4)
    return CPU_BUDGET_BYTES


def _device(device: str | torch.device | None, *inputs: Array) -> torch.device:
    """The given device; else the GPU an input tensor is on; else CUDA when present, so a host memmap
    is streamed to the GPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            return x.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        # bf16 inputs with fp32 accumulation is what the tensor cores run; a CPU is fastest (and exact) in fp32
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in ("fp32", "bf16"):
        raise MatchLabError(f"precision must be auto, fp32 or bf16: got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def plan_chunks(
    n_probes: int,
    n_gallery: int,
    dim: int,
    k: int,
    device: torch.device,
    budget_bytes: int | None = None,
    precision: str = "auto",
) -> SearchPlan:
    """Chunk sizes that keep `exact_topk`'s working memory within budget_bytes (default_budget when None).

    Half the budget goes to the score block (probe chunk x gallery chunk), started square; the whole
    gallery stays on the device when it takes at most the other half, else it is streamed chunk by chunk.
    """
    budget = default_budget(device) if budget_bytes is None else int(budget_bytes)
    dtype = _dtype(precision, device)
    bf16 = dtype == torch.bfloat16
    cand = min(n_gallery, k + (max(k, BF16_MARGIN) if bf16 else 0))
    # a gallery row on the device: its fp32 copy, the normalised fp32 row, and the bf16 matmul input
    row_streamed = dim * (4 + 4 + (2 if bf16 else 0))
    row_resident = dim * (4 + (2 if bf16 else 0))
    # a probe row: normalised fp32 (+ bf16), the running top-k and the merge, and the fp32 re-score's
    # gather of its candidates' gallery rows
    row_probe = dim * (4 + (2 if bf16 else 0)) + 4 * (k + cand) * 12 + (cand * dim * 4 if bf16 else 0)
    resident = n_gallery * row_resident <= budget // 2
    g_chunk = max(1, min(n_gallery, math.isqrt(max(1, budget // 2 // BYTES_PER_SCORE))))

    def fixed(gc: int) -> int:
        return n_gallery * row_resident if resident else gc * row_streamed

    while True:
        p_chunk = min(max(n_probes, 1), (budget - fixed(g_chunk)) // (row_probe + g_chunk * BYTES_PER_SCORE))
        if p_chunk >= 1 or g_chunk == 1:
            break
        g_chunk = max(1, g_chunk // 2)
    if p_chunk < 1:
        need = fixed(1) + row_probe + BYTES_PER_SCORE
        raise MatchLabError(
            f"memory budget {budget:,} bytes is too small to search a {n_gallery:,} x {dim} "
            f"gallery: give at least {need:,} bytes"
        )
    # few probes: let the gallery chunk grow into the budget the probe chunk left unused
    spare = budget - fixed(0) - p_chunk * row_probe
    g_chunk = min(n_gallery, max(g_chunk, spare // (p_chunk * BYTES_PER_SCORE + (0 if resident else row_streamed))))
    used = fixed(g_chunk) + p_chunk * (row_probe + g_chunk * BYTES_PER_SCORE)
    return SearchPlan(int(p_chunk), int(g_chunk), int(cand), resident, dtype, budget, int(used))


def _check_pair(probe_shape: tuple, gallery_shape: tuple, k: int) -> tuple[int, int, int]:
    if len(probe_shape) != 2 or len(gallery_shape) != 2:
        raise MatchLabError(f"probes and gallery must be (N, D): got {tuple(probe_shape)} and {tuple(gallery_shape)}")
    (n_p, d), (n_g, d_g) = probe_shape, gallery_shape
    if d != d_g:
        raise MatchLabError(f"probe and gallery embeddings differ in width: {d} vs {d_g}")
    if not 1 <= k <= n_g:
        raise MatchLabError(f"k must be in [1, {n_g}] for a gallery of {n_g} images: got {k}")
    return n_p, n_g, d


def _rows(x: Array, rows: slice | np.ndarray, device: torch.device, what: str) -> torch.Tensor:
    """Rows (a slice or sorted row numbers) as unit-length float32 on `device`; a memmap is read here,
    one chunk at a time."""
    if isinstance(x, torch.Tensor):
        t = x[rows if isinstance(rows, slice) else torch.from_numpy(rows)].to(device=device, dtype=torch.float32)
    else:
        t = torch.from_numpy(np.array(x[rows], dtype=np.float32)).to(device)  # a copy: memmaps are read-only
    bad = ~torch.isfinite(t).all(1)
    if bad.any():
        first = int(np.arange(x.shape[0])[rows][int(bad.nonzero()[0, 0])])
        raise MatchLabError(
            f"{what} row {first} holds NaN or inf ({int(bad.sum())} such rows in this chunk); fix the embeddings"
        )
    return F.normalize(t, dim=1)


def _order(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Column order per row by score descending, then gallery index ascending (two stable sorts)."""
    by_index = torch.argsort(index, dim=1, stable=True)
    by_score = torch.argsort(scores.gather(1, by_index), dim=1, descending=True, stable=True)
    return by_index.gather(1, by_score)


def _merge(
    best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    s, i = torch.cat([best_s, new_s], 1), torch.cat([best_i, new_i], 1)
    o = _order(s, i)[:, :k]
    return s.gather(1, o), i.gather(1, o)


def _block_topk(sim: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top c of each row of an fp32 block with exact ties. topk picks among equal scores at will, which
    matters only where the (c+1)-th score equals the c-th: those rows are re-selected by a stable sort,
    so the lower gallery index wins (one extra column instead of a pass over the block)."""
    if c >= sim.shape[1]:
        return sim.topk(c, dim=1)
    vals, idx = sim.topk(c + 1, dim=1)
    tied = (vals[:, c] == vals[:, c - 1]).nonzero().flatten()
    vals, idx = vals[:, :c], idx[:, :c]
    group = max(1, sim.shape[0] // 4)  # a sort holds ~20 bytes per score: a quarter of the rows at a time
    for t in tied.split(group):
        s, o = torch.sort(sim[t], dim=1, descending=True, stable=True)
        vals[t], idx[t] = s[:, :c], o[:, :c]
    return vals, idx


@torch.no_grad()
def exact_topk(
    probes: Array,
    gallery: Array,
    k: int,
    *,
    budget_bytes: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    progress: bool = True,
    probe_chunk: int | None = None,
    gallery_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k gallery rows most cosine-similar to each probe: ((P, k) float32 scores, (P, k) int64 rows),
    best first; equal scores list the lower gallery row first.

    probes (P, D), gallery (G, D): numpy arrays, memmaps or tensors; rows are L2-normalised here. The
    work runs on `device` (default: the GPU when there is one) in chunks from `plan_chunks(budget_bytes)`;
    probe_chunk / gallery_chunk override them (and the budget with them). precision "auto" is fp32 on a CPU and bf16 on CUDA;
    bf16 keeps k + max(k, 16) candidates per gallery chunk and re-scores them in fp32, so the scores
    returned are fp32 cosines, and the list is exact unless a true top-k image scored below that many
    others in bf16 (cosine error ~2e-3).
    """
    from tqdm.auto import tqdm

    n_p, n_g, dim = _check_pair(probes.shape, gallery.shape, k)
    dev = _device(device, probes, gallery)
    plan = plan_chunks(n_p, n_g, dim, k, dev, budget_bytes, precision)
    pc, gc = probe_chunk or plan.probe_chunk, gallery_chunk or plan.gallery_chunk
    if pc < 1 or gc < 1:
        raise MatchLabError(f"probe_chunk and gallery_chunk must be >= 1: got {pc} and {gc}")
    bf16 = plan.dtype == torch.bfloat16
    if plan.resident:
        # the whole gallery on the device once, as fp32 unit rows (+ the bf16 copy the matmuls read)
        g32_all = torch.empty((n_g, dim), dtype=torch.float32, device=dev)
        spare = plan.budget_bytes - n_g * dim * (6 if bf16 else 4)
        step = max(1, min(gc, spare // (dim * 8)))  # rows per load: its copy and the normalised rows fit the rest
        for g0 in range(0, n_g, step):
            g32_all[g0 : g0 + step] = _rows(gallery, slice(g0, min(g0 + step, n_g)), dev, "gallery")
        g_all = g32_all.to(plan.dtype) if bf16 else g32_all
    # bf16 with the gallery resident keeps `candidates` per probe over the whole gallery and re-scores
    # them once at the end; a streamed gallery re-scores each chunk's candidates while it is loaded
    rescore_at_end = bf16 and plan.resident
    keep = plan.candidates if rescore_at_end else k
    out_s = np.empty((n_p, k), np.float32)
    out_i = np.empty((n_p, k), np.int64)
    bar = tqdm(
        total=n_p, desc=f"search {n_g:,} images", unit="probe", file=sys.stderr, disable=None if progress else True
    )
    try:
        for p0 in range(0, n_p, pc):
            p32 = _rows(probes, slice(p0, min(p0 + pc, n_p)), dev, "probe")
            p = p32.to(plan.dtype) if bf16 else p32
            best_s = torch.empty(p.shape[0], 0, device=dev)
            best_i = torch.empty(p.shape[0], 0, dtype=torch.int64, device=dev)
            for g0 in range(0, n_g, gc):
                if plan.resident:
                    g32, g = g32_all[g0 : g0 + gc], g_all[g0 : g0 + gc]
                else:
                    g32 = _rows(gallery, slice(g0, min(g0 + gc, n_g)), dev, "gallery")
                    g = g32.to(plan.dtype) if bf16 else g32
                sim = p @ g.T
                c = min(plan.candidates if bf16 else k, sim.shape[1])
                if not bf16:
                    vals, idx = _block_topk(sim, c)
                elif plan.resident:
                    vals, idx = sim.topk(c, dim=1)
                    vals = vals.float()
                else:
                    idx = sim.topk(c, dim=1).indices
                    # the fp32 cosine of each candidate: a (chunk, c, D) gather, counted in the plan
                    vals = torch.einsum("pd,pcd->pc", p32, g32[idx])
                del sim
                best_s, best_i = _merge(best_s, best_i, vals, idx + g0, keep)
            if rescore_at_end:  # fp32 cosines of the bf16 candidates, then the final order
                best_s = torch.einsum("pd,pcd->pc", p32, g32_all[best_i])
                o = _order(best_s, best_i)[:, :k]
                best_s, best_i = best_s.gather(1, o), best_i.gather(1, o)
            out_s[p0 : p0 + p.shape[0]] = best_s.cpu().numpy()
            out_i[p0 : p0 + p.shape[0]] = best_i.cpu().numpy()
            bar.update(p.shape[0])
    finally:
        bar.close()
    return out_s, out_i


class IdentityMatches(NamedTuple):
    """Per probe, the best k distinct identities, best first. Slots past the identities found hold
    identity -1, image -1 and score -inf; complete[i] says probe i has all k."""

    scores: np.ndarray  # (P, k) float32: the identity's best image score
    identities: np.ndarray  # (P, k) int64 gallery labels
    images: np.ndarray  # (P, k) int64 gallery row of that best image
    complete: np.ndarray  # (P,) bool


def identities_from_images(scores: np.ndarray, indices: np.ndarray, gallery_labels: Array, k: int) -> IdentityMatches:
    """Best k distinct identities from each probe's image top-K (scores/indices (P, K), best first): an
    identity ranks by its best image there, ties by that image's row. Exact for every probe whose top-K
    images hold k distinct identities; the others are marked incomplete."""
    labels = np.asarray(gallery_labels).astype(np.int64).reshape(-1)
    if labels.size and labels.min() < 0:
        raise MatchLabError(f"gallery labels must be >= 0 (-1 marks an empty slot): got {labels.min()}")
    n_p = indices.shape[0]
    hole = indices < 0  # an approximate index found fewer images; holes come last in a row
    found = labels[np.clip(indices, 0, None)]
    # first occurrence of each label in its row: sort the labels stably, mark where a run starts
    order = np.argsort(found, axis=1, kind="stable")
    srt = np.take_along_axis(found, order, 1)
    start = np.ones_like(srt, dtype=bool)
    start[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.zeros_like(start)
    np.put_along_axis(first, order, start, 1)
    first &= ~hole
    rank = np.cumsum(first, axis=1) - 1
    rows, cols = np.nonzero(first & (rank < k))
    out = IdentityMatches(
        np.full((n_p, k), -np.inf, np.float32),
        np.full((n_p, k), -1, np.int64),
        np.full((n_p, k), -1, np.int64),
        np.zeros(n_p, bool),
    )
    slot = rank[rows, cols]
    out.scores[rows, slot] = scores[rows, cols]
    out.identities[rows, slot] = found[rows, cols]
    out.images[rows, slot] = indices[rows, cols]
    out.complete[:] = first.sum(1) >= k
    return out


def identity_topk(
    probes: Array, gallery: Array, gallery_labels: Array, k: int, images_k: int | None = None, **search: Any
) -> IdentityMatches:
    """The best k distinct identities per probe (an identity scores its best image), from the exact
    image top-K with K = images_k (default 10 * k, at most the gallery). Exact for each probe whose top-K
    images hold k distinct identities (`complete`); raise images_k when a gallery has many images per
    identity. search: keyword arguments of `exact_topk`."""
    n_g = gallery.shape[0]
    if np.asarray(gallery_labels).reshape(-1).shape[0] != n_g:
        raise MatchLabError(f"gallery_labels must hold one identity per gallery image ({n_g})")
    if k < 1:
        raise MatchLabError(f"k must be >= 1: got {k}")
    big_k = min(n_g, images_k if images_k is not None else 10 * k)
    if big_k < 1:
        raise MatchLabError(f"images_k must be >= 1: got {images_k}")
    s, i = exact_topk(probes, gallery, big_k, **search)
    return identities_from_images(s, i, gallery_labels, k)


# ------------------------------------------------------------------------------------------ indexes


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MatchLabError("the faiss indexes need FAISS: pip install faiss-cpu (see requirements.txt)") from None
    return faiss


def _sorted_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS results in our order (score descending, then lower row), holes (-1) last at -inf."""
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    hole = indices < 0
    order = np.lexsort((np.where(hole, np.iinfo(np.int64).max, indices), -scores.astype(np.float64)), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices.astype(np.int64), order, 1)


class SearchIndex:
    """A searchable gallery: `search(probes, k) -> (scores (P, k) float32, rows (P, k) int64)` in the
    order of `exact_topk`. kind "exact" runs `exact_topk` on the gallery as given; the FAISS kinds hold
    their own float32 copy (flat: exact inner products; ivf / hnsw: approximate, holes are row -1 at
    -inf when fewer than k rows were reached)."""

    def __init__(self, kind: str, gallery: Array, faiss_index: Any = None, dim: int = 0, **search: Any) -> None:
        self.kind, self.gallery, self.faiss_index, self.dim, self.options = kind, gallery, faiss_index, dim, search

    @property
    def ntotal(self) -> int:
        return int(self.gallery.shape[0]) if self.faiss_index is None else int(self.faiss_index.ntotal)

    def search(self, probes: Array, k: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        if self.faiss_index is None:
            return exact_topk(probes, self.gallery, k, progress=progress, **self.options)
        from tqdm.auto import tqdm

        n_p, _, _ = _check_pair(probes.shape, (self.ntotal, self.dim), k)
        chunk = _host_chunk(self.dim, self.options.get("budget_bytes"))
        out_s, out_i = np.empty((n_p, k), np.float32), np.empty((n_p, k), np.int64)
        with tqdm(
            total=n_p,
            desc=f"{self.kind} {self.ntotal:,} images",
            unit="probe",
            file=sys.stderr,
            disable=None if progress else True,
        ) as bar:
            for p0 in range(0, n_p, chunk):
                sl = slice(p0, min(p0 + chunk, n_p))
                q = _rows(probes, sl, torch.device("cpu"), "probe").numpy()
                out_s[sl], out_i[sl] = _sorted_rows(*self.faiss_index.search(q, k))
                bar.update(sl.stop - sl.start)
        return out_s, out_i


def _host_chunk(dim: int, budget_bytes: int | None) -> int:
    """Rows per chunk when FAISS reads a gallery or probes: an eighth of the budget in float32 copies."""
    return max(1, (budget_bytes or CPU_BUDGET_BYTES) // 8 // (dim * 4 * 2))


def build_index(
    gallery: Array,
    kind: str = "exact",
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 80,
    train_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    **search: Any,
) -> SearchIndex:
    """A `SearchIndex` over the gallery (G, D).

    kind: "exact" (`exact_topk`; search: its keyword arguments), "faiss-flat" (FAISS exact inner
    product), "faiss-ivf" (IVF-Flat: nlist lists, default 4 * sqrt(G), k-means on train_size rows,
    default 40 per list; a search scans nprobe lists) or "faiss-hnsw" (HNSW graph, hnsw_m links per
    node, ef_construction / ef_search beam widths). The FAISS kinds are approximate except flat; measure
    them with `recall_at_k` against `exact_topk`. Rows are L2-normalised as they are added.
    """
    if kind not in KINDS:
        raise MatchLabError(f"index kind must be one of {', '.join(KINDS)}: got {kind!r}")
    if len(gallery.shape) != 2 or gallery.shape[0] < 1:
        raise MatchLabError(f"gallery must be a non-empty (G, D) array: got shape {tuple(gallery.shape)}")
    if kind == "exact":
        return SearchIndex(kind, gallery, **search)
    faiss = _faiss()
    n_g, dim = int(gallery.shape[0]), int(gallery.shape[1])
    chunk = _host_chunk(dim, search.get("budget_bytes"))

    def rows(which: slice | np.ndarray) -> np.ndarray:
        return _rows(gallery, which, torch.device("cpu"), "gallery").numpy()

    if kind == "faiss-flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = ef_construction, ef_search
    else:
        lists = nlist or max(1, min(round(4 * math.sqrt(n_g)), n_g // 39 or 1))
        if not 1 <= lists <= n_g:
            raise MatchLabError(f"nlist must be in [1, {n_g}] for a gallery of {n_g} images: got {lists}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        n_train = min(n_g, train_size or 40 * lists)
        # a seeded sample in row order, so a memmap is read front to back
        pick = (
            np.arange(n_g)
            if n_train == n_g
            else np.sort(np.random.default_rng(seed).choice(n_g, n_train, replace=False))
        )
        sample = np.concatenate([rows(pick[s : s + chunk]) for s in range(0, n_train, chunk)])
        index.train(sample)
        del sample
        index.nprobe = min(nprobe, lists)
    from tqdm.auto import tqdm

    with tqdm(total=n_g, desc=f"{kind} add", unit="img", file=sys.stderr, disable=None if progress else True) as bar:
        for s in range(0, n_g, chunk):
            sl = slice(s, min(s + chunk, n_g))
            index.add(rows(sl))
            bar.update(sl.stop - sl.start)
    return SearchIndex(kind, gallery, faiss_index=index, dim=dim, **search)


def recall_at_k(approx_indices: np.ndarray, exact_indices: np.ndarray, k: int | None = None) -> float:
    """Share of the exact top-k gallery rows that the approximate top-k also holds, averaged over
    probes (recall@1: the approximate search found the exact best image)."""
    a, e = np.asarray(approx_indices), np.asarray(exact_indices)
    k = k or e.shape[1]
    if a.shape[0] != e.shape[0] or not 1 <= k <= min(a.shape[1], e.shape[1]):
        raise MatchLabError(f"recall@{k} needs (P, >= k) results for the same probes: got {a.shape} and {e.shape}")
    hits = np.zeros(a.shape[0], np.int64)
    for j in range(k):  # k passes over (P, k) instead of a (P, k, k) table
        hits += (a[:, :k] == e[:, j : j + 1]).any(1)
    return float(hits.mean() / k)
