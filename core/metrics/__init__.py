"""Metrics for verification (1:1), identification (1:N) and classification, per docs/metrics.md.

Main entry points: `verification_report(scores, labels, folds)`, `rank_k_accuracy`, `open_set_report`,
`per_class_report`. Torch tensors are computed on their device, numpy arrays with numpy; results are
plain Python numbers and numpy arrays. scikit-learn is the oracle in tests/metrics.
"""

from core.metrics.classification import (
    confusion_matrix,
    error_order,
    most_confused_pairs,
    normalise_rows,
    per_class_report,
    rank_of_true,
    topk_accuracy,
)
from core.metrics.identification import (
    best_open_set_threshold,
    knn_accuracy,
    knn_predictions,
    open_set_report,
    open_set_scores,
    rank_k_accuracy,
    retrieval_metrics,
)
from core.metrics.verification import (
    DEFAULT_FAR_LEVELS,
    DetPoints,
    RocPoints,
    StreamingRoc,
    auc,
    best_accuracy_threshold,
    counts_at_threshold,
    det_points,
    eer,
    hardest_pairs,
    kfold_accuracy,
    roc_points,
    score_histograms,
    sweep_table,
    tar_at_far,
    threshold_for_far,
    verification_report,
)

__all__ = [
    "DEFAULT_FAR_LEVELS",
    "DetPoints",
    "RocPoints",
    "StreamingRoc",
    "auc",
    "best_accuracy_threshold",
    "best_open_set_threshold",
    "confusion_matrix",
    "counts_at_threshold",
    "det_points",
    "eer",
    "error_order",
    "hardest_pairs",
    "kfold_accuracy",
    "knn_accuracy",
    "knn_predictions",
    "most_confused_pairs",
    "normalise_rows",
    "open_set_report",
    "open_set_scores",
    "per_class_report",
    "rank_k_accuracy",
    "rank_of_true",
    "retrieval_metrics",
    "roc_points",
    "score_histograms",
    "sweep_table",
    "tar_at_far",
    "threshold_for_far",
    "topk_accuracy",
    "verification_report",
]
