"""Index batches for one epoch: random, P identities x K images (metric losses), balanced pairs.

Entry points: `epoch_generator(seed, epoch)` and the batch builders that take it. Each builder
returns the whole epoch as a list of CPU int64 index tensors, drawn only from the explicit generator,
so epoch e of a resumed run is the same as epoch e of an uninterrupted one. The training loop indexes
its device-resident uint8 images with them (move each to the device with non_blocking=True).
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import torch

from core.errors import MatchLabError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) through a hash, so nearby seeds give unrelated streams."""
    digest = hashlib.sha256(f"matchlab:{int(seed)}:{int(epoch)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return g


def random_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> list[torch.Tensor]:
    """A random permutation of range(n) cut into batches of `batch_size` (each (batch_size,) int64).

    drop_last drops a short final batch, except when it is the only one (n < batch_size), so an
    epoch is never empty.
    """
    _check_positive(batch_size=batch_size)
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def pk_batches(
    labels: np.ndarray | torch.Tensor,
    p: int,
    k: int,
    generator: torch.Generator,
    class_groups: np.ndarray | None = None,
) -> list[torch.Tensor]:
    """Batches of P distinct identities x K images each: (p * k,) int64, identity by identity.

    Every image is used about once per epoch: a class's shuffled images are cut into groups of K
    (its last group, or a class with fewer than K images, topped up by sampling that class with
    replacement), and each batch takes one group from P classes drawn in proportion to the groups
    they have left, so big classes do not pile up at the end. labels: (N,) int.

    class_groups: (max label + 1,) int, a group id per class (e.g. the student who owns a shoe pair).
    With it, a drawn class brings the other classes of its group that have images left into the same
    batch, so a metric loss sees the hard negatives a same-group test pair will ask about.
    """
    _check_positive(p=p, k=k)
    labels = labels.cpu().long() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels)).long()
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    if len(classes) < p:
        raise MatchLabError(
            f"P x K sampling needs p={p} identities per batch but the training set has {len(classes)}: lower p"
        )
    groups: list[torch.Tensor] = []  # per class: (groups_c, k) indices
    start = 0
    for n in counts.tolist():
        members = order[start : start + n][torch.randperm(n, generator=generator)]
        start += n
        extra = max(k, math.ceil(n / k) * k) - n
        if extra:
            members = torch.cat([members, members[torch.randint(n, (extra,), generator=generator)]])
        groups.append(members.view(-1, k))
    left = torch.tensor([len(g) for g in groups], dtype=torch.float64)
    taken = [0] * len(groups)
    batches = []
    mates = None if class_groups is None else _group_mates(np.asarray(class_groups)[classes.numpy()])
    while int((left > 0).sum()) >= p:
        if mates is None:
            chosen = torch.multinomial(left, p, replacement=False, generator=generator).tolist()
        else:
            chosen = _draw_with_mates(left, mates, p, generator)
        batches.append(torch.cat([groups[c][taken[c]] for c in chosen]))
        for c in chosen:
            taken[c] += 1
        left[chosen] -= 1
    return batches


def class_groups(class_names: list[str], pattern: str) -> np.ndarray | None:
    """A group id per class for `pk_batches`: classes whose names give the same match of `pattern` (its
    first group, if it has one) share one; a name it does not match is a group of its own. None when
    pattern is empty."""
    if not pattern:
        return None
    regex = re.compile(pattern)
    ids: dict[str, int] = {}
    out = []
    for name in class_names:
        m = regex.search(name)
        key = (m.group(1) if m.groups() else m.group(0)) if m else f"\0{name}"  # \0: cannot collide with a match
        out.append(ids.setdefault(key, len(ids)))
    return np.asarray(out, dtype=np.int64)


def _group_mates(group_of: np.ndarray) -> list[list[int]]:
    """Per class (position in the sorted classes): the positions of all classes of its group, itself included."""
    members: dict[int, list[int]] = {}
    for c, g in enumerate(group_of.tolist()):
        members.setdefault(g, []).append(c)
    return [members[g] for g in group_of.tolist()]


def _draw_with_mates(left: torch.Tensor, mates: list[list[int]], p: int, generator: torch.Generator) -> list[int]:
    """P distinct classes with groups left: draw one in proportion to what it has left, add its group's
    other classes (in random order, while there is room), repeat."""
    weight = left.clone()
    chosen: list[int] = []
    while len(chosen) < p:
        c = int(torch.multinomial(weight, 1, generator=generator))
        others = [m for m in mates[c] if m != c and weight[m] > 0]
        others = [others[i] for i in torch.randperm(len(others), generator=generator).tolist()]
        take = [c, *others][: p - len(chosen)]
        chosen += take
        weight[take] = 0
    return chosen


def balanced_pair_batches(
    pair_labels: np.ndarray, batch_size: int, generator: torch.Generator, num_batches: int | None = None
) -> list[torch.Tensor]:
    """Batches of pair indices, the first half same-identity pairs (label 1), the second half different.

    pair_labels: (M,) int, 1 same / 0 different. Returns `num_batches` (default M // batch_size, the
    length of an unbalanced epoch) tensors of (batch_size,) int64 indices into the pair list. Each
    side is drawn without replacement and reshuffled when used up, so the rarer kind (positives in an
    all-pairs protocol) repeats while the commoner one is seen once.
    """
    _check_positive(batch_size=batch_size)
    if batch_size % 2:
        raise MatchLabError(f"balanced pair batches need an even batch size, got {batch_size}")
    labels = np.asarray(pair_labels)
    pos, neg = torch.from_numpy(np.flatnonzero(labels == 1)), torch.from_numpy(np.flatnonzero(labels == 0))
    if len(pos) == 0 or len(neg) == 0:
        raise MatchLabError(
            f"balanced pair batches need both same and different pairs; got {len(pos)} same and {len(neg)} different"
        )
    half = batch_size // 2
    n_batches = num_batches if num_batches is not None else max(1, len(labels) // batch_size)
    sides = [
        side[_cycled_permutation(len(side), n_batches * half, generator)].view(n_batches, half) for side in (pos, neg)
    ]
    return list(torch.cat(sides, dim=1).unbind(0))


def _cycled_permutation(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` indices of range(n): fresh permutations back to back, cut to length."""
    reps = max(1, math.ceil(length / n))
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:length]


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise MatchLabError(f"{name}={v} must be a positive integer")
