"""Classification metrics against scikit-learn and brute force."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from core.errors import MatchLabError
from core.metrics.classification import (
    confusion_matrix,
    error_order,
    most_confused_pairs,
    normalise_rows,
    per_class_report,
    topk_accuracy,
)


def test_topk_matches_brute_force_numpy_and_torch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    order = np.argsort(-logits, axis=1)
    want = {k: np.mean([labels[i] in order[i, :k] for i in range(300)]) for k in (1, 3, 5)}
    got = topk_accuracy(logits, labels, ks=(1, 3, 5))
    assert got == topk_accuracy(torch.from_numpy(logits), torch.from_numpy(labels), ks=(1, 3, 5))
    assert got == {1: want[1], 3: want[3], 5: want[5]}
    assert got[1] == np.mean(logits.argmax(1) == labels)


def test_topk_ties_follow_argmax_and_k_beyond_classes():
    logits = np.zeros((4, 3))
    got = topk_accuracy(logits, np.array([0, 1, 2, 0]), ks=(1, 2, 5))
    # all tied: argmax says class 0, so only the two class-0 samples are top-1 correct
    assert got == {1: 0.5, 2: 0.75, 5: 1.0}
    with pytest.raises(MatchLabError, match="class indices"):
        topk_accuracy(logits, np.array([0, 1, 3, 0]))
    with pytest.raises(MatchLabError, match="NaN"):
        topk_accuracy(np.full((1, 2), np.nan), np.array([0]))


@pytest.fixture
def preds():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 400)  # class 6 never occurs
    pred = np.where(rng.random(400) < 0.6, labels, rng.integers(0, 7, 400))
    pred[pred == 5] = 4  # class 5 never predicted
    return pred, labels


def test_confusion_matches_sklearn(preds):
    pred, labels = preds
    cm = confusion_matrix(pred, labels, 7)
    np.testing.assert_array_equal(cm, sk_confusion(labels, pred, labels=range(7)))
    assert cm.dtype == np.int64
    norm = normalise_rows(cm)
    np.testing.assert_allclose(norm[:6].sum(1), 1.0)
    assert np.all(norm[6] == 0)


def test_per_class_report_matches_sklearn(preds):
    pred, labels = preds
    names = [f"c{i}" for i in range(7)]
    rep = per_class_report(pred, labels, names)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=range(7), zero_division=0)
    assert list(rep.columns) == ["class", "precision", "recall", "f1", "support", "accuracy"]
    assert list(rep["class"]) == names
    np.testing.assert_allclose(rep["precision"], p)
    np.testing.assert_allclose(rep["recall"], r)
    np.testing.assert_allclose(rep["f1"], f)
    np.testing.assert_array_equal(rep["support"], s)
    for c in range(7):
        own = labels == c
        assert rep["accuracy"][c] == (np.mean(pred[own] == c) if own.any() else 0.0)
    assert rep["precision"][5] == 0 and rep["recall"][6] == 0


def test_most_confused_pairs_hand_case():
    cm = np.array([[5, 3, 0], [1, 8, 1], [0, 3, 2]])
    got = most_confused_pairs(cm, ["a", "b", "c"], k=3)
    expected = pd.DataFrame(
        {"true": ["c", "a", "b"], "predicted": ["b", "b", "a"], "count": [3, 3, 1], "rate": [0.6, 3 / 8, 0.1]}
    )
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    assert len(most_confused_pairs(cm, ["a", "b", "c"])) == 4  # only non-zero cells


def test_error_order_puts_confused_pairs_first_and_together():
    cm = np.diag([10, 10, 10, 10, 10])
    cm[3, 1], cm[1, 3] = 6, 2  # 1 <-> 3 confused most
    cm[4, 0] = 3  # then 0 <-> 4
    cm[2, 2] = 9
    cm[2, 1] = 1  # then 1 <-> 2
    np.testing.assert_array_equal(error_order(cm), [1, 3, 0, 4, 2])
    np.testing.assert_array_equal(error_order(np.diag([5, 4, 3])), [0, 1, 2])
