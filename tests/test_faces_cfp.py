"""The bundled face model (issue 18, checkpoints/faces_cfp): it loads and embeds; its bundled evaluation on
the bundled ORL faces is what `evaluate` regenerates (no hand-written numbers); and the Live match example
pairs (core.verify.EXAMPLE_PAIRS) score what README's table says, for both bundled runs.
The model is part of the repository, so a missing one fails here rather than skipping."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.core_cli import cli_in_process

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "checkpoints" / "faces_cfp"
ORL = ROOT / "data" / "orl_faces"
BUNDLED_EVAL = FACES / "eval" / "orl_faces"
README = ROOT / "README.md"


def test_the_bundled_face_model_loads_and_embeds():
    from core.embedder import load_embedder
    from core.verify import example_pair, to_uint8

    weights = FACES / "best.safetensors"
    assert weights.is_file(), "checkpoints/faces_cfp/best.safetensors is part of the repository"
    # the issue asks for about 10 MB at most: this fp32 ResNet-18 (width 0.5) is 11.0 MiB, as orl_demo's is
    assert weights.stat().st_size <= 12 * 2**20
    model = load_embedder(FACES, device="cpu")
    batch = np.stack([to_uint8(p, model.preprocess.cache_res) for p in example_pair("genuine")])
    emb = model.embed(batch).cpu().numpy()
    assert emb.shape == (2, 128) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # unit length: cosine = dot
    assert model.threshold is not None and -1.0 < model.threshold < 1.0  # chosen on its validation people


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict:
    """The bundled evaluation's command (`python -m core evaluate checkpoints/faces_cfp --data
    data/orl_faces`) run again on a copy of the run folder without its evaluations."""
    base = tmp_path_factory.mktemp("faces_cfp")
    run = base / "faces_cfp"
    run.mkdir()
    for f in FACES.iterdir():
        if f.is_file():
            shutil.copy(f, run / f.name)
    r = cli_in_process("evaluate", run, "--data", ORL, "--device", "cpu", "--json", cache=base / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((run / "eval" / "orl_faces" / "summary.json").read_text())


def test_the_bundled_evaluation_is_what_evaluate_regenerates(regenerated: dict):
    bundled = json.loads((BUNDLED_EVAL / "summary.json").read_text())
    for key in ("checkpoint_hash", "dataset_hash", "n_images", "n_classes", "pairs", "align", "tta"):
        assert regenerated[key] == bundled[key], key
    new, old = regenerated["verification"], bundled["verification"]
    n_genuine, n_impostor = old["n_genuine"], old["n_impostor"]
    assert (new["n_genuine"], new["n_impostor"]) == (n_genuine, n_impostor)
    # The same checkpoint embeds alike up to float noise, which is larger across CPU models than across runs
    # (MTCNN's landmarks move with it): cosine scores differ by up to 4e-4 between the Intel Xeon that wrote the
    # bundled evaluation and a 2-core AMD EPYC (measured), enough to carry a pair past a close neighbour, and the
    # EPYC's EER was one impostor pair (1/78,000) off. So each statistic that counts pairs may move by a few
    # pairs' step (5 impostors, 1 genuine for TAR), far below what a changed model, pairing or metric moves it.
    pairs = 1e-5 + 5 / n_impostor
    assert new["auc"] == pytest.approx(old["auc"], abs=1e-5)
    for key in ("eer", "kfold_accuracy_mean", "kfold_accuracy_std", "best_accuracy"):
        assert new[key] == pytest.approx(old[key], abs=pairs), key
    tar_step = 1e-5 + 1 / n_genuine
    assert new["tar_at_far"]["0.01"]["tar"] == pytest.approx(old["tar_at_far"]["0.01"]["tar"], abs=tar_step)
    for key in ("auc_ci95", "eer_ci95", "kfold_accuracy_ci95"):  # seeded bootstrap (seed 0): the same intervals
        assert new[key] == pytest.approx(old[key], abs=pairs), key


def _readme_example_scores() -> dict[str, tuple[float, float]]:
    """README's Live match example table: run -> (genuine score, impostor score)."""
    text = README.read_text()
    rows = re.findall(r"^\| `(\w+)` \| (-?\d\.\d{4}) \| (-?\d\.\d{4}) \|", text, flags=re.M)
    return {run: (float(g), float(i)) for run, g, i in rows}


@pytest.mark.parametrize("run", ["faces_cfp", "orl_demo"])
def test_the_live_match_example_pairs_score_what_readme_says(run: str):
    from core.embedder import load_embedder
    from core.verify import example_pair, score_images

    table = _readme_example_scores()
    assert run in table, f"README's Live match example table has no row for {run}"
    model = load_embedder(ROOT / "checkpoints" / run, device="cpu")
    # what the Live match page computes on a first visit: no crop override, alignment as the run was trained
    scores = [score_images(model, *example_pair(kind))["score"] for kind in ("genuine", "impostor")]
    # README prints 4 decimals (rounding: 5e-5). Scored twice on one CPU a pair differs by < 1e-6, but across CPU
    # models MTCNN's landmarks move with float noise and aligned cosine scores by up to 4e-4 (the bundled CFP
    # evaluation, Xeon against EPYC; see above); a changed model moves these examples by 3e-3 or more (faces_cfp
    # runs v -> aj: 0.9400 -> 0.9371), so 5e-4 + the rounding fails on any model change and on no CPU.
    np.testing.assert_allclose(scores, table[run], atol=5e-4 + 5e-5)
    assert scores[0] > scores[1]  # the same person scores above two people on both bundled models
