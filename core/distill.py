"""Distillation from teacher models (`train.distill_from`): the student learns, besides its own loss, to
reproduce how similar the teachers find every two images of a training batch (relational, or
similarity-preserving, distillation).

Only the teachers' embeddings are used, so a teacher is any Embedder: a MatchLab run or an imported model,
with or without a class head, of any embedding size. The target for two images is the mean over teachers
of their cosine similarity, so several seeds of one recipe act as an ensemble even though their embedding
spaces are rotated against each other. The teachers embed the clean training images (flip-averaged) once
before training; the student sees them augmented, so it also learns the teachers' view through the noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core import layout
from core.data.prepare import Split
from core.embedder import batches, embed_all, load_embedder
from core.errors import MatchLabError


def teacher_paths(sources: str) -> list[Path]:
    """train.distill_from's comma-separated run folders."""
    return [Path(s.strip()) for s in sources.split(",") if s.strip()]


def _check_no_leak(teacher: Path, data_root: str, held_out: set[str]) -> bool:
    """Refuse a teacher trained on images this run holds out (`held_out`, its validation and test images): its
    similarities would carry those people into training. Returns False when it cannot be checked (another
    folder, an imported model)."""
    cfg = layout.read_config(teacher)
    trained_on = (cfg.get("data") or {}).get("train")
    split = layout.read_split(teacher)
    if not trained_on or not split or Path(trained_on).resolve() != Path(data_root).resolve():
        return False
    leaked = held_out.intersection(split.get("train", []))
    if leaked:
        raise MatchLabError(
            f"train.distill_from: teacher {teacher} trained on {len(leaked)} images this run holds out "
            f"(validation / test); train the teacher on the same split (data.split_seed) or pick another"
        )
    return True


def teacher_embeddings(
    sources: str,
    train: Split,
    held_out: set[str],
    *,
    data_root: str,
    align: str,
    device: torch.device,
    batch_size: int = 256,
) -> list[torch.Tensor]:
    """Each teacher's unit embeddings of the training images, (N, D_teacher) on `device`, flip-averaged.
    held_out: the paths of the images this run validates and tests on, which no teacher may have trained on."""
    out = []
    for path in teacher_paths(sources):
        teacher = load_embedder(path, device=device.type)
        if teacher.preprocess.align != align:
            raise MatchLabError(
                f"train.distill_from: teacher {path} expects faces aligned '{teacher.preprocess.align}' but "
                f"data.align={align}; distil from teachers that see the images as this run does"
            )
        if not _check_no_leak(path, data_root, held_out):
            print(f"distill: cannot check {path}'s training images against this split", file=sys.stderr)
        spans = batches(len(train.labels), batch_size)
        parts = []
        for s, e in tqdm(spans, desc=f"teacher {path.name}", unit="batch", file=sys.stderr, disable=None):
            images = train.fetch(torch.arange(s, e, device=train.labels.device))
            parts.append(torch.from_numpy(embed_all(teacher, images, flip_tta=True).embeddings))
        out.append(F.normalize(torch.cat(parts).to(device), dim=1))
    return out


def relational_loss(emb: torch.Tensor, teachers: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared difference between the student's cosine similarities of every two images of the batch
    and the teachers' mean cosine similarity of the same two (the diagonal, always 1, left out).
    emb: (B, D) student embeddings; teachers: one (B, D_k) unit-embedding tensor per teacher."""
    s = F.normalize(emb.float(), dim=1)
    target = torch.stack([t.float() @ t.float().T for t in teachers]).mean(0)
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return (s @ s.T - target)[off].pow(2).mean()
