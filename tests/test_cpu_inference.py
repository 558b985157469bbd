"""CPU inference options (issue 17): the channels_last embedder gives the plain NCHW model's embeddings
within the 1e-3 cosine the issue allows for a default (it is not the default: no clear gain measured)."""

import numpy as np
import torch
import torch.nn.functional as F

from core.atomic import atomic_write_yaml
from core.embedder import Preprocess, RunEmbedder, load_embedder
from core.models import create_model
from core.run import save_best_weights


def test_channels_last_embedder_matches_nchw(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18_small", num_classes=4)
    save_best_weights(
        tmp_path,
        model,
        model_name="resnet18_small",
        model_kwargs={"num_classes": 4},
        class_names=list("abcd"),
        res=32,
        crop=1.0,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    atomic_write_yaml(tmp_path / "config.yaml", {"model": {"name": "resnet18_small"}, "data": {"res": 32}})
    loaded = load_embedder(tmp_path, device="cpu")
    assert not loaded.channels_last
    fast = RunEmbedder(loaded.model, loaded.preprocess, device=torch.device("cpu"), channels_last=True)
    assert (
        fast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        if hasattr(fast.model, "conv1")
        else True
    )
    plain = RunEmbedder(
        create_model("resnet18_small", num_classes=4).eval(), fast.preprocess, device=torch.device("cpu")
    )
    plain.model.load_state_dict(model.state_dict())
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    a, la = fast.forward(images)
    b, lb = plain.forward(images)
    # measured: min cosine 1 - 6e-8 (float32 reassociation in the NHWC kernels); the issue allows 1e-3
    assert float(F.cosine_similarity(a, b).min()) >= 1 - 1e-3
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-3)  # class scores too, within the same 1e-3
    assert isinstance(fast.preprocess, Preprocess)
