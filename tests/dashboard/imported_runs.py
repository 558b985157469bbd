"""Imported run folders for the dashboard tests (issue 11), made from the bundled demo run.

`make_imported_model(demo, root)` exports the demo's network to ONNX and imports it (`kind: external`);
`make_imported_results(demo, root)` imports the demo evaluation's own scores and embeddings. Nothing is
trained: the files are the demo's, so every number can be checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tests.exported_models import Features, export_onnx

ORL = Path(__file__).resolve().parents[2] / "data" / "orl_faces"
MODEL = "imported-onnx"


def make_imported_model(demo: Path, root: Path) -> Path:
    """root/imported-onnx: the demo network as an imported ONNX model (TorchScript-based exporter: ~1 s)."""
    from core.embedder import load_embedder
    from core.external import import_model

    native = load_embedder(demo, device="cpu")
    h, w = native.preprocess.res
    path = root.parent / f"{root.name}-demo.onnx"
    export_onnx(Features(native.model).eval(), torch.zeros(1, 3, h, w), path, names=["x"])
    import_model(path, name=MODEL, preprocess=native.preprocess, out=root, device="cpu")
    return root / MODEL


def make_imported_results(demo: Path, root: Path) -> tuple[Path, Path]:
    """root/vendor-scores and root/vendor-embeddings from the demo evaluation's pairs and embeddings."""
    from core.imported import import_embeddings, import_scores

    ev = demo / "eval" / "orl_faces"
    scores = root.parent / f"{root.name}-scores.csv"
    pd.read_parquet(ev / "pairs.parquet")[["path_a", "path_b", "label", "score"]].to_csv(scores, index=False)
    import_scores(scores, name="vendor-scores", data=ORL, out=root)
    samples = pd.read_parquet(ev / "samples.parquet")
    emb = root.parent / f"{root.name}-emb.parquet"
    pd.DataFrame(
        {"path": samples["path"], "label": samples["class_name"], "embedding": list(np.load(ev / "embeddings.npy"))}
    ).to_parquet(emb)
    import_embeddings(emb, name="vendor-embeddings", data=ORL, out=root)
    return root / "vendor-scores", root / "vendor-embeddings"
