"""Partial FC against a dense single-process reference (normalise, margin on the target, scale,
F.cross_entropy in float64): one process, two gloo processes on the CPU (each with half of the global
batch, the trunk in DistributedDataParallel), and class sampling (sample_rate < 1) with resume."""

import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.errors import MatchLabError
from core.partial_fc import PartialFC

C, D, IN, SCALE, SEED = 7, 5, 4, 16.0, 3  # 7 classes on 2 ranks: shards [0, 4) and [4, 7)
MARGINS = {"arcface": 0.5, "cosface": 0.35}
LABELS = torch.tensor([0, 3, 4, 6, 1, 4])  # both shards, one class twice
SPLITS = {"arcface": (3, 3), "cosface": (4, 2)}  # cosface also checks unequal local batches
# Sampling on 2 ranks: 40 classes, shards of 20, 10 kept per shard.
S_CLASSES, S_RATE, S_LABELS = 40, 0.5, torch.tensor([1, 5, 5, 22, 30, 39])
TOL = {"rtol": 1e-4, "atol": 1e-6}


def dense_loss(emb, labels, weight, margin_type, margin, scale=SCALE, classes=None):
    """The plain dense head: softmax CE over all classes (or only `classes`, sorted global ids)."""
    cos = F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T
    targets = labels
    if classes is not None:
        cos = cos[:, classes]
        targets = torch.tensor([classes.tolist().index(int(y)) for y in labels])
    rows = torch.arange(len(labels))
    t = cos[rows, targets]
    adjusted = torch.cos(torch.acos(t) + margin) if margin_type == "arcface" else t - margin
    logits = cos.clone()
    logits[rows, targets] = adjusted
    return F.cross_entropy(scale * logits, targets)


def reference(emb, labels, weight, margin_type, classes=None, scale=SCALE):
    """(loss, d loss/d emb, d loss/d weight) in float64."""
    emb = emb.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    loss = dense_loss(emb, labels, weight, margin_type, MARGINS[margin_type], scale, classes)
    loss.backward()
    return loss.detach(), emb.grad, weight.grad


def close(actual, expected):
    torch.testing.assert_close(actual.double(), expected.double(), **TOL)


def trunk_inputs():
    return torch.randn(len(LABELS), IN, generator=torch.Generator().manual_seed(1))


def make_trunk():
    trunk = nn.Linear(IN, D)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        trunk.weight.copy_(torch.randn(D, IN, generator=g))
        trunk.bias.copy_(torch.randn(D, generator=g))
    return trunk


# ---------------------------------------------------------------- one process


@pytest.mark.parametrize("margin_type", list(MARGINS))
def test_one_process_matches_dense_reference(margin_type):
    head = PartialFC(C, D, margin_type, MARGINS[margin_type], SCALE, seed=SEED)
    assert (head.class_start, head.class_end, tuple(head.weight.shape)) == (0, C, (C, D))
    emb = torch.randn(len(LABELS), D, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = head(emb, LABELS)
    loss.backward()
    ref_loss, ref_emb_grad, ref_w_grad = reference(emb, LABELS, head.weight, margin_type)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    close(loss, ref_loss)
    close(emb.grad, ref_emb_grad)
    close(head.weight.grad, ref_w_grad)


def test_initial_weight_is_linear_like_and_seeded():
    a, b, other = PartialFC(C, D, seed=SEED), PartialFC(C, D, seed=SEED), PartialFC(C, D, seed=SEED + 1)
    bound = 1 / math.sqrt(D)  # nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert a.weight.abs().max() <= bound and a.weight.std() > bound / 4
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, other.weight)
    assert torch.equal(a.full_weight(), a.weight) and a.full_weight().data_ptr() != a.weight.data_ptr()
    full = torch.randn(C, D)
    assert torch.equal(a.gather_rows(a.shard_rows(full)), full)
    a.load_full_weight(full)
    assert torch.equal(a.weight.detach(), full)


def test_init_is_blockwise_independent_of_the_shard(monkeypatch):
    # Rows drawn for a shard in the middle equal the same rows of the whole matrix, across block edges.
    import core.partial_fc as pfc

    monkeypatch.setattr(pfc, "INIT_BLOCK_ROWS", 3)
    full = pfc._init_rows(C, D, 0, C, SEED)
    assert torch.equal(pfc._init_rows(C, D, 2, 5, SEED), full[2:5])
    assert torch.equal(pfc._init_rows(C, D, 6, 7, SEED), full[6:7])


def test_class_logits_are_scaled_margin_free_cosines():
    head = PartialFC(C, D, scale=SCALE, seed=SEED)
    emb = torch.randn(4, D)
    expected = SCALE * F.normalize(emb.double(), dim=1) @ F.normalize(head.weight.detach().double(), dim=1).T
    close(head.class_logits(emb).detach(), expected)


def test_loss_is_fp32_under_bf16_autocast():
    head = PartialFC(C, D, "arcface", 0.5, 64.0, seed=SEED)
    emb = torch.randn(len(LABELS), D, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(emb.bfloat16(), LABELS)
        logits = head.class_logits(emb)
    assert mixed.dtype == torch.float32 and logits.dtype == torch.float32
    # bf16 inputs carry ~3 significant digits; a bf16 matmul and softmax at scale 64 would be far off.
    torch.testing.assert_close(mixed, head(emb.bfloat16().float(), LABELS), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- sampling (one process)


def sampled_head(rate, classes=50):
    head = PartialFC(classes, D, "cosface", 0.35, SCALE, sample_rate=rate, seed=SEED)
    return head.train()


def test_sampling_keeps_positives_and_budget_and_matches_restricted_reference():
    head = sampled_head(0.3)  # ceil(0.3 * 50) = 15 rows
    labels = torch.tensor([3, 17, 17, 42, 8, 49])
    emb = torch.randn(len(labels), D, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = head(emb, labels)
    loss.backward()
    kept = head.sampled_classes
    assert kept.numel() == 15 and torch.equal(kept, kept.unique())
    assert set(labels.tolist()) <= set(kept.tolist())
    ref_loss, ref_emb_grad, ref_w_grad = reference(emb, labels, head.weight, "cosface", classes=kept)
    close(loss, ref_loss)
    close(emb.grad, ref_emb_grad)
    close(head.weight.grad, ref_w_grad)  # zero rows outside `kept` in both
    dropped = torch.ones(50, dtype=torch.bool)
    dropped[kept] = False
    assert torch.all(head.weight.grad[dropped] == 0) and torch.all(head.weight.grad[kept].abs().sum(1) > 0)


def test_sampling_keeps_every_positive_past_the_budget():
    head = sampled_head(0.05)  # ceil(2.5) = 3 rows, but 5 classes are in the batch
    labels = torch.tensor([9, 1, 30, 30, 44, 12])
    head(torch.randn(len(labels), D), labels)
    assert head.sampled_classes.tolist() == [1, 9, 12, 30, 44]


def test_sample_count_is_not_fooled_by_floating_point():
    assert sampled_head(0.07, classes=100).num_sample == 7  # 0.07 * 100 = 7.000000000000001
    assert sampled_head(0.25, classes=10).num_sample == 3  # ceil(2.5)
    assert sampled_head(1.0, classes=10).num_sample == 10


def test_sampling_resumes_from_state_dict_and_differs_between_steps():
    labels = torch.tensor([3, 17])
    emb = torch.randn(2, D)
    head = sampled_head(0.3)
    head(emb, labels)
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    assert int(saved["step"]) == 1
    draws = []
    for _ in range(3):
        head(emb, labels)
        draws.append(head.sampled_classes.tolist())
    assert len({tuple(d) for d in draws}) == 3  # a new draw every step
    resumed = sampled_head(0.3)
    resumed.load_state_dict(saved)
    for expected in draws:
        resumed(emb, labels)
        assert resumed.sampled_classes.tolist() == expected
    fresh = sampled_head(0.3)  # without the saved step it repeats the first draw, not the second
    fresh(emb, labels)
    assert fresh.sampled_classes.tolist() != draws[0]


def test_eval_mode_uses_every_class_and_keeps_the_step():
    head = sampled_head(0.3).eval()
    labels = torch.tensor([3, 17, 42])
    emb = torch.randn(3, D)
    loss = head(emb, labels)
    assert head.sampled_classes is None and int(head.step) == 0
    close(loss, reference(emb, labels, head.weight, "cosface")[0])


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"margin_type": "sphereface"}, "valid: arcface, cosface"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"margin_type": "arcface", "margin": 28.6}, "radians"),
        ({"margin_type": "cosface", "margin": 1.0}, "cosine units"),
        ({"scale": 0.0}, "scale"),
        ({"num_classes": 0}, "num_classes >= world size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"num_classes": C, "embedding_dim": D, **kwargs}
    with pytest.raises(MatchLabError, match=match):
        PartialFC(**args)


def test_bad_inputs():
    head = PartialFC(C, D)
    with pytest.raises(MatchLabError, match="label 7 is out of range"):
        head(torch.randn(2, D), torch.tensor([0, 7]))
    with pytest.raises(MatchLabError, match="label -1 is out of range"):
        head(torch.randn(2, D), torch.tensor([-1, 0]))
    with pytest.raises(MatchLabError, match=r"shape \(B, 5\)"):
        head(torch.randn(2, D + 1), torch.tensor([0, 1]))
    with pytest.raises(MatchLabError, match="one label per embedding"):
        head(torch.randn(2, D), torch.tensor([0, 1, 2]))
    with pytest.raises(MatchLabError, match=r"shape \(7, 5\)"):
        head.load_full_weight(torch.randn(C - 1, D))
    with pytest.raises(MatchLabError, match="7 rows"):
        head.shard_rows(torch.randn(C + 1, D))


# ---------------------------------------------------------------- two gloo processes


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    out = {}
    try:
        inputs = trunk_inputs()
        for margin_type, sizes in SPLITS.items():
            head = PartialFC(C, D, margin_type, MARGINS[margin_type], SCALE, seed=SEED)
            trunk = DistributedDataParallel(make_trunk())
            lo = sum(sizes[:rank])
            emb = trunk(inputs[lo : lo + sizes[rank]])
            emb.retain_grad()
            loss = head(emb, LABELS[lo : lo + sizes[rank]])
            loss.backward()
            full = torch.randn(C, D, generator=torch.Generator().manual_seed(5))
            shard = head.shard_rows(full)
            out[margin_type] = {
                "bounds": (head.class_start, head.class_end),
                "rows": (lo, lo + sizes[rank]),
                "init_full": head.full_weight(),
                "init_shard": head.weight.detach().clone(),
                "loss": loss.detach(),
                "weight_grad": head.weight.grad,
                "emb_grad": emb.grad,
                "trunk_grad": {n: p.grad for n, p in trunk.module.named_parameters()},
                "class_logits": head.class_logits(emb.detach()),
                "shard": shard,
                "roundtrip": head.gather_rows(shard),
                "momentum_roundtrip": head.gather_rows(head.shard_rows(full[:, :2].contiguous())),
            }
            head.load_full_weight(2 * full)
            out[margin_type]["loaded_full"] = head.full_weight()

        head = PartialFC(S_CLASSES, D, "cosface", MARGINS["cosface"], SCALE, sample_rate=S_RATE, seed=SEED).train()
        emb = torch.randn(len(S_LABELS), D, generator=torch.Generator().manual_seed(6))
        local = emb[3 * rank : 3 * rank + 3].clone().requires_grad_()
        loss = head(local, S_LABELS[3 * rank : 3 * rank + 3])
        loss.backward()
        out["sampling"] = {
            "emb": emb,
            "loss": loss.detach(),
            "kept": head.sampled_classes,
            "weight_grad": head.weight.grad,
            "emb_grad": local.grad,
            "full": head.full_weight(),
            "draw": head._sample(torch.empty(0, dtype=torch.long)),
        }  # no positives: all random

        errors = {}
        bad = torch.tensor([0, C if rank == 1 else 1])  # only rank 1 is wrong: both must raise, neither hang
        try:
            PartialFC(C, D)(torch.randn(2, D), bad)
        except MatchLabError as e:
            errors["label"] = str(e)
        try:
            PartialFC(1, D)
        except MatchLabError as e:
            errors["too_few_classes"] = str(e)
        out["errors"] = errors
        dist.barrier()  # both ranks still talk in step after the label error
        out["finished"] = True
    finally:
        torch.save(out, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the two-process scenarios once; each rank's results, loaded in the parent."""
    tmp = tmp_path_factory.mktemp("partial_fc")
    try:
        mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # Once in three loaded CI runs, a rank aborted in gloo's teardown ("terminate called without an active
        # exception") after both ranks had run every scenario and saved their results. Only that case is
        # accepted: a rank that stopped before the end has no "finished" in its results and fails here.
        saved = [tmp / f"rank{r}.pt" for r in range(2)]
        if not all(f.is_file() and torch.load(f, weights_only=True).get("finished") for f in saved):
            raise
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r.pop("finished", False) for r in ranks), "a rank did not run every scenario"
    return ranks


@pytest.mark.parametrize("margin_type", list(SPLITS))
def test_two_ranks_loss_and_centre_grads_match_dense(ranks, margin_type):
    head = PartialFC(C, D, margin_type, MARGINS[margin_type], SCALE, seed=SEED)  # the 1-process start
    ref_trunk = make_trunk().double()
    emb = ref_trunk(trunk_inputs().double())
    ref_loss, _, ref_w_grad = reference(emb, LABELS, head.weight, margin_type)
    assert [r[margin_type]["bounds"] for r in ranks] == [(0, 4), (4, 7)]
    for r in ranks:
        res = r[margin_type]
        start, end = res["bounds"]
        close(res["loss"], ref_loss)  # the same global-batch loss on every rank
        close(res["weight_grad"], ref_w_grad[start:end])
        assert torch.equal(res["init_full"], head.weight.detach())
        assert torch.equal(res["init_shard"], head.weight.detach()[start:end])
        assert res["class_logits"] is None


@pytest.mark.parametrize("margin_type", list(SPLITS))
def test_two_ranks_embedding_grad_is_world_size_times_exact_and_ddp_trunk_matches(ranks, margin_type):
    head = PartialFC(C, D, margin_type, MARGINS[margin_type], SCALE, seed=SEED)
    ref_trunk = make_trunk().double()
    emb = ref_trunk(trunk_inputs().double())
    emb.retain_grad()
    dense_loss(emb, LABELS, head.weight.detach().double(), margin_type, MARGINS[margin_type]).backward()
    for r in ranks:
        res = r[margin_type]
        lo, hi = res["rows"]
        close(res["emb_grad"], 2 * emb.grad[lo:hi])
        # After DDP's averaging the trunk got exactly the one-process gradient on the global batch.
        for name, p in ref_trunk.named_parameters():
            close(res["trunk_grad"][name], p.grad)


def test_two_ranks_full_weight_and_row_helpers_round_trip(ranks):
    full = torch.randn(C, D, generator=torch.Generator().manual_seed(5))
    for r in ranks:
        res = r["arcface"]
        start, end = res["bounds"]
        assert torch.equal(res["shard"], full[start:end])
        assert torch.equal(res["roundtrip"], full)
        assert torch.equal(res["momentum_roundtrip"], full[:, :2])
        assert torch.equal(res["loaded_full"], 2 * full)


def test_two_ranks_sampling_matches_dense_reference_on_kept_classes(ranks):
    s0, s1 = ranks[0]["sampling"], ranks[1]["sampling"]
    kept0, kept1 = s0["kept"], s1["kept"]
    assert kept0.numel() == kept1.numel() == 10  # ceil(0.5 * 20) per shard
    assert kept0.max() < 20 <= kept1.min()
    assert {1, 5} <= set(kept0.tolist()) and {22, 30, 39} <= set(kept1.tolist())
    assert s0["draw"].numel() == 10 and not torch.equal(s0["draw"], s1["draw"])  # ranks draw independently
    head = PartialFC(S_CLASSES, D, "cosface", MARGINS["cosface"], SCALE, seed=SEED)
    assert torch.equal(s0["full"], head.weight.detach())
    kept = torch.cat([kept0, kept1])
    ref_loss, ref_emb_grad, ref_w_grad = reference(s0["emb"], S_LABELS, head.weight, "cosface", classes=kept)
    for r, s in enumerate((s0, s1)):
        close(s["loss"], ref_loss)
        close(s["weight_grad"], ref_w_grad[20 * r : 20 * r + 20])
        close(s["emb_grad"], 2 * ref_emb_grad[3 * r : 3 * r + 3])


def test_two_ranks_bad_arguments(ranks):
    for r in ranks:
        assert r["errors"]["label"] == "label 7 is out of range: Partial FC has classes 0..6"
        assert "num_classes >= world size" in r["errors"]["too_few_classes"]
        assert "1 classes on 2 ranks" in r["errors"]["too_few_classes"]
