"""The data audit's settings (`AuditSettings`), apart from the analysis: the CLI builds its --help from
these defaults for every command, and importing them must not load pandas or the analysis' dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import MatchLabError

CLASSIFIERS = ("auto", "centroid", "knn")


@dataclass(frozen=True)
class AuditSettings:
    """The audit's knobs; every default is written into the audit's summary."""

    k: int = 10  # neighbours that vote in the cross-validated kNN
    folds: int = 5  # cross-validation folds of that kNN (an image never votes for itself)
    search_k: int = 24  # neighbours searched per image (>= k, plus room for fold-mates that are skipped)
    show_k: int = 8  # neighbours kept per image for the page
    near_duplicate: float | None = None  # cosine at or above which two files are near duplicates (None: auto, below)
    near_duplicate_ratio: float = (
        0.1  # auto: distance 1 - cosine <= this x the median distance of an image to its closest same-identity image
    )
    classifier: str = "auto"  # out-of-fold probabilities: "centroid" (softmax over the other folds' class means), "knn", or "auto": the one with the higher out-of-fold likelihood of the labels
    temperature: float = 0.1  # kNN vote weight exp((cosine - 1) / temperature): the closest neighbours count most
    centroid_temperature: float = 0.05  # centroid classifier: softmax of cosine / this over the class means
    min_images: int = 3  # identities with fewer images are flagged too small to judge
    smoothing: float = 0.1  # pseudo-votes spread over all classes, so no class has probability 0
    outlier_z: float = (
        3.5  # robust z (median / MAD) of the distance to the own class above which an image is an outlier
    )
    identity_quantile: float = 0.25  # centroid cosine threshold = this quantile of same-identity half-vs-half cosines
    cleanlab_max_cells: int = (
        10_000_000  # cleanlab's find_label_issues (confident learning) flags when N x classes <= this
    )
    seed: int = 0
    budget_bytes: int | None = None  # memory budget of the neighbour search (core.search default when None)

    def check(self) -> AuditSettings:
        if not 1 <= self.k <= self.search_k:
            raise MatchLabError(f"audit k={self.k} must be in [1, search_k={self.search_k}]")
        if self.classifier not in CLASSIFIERS:
            raise MatchLabError(
                f"audit classifier={self.classifier!r} is not valid; use one of {', '.join(CLASSIFIERS)}"
            )
        if self.folds < 2:
            raise MatchLabError(f"audit folds={self.folds} must be at least 2")
        if self.near_duplicate is not None and not -1.0 <= self.near_duplicate <= 1.0:
            raise MatchLabError(f"audit near_duplicate={self.near_duplicate} must be a cosine in [-1, 1]")
        if self.min_images < 1:
            raise MatchLabError(f"audit min_images={self.min_images} must be at least 1")
        return self
