"""Evidence for face alignment (issue 12) on real photos, printed as one JSON object (the README's figures).

Usage: python scripts/align_evidence.py RUN [--photos DIR] [--cfp-faces FACES_CSV]
- photos: ../shared/datasets/photos_unconstrained (flat photos + master.csv `file_x,file_y,Decision`):
  failure to enrol, several-face photos, and the pairs' AUC / EER with RUN without and with alignment
  (with alignment both ways: pairs with a photo without a face rejected (NIST), and left out).
- cfp: the faces.csv that `python -m core align <cfp folder> --out DIR` wrote: FTE of frontal and profile photos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# `python scripts/align_evidence.py` puts scripts/ first on the path, not the checkout that holds core/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.align.faces import Aligner  # noqa: E402
from core.data.cache import load_image_arrays  # noqa: E402
from core.embedder import embed_all, load_embedder  # noqa: E402
from core.evaluate import FTE_SCORE  # noqa: E402
from core.metrics import verification as vm  # noqa: E402


def _metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    points = vm.roc_points(scores, labels)
    return {"auc": round(vm.auc(points), 4), "eer": round(vm.eer(points)[0], 4), "pairs": int(len(labels))}


def photos_evidence(run: str, folder: Path) -> dict:
    pairs = pd.read_csv(folder / "master.csv")
    names = sorted(set(pairs["file_x"]) | set(pairs["file_y"]))
    index = {n: i for i, n in enumerate(names)}
    ia, ib = pairs["file_x"].map(index).to_numpy(), pairs["file_y"].map(index).to_numpy()
    labels = (pairs["Decision"].str.lower() == "yes").astype(np.int8).to_numpy()
    model = load_embedder(run, device="cpu")
    res = model.preprocess.cache_res
    paths = [str(folder / n) for n in names]
    found = Aligner(res, on_no_face="centre").align(paths)
    no_face = np.array([not a.found for a in found])
    out: dict = {
        "photos": len(names),
        "no_face": [n for n, f in zip(names, no_face) if f],
        "fte_rate": round(float(no_face.mean()), 4),
        "several_faces": int(sum(len(a.faces) > 1 for a in found)),
        "model": run,
        "res": res,
    }
    plain = embed_all(model, load_image_arrays(paths, res)).embeddings
    aligned = embed_all(model, np.stack([a.crop for a in found])).embeddings
    s_plain = np.einsum("pd,pd->p", plain[ia], plain[ib])
    s_al = np.einsum("pd,pd->p", aligned[ia], aligned[ib])
    fte = no_face[ia] | no_face[ib]
    out["without_alignment"] = _metrics(s_plain, labels)
    out["with_alignment_nist"] = _metrics(np.where(fte, FTE_SCORE, s_al), labels)
    out["with_alignment_excluded"] = _metrics(s_al[~fte], labels[~fte])
    out["pairs_with_fte"] = int(fte.sum())
    out["pairs_genuine"] = int(labels.sum())
    return out


def cfp_evidence(faces_csv: Path) -> dict:
    table = pd.read_csv(faces_csv)
    per_photo = table.drop_duplicates("path").set_index("path")["status"]
    out = {}
    for pose in ("frontal", "profile"):
        status = per_photo[[p.split("/")[1] == pose for p in per_photo.index]]
        readable = status[status != "unreadable"]
        several = table[(table["path"].str.split("/").str[1] == pose) & (table["n_faces"] > 1)]["path"].nunique()
        out[pose] = {
            "photos": int(len(readable)),
            "no_face": int((readable != "aligned").sum()),
            "fte_rate": round(float((readable != "aligned").mean()), 4),
            "several_faces": int(several),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--photos", type=Path, default=Path("../shared/datasets/photos_unconstrained"))
    p.add_argument("--cfp-faces", type=Path, help="faces.csv written by `python -m core align` on CFP photos")
    a = p.parse_args()
    report = {"photos_unconstrained": photos_evidence(a.run, a.photos)}
    if a.cfp_faces:
        report["cfp"] = cfp_evidence(a.cfp_faces)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
