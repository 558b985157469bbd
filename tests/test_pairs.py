"""Tests for core.pairs: every reader on tiny trees written in tmp_path, the real CFP / shoes protocols when
the shared datasets are present, generated pairs, and blocked all-pairs scoring against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import MatchLabError
from core.pairs import (
    PAIR_FORMATS,
    PairSet,
    all_pairs_counts,
    generated_pairs,
    iter_all_pair_blocks,
    read_cfp_pairs,
    read_cfp_protocol,
    read_csv_pairs,
    read_lfw_pairs,
    read_pairs,
    shoe_pairs,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 200)).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------- LFW


@pytest.fixture
def lfw_root(tmp_path: Path) -> Path:
    for name, count in {"Alice": 3, "Bob": 2, "Carol": 2}.items():
        for i in range(1, count + 1):
            _image(tmp_path / "lfw" / name / f"{name}_{i:04d}.jpg")
    return tmp_path / "lfw"


def test_lfw_two_folds(lfw_root: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "pairs.txt", "2\t1\nAlice\t1\t2\nAlice\t1\tBob\t1\n\nBob 1 2\nCarol 1 Alice 3\n")
    ps = read_lfw_pairs(f, lfw_root)
    assert len(ps) == 4
    assert ps.labels.tolist() == [1, 0, 1, 0]
    assert ps.folds.tolist() == [0, 0, 1, 1]
    assert ps.slices.tolist() == ["all"] * 4
    assert ps.paths_a[1] == "Alice/Alice_0001.jpg" and ps.paths_b[1] == "Bob/Bob_0001.jpg"
    assert ps.paths_b[3] == "Alice/Alice_0003.jpg"
    assert "2 folds" in ps.source
    assert read_pairs("lfw", f, lfw_root).paths_a == ps.paths_a


def test_lfw_single_count_header(lfw_root: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "pairsDevTest.txt", "2\nAlice 1 3\nBob 1 2\nAlice 2 Carol 2\nBob 2 Carol 1\n")
    ps = read_lfw_pairs(f, lfw_root)
    assert ps.labels.tolist() == [1, 1, 0, 0]
    assert ps.folds.tolist() == [-1] * 4


def test_lfw_missing_image_names_file_and_line(lfw_root: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "pairs.txt", "1 1\nAlice 1 2\nAlice 9 Bob 1\n")
    with pytest.raises(MatchLabError) as e:
        read_lfw_pairs(f, lfw_root)
    msg = str(e.value)
    assert f"{f}:3:" in msg and "Alice/Alice_0009.jpg" in msg and "--data" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1 1\nAlice 1\nAlice 1 Bob 1\n", 2, "fields"),
        ("1 1\nAlice 1 two\nAlice 1 Bob 1\n", 2, "not an integer"),
        ("2 1\nAlice 1 2\nAlice 1 Bob 1\n", 1, "header promises"),
        ("Alice 1 2\nAlice 1 Bob 1\n", 1, "not an integer"),
    ],
)
def test_lfw_bad_lines(lfw_root: Path, tmp_path: Path, text: str, line: int, words: str) -> None:
    f = _write(tmp_path / "pairs.txt", text)
    with pytest.raises(MatchLabError, match=words) as e:
        read_lfw_pairs(f, lfw_root)
    assert f"pairs.txt:{line}:" in str(e.value)


# ------------------------------------------------------------------------------------------------- CFP


@pytest.fixture
def cfp_root(tmp_path: Path) -> Path:
    cfp = tmp_path / "cfp"
    frontal = [f"{i:03d}/frontal/{k:02d}.jpg" for i in (1, 2) for k in (1, 2)]
    profile = [f"{i:03d}/profile/{k:02d}.jpg" for i in (1, 2) for k in (1,)]
    for rel in frontal + profile:
        _image(cfp / "images" / rel)
    proto = cfp / "Protocol"
    _write(proto / "Pair_list_F.txt", "".join(f"{n} ../Data/Images/{p}\n" for n, p in enumerate(frontal, 1)))
    _write(proto / "Pair_list_P.txt", "".join(f"{n} ../Data/Images/{p}\n" for n, p in enumerate(profile, 1)))
    # frontal 1,2 = id 001, 3,4 = id 002; profile 1 = id 001, 2 = id 002
    _write(proto / "Split/FF/01/same.txt", "1,2\n")
    _write(proto / "Split/FF/01/diff.txt", "1,3\n")
    _write(proto / "Split/FF/02/same.txt", "3,4\n")
    _write(proto / "Split/FF/02/diff.txt", "2,4\n")
    _write(proto / "Split/FP/01/same.txt", "1,1\n3,2\n")
    _write(proto / "Split/FP/01/diff.txt", "1,2\n3,1\n")
    return cfp


def test_cfp_synthetic(cfp_root: Path) -> None:
    images = cfp_root / "images"
    ff = read_cfp_pairs(cfp_root / "Protocol", images, "FF")
    assert ff.paths_a == ["001/frontal/01.jpg", "001/frontal/01.jpg", "002/frontal/01.jpg", "001/frontal/02.jpg"]
    assert ff.paths_b[1] == "002/frontal/01.jpg"
    assert ff.labels.tolist() == [1, 0, 1, 0] and ff.folds.tolist() == [0, 0, 1, 1]
    assert set(ff.slices) == {"FF"} and ff.source == "cfp-ff (2 folds)"
    fp = read_cfp_pairs(cfp_root, images, "fp")  # the cfp folder holding Protocol/ works too
    assert fp.paths_a[0] == "001/frontal/01.jpg" and fp.paths_b[0] == "001/profile/01.jpg"
    assert fp.paths_b[1] == "002/profile/01.jpg" and fp.labels.tolist() == [1, 1, 0, 0]
    both = read_pairs("cfp", None, images)  # Protocol/ found beside the images folder
    assert len(both) == 8 and both.slices.tolist() == ["FF"] * 4 + ["FP"] * 4
    assert read_cfp_protocol(cfp_root).paths_b == both.paths_b
    # --data at the cfp folder itself: paths gain the images/ prefix, still relative to --data
    assert read_pairs("cfp-ff", cfp_root, cfp_root).paths_a[0] == "images/001/frontal/01.jpg"


def test_cfp_bad_index_and_missing_image(cfp_root: Path) -> None:
    _write(cfp_root / "Protocol/Split/FF/02/diff.txt", "2,4\n2,99\n")
    with pytest.raises(MatchLabError, match=r"02/diff.txt:2: index 99 is not in Pair_list_F.txt"):
        read_cfp_pairs(cfp_root / "Protocol", cfp_root / "images", "FF")
    (cfp_root / "images/002/profile/01.jpg").unlink()
    with pytest.raises(MatchLabError, match=r"Pair_list_P.txt:2: image '002/profile/01.jpg' not found"):
        read_cfp_pairs(cfp_root / "Protocol", cfp_root / "images", "FP")


def test_cfp_real_protocol() -> None:
    cfp = DATASETS / "cfp"
    if not (cfp / "Protocol").is_dir():
        pytest.skip(f"{cfp} not present")
    for fmt in ("cfp-ff", "cfp-fp"):
        ps = read_pairs(fmt, cfp / "Protocol", cfp / "images")
        assert len(ps) == 7000 and int(ps.labels.sum()) == 3500
        assert np.bincount(ps.folds).tolist() == [700] * 10
        assert np.bincount(ps.folds, weights=ps.labels).tolist() == [350] * 10
        assert ps.source == f"{fmt} (10 folds)"
    fp = read_pairs("cfp-fp", cfp / "Protocol", cfp / "images")
    assert all("/frontal/" in a for a in fp.paths_a) and all("/profile/" in b for b in fp.paths_b)


# ------------------------------------------------------------------------------------------------- CSV


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    for rel in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        _image(tmp_path / "data" / rel)
    return tmp_path / "data"


def test_csv_without_and_with_fold(flat_root: Path, tmp_path: Path) -> None:
    f = _write(tmp_path / "p.csv", "path_a,path_b,label\na/1.png,a/2.png,1\na/1.png,b/1.png,0\n")
    ps = read_csv_pairs(f, flat_root)
    assert ps.labels.tolist() == [1, 0] and ps.folds.tolist() == [-1, -1] and ps.slices.tolist() == ["all"] * 2
    f = _write(
        tmp_path / "q.csv",
        "path_a,path_b,label,fold,slice\n"
        f"{flat_root / 'a/1.png'},./a/2.png,1,0,day\nb\\1.png,b/2.png,1,1,\n"
        "a/2.png,b/2.png,0,1,night\n",
    )
    ps = read_pairs("csv", f, flat_root)
    assert ps.paths_a == ["a/1.png", "b/1.png", "a/2.png"] and ps.paths_b[0] == "a/2.png"
    assert ps.folds.tolist() == [0, 1, 1] and ps.slices.tolist() == ["day", "all", "night"]
    assert ps.to_frame().columns.tolist() == ["path_a", "path_b", "label", "fold", "slice"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("path_a,path_b,label\na/1.png,a/2.png,yes\n", r"p.csv:2: the label must be 1"),
        ("path_a,path_b\na/1.png,a/2.png\n", r"p.csv:1: header lacks column\(s\) label"),
        ("path_a,path_b,label\n\na/1.png,a/2.png\n", r"p.csv:3: 2 field\(s\)"),
        ("path_a,path_b,label\na/1.png,a/2.png,1\na/1.png,c/9.png,0\n", r"p.csv:3: image 'c/9.png' not found"),
    ],
)
def test_csv_errors(flat_root: Path, tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(MatchLabError, match=words):
        read_csv_pairs(_write(tmp_path / "p.csv", text), flat_root)


# ----------------------------------------------------------------------------------------------- shoes


def _negatives_follow_rule(ps: PairSet) -> None:
    for a, b, label in zip(ps.paths_a, ps.paths_b, ps.labels):
        fa, fb = a.split("/")[-2], b.split("/")[-2]
        student, k = fa.rsplit("_", 1)
        assert "_left_" in a and "_right_" in b
        assert fb == (fa if label else f"{student}_{int(k) % 3 + 1}")


def test_shoes_real_test_w() -> None:
    root = DATASETS / "shoes" / "test_w"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    ps = read_pairs("shoes", None, root)
    assert len(ps) == 60 and int(ps.labels.sum()) == 30
    assert set(ps.slices) == {"test_w"} and set(ps.folds) == {-1}
    assert ps.paths_a[0] == "u011_1/u011_1_left_w.jpg"
    _negatives_follow_rule(ps)


def test_shoes_splits_and_extensions(tmp_path: Path) -> None:
    root = tmp_path / "shoes"
    for split, student, ext in (("train", "u001", ".png"), ("test_w", "u002", ".JPG")):
        for k in (1, 2, 3):
            for side in ("left", "right"):
                _image(root / split / f"{student}_{k}" / f"{student}_{k}_{side}_w{ext}")
    (root / "notes.md").write_text("not a split")
    ps = shoe_pairs(root)
    assert len(ps) == 12 and int(ps.labels.sum()) == 6
    assert ps.slices.tolist() == ["test_w"] * 6 + ["train"] * 6
    assert ps.paths_a[0] == "test_w/u002_1/u002_1_left_w.JPG"
    _negatives_follow_rule(ps)
    (root / "train/u001_2/u001_2_right_w.png").unlink()
    with pytest.raises(MatchLabError, match="u001_2: expected one left and one right"):
        shoe_pairs(root)
    with pytest.raises(MatchLabError, match="no shoe pair folders"):
        shoe_pairs(root / "train" / "u001_1")


# -------------------------------------------------------------------------------------------- dispatch


def test_unknown_format_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(MatchLabError) as e:
        read_pairs("lfw2", tmp_path / "x.txt", tmp_path)
    assert all(name in str(e.value) for name in PAIR_FORMATS)
    with pytest.raises(MatchLabError, match="needs a pairs file"):
        read_pairs("csv", None, tmp_path)
    with pytest.raises(MatchLabError, match="not found"):
        read_pairs("lfw", tmp_path / "missing.txt", tmp_path)


def test_pairset_helpers(flat_root: Path, tmp_path: Path) -> None:
    f = _write(
        tmp_path / "p.csv", "path_a,path_b,label,fold\na/1.png,a/2.png,1,0\na/1.png,b/1.png,0,1\nb/1.png,b/2.png,1,1\n"
    )
    ps = read_csv_pairs(f, flat_root)
    sub = ps.subset(ps.folds == 1)
    assert len(sub) == 2 and sub.paths_a == ["a/1.png", "b/1.png"] and sub.labels.dtype == np.int8
    assert ps.subset([2, 0]).paths_b == ["b/2.png", "a/2.png"]
    assert ps.unique_paths() == ["a/1.png", "a/2.png", "b/1.png", "b/2.png"]
    samples = ["b/2.png", "a/1.png", "b/1.png", "a/2.png"]
    idx_a, idx_b = ps.index_into(samples)
    assert idx_a.dtype == np.int64 and [samples[i] for i in idx_a] == ps.paths_a
    assert [samples[i] for i in idx_b] == ps.paths_b
    with pytest.raises(MatchLabError, match="'b/2.png'"):
        ps.index_into(samples[1:])


# ------------------------------------------------------------------------------------------- generated


def test_generated_balanced_counts_and_seed() -> None:
    labels = np.repeat(np.arange(6), [5, 1, 3, 2, 4, 1])
    paths = [f"id{lab}/{i}.png" for i, lab in enumerate(labels)]
    ps = generated_pairs(labels, paths, "balanced", n_pairs=20, seed=3)
    assert len(ps) == 20 and int(ps.labels.sum()) == 10
    label_of = dict(zip(paths, labels))
    keys = {(a, b) for a, b in zip(ps.paths_a, ps.paths_b)}
    assert len(keys) == 20  # no pair twice
    assert all((label_of[a] == label_of[b]) == bool(y) for a, b, y in zip(ps.paths_a, ps.paths_b, ps.labels))
    assert all(paths.index(a) < paths.index(b) for a, b in keys)
    assert generated_pairs(labels, paths, "balanced", n_pairs=20, seed=3).paths_b == ps.paths_b
    assert generated_pairs(labels, paths, "balanced", n_pairs=20, seed=4).paths_b != ps.paths_b
    # 10 + 0 + 3 + 1 + 6 + 0 = 20 genuine pairs exist: asking for more caps both kinds at 20
    big = generated_pairs(labels, paths, "balanced", n_pairs=1000)
    assert len(big) == 40 and int(big.labels.sum()) == 20 and set(big.folds) == {-1}
    with pytest.raises(MatchLabError, match="balanced"):
        generated_pairs(np.arange(4), [str(i) for i in range(4)], "balanced")


def test_generated_all_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.array(["x", "y", "x", "z", "y", "x"])
    paths = [f"{i}.png" for i in range(6)]
    ps = generated_pairs(labels, paths, "all")
    brute = [(paths[i], paths[j], int(labels[i] == labels[j])) for i in range(6) for j in range(i + 1, 6)]
    assert list(zip(ps.paths_a, ps.paths_b, ps.labels.tolist())) == brute
    assert len(ps) == all_pairs_counts(6) == 15 and ps.source == "generated all pairs"
    monkeypatch.setattr("core.pairs.ALL_PAIRS_LIMIT", 10)
    with pytest.raises(MatchLabError, match="blocked"):
        generated_pairs(labels, paths, "all")
    with pytest.raises(MatchLabError, match="valid modes: balanced, all"):
        generated_pairs(labels, paths, "some")


# ---------------------------------------------------------------------------------- blocked all-pairs


@pytest.mark.parametrize("n, block", [(37, 8), (16, 16), (5, 64), (1, 4)])
def test_blocks_equal_brute_force_upper_triangle(n: int, block: int) -> None:
    g = torch.Generator().manual_seed(n)
    emb = torch.randint(-3, 4, (n, 6), generator=g).float()  # small integers: every dot product is exact
    labels = torch.randint(0, 4, (n,), generator=g)
    blocks = list(iter_all_pair_blocks(emb, labels, block=block))
    scores = torch.cat([s for s, _ in blocks])
    genuine = torch.cat([y for _, y in blocks])
    assert len(scores) == all_pairs_counts(n) and scores.dtype == torch.float32 and genuine.dtype == torch.bool
    i, j = torch.triu_indices(n, n, offset=1)
    full = emb @ emb.T
    expected = sorted(zip(full[i, j].tolist(), (labels[i] == labels[j]).tolist()))
    assert sorted(zip(scores.tolist(), genuine.tolist())) == expected


def test_blocks_bf16_close_to_fp32() -> None:
    emb = torch.nn.functional.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(50) % 5
    ref = torch.cat([s for s, _ in iter_all_pair_blocks(emb, labels, block=16)])
    low = torch.cat([s for s, _ in iter_all_pair_blocks(emb.bfloat16(), labels, block=16)])
    assert low.dtype == torch.float32 and torch.allclose(low, ref, atol=2e-2)
