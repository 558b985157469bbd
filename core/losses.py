"""Loss registry: `create_loss(name, num_classes, embedding_dim, **kw) -> MatchLoss`, `list_losses()`.

Every loss maps (embeddings, logits, labels) to a dict of named scalar terms plus "total", so the
training loop logs each term without knowing the loss. Margin heads, contrastive and triplet losses
come from pytorch-metric-learning (PML); `center_weight > 0` adds a center-loss term to any image loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import MatchLabError, require
from core.models.registry import Registry

if TYPE_CHECKING:
    from pytorch_metric_learning import losses as pml_losses

LOSSES = Registry("loss")
L = TypeVar("L", bound=type)


def _pml() -> Any:
    """pytorch_metric_learning, imported on first use: it loads scipy.stats (over a second of every process's
    start on the 2-core machine), and the cross-entropy recipes never need it."""
    import pytorch_metric_learning.distances
    import pytorch_metric_learning.losses
    import pytorch_metric_learning.miners  # noqa: F401  # the submodules the losses below use

    return pytorch_metric_learning


# PML names the distance by class; configs name it by string.
DISTANCES: dict[str, Callable[[], Any]] = {
    "cosine": lambda: _pml().distances.CosineSimilarity(),
    "l2": lambda: _pml().distances.LpDistance(normalize_embeddings=True, p=2, power=1),
}
TRIPLET_MINING = ("all", "hard", "semihard", "easy")


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: make a MatchLoss subclass available to `create_loss(name, ...)`."""

    def decorate(cls: L) -> L:
        LOSSES.register(name, cls)
        return cls

    return decorate


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return LOSSES.names()


def _fp32_region(t: Tensor) -> AbstractContextManager[Any]:
    # Losses run in fp32 even inside the trainer's bf16 autocast: PML's margin heads cast their weight
    # W to the embeddings' dtype in place (cast_types), which would silently turn a trained fp32
    # parameter into bf16; and softmax over scale-64 logits loses precision in bf16.
    return torch.autocast(device_type=t.device.type, enabled=False)


def _need(t: Tensor | None, what: str) -> Tensor:
    """`t`, which this loss cannot do without (a model built without that output is a config mistake)."""
    if t is None:
        raise MatchLabError(
            f"this loss needs the model's {what}, which the model did not return; check model.num_classes and loss.name"
        )
    return t


def _fp32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


class MatchLoss(nn.Module):
    """Base class. Subclasses set `term` and implement `terms`; `forward` adds "total".

    needs_head: the model must be built with num_classes (the loss reads its logits).
    batch_sampler: "random", or "pk" (P identities x K images, so every batch has positive pairs).
    kind: the model kind it trains ("image" or "pair").
    couples_batch: each sample's loss depends on the others in the batch (pairs or triplets mined in it),
    so a distributed run gathers the whole global batch before calling it; per-sample losses stay local.
    """

    term: str
    needs_head: bool = False
    batch_sampler: str = "random"
    kind: str = "image"
    couples_batch: bool = False

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        """fp32 inputs -> named scalar terms; the one named `self.term` is the loss to minimise."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        """embeddings: (B, D) raw `forward_features` output; logits: (B, C) or None; labels: (B,) int.

        Returns {term: scalar tensor, ..., "total": scalar tensor}; only "total" is for backward.
        """
        with _fp32_region(_need(embeddings if embeddings is not None else logits, "embeddings or logits")):
            out = self.terms(_fp32(embeddings), _fp32(logits), labels)
        out["total"] = out[self.term]
        return out

    def class_logits(self, embeddings: Tensor | None, logits: Tensor | None) -> Tensor | None:
        """(B, C) scores whose argmax is the predicted class, for accuracy; None if the loss has none."""
        return None


def _needs_classes(name: str, num_classes: int) -> None:
    require(num_classes >= 1, f"loss {name!r} needs num_classes >= 1 (the number of training identities)")


def _needs_logits(name: str, logits: Tensor | None) -> Tensor:
    if logits is None:
        raise MatchLabError(f"loss {name!r} needs the model's class logits: build the model with num_classes > 0")
    return logits


@register_loss("cross_entropy")
class CrossEntropy(MatchLoss):
    """Softmax cross-entropy on the model's linear head; label_smoothing in [0, 1)."""

    term = "ce"
    needs_head = True

    def __init__(self, num_classes: int, embedding_dim: int, label_smoothing: float = 0.0) -> None:
        _needs_classes("cross_entropy", num_classes)
        require(0.0 <= label_smoothing < 1.0, f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__()
        self.label_smoothing = label_smoothing

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        logits = _needs_logits("cross_entropy", logits)
        return {"ce": F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)}

    def class_logits(self, embeddings: Tensor | None, logits: Tensor | None) -> Tensor | None:
        return logits


class PMLMarginHead(MatchLoss):
    """A PML large-margin softmax loss; it owns the class centres `self.pml.W`, shape (D, C).

    class_logits: scale * cos(embedding, centre), the margin-free logits, so accuracy is what
    nearest-centre prediction would give at test time.
    """

    def __init__(self, pml_loss: pml_losses.LargeMarginSoftmaxLoss) -> None:
        super().__init__()
        self.pml = pml_loss

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        return {self.term: self.pml(embeddings, labels.long())}

    def class_logits(self, embeddings: Tensor | None, logits: Tensor | None) -> Tensor | None:
        e = _need(embeddings, "embeddings")
        with _fp32_region(e):
            return self.pml.get_logits(e.float())


@register_loss("arcface")
class ArcFace(PMLMarginHead):
    """Additive angular margin (Deng et al. 2019): target logit s*cos(theta + m).

    margin: in RADIANS, as in the paper (0.5 = 28.6 degrees). PML's ArcFaceLoss takes degrees;
    we convert, so `self.pml.margin` (radians after PML's init) equals this value. scale: s.
    """

    term = "arcface"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 64.0) -> None:
        _needs_classes("arcface", num_classes)
        require(0.0 <= margin < math.pi / 2, f"loss.margin is in radians and must be in [0, pi/2), got {margin}")
        require(scale > 0, f"loss.scale must be > 0, got {scale}")
        super().__init__(
            _pml().losses.ArcFaceLoss(num_classes, embedding_dim, margin=math.degrees(margin), scale=scale)
        )


@register_loss("cosface")
class CosFace(PMLMarginHead):
    """Additive cosine margin (Wang et al. 2018): target logit s*(cos(theta) - m); margin in cosine units."""

    term = "cosface"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 64.0) -> None:
        _needs_classes("cosface", num_classes)
        require(0.0 <= margin < 1.0, f"loss.margin must be in [0, 1) (cosine units), got {margin}")
        require(scale > 0, f"loss.scale must be > 0, got {scale}")
        super().__init__(_pml().losses.CosFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale))


@register_loss("partial_fc")
class PartialFCLoss(MatchLoss):
    """ArcFace or CosFace for many identities (1e4..1e5): the class centres are sharded across the ranks of a
    torchrun job and optionally sampled (Partial FC, core/partial_fc.py), so the head does not dominate memory.

    margin_type: "arcface" (target cos(theta + m)) or "cosface" (cos - m). sample_rate: share of each rank's
    centres in every step's softmax (its positives always are). One process holds every centre.
    """

    term = "partial_fc"

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
        from core.partial_fc import PartialFC

        _needs_classes("partial_fc", num_classes)
        super().__init__()
        self.head = PartialFC(num_classes, embedding_dim, margin_type, margin, scale, sample_rate, seed)

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        return {"partial_fc": self.head(embeddings, labels.long())}

    def class_logits(self, embeddings: Tensor | None, logits: Tensor | None) -> Tensor | None:
        return self.head.class_logits(embeddings) if embeddings is not None else None


@register_loss("contrastive")
class Contrastive(MatchLoss):
    """Cosine contrastive loss over all pairs in the batch (seed 000's cosine variant).

    Per pair: positives [pos_margin - cos]_+, negatives [cos - neg_margin]_+. PML averages the non-zero
    positive losses and, separately, the non-zero negative ones, and adds the two means.
    PML's own defaults (0, 1) are for distances; with cosine they must be reversed, hence (1, 0).
    """

    term = "contrastive"
    batch_sampler = "pk"
    couples_batch = True

    def __init__(self, num_classes: int, embedding_dim: int, pos_margin: float = 1.0, neg_margin: float = 0.0) -> None:
        require(
            -1.0 <= neg_margin < pos_margin <= 1.0,
            f"loss margins are cosines: need -1 <= neg_margin < pos_margin <= 1, got {neg_margin}, {pos_margin}",
        )
        super().__init__()
        self.pml = _pml().losses.ContrastiveLoss(
            pos_margin=pos_margin, neg_margin=neg_margin, distance=DISTANCES["cosine"]()
        )

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        return {"contrastive": self.pml(embeddings, labels.long())}


@register_loss("triplet")
class Triplet(MatchLoss):
    """Triplet margin loss on online-mined triplets (FaceNet; seed 003: margin 0.2, semi-hard).

    distance: "cosine" (violation = cos_an - cos_ap + margin) or "l2" (on L2-normalised embeddings,
    d_ap - d_an + margin, not squared). mining: PML TripletMarginMiner type; "semihard" keeps triplets
    with 0 < (an - ap separation) <= margin. "triplets_mined" counts the triplets used this batch.
    """

    term = "triplet"
    batch_sampler = "pk"
    couples_batch = True

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.2,
        distance: str = "cosine",
        mining: str = "semihard",
    ) -> None:
        require(margin > 0, f"loss.margin must be > 0, got {margin}")
        require(distance in DISTANCES, f"unknown loss.distance {distance!r}; valid: {', '.join(DISTANCES)}")
        require(mining in TRIPLET_MINING, f"unknown loss.mining {mining!r}; valid: {', '.join(TRIPLET_MINING)}")
        super().__init__()
        self.miner = _pml().miners.TripletMarginMiner(
            margin=margin, type_of_triplets=mining, distance=DISTANCES[distance]()
        )
        self.pml = _pml().losses.TripletMarginLoss(margin=margin, distance=DISTANCES[distance]())

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        labels = labels.long()
        triplets = self.miner(embeddings, labels)
        # new_full fills on the device: logging the count adds no host->device copy.
        count = _need(embeddings, "embeddings").new_full((), float(triplets[0].numel()))
        return {"triplet": self.pml(embeddings, labels, triplets), "triplets_mined": count}


@register_loss("pair_bce")
class PairBCE(MatchLoss):
    """Binary cross-entropy for pair models: logits (B,) from `forward(xa, xb)`, labels (B,) 1 = same.

    embeddings are ignored (pass None); class_logits is None (the trainer measures pair accuracy).
    """

    term = "bce"
    kind = "pair"

    def __init__(self, num_classes: int = 0, embedding_dim: int = 0) -> None:
        super().__init__()

    def terms(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        logits = _needs_logits("pair_bce", logits)
        return {"bce": F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))}


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): 0.5 * mean_i ||x_i - c_{y_i}||^2 with learnable centres (C, D).

    The centres are ordinary parameters learned by the trainer's optimiser (not the paper's separate
    alpha update), so they are saved and resumed with the loss's state_dict. PML has no center loss.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """embeddings: (B, D) raw (the paper uses un-normalised features); labels: (B,) -> scalar."""
        return 0.5 * (embeddings - self.centers[labels.long()]).pow(2).sum(dim=1).mean()


class WithCenterLoss(MatchLoss):
    """Any image loss plus `weight` * center loss; adds the unweighted "center" term to the log."""

    def __init__(self, base: MatchLoss, num_classes: int, embedding_dim: int, weight: float) -> None:
        super().__init__()
        self.base = base
        self.center = CenterLoss(num_classes, embedding_dim)
        self.weight = weight
        # The add-on changes nothing about how the model is built or batches are drawn.
        self.term = base.term
        self.needs_head = base.needs_head
        self.batch_sampler = base.batch_sampler
        self.kind = base.kind
        self.couples_batch = base.couples_batch

    def forward(self, embeddings: Tensor | None, logits: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        out = self.base(embeddings, logits, labels)
        total = out.pop("total")
        e = _need(embeddings, "embeddings")
        with _fp32_region(e):
            out["center"] = self.center(e.float(), labels)
        out["total"] = total + self.weight * out["center"]
        return out

    def class_logits(self, embeddings: Tensor | None, logits: Tensor | None) -> Tensor | None:
        return self.base.class_logits(embeddings, logits)


def create_loss(name: str, num_classes: int, embedding_dim: int, **kwargs: Any) -> MatchLoss:
    """Build loss `name`; kwargs are its options plus `center_weight` (>= 0, default 0: no center term).

    Unknown names and options raise MatchLabError listing the valid ones. The returned module may own
    parameters (margin-head or center-loss centres): optimise them and save its state_dict.
    """
    LOSSES.check_options(name, kwargs, fixed=("num_classes", "embedding_dim"), extra=("center_weight",))
    center_weight = float(kwargs.pop("center_weight", 0.0))
    loss: MatchLoss = LOSSES.get(name).factory(num_classes, embedding_dim, **kwargs)
    require(center_weight >= 0, f"loss.center_weight must be >= 0, got {center_weight}")
    if center_weight > 0:
        require(loss.kind == "image", f"loss.center_weight needs image embeddings; {name!r} trains pair models")
        _needs_classes("center", num_classes)
        loss = WithCenterLoss(loss, num_classes, embedding_dim, center_weight)
    return loss
