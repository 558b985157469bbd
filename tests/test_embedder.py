"""The Embedder contract (core.embedder) and the run-folder layout (core.layout): what every consumer takes.

RunEmbedder must give exactly what the pipeline computed before it existed (normalise the cached uint8
images, forward_features, L2-normalise; the head on the features), and rectangular inputs must work from
the cache to an evaluation.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import layout
from core.data.augment import BatchAugment
from core.data.cache import build_or_load_cache
from core.embedder import Preprocess, RunEmbedder, embed_all, load_embedder, load_model
from core.errors import MatchLabError
from core.models import create_model
from tests.core_cli import cli

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
DEMO = ROOT / "checkpoints" / "orl_demo"


@pytest.fixture(scope="module")
def orl32(tmp_path_factory):
    cache = build_or_load_cache(ORL, 32, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    torch.manual_seed(0)
    model = create_model("convnet_tiny", num_classes=len(cache.class_names), embedding_dim=32).eval()
    pre = Preprocess(res=(32, 32), mean=tuple(cache.mean), std=tuple(cache.std))
    return cache, model, RunEmbedder(model, pre, device=torch.device("cpu"), class_names=cache.class_names)


def _reference(model, images_u8, mean, std, flip=False):
    """The pre-Embedder path, written out: normalise, forward_features (mean with the mirror), normalise."""
    x = BatchAugment(mean=mean, std=std, flip=False, crop_padding=0, out_res=32, channels_last=False)(
        torch.from_numpy(np.array(images_u8)), train=False
    )
    with torch.no_grad():
        feats = model.forward_features(x).float()
        if flip:
            feats = (feats + model.forward_features(torch.flip(x, dims=[3])).float()) / 2
        return F.normalize(feats, dim=1).numpy(), model.head(feats).numpy()


def test_run_embedder_equals_the_plain_forward_path_on_orl(orl32):
    cache, model, embedder = orl32
    images = cache.images[:70]
    for flip in (False, True):
        ref_emb, ref_logits = _reference(model, images, cache.mean, cache.std, flip)
        ex = embed_all(embedder, images, batch_size=32, flip_tta=flip)  # 3 batches, the last one short
        # Same operations in the same order on the CPU: measured max difference 0 (fp32); 1e-6 leaves room
        # for a BLAS that splits a batch of 32 differently from one of 70.
        np.testing.assert_allclose(ex.embeddings, ref_emb, atol=1e-6)
        np.testing.assert_allclose(ex.logits, ref_logits, atol=1e-5)
        one = embedder.embed(images[:5], flip_tta=flip).numpy()
        np.testing.assert_allclose(one, ref_emb[:5], atol=1e-6)
    assert ex.embeddings.dtype == np.float32 and np.allclose(np.linalg.norm(ex.embeddings, axis=1), 1, atol=1e-5)
    empty = embed_all(embedder, cache.images[:0])
    assert empty.embeddings.shape == (0, 32) and empty.logits is None


def test_crop_and_channel_order_change_the_inputs(orl32):
    cache, model, embedder = orl32
    x = embedder.inputs(cache.images[:2])
    assert x.shape == (2, 3, 32, 32)
    assert not torch.equal(embedder.inputs(cache.images[:2], crop=0.5), x)
    bgr = RunEmbedder(
        model,
        Preprocess(res=32, mean=tuple(cache.mean[::-1]), std=tuple(cache.std[::-1]), channels="BGR"),
        device=torch.device("cpu"),
    )
    # BGR with the statistics reversed is the RGB input with its channels reversed.
    torch.testing.assert_close(bgr.inputs(cache.images[:2]), x.flip(1), rtol=0, atol=1e-6)


def test_preprocess_round_trip_and_bad_values():
    p = Preprocess(res=[112, 96], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], crop=0.9, channels="BGR")
    assert (
        p.res == (112, 96) and p.cache_res == (112, 96) and Preprocess(res=64, mean=p.mean, std=p.std).cache_res == 64
    )
    assert Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad, match in (
        ({"res": 0}, "res"),
        ({"std": (1, 0, 1)}, "std"),
        ({"crop": 1.5}, "crop"),
        ({"channels": "RGBA"}, "channels"),
        ({"align": "dlib"}, "align"),
        ({"mean": (1, 2)}, "mean"),
    ):
        with pytest.raises(MatchLabError, match=match):
            Preprocess(**{"res": 64, "mean": (0, 0, 0), "std": (1, 1, 1), **bad})
    with pytest.raises(MatchLabError, match="unknown keys"):
        Preprocess.from_dict({**p.to_dict(), "size": 3})


def test_load_embedder_reads_the_run_folder():
    emb = load_embedder(DEMO, device="cpu")
    assert isinstance(emb, RunEmbedder) and emb.name == "orl_demo" and emb.dir == DEMO
    assert emb.identity == layout.file_hash(DEMO / layout.BEST) and emb.preprocess.res == (64, 64)
    assert emb.threshold == pytest.approx(layout.read_threshold(DEMO)["threshold"])
    assert isinstance(load_model(DEMO, device="cpu"), RunEmbedder)  # pair models stay a Run: test_evaluate


def test_external_run_without_a_loadable_model_is_a_one_line_error(tmp_path):
    run = tmp_path / "imported"
    run.mkdir()
    (run / layout.CONFIG).write_text("kind: external\nexternal: {file: model.onnx, sha256: abc, format: onnx}\n")
    with pytest.raises(MatchLabError):
        load_embedder(run, device="cpu")


def test_layout_listers_and_readers(tmp_path):
    run = layout.RunFiles(tmp_path / "sweep" / "r1")
    run.eval("orl").dir.mkdir(parents=True)
    assert layout.list_runs(tmp_path) == [run.dir] and layout.list_evaluations(run.dir) == []
    run.eval("orl").summary.write_text("{}")
    assert layout.list_evaluations(run.dir) == ["orl"]
    run.threshold.write_text("{not json")
    with pytest.raises(MatchLabError, match="threshold.json"):
        layout.read_threshold(run.dir)
    assert layout.read_json(run.dir / "missing.json") == {}
    assert layout.eval_key(ORL, "lfw", tta="flip", crop=0.8) == "orl_faces-lfw-flip-crop80"


def test_rectangular_input_trains_and_evaluates(tmp_path):
    cache = tmp_path / "cache"
    cli(
        "train",
        ROOT / "configs" / "orl.yaml",
        "model.name=convnet_tiny",
        "data.res=[40,32]",
        "train.epochs=1",
        "train.batch_size=64",
        "model.embedding_dim=16",
        f"data.train={ORL}",
        "--out",
        tmp_path,
        "--name",
        "rect",
        cache=cache,
    )
    run = tmp_path / "rect"
    emb = load_embedder(run, device="cpu")
    assert emb.preprocess.res == (40, 32)
    assert layout.read_config(run)["data"]["res"] == [40, 32]
    s = json.loads(cli("evaluate", run, "--data", ORL, "--json", cache=cache).stdout)
    files = layout.RunFiles(run).eval(s["key"])
    embeddings = np.load(files.embeddings)
    assert embeddings.shape == (400, 16) and 0.5 < s["verification"]["auc"] <= 1.0
    decoded = build_or_load_cache(ORL, (40, 32), cache_dir=cache, progress=False)
    assert decoded.images.shape == (400, 40, 32, 3) and decoded.res == (40, 32)
    # The evaluation's embeddings are the embedder's on the rectangular cache.
    np.testing.assert_allclose(embed_all(emb, decoded.images[:8]).embeddings, embeddings[:8], atol=1e-6)
