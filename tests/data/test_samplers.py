"""core.data.samplers: reproducible epochs, P x K identity batches, balanced pair batches."""

import numpy as np
import pytest
import torch

from core.data.samplers import balanced_pair_batches, class_groups, epoch_generator, pk_batches, random_batches
from core.errors import MatchLabError

LABELS = np.repeat(np.arange(20), [10] * 15 + [2, 3, 1, 7, 30])


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_epoch_generator_is_a_function_of_seed_and_epoch():
    draw = lambda s, e: torch.rand(4, generator=epoch_generator(s, e))  # noqa: E731
    assert torch.equal(draw(0, 3), draw(0, 3))
    assert not torch.equal(draw(0, 3), draw(0, 4)) and not torch.equal(draw(0, 3), draw(1, 3))


def test_random_batches_cover_the_epoch():
    batches = random_batches(103, 10, epoch_generator(0, 0))
    assert len(batches) == 10 and all(len(b) == 10 and b.dtype == torch.int64 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 100
    full = random_batches(103, 10, epoch_generator(0, 0), drop_last=False)
    assert sorted(torch.cat(full).tolist()) == list(range(103))
    assert _same(batches, random_batches(103, 10, epoch_generator(0, 0)))
    assert len(random_batches(7, 10, epoch_generator(0, 0))) == 1  # never an empty epoch


def test_pk_batches_hold_p_identities_times_k_images():
    p, k = 4, 3
    batches = pk_batches(LABELS, p, k, epoch_generator(1, 0))
    assert _same(batches, pk_batches(LABELS, p, k, epoch_generator(1, 0)))
    for b in batches:
        assert b.shape == (p * k,) and b.dtype == torch.int64
        per = LABELS[b.numpy()].reshape(p, k)
        assert (per == per[:, :1]).all()  # identity by identity
        assert len(set(per[:, 0])) == p  # P distinct identities
    used = torch.cat(batches).numpy()
    # Roughly one pass over the data, and the big class is not left over at the end.
    assert len(np.unique(used)) >= 0.9 * len(LABELS)
    assert abs(len(batches) - len(LABELS) / (p * k)) <= 0.2 * len(LABELS) / (p * k)
    # The one-image class is sampled with replacement to fill its K slots.
    solo = np.flatnonzero(LABELS == 17)[0]
    assert any((b.numpy() == solo).sum() == k for b in batches)


def test_pk_batches_accept_tensors_and_check_p():
    assert len(pk_batches(torch.as_tensor(LABELS), 2, 2, epoch_generator(0, 0))) > 0
    with pytest.raises(MatchLabError, match="p=21 identities per batch but the training set has 20"):
        pk_batches(LABELS, 21, 2, epoch_generator(0, 0))


def test_class_groups_follow_the_pattern():
    names = ["u001_1", "u001_2", "u002_1", "odd", "u002_3"]
    assert class_groups(names, "") is None
    assert class_groups(names, r"^(.+)_\d+$").tolist() == [0, 0, 1, 2, 1]  # "odd" does not match: its own group
    assert class_groups(names, r"^u00").tolist() == [0, 0, 0, 1, 0]  # no group in the pattern: the whole match


def test_grouped_pk_batches_bring_a_class_s_group_mates():
    # 60 shoe pairs of 20 students (3 pairs each), 2 photos per pair, as in shared/seeds/004.
    labels = np.repeat(np.arange(60), 2)
    groups = np.arange(60) // 3
    p, k = 16, 2

    def mates_in_batch(batches):
        """Mean number of other classes of the same group in a batch, per class."""
        counts = []
        for b in batches:
            present = np.unique(labels[b.numpy()])
            counts += [int((groups[present] == groups[c]).sum()) - 1 for c in present]
        return float(np.mean(counts))

    grouped = pk_batches(labels, p, k, epoch_generator(0, 0), groups)
    assert _same(grouped, pk_batches(labels, p, k, epoch_generator(0, 0), groups))
    for b in grouped:
        per = labels[b.numpy()].reshape(p, k)
        assert (per == per[:, :1]).all() and len(set(per[:, 0])) == p
    # Every pair is used once an epoch, as without groups; the batches now hold a pair's two siblings,
    # where a random draw of 16 of 60 pairs holds about 0.5 of them.
    assert len(grouped) == len(pk_batches(labels, p, k, epoch_generator(0, 0))) == 3
    assert len(np.unique(torch.cat(grouped).numpy())) == len(labels) - (len(labels) % (p * k))
    assert mates_in_batch(grouped) > 1.7 > 0.8 > mates_in_batch(pk_batches(labels, p, k, epoch_generator(0, 0)))


def test_balanced_pair_batches_are_half_positive():
    labels = np.zeros(1000, dtype=np.int8)
    labels[::20] = 1  # 50 positives, 950 negatives: the positives must repeat
    batches = balanced_pair_batches(labels, 16, epoch_generator(0, 0))
    assert len(batches) == 1000 // 16
    for b in batches:
        assert b.shape == (16,) and labels[b.numpy()].sum() == 8
    neg = torch.cat(batches).numpy()
    neg = neg[labels[neg] == 0]
    assert len(np.unique(neg)) == len(neg)  # the common kind is not repeated within an epoch
    assert _same(batches, balanced_pair_batches(labels, 16, epoch_generator(0, 0)))
    assert len(balanced_pair_batches(labels, 16, epoch_generator(0, 0), num_batches=3)) == 3


def test_balanced_pair_batch_errors():
    with pytest.raises(MatchLabError, match="even batch size"):
        balanced_pair_batches(np.array([0, 1]), 3, epoch_generator(0, 0))
    with pytest.raises(MatchLabError, match="got 0 same and 4 different"):
        balanced_pair_batches(np.zeros(4), 2, epoch_generator(0, 0))
