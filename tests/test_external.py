"""Imported models (issue 11): a MatchLab model exported to .pt2, ONNX and TorchScript, imported with
`import-model`, must give the native run's embeddings and metrics; every malformed file a user could bring
gets a one-line error naming the file and what to change, and nothing of theirs is ever unpickled.
"""

import json
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core import layout
from core.cli import main
from core.data.cache import build_or_load_cache
from core.embedder import embed_all, load_embedder
from core.external import ExternalEmbedder
from tests.exported_models import Features, Trap, export_onnx

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
# Same network, same fp32 CPU kernels up to operator fusion: measured max |difference| of unit embeddings
# 0 (pt2, TorchScript) and 3.8e-7 (ONNX Runtime) on the bundled ORL images; 1e-4 is the bound.
ATOL = 1e-4


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def preprocess_args(pre) -> list[str]:
    # repr round-trips a float exactly, so the imported model normalises exactly as the native run does
    return [
        "--res",
        f"{pre.res[0]},{pre.res[1]}",
        "--mean",
        ",".join(map(repr, pre.mean)),
        "--std",
        ",".join(map(repr, pre.std)),
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("external")
    cache_dir = base / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("MATCHLAB_CACHE_DIR", str(cache_dir))
    assert (
        main(
            [
                "train",
                str(ROOT / "configs" / "orl.yaml"),
                "model.name=convnet_tiny",
                "data.res=32",
                "train.epochs=1",
                "train.batch_size=64",
                "model.embedding_dim=32",
                f"data.train={ORL}",
                "--out",
                str(base),
                "--name",
                "native",
                "--json",
            ]
        )
        == 0
    )
    native = load_embedder(base / "native", device="cpu")
    module = Features(native.model).eval()
    example = torch.zeros(2, 3, 32, 32)
    files = base / "exports"
    files.mkdir()
    n = torch.export.Dim("n", min=1, max=4096)
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: n},)), files / "model.pt2")
    export_onnx(module, example, files / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example), str(files / "model.pt"))
    imported = {}
    for fmt, name in (("pt2", "model.pt2"), ("onnx", "model.onnx"), ("torchscript", "model.pt")):
        rc = main(
            [
                "import-model",
                str(files / name),
                "--name",
                f"imported-{fmt}",
                "--out",
                str(base),
                *preprocess_args(native.preprocess),
                "--json",
            ]
        )
        assert rc == 0
        imported[fmt] = base / f"imported-{fmt}"
    cache = build_or_load_cache(ORL, 32, cache_dir=cache_dir, progress=False)
    yield {
        "base": base,
        "native": native,
        "module": module,
        "files": files,
        "imported": imported,
        "cache": cache,
        "cache_dir": cache_dir,
    }
    mp.undo()


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_imported_model_gives_the_native_embeddings(env, fmt):
    run_dir = env["imported"][fmt]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["kind"] == "external" and config["external"]["format"] == fmt
    stored = run_dir / config["external"]["file"]
    digest = config["external"]["sha256"]
    assert stored.name.startswith(f"model-{digest[:16]}") and layout.file_hash(stored) == digest[:16]
    assert config["preprocess"]["res"] == [32, 32] and config["external"]["embedding_dim"] == 32
    assert layout.model_file(run_dir) == stored and layout.has_model(run_dir)

    ext = load_embedder(run_dir, device="cpu")
    assert isinstance(ext, ExternalEmbedder) and ext.identity == digest[:16] and ext.class_names == []
    assert ext.preprocess == env["native"].preprocess
    images = env["cache"].images[:100]
    for flip in (False, True):
        want = embed_all(env["native"], images, batch_size=64, flip_tta=flip).embeddings
        got = embed_all(ext, images, batch_size=64, flip_tta=flip)
        assert got.logits is None
        np.testing.assert_allclose(got.embeddings, want, atol=ATOL)


def test_a_changed_model_file_is_refused(env, capsys, tmp_path):
    copy = tmp_path / "imported"
    shutil.copytree(env["imported"]["onnx"], copy)
    stored = layout.model_file(copy)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    rc, _, err = run_cli(capsys, "verify", copy, ORL / "s1" / "1.pgm", ORL / "s1" / "2.pgm", "--threshold", "0.5")
    assert rc == 2 and err.count("\n") == 1 and "does not match the sha256 recorded at import" in err


# ------------------------------------------------------------------------------------- malformed files


class Tiny(torch.nn.Module):
    """A 3-channel conv net small enough to export in a second, for the malformed-file cases."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class NaNs(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.conv(x).mean(dim=(2, 3)) - 1e6)  # log of a negative number


class TwoInputs(Tiny):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) + self.conv(y).mean(dim=(2, 3))


class Dropout(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(self.conv(x).mean(dim=(2, 3)), 0.5, training=True)


class Unflattened(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _import(capsys, path: Path, out: Path, *extra) -> tuple[int, str]:
    rc, _, err = run_cli(
        capsys,
        "import-model",
        path,
        "--name",
        "m",
        "--out",
        out,
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
        *(extra or ("--res", "32,32")),
    )
    if rc != 0:  # a failed import leaves neither a run folder nor its staging folder
        assert not (out / "m").exists() and not list(out.glob(".m.*"))
    return rc, err


def _one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def test_wrong_res_names_the_file_and_the_res_to_use(capsys, tmp_path):
    path = export_onnx(Tiny(), torch.zeros(1, 3, 112, 112), tmp_path / "model.onnx", dynamic=False)
    rc, err = _import(capsys, path, tmp_path / "ck", "--res", "112,96")
    _one_line_error(rc, err, "model.onnx expects input 1x3x112x112 but --res 112,96 was given", "use --res 112,112")


def test_wrong_channel_count(capsys, tmp_path):
    path = export_onnx(Tiny(channels=1), torch.zeros(1, 1, 32, 32), tmp_path / "gray.onnx")
    rc, err = _import(capsys, path, tmp_path / "ck")
    _one_line_error(rc, err, "gray.onnx expects 1-channel input Nx1x32x32", "3-channel")


def test_nan_producing_model(capsys, tmp_path):
    path = export_onnx(NaNs(), torch.zeros(1, 3, 32, 32), tmp_path / "nan.onnx")
    rc, err = _import(capsys, path, tmp_path / "ck")
    _one_line_error(rc, err, "nan.onnx produced 16 NaN or infinite values on a probe batch 2x3x32x32")


def test_onnx_with_two_inputs(capsys, tmp_path):
    path = export_onnx(
        TwoInputs(),
        (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)),
        tmp_path / "two.onnx",
        names=["image", "other"],
    )
    rc, err = _import(capsys, path, tmp_path / "ck")
    _one_line_error(rc, err, "two.onnx has 2 inputs (image, other)", "single image input")


def test_non_deterministic_model(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Dropout()), str(tmp_path / "dropout.pt"))
    rc, err = _import(capsys, tmp_path / "dropout.pt", tmp_path / "ck")
    _one_line_error(rc, err, "dropout.pt gives different outputs for the same input", "model.eval()")


def test_output_that_is_not_one_row_per_image(capsys, tmp_path):
    path = export_onnx(Unflattened(), torch.zeros(1, 3, 32, 32), tmp_path / "map.onnx")
    rc, err = _import(capsys, path, tmp_path / "ck")
    _one_line_error(rc, err, "map.onnx returns shape 2x8x32x32", "(2 x D)")


@pytest.mark.parametrize("fmt", ["model.pt2", "model.onnx", "model.pt"])
def test_truncated_file(env, capsys, tmp_path, fmt):
    data = (env["files"] / fmt).read_bytes()
    path = tmp_path / fmt
    path.write_bytes(data[: len(data) // 2])
    rc, err = _import(capsys, path, tmp_path / "ck")
    _one_line_error(rc, err, fmt)
    assert any(w in err for w in ("truncated", "complete", "not a loadable", "not a readable")), err


def test_pickles_are_never_unpickled(capsys, tmp_path):
    marker = tmp_path / "unpickled"
    # a torch.save checkpoint, under each suffix a user might give it
    for name in ("weights.pt", "weights.pth", "weights.pt2"):
        torch.save({"trap": Trap(marker)}, tmp_path / name)
        rc, err = _import(capsys, tmp_path / name, tmp_path / "ck")
        _one_line_error(rc, err, name)
        assert not marker.exists()
    # a plain pickle named .onnx
    (tmp_path / "weights.onnx").write_bytes(pickle.dumps(Trap(marker)))
    rc, err = _import(capsys, tmp_path / "weights.onnx", tmp_path / "ck")
    _one_line_error(rc, err, "weights.onnx")
    assert not marker.exists()


def test_a_pt2_with_a_pickled_entry_is_refused_before_loading(env, capsys, tmp_path):
    """torch.export.load unpickles tensor-subclass weights and custom objects with weights_only=False;
    an archive that declares one is refused from its JSON config, before torch reads it."""
    src, dst = env["files"] / "model.pt2", tmp_path / "patched.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"]))
                config["config"][first]["use_pickle"] = True
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    rc, err = _import(capsys, dst, tmp_path / "ck")
    _one_line_error(rc, err, "patched.pt2 stores", "with pickle")


def test_onnx_weights_in_a_separate_file_are_folded_into_the_run_folder(env, capsys, tmp_path):
    """torch.onnx.export's default (dynamo) exporter writes model.onnx + model.onnx.data; the run folder
    must not depend on the second file staying where it was."""
    import onnx

    proto = onnx.load(str(env["files"] / "model.onnx"))
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(
        proto, str(src / "split.onnx"), save_as_external_data=True, location="split.onnx.data", size_threshold=0
    )
    assert (src / "split.onnx.data").stat().st_size > 0
    rc, out, err = run_cli(
        capsys,
        "import-model",
        src / "split.onnx",
        "--name",
        "split",
        "--out",
        tmp_path / "ck",
        *preprocess_args(env["native"].preprocess),
    )
    assert rc == 0, err and "folded" in out
    shutil.rmtree(src)  # the source folder goes away; the imported model must still load
    ext = load_embedder(tmp_path / "ck" / "split", device="cpu")
    images = env["cache"].images[:16]
    np.testing.assert_allclose(
        embed_all(ext, images).embeddings, embed_all(env["native"], images).embeddings, atol=ATOL
    )


def test_bad_arguments_and_an_existing_name(env, capsys, tmp_path):
    path = env["files"] / "model.onnx"
    rc, err = _import(capsys, path, tmp_path / "ck", "--res", "32,32", "--mean", "127.5,127.5,127.5")
    _one_line_error(rc, err, "--mean", "0..1 scale", "0.5000")
    rc, err = _import(capsys, path, tmp_path / "ck", "--res", "thirty")
    _one_line_error(rc, err, "--res 'thirty'")
    rc, err = _import(capsys, tmp_path / "missing.onnx", tmp_path / "ck")
    _one_line_error(rc, err, "missing.onnx not found")
    before = sorted(p.name for p in env["base"].joinpath("imported-onnx").iterdir())
    rc, _, err = run_cli(
        capsys,
        "import-model",
        path,
        "--name",
        "imported-onnx",
        "--out",
        env["base"],
        *preprocess_args(env["native"].preprocess),
    )
    _one_line_error(rc, err, "already exists")
    assert sorted(p.name for p in env["base"].joinpath("imported-onnx").iterdir()) == before


def test_static_batch_models_run_at_any_batch(env, capsys, tmp_path):
    """Many exports fix the batch at 1 (InsightFace's are 1x3x112x112): batches are fed in chunks."""
    path = export_onnx(env["module"], torch.zeros(1, 3, 32, 32), tmp_path / "batch1.onnx", dynamic=False)
    rc, out, err = run_cli(
        capsys,
        "import-model",
        path,
        "--name",
        "b1",
        "--out",
        tmp_path / "ck",
        *preprocess_args(env["native"].preprocess),
        "--json",
    )
    assert rc == 0, err
    assert json.loads(out)["batch"] == 1 and json.loads(out)["input"] == "1x3x32x32"
    ext = load_embedder(tmp_path / "ck" / "b1", device="cpu")
    images = env["cache"].images[:5]
    np.testing.assert_allclose(
        embed_all(ext, images).embeddings, embed_all(env["native"], images).embeddings, atol=ATOL
    )


# ------------------------------------------------------------------------------- every command works


def _evaluate(capsys, run_dir: Path, *extra) -> dict:
    rc, out, err = run_cli(capsys, "evaluate", run_dir, "--data", ORL, "--bootstrap", "0", "--json", *extra)
    assert rc == 0, err[-2000:]
    return json.loads(out)


def test_evaluate_gives_the_native_metrics_on_the_same_pairs(env, capsys, tmp_path):
    """Every pair of the native run's held-out (test) identities, as a CSV protocol with two slices, for the
    native run and each imported file (and flip TTA on one): same scores, same metrics."""
    import pandas as pd

    native_dir = env["base"] / "native"
    test = sorted(json.loads((native_dir / "split.json").read_text())["test"])
    ia, ib = np.triu_indices(len(test), 1)
    same = [test[i].split("/")[0] == test[j].split("/")[0] for i, j in zip(ia, ib)]
    pairs = pd.DataFrame(
        {
            "path_a": [test[i] for i in ia],
            "path_b": [test[j] for j in ib],
            "label": np.array(same, int),
            "slice": np.where(ia % 2, "odd", "even"),
        }
    )
    csv = tmp_path / "pairs.csv"
    pairs.to_csv(csv, index=False)
    for tta, formats in (([], ["pt2", "onnx", "torchscript"]), (["--tta", "flip"], ["onnx"])):
        want = _evaluate(capsys, native_dir, "--pairs", csv, "--pairs-format", "csv", *tta)
        want_scores = pd.read_parquet(Path(want["verification"]["artifacts"]) / "pairs.parquet")["score"]
        for fmt in formats:
            got = _evaluate(capsys, env["imported"][fmt], "--pairs", csv, "--pairs-format", "csv", *tta)
            assert got["key"] == want["key"] and got["checkpoint_hash"] != want["checkpoint_hash"]
            got_scores = pd.read_parquet(Path(got["verification"]["artifacts"]) / "pairs.parquet")["score"]
            np.testing.assert_allclose(got_scores, want_scores, atol=ATOL)
            v, w = got["verification"], want["verification"]
            assert (
                (v["n_genuine"], v["n_impostor"])
                == (w["n_genuine"], w["n_impostor"])
                == (int(pairs.label.sum()), int((pairs.label == 0).sum()))
            )
            # scores agree to 4e-7, so no pair changes rank: the metrics agree to float rounding
            for k in ("auc", "eer", "eer_threshold", "kfold_accuracy_mean"):
                assert v[k] == pytest.approx(w[k], abs=1e-5), (fmt, tta, k)
            assert set(got["slices"]) == {"even", "odd"}
            for name, rep in got["slices"].items():
                assert rep["auc"] == pytest.approx(want["slices"][name]["auc"], abs=1e-5)
            assert got["knn_accuracy"] == pytest.approx(want["knn_accuracy"], abs=1e-9)
            assert got["classification"]["source"] == "knn"


def test_verify_identify_ablate_embed_on_an_imported_model(env, capsys):
    run_dir, native_dir = env["imported"]["pt2"], env["base"] / "native"
    a, b = ORL / "s1" / "1.pgm", ORL / "s2" / "1.pgm"
    scores = []
    for r in (native_dir, run_dir):
        rc, out, err = run_cli(capsys, "verify", r, a, b, "--threshold", "0.5", "--json")
        assert rc == 0, err
        scores.append(json.loads(out)["score"])
    assert scores[1] == pytest.approx(scores[0], abs=ATOL)
    rc, _, err = run_cli(capsys, "verify", run_dir, a, b)
    _one_line_error(rc, err, "no threshold.json", "--threshold-file")

    reports = []
    for r in (native_dir, run_dir):
        rc, out, err = run_cli(capsys, "identify", r, "--holdout-from", ORL, "--json")
        assert rc == 0, err
        reports.append(json.loads(out))
    assert reports[1]["rank1"] == pytest.approx(reports[0]["rank1"], abs=1e-9)
    assert reports[1]["open_set_accuracy"] == pytest.approx(reports[0]["open_set_accuracy"], abs=1e-9)

    rc, out, err = run_cli(capsys, "ablate", run_dir, "--data", ORL, "--crops", "50,100", "--json")
    assert rc == 0, err
    ablation = json.loads(out)
    assert ablation["crops"] == [50, 100] and 0.5 <= ablation["grayscale"]["auc"] <= 1
    rc, out, err = run_cli(capsys, "embed", run_dir, "--data", ORL, "--json")
    assert rc == 0, err
    assert json.loads(out)["points"] == 400 and Path(json.loads(out)["projection"]).is_file()
    rc, _, err = run_cli(capsys, "predict", run_dir, "--data", ORL, "--out", env["base"] / "p.csv")
    _one_line_error(rc, err, "no class head")


def test_a_rectangular_imported_model(env, capsys, tmp_path):
    """112 x 96 is common for faces: a 40 x 32 input must work from the cache to the metrics."""
    from dataclasses import replace

    from core.embedder import RunEmbedder

    path = export_onnx(env["module"], torch.zeros(2, 3, 40, 32), tmp_path / "rect.onnx")
    pre = replace(env["native"].preprocess, res=(40, 32))
    rc, out, err = run_cli(
        capsys, "import-model", path, "--name", "rect", "--out", tmp_path / "ck", *preprocess_args(pre), "--json"
    )
    assert rc == 0, err
    ext = load_embedder(tmp_path / "ck" / "rect", device="cpu")
    assert ext.preprocess.res == (40, 32)
    native = RunEmbedder(env["native"].model, pre, device=torch.device("cpu"))
    cache = build_or_load_cache(ORL, (40, 32), cache_dir=env["cache_dir"], progress=False)
    assert cache.images.shape[1:] == (40, 32, 3)
    np.testing.assert_allclose(
        embed_all(ext, cache.images[:20]).embeddings, embed_all(native, cache.images[:20]).embeddings, atol=ATOL
    )
    s = _evaluate(capsys, tmp_path / "ck" / "rect")
    assert s["n_images"] == 400 and 0.5 < s["verification"]["auc"] <= 1
