"""Scores of pairs at evaluation time: a pair model's same-pair probability, or the cosine of two embeddings.

Entry points: `score_pair_model(model, images, idx_a, idx_b, preprocess=...)` for pair models (two images in,
one logit; not embedders) and `pair_scores_from_embeddings(emb, idx_a, idx_b)` for everything an
`core.embedder.Embedder` embedded. Pair models see their inputs through the same `model_inputs` path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.embedder import Preprocess, Progress, autocast_for, batches, model_inputs


@torch.no_grad()
def score_pair_model(
    model: torch.nn.Module,
    images_u8,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    *,
    preprocess: Preprocess,
    device: torch.device,
    crop: float | None = None,
    batch_size: int = 256,
    progress: Progress | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    amp: bool = True,
) -> np.ndarray:
    """Same-pair probability for each (idx_a[i], idx_b[i]) pair of rows of images_u8: (P,) float32."""
    model.eval()
    autocast = autocast_for(device, amp)
    out = []
    spans = batches(len(idx_a), batch_size)
    for i, (s, e) in enumerate(spans):
        a = model_inputs(images_u8[np.asarray(idx_a[s:e])], preprocess, device, crop=crop, transform=transform)
        b = model_inputs(images_u8[np.asarray(idx_b[s:e])], preprocess, device, crop=crop, transform=transform)
        with autocast():
            out.append(torch.sigmoid(model(a, b).float()).cpu())
        if progress:
            progress((i + 1) / len(spans), f"scoring {e}/{len(idx_a)} pairs")
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)


def pair_scores_from_embeddings(emb: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of L2-normalised embeddings for each pair: (P,) float32."""
    return np.einsum("pd,pd->p", emb[idx_a], emb[idx_b]).astype(np.float32)
