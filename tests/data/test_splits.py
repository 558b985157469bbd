"""core.data.splits: deterministic, stratified image splits; identity-disjoint splits; split.json."""

import json

import numpy as np
import pytest

from core.data.splits import load_split, save_split, split_by_identity, split_by_image
from core.errors import MatchLabError

LABELS = np.repeat(np.arange(12), [10, 10, 10, 5, 5, 5, 3, 3, 2, 2, 1, 20])


def test_image_split_is_deterministic_and_stratified():
    train, val = split_by_image(LABELS, 0.2, seed=7)
    again = split_by_image(LABELS, 0.2, seed=7)
    other = split_by_image(LABELS, 0.2, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    assert not np.array_equal(val, other[1])
    assert train.dtype == val.dtype == np.int64
    assert np.intersect1d(train, val).size == 0 and np.union1d(train, val).tolist() == list(range(len(LABELS)))
    for c, n in zip(*np.unique(LABELS, return_counts=True)):
        n_val = int((LABELS[val] == c).sum())
        assert n_val == min(n - 1, int(np.floor(n * 0.2 + 0.5)))
        assert (LABELS[train] == c).sum() >= 1  # every class keeps a training image


def test_image_split_without_validation():
    train, val = split_by_image(LABELS, 0.0, seed=0)
    assert val.size == 0 and train.size == len(LABELS)


def test_identity_split_holds_out_whole_identities():
    parts = split_by_identity(LABELS, 0.2, 0.25, seed=3)
    again = split_by_identity(LABELS, 0.2, 0.25, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in ("train", "val", "test"))
    assert not np.array_equal(parts["test"], split_by_identity(LABELS, 0.2, 0.25, seed=4)["test"])
    ids = {k: set(LABELS[v].tolist()) for k, v in parts.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    assert len(ids["test"]) == 3 and len(ids["val"]) == 2 and len(ids["train"]) == 7
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(LABELS)))
    # whole identities: every image of a held-out class is held out
    for c in ids["test"]:
        assert set(np.flatnonzero(LABELS == c)) <= set(parts["test"].tolist())


def test_identity_split_small_fractions_still_hold_out_one_identity():
    parts = split_by_identity(np.repeat(np.arange(5), 2), 0.01, 0.01, seed=0)
    assert len(set(np.repeat(np.arange(5), 2)[parts["test"]])) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: split_by_image(LABELS, 1.0, 0), "val_fraction=1.0 must be in"),
        (lambda: split_by_image(LABELS, -0.1, 0), "val_fraction"),
        (lambda: split_by_identity(np.repeat(np.arange(3), 2), 0.4, 0.4, 0), "fewer than 2 of the 3 identities"),
    ],
)
def test_bad_fractions_are_one_line_errors(call, match):
    with pytest.raises(MatchLabError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_split_json_round_trip(tmp_path):
    paths = [f"c{y}/{i}.jpg" for i, y in enumerate(LABELS)]
    parts = split_by_identity(LABELS, 0.2, 0.2, seed=1)
    save_split(tmp_path / "split.json", paths, parts, mode="identity", seed=1)
    doc = json.loads((tmp_path / "split.json").read_text())
    assert doc["mode"] == "identity" and doc["seed"] == 1 and doc["test"][0] in paths
    # The cache may list the paths in another order after a rebuild: mapping goes by path.
    shuffled = paths[::-1]
    back = load_split(tmp_path / "split.json", shuffled)
    for k in ("train", "val", "test"):
        assert [shuffled[i] for i in back[k]] == [paths[i] for i in parts[k]]


def test_split_json_errors_name_the_file_or_image(tmp_path):
    paths = ["a/1.jpg", "b/2.jpg"]
    with pytest.raises(MatchLabError, match="not found"):
        load_split(tmp_path / "split.json", paths)
    save_split(tmp_path / "split.json", paths, {"train": np.array([0]), "val": np.array([1])}, mode="image", seed=0)
    assert json.loads((tmp_path / "split.json").read_text())["test"] == []
    with pytest.raises(MatchLabError, match=r"val image b/2.jpg is not in the data folder"):
        load_split(tmp_path / "split.json", ["a/1.jpg"])
    with pytest.raises(MatchLabError, match="split mode"):
        save_split(tmp_path / "x.json", paths, {}, mode="random", seed=0)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MatchLabError, match="unreadable"):
        load_split(tmp_path / "broken.json", paths)
