"""Every registered model keeps its contract (shapes, normalised embeddings, gradients, channels_last)."""

import pytest
import torch
from torch import nn

from core.errors import MatchLabError
from core.models import create_model, list_models, model_kind

NUM_CLASSES = 5
EMBEDDING_DIM = 16
SIZES = {"mobilefacenet": (64, 112)}  # its native 112 px (7x7 GDC) plus the common 64 px


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", list_models("image"))
def test_image_model_contract(name):
    torch.manual_seed(0)
    assert model_kind(name) == "image"
    model = create_model(name, num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM)
    assert (model.num_classes, model.embedding_dim) == (NUM_CLASSES, EMBEDDING_DIM)
    assert isinstance(model.head, nn.Linear)
    for size in SIZES.get(name, (64,)):
        x = torch.randn(4, 3, size, size)
        model.train()
        model.zero_grad()
        logits = model(x)
        assert logits.shape == (4, NUM_CLASSES)
        assert torch.isfinite(logits).all()
        logits.square().mean().backward()
        grad = first_conv(model).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

        model.eval()
        with torch.no_grad():
            features = model.forward_features(x)
            emb = model.embed(x)
            assert features.shape == emb.shape == (4, EMBEDDING_DIM)
            assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
            assert torch.allclose(model.head(features), model(x), atol=1e-5)

            # channels_last (the GPU fast path) must give the same embedding.
            cl_model = model.to(memory_format=torch.channels_last)
            cl_emb = cl_model.embed(x.to(memory_format=torch.channels_last))
            assert torch.allclose(cl_emb, emb, atol=1e-4)
            model.to(memory_format=torch.contiguous_format)

    # bf16 autocast (the GPU default) on the smallest input: this CPU emulates bf16, about 8x slower than fp32,
    # and the contract (fp32, finite, unit-norm embeddings out) does not depend on the size.
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_emb = model.embed(torch.randn(2, 3, 32, 32))
    assert bf16_emb.dtype == torch.float32 and torch.isfinite(bf16_emb).all()
    assert torch.allclose(bf16_emb.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", list_models("image"))
def test_metric_model_forward_is_embedding(name):
    model = create_model(name, num_classes=0, embedding_dim=EMBEDDING_DIM).eval()
    assert model.head is None and model.num_classes == 0
    x = torch.randn(2, 3, 32, 32)  # the smallest supported input
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, EMBEDDING_DIM)
        assert torch.allclose(out, model.embed(x))


@pytest.mark.parametrize("name", list_models("pair"))
def test_pair_model_contract(name):
    torch.manual_seed(0)
    assert model_kind(name) == "pair"
    model = create_model(name, n=4, kernel_size=3, dropout=0.1)
    expected_in = {"pair_cnn": 3, "pair_cnn_channel": 6}[name]
    assert first_conv(model).in_channels == expected_in
    for size in (64, 112):
        xa, xb = torch.randn(4, 3, size, size), torch.randn(4, 3, size, size)
        model.train()
        model.zero_grad()
        out = model(xa, xb)
        assert out.shape == (4,) and torch.isfinite(out).all()
        out.sum().backward()
        assert first_conv(model).weight.grad.abs().sum() > 0
    model.eval().to(memory_format=torch.channels_last)
    cl = torch.channels_last
    with torch.no_grad():
        assert torch.allclose(model(xa.to(memory_format=cl), xb.to(memory_format=cl)), model(xa, xb), atol=1e-4)
    assert not hasattr(model, "embed")


def test_registry_errors():
    with pytest.raises(MatchLabError, match="unknown model 'resnet99'.*resnet18_small"):
        create_model("resnet99")
    with pytest.raises(MatchLabError, match="unknown option 'depth' for model 'resnet18_small'.*extra_blocks"):
        create_model("resnet18_small", depth=3)
    with pytest.raises(MatchLabError, match="kernel_size must be odd"):
        create_model("pair_cnn", kernel_size=4)
    with pytest.raises(MatchLabError, match="width"):
        create_model("mobilenetv2", width=0)
    with pytest.raises(MatchLabError, match="kind"):
        list_models("video")
    assert set(list_models()) == set(list_models("image")) | set(list_models("pair"))


def test_family_options_change_the_network():
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(create_model("resnet18_small", width=0.5)) < params(create_model("resnet18_small"))
    # Seed 000's variant: two extra basic blocks at the last stage, 8x8 final map at 64 px.
    seed = create_model("resnet18_small", extra_blocks=2)
    assert len(seed.trunk[-1]) == 4
    assert seed.trunk(torch.randn(1, 3, 64, 64)).shape[-2:] == (8, 8)
    assert params(create_model("mobilenetv2", se=True)) > params(create_model("mobilenetv2"))
    assert params(create_model("resnet10_small")) < params(create_model("resnet34_small"))
    # MobileFaceNet's global depthwise conv in place of average pooling: one weight per channel and position.
    options = {"width": 0.5, "strides": (2, 2, 2, 1)}
    gdc = create_model("resnet18_small", gdc_size=6, **options)
    depthwise = gdc.pool[1][0]
    assert (depthwise.groups, depthwise.kernel_size) == (256, (6, 6))
    assert params(gdc) == params(create_model("resnet18_small", **options)) + 256 * (36 + 2)  # kernel + BN
    assert gdc.pool(gdc.trunk(torch.randn(2, 3, 96, 96))).shape == (2, 256, 1, 1)
    with pytest.raises(MatchLabError, match="gdc_size must be >= 0"):
        create_model("resnet18_small", gdc_size=-1)


def test_compiles_without_graph_breaks():
    # fullgraph=True fails on any data-dependent Python branch; the eager backend skips codegen (fast).
    model = create_model("convnet_tiny", num_classes=3)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled(torch.randn(2, 3, 32, 32)).sum().backward()
