"""Model inputs and outputs at evaluation time: embeddings, class logits and pair-model scores.

Entry points: `extract(model, images, ...) -> Extracted` for image models and `score_pair_model(...)` for
pair models. Both batch a uint8 (N, H, W, 3) array through the same GPU normalisation and centre crop
that training used, optionally with flip test-time augmentation (the mean embedding of image and mirror).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.crops import centre_crop
from core.data.augment import BatchAugment

Progress = Callable[[float, str], None]


@dataclass
class Extracted:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray | None  # (N, C) float32 when the model has a class head


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; CPU runs fp32 (bf16 on CPU is slower there and changes the numbers)."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def _batches(n: int, batch_size: int):
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def model_inputs(images_u8, mean, std, res: int, device: torch.device, crop: float = 1.0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) array or tensor -> normalised (B, 3, res, res) on `device`, centre-cropped,
    then `transform` (the ablation's masks) if given."""
    # np.array copies the batch: the cache is a read-only memmap, which torch will not wrap.
    x = torch.from_numpy(np.array(images_u8)) if isinstance(images_u8, np.ndarray) else images_u8
    prep = BatchAugment(mean=mean, std=std, flip=False, crop_padding=0, out_res=res,
                        channels_last=device.type == "cuda")
    x = centre_crop(prep(x.to(device), train=False), crop)
    return transform(x) if transform is not None else x


@torch.no_grad()
def extract(model: torch.nn.Module, images_u8, mean, std, res: int, device: torch.device, crop: float = 1.0,
            flip_tta: bool = False, batch_size: int = 256, progress: Progress | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None, amp: bool = True) -> Extracted:
    """Embeddings (and logits) of every image. images_u8: (N, H, W, 3) uint8 numpy or tensor."""
    model.eval()
    autocast = autocast_for(device, amp)
    head = getattr(model, "head", None)
    embs, logits = [], []
    spans = _batches(len(images_u8), batch_size)
    for i, (s, e) in enumerate(spans):
        x = model_inputs(images_u8[s:e], mean, std, res, device, crop, transform)
        with autocast():
            feats = model.forward_features(x).float()
            if flip_tta:
                feats = (feats + model.forward_features(torch.flip(x, dims=[3])).float()) / 2
            if head is not None:
                logits.append(head(feats).float().cpu())
        embs.append(F.normalize(feats, dim=1).cpu())
        if progress:
            progress((i + 1) / len(spans), f"embedding {e}/{len(images_u8)} images")
    emb = torch.cat(embs).numpy() if embs else np.zeros((0, getattr(model, "embedding_dim", 0)), np.float32)
    return Extracted(emb.astype(np.float32), torch.cat(logits).numpy() if logits else None)


@torch.no_grad()
def score_pair_model(model: torch.nn.Module, images_u8, idx_a: np.ndarray, idx_b: np.ndarray, mean, std,
                     res: int, device: torch.device, crop: float = 1.0, batch_size: int = 256,
                     progress: Progress | None = None,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None, amp: bool = True) -> np.ndarray:
    """Same-pair probability for each (idx_a[i], idx_b[i]) pair of rows of images_u8: (P,) float32."""
    model.eval()
    autocast = autocast_for(device, amp)
    out = []
    spans = _batches(len(idx_a), batch_size)
    for i, (s, e) in enumerate(spans):
        a = model_inputs(images_u8[np.asarray(idx_a[s:e])], mean, std, res, device, crop, transform)
        b = model_inputs(images_u8[np.asarray(idx_b[s:e])], mean, std, res, device, crop, transform)
        with autocast():
            out.append(torch.sigmoid(model(a, b).float()).cpu())
        if progress:
            progress((i + 1) / len(spans), f"scoring {e}/{len(idx_a)} pairs")
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)


def pair_scores_from_embeddings(emb: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of L2-normalised embeddings for each pair: (P,) float32."""
    return np.einsum("pd,pd->p", emb[idx_a], emb[idx_b]).astype(np.float32)
