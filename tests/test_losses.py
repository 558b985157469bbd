"""Each loss against a slow reference written with plain Python loops on a tiny batch (B=8, D=4)."""

import itertools
import math

import pytest
import torch

from core.errors import MatchLabError
from core.losses import create_loss, list_losses

B, D, C = 8, 4, 3
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    logits = torch.randn(B, C, generator=g, dtype=torch.float64)
    return emb.float(), logits.float(), emb, logits


def cos(u, v):
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


def softmax_ce(row, target, smoothing=0.0):
    """-sum_c q_c log p_c with q = (1 - e) one-hot + e / C."""
    m = max(row)
    log_z = m + math.log(sum(math.exp(r - m) for r in row))
    logp = [r - log_z for r in row]
    return (1 - smoothing) * -logp[target] + smoothing * sum(-lp for lp in logp) / len(row)


def mean(xs):
    return sum(xs) / len(xs)


def mean_nonzero(xs):
    nz = [x for x in xs if x > 0]
    return sum(nz) / len(nz) if nz else 0.0


def test_cross_entropy_label_smoothing(batch):
    emb, logits, _, logits64 = batch
    loss = create_loss("cross_entropy", C, D, label_smoothing=0.1)
    out = loss(emb, logits, LABELS)
    ref = mean([softmax_ce(logits64[i].tolist(), int(LABELS[i]), 0.1) for i in range(B)])
    assert set(out) == {"ce", "total"}
    assert out["total"].item() == pytest.approx(ref, rel=1e-5)
    assert loss.needs_head and loss.class_logits(emb, logits) is logits


@pytest.mark.parametrize("name,margin", [("arcface", 0.5), ("cosface", 0.35)])
def test_margin_heads(batch, name, margin):
    emb, _, emb64, _ = batch
    scale = 16.0
    loss = create_loss(name, C, D, margin=margin, scale=scale)
    with torch.no_grad():
        loss.pml.W.normal_()
    w = loss.pml.W.detach().double()  # (D, C): PML keeps one column per class
    assert w.shape == (D, C)

    def target_logit(c):
        if name == "cosface":
            return c - margin
        theta = math.acos(max(-1.0, min(1.0, c)))
        # ArcFace keeps the target logit decreasing past theta = pi - m (PML and InsightFace agree).
        return math.cos(theta + margin) if theta <= math.pi - margin else c - margin * math.sin(margin)

    per_sample, plain = [], []
    for i in range(B):
        cosines = [cos(emb64[i], w[:, j]) for j in range(C)]
        y = int(LABELS[i])
        row = [scale * (target_logit(c) if j == y else c) for j, c in enumerate(cosines)]
        per_sample.append(softmax_ce(row, y))
        plain.append([scale * c for c in cosines])

    out = loss(emb, None, LABELS)
    assert set(out) == {name, "total"}
    assert out["total"].item() == pytest.approx(mean(per_sample), rel=1e-4)
    # Accuracy logits are the margin-free scaled cosines.
    assert torch.allclose(loss.class_logits(emb, None).double(), torch.tensor(plain, dtype=torch.float64), atol=1e-4)


def test_arcface_margin_is_radians():
    loss = create_loss("arcface", C, D, margin=0.5)
    assert loss.pml.margin == pytest.approx(0.5)  # PML took degrees (28.65) and converted to radians
    with pytest.raises(MatchLabError, match="radians"):
        create_loss("arcface", C, D, margin=28.6)


def test_contrastive_cosine_all_pairs(batch):
    emb, _, emb64, _ = batch
    pos_margin, neg_margin = 0.8, 0.1
    loss = create_loss("contrastive", C, D, pos_margin=pos_margin, neg_margin=neg_margin)
    pos, neg = [], []
    for i, j in itertools.combinations(range(B), 2):
        s = cos(emb64[i], emb64[j])
        if LABELS[i] == LABELS[j]:
            pos.append(max(0.0, pos_margin - s))
        else:
            neg.append(max(0.0, s - neg_margin))
    out = loss(emb, None, LABELS)
    assert set(out) == {"contrastive", "total"}
    assert out["total"].item() == pytest.approx(mean_nonzero(pos) + mean_nonzero(neg), rel=1e-5)
    assert loss.batch_sampler == "pk" and loss.class_logits(emb, None) is None


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_triplet_semihard(batch, distance):
    emb, _, emb64, _ = batch
    margin = 0.2
    loss = create_loss("triplet", C, D, margin=margin, distance=distance)
    unit = [e / math.sqrt(float(e @ e)) for e in emb64]

    def dist(i, j):  # a distance: smaller = closer (cosine becomes 1 - cos, same differences)
        if distance == "cosine":
            return 1.0 - float(unit[i] @ unit[j])
        return math.sqrt(float((unit[i] - unit[j]) @ (unit[i] - unit[j])))

    used = []
    for a, p, n in itertools.product(range(B), repeat=3):
        if a == p or LABELS[a] != LABELS[p] or LABELS[a] == LABELS[n]:
            continue
        d_ap, d_an = dist(a, p), dist(a, n)
        if d_ap < d_an <= d_ap + margin:  # semi-hard (FaceNet): negative beyond the positive, inside the margin
            used.append(max(0.0, d_ap - d_an + margin))
    assert used, "the fixture must contain semi-hard triplets"
    out = loss(emb, None, LABELS)
    assert set(out) == {"triplet", "triplets_mined", "total"}
    assert out["triplets_mined"].item() == len(used)
    assert out["total"].item() == pytest.approx(mean_nonzero(used), rel=1e-4)


def test_center_loss_add_on(batch):
    emb, logits, emb64, logits64 = batch
    loss = create_loss("cross_entropy", C, D, center_weight=0.3)
    centres = loss.center.centers.detach().double()
    assert centres.shape == (C, D)
    ref_center = mean(
        [0.5 * sum((float(emb64[i, d]) - float(centres[LABELS[i], d])) ** 2 for d in range(D)) for i in range(B)]
    )
    ref_ce = mean([softmax_ce(logits64[i].tolist(), int(LABELS[i])) for i in range(B)])
    out = loss(emb, logits, LABELS)
    assert list(out) == ["ce", "center", "total"]
    assert out["center"].item() == pytest.approx(ref_center, rel=1e-5)
    assert out["total"].item() == pytest.approx(ref_ce + 0.3 * ref_center, rel=1e-5)
    # The centres are the loss's own parameters: the trainer optimises and saves them.
    assert any(p is loss.center.centers for p in loss.parameters())
    assert loss.needs_head and loss.class_logits(emb, logits) is logits


def test_pair_bce():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1, 0, 0, 1])
    loss = create_loss("pair_bce", 0, 0)
    sig = [1 / (1 + math.exp(-z)) for z in logits.tolist()]
    ref = mean([-(y * math.log(s) + (1 - y) * math.log(1 - s)) for s, y in zip(sig, labels.tolist())])
    out = loss(None, logits, labels)
    assert set(out) == {"bce", "total"}
    assert out["total"].item() == pytest.approx(ref, rel=1e-6)
    assert loss.kind == "pair" and loss.class_logits(None, logits) is None


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_total_finite_and_differentiable(name):
    torch.manual_seed(0)
    emb = torch.randn(B, D, requires_grad=True)
    if name == "pair_bce":
        logits, labels, loss = torch.randn(B, requires_grad=True), LABELS.clamp(max=1), create_loss(name, 0, D)
    else:
        logits, labels = torch.randn(B, C, requires_grad=True), LABELS
        loss = create_loss(name, C, D, center_weight=0.01)
    out = loss(emb, logits, labels)
    assert "total" in out and all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["total"].backward()
    grads = [g for g in (emb.grad, logits.grad) if g is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert loss.batch_sampler in ("random", "pk") and loss.kind in ("image", "pair")


def test_bf16_autocast_keeps_fp32_parameters(batch):
    emb = batch[0]
    loss = create_loss("arcface", C, D, center_weight=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(emb.bfloat16(), None, LABELS)
    assert out["total"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in loss.parameters())


def test_registry_errors():
    with pytest.raises(MatchLabError, match="unknown loss 'focal'.*arcface.*triplet"):
        create_loss("focal", C, D)
    with pytest.raises(MatchLabError, match="unknown option 'margn' for loss 'cosface'.*center_weight.*margin"):
        create_loss("cosface", C, D, margn=0.3)
    with pytest.raises(MatchLabError, match="num_classes"):
        create_loss("arcface", 0, D)
    with pytest.raises(MatchLabError, match="pair"):
        create_loss("pair_bce", 0, D, center_weight=0.1)
    with pytest.raises(MatchLabError, match="distance"):
        create_loss("triplet", C, D, distance="manhattan")
    with pytest.raises(MatchLabError, match="logits"):
        create_loss("cross_entropy", C, D)(torch.randn(B, D), None, LABELS)
