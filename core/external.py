"""Imported models ("bring your own model"): ONNX, torch.export (.pt2) and TorchScript files as embedders.

Entry points: `import_model(model_file, name=..., preprocess=..., out=...) -> Path` (the `import-model`
command: checks the file on a probe batch and writes a run folder whose config.yaml says `kind: external`)
and `load_external_embedder(run_dir, device)`, which `core.embedder.load_embedder` calls for such folders.
A user's file is never unpickled: ONNX is protobuf, a .pt2 archive is checked for pickled entries before
`torch.export.load` reads it, and TorchScript goes through torch.jit's own loader.
"""

from __future__ import annotations

import abc
import hashlib
import io
import json
import shutil
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import layout
from core.embedder import Embedder, Preprocess
from core.errors import MatchLabError

FORMATS = ("onnx", "pt2", "torchscript")
KIND = "external"
PROBE_BATCH = 2  # images in the probe batch when the model takes any batch size
# Two runs of one probe batch must agree to this (measured: ORT, torch.export and TorchScript CPU kernels
# repeat bit for bit, ~1e-7 on CUDA); dropout or batch statistics left in training mode differ by ~1e-1.
DETERMINISM_ATOL = 1e-4


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors run over many lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def shape_text(shape: list) -> str:
    """[1, 3, 112, 112] -> "1x3x112x112"; symbolic dims (names, None) show as N, H, ... by position."""
    names = "NCHW" if len(shape) == 4 else "?" * len(shape)
    return "x".join(str(d) if isinstance(d, int) else names[i] for i, d in enumerate(shape))


def check_input_shape(name: str, shape: list, res: tuple[int, int]) -> int | None:
    """Compare a model's declared input shape with --res; returns its fixed batch size (None = any).
    Integer dims are fixed, anything else (a name, None) is free."""
    res_text = f"{res[0]},{res[1]}"
    if len(shape) != 4:
        raise MatchLabError(
            f"{name} takes a {len(shape)}-D input ({shape_text(shape)}); MatchLab feeds image "
            f"batches N x 3 x H x W: export the model with a 4-D NCHW input"
        )
    n, c, h, w = shape
    if isinstance(c, int) and c != 3:
        hint = (
            " (NHWC layout? export it channels-first, N x 3 x H x W)"
            if w == 3
            else " (a grayscale model? repeat the gray channel inside the model, or export it with 3 input channels)"
        )
        raise MatchLabError(
            f"{name} expects {c}-channel input {shape_text(shape)}; MatchLab feeds 3-channel colour images{hint}"
        )
    if (isinstance(h, int) and h != res[0]) or (isinstance(w, int) and w != res[1]):
        want = f"{h if isinstance(h, int) else res[0]},{w if isinstance(w, int) else res[1]}"
        raise MatchLabError(
            f"{name} expects input {shape_text(shape)} but --res {res_text} was given; use --res {want}"
        )
    return n if isinstance(n, int) and n > 0 else None


# ------------------------------------------------------------------------------------------- backends


class Backend(abc.ABC):
    """One loaded model file. `run` takes a normalised float (B, 3, H, W) batch on `device` with B equal
    to `batch` when the model has a fixed batch size, and returns its output as a float tensor."""

    format: str
    batch: int | None = None  # the model's fixed batch size; None when it takes any
    input_shape: list | None = None  # declared input shape (ints fixed, other entries free); None if unknown

    def __init__(self, path: Path, device: torch.device, label: str | None = None) -> None:
        # label: how errors name the file (the user's own file name at import, not the stored copy's)
        self.path, self.device, self.label = Path(path), device, label or Path(path).name

    @abc.abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Any batch size: a model with a fixed batch size gets chunks of it, the last one zero-padded."""
        if self.batch is None or len(x) == self.batch:
            return self.run(x)
        outs = []
        for s in range(0, len(x), self.batch):
            chunk = x[s : s + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
            outs.append(self.run(chunk)[: self.batch - pad])
        return torch.cat(outs)


def _onnx_dtype(type_name: str, name: str) -> np.dtype:
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    if type_name not in dtypes:
        raise MatchLabError(
            f"{name} takes {type_name} input; MatchLab feeds normalised float images: "
            f"export the model with a float32 input"
        )
    return np.dtype(dtypes[type_name])


class OnnxBackend(Backend):
    """onnxruntime: the CUDA provider when the device is a GPU and this onnxruntime build has it, else CPU."""

    format = "onnx"

    def __init__(self, path: Path, device: torch.device, label: str | None = None) -> None:
        super().__init__(path, device, label)
        name = self.label
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are not the user's concern
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise MatchLabError(
                f"{name} is not a loadable ONNX model ({_first_line(e)}); check that the file "
                f"is complete, or export it again with torch.onnx.export"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise MatchLabError(
                f"{name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                f"MatchLab feeds one image batch: export the model with a single image input"
            )
        if len(outputs) != 1:
            raise MatchLabError(
                f"{name} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); "
                f"MatchLab needs one embedding per image: export the model returning only the embedding"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
        self.dtype = _onnx_dtype(inputs[0].type, name)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().numpy().astype(self.dtype, copy=False)}
        out = self.session.run([self.output_name], feed)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(self.device)


def _check_pt2_archive(path: Path, name: str) -> None:
    """Refuse a .pt2 archive that torch.export.load would unpickle anything from: weights or constants
    stored with pickle (tensor subclasses, script or opaque objects), legacy constant files, and sample
    inputs that do not load with weights_only=True (torch.export.load would retry those unrestricted)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            root = names[0].split("/")[0] + "/" if names else ""

            def member(rel: str) -> bytes | None:
                return z.read(root + rel) if root + rel in names else None

            if member("archive_format") is None or member("models/model.json") is None:
                raise MatchLabError(
                    f"{name} is a zip file but not a torch.export program archive; save the "
                    f"model with torch.export.save(torch.export.export(model, (x,)), '{name}')"
                )
            if member("data/constants/model.pt") is not None:
                raise MatchLabError(
                    f"{name} uses the legacy pickled constants format; export it again with "
                    f"this torch ({torch.__version__}) and torch.export.save"
                )
            for rel in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                raw = member(rel)
                entries = (json.loads(raw).get("config") or {}) if raw else {}
                pickled = [k for k, v in entries.items() if v.get("use_pickle") or v.get("tensor_meta") is None]
                if pickled:
                    raise MatchLabError(
                        f"{name} stores {pickled[0]!r} with pickle, which MatchLab never loads "
                        f"from a user's file; export a model whose weights are plain tensors"
                    )
            sample = member("data/sample_inputs/model.pt")
    except zipfile.BadZipFile:
        raise MatchLabError(
            f"{name} is not a complete .pt2 archive (truncated or corrupt); copy or export "
            f"it again with torch.export.save"
        ) from None
    except (KeyError, ValueError, zlib.error) as e:
        raise MatchLabError(f"{name} is a damaged .pt2 archive ({_first_line(e)}); export it again") from None
    if sample:
        try:
            torch.load(io.BytesIO(sample), weights_only=True)
        except Exception as e:
            raise MatchLabError(
                f"{name}: its sample inputs need unrestricted unpickling ({_first_line(e)}); "
                f"export it with plain tensor example inputs"
            ) from None


class Pt2Backend(Backend):
    """A torch.export program (torch.export.save), run as its unlifted graph module."""

    format = "pt2"

    def __init__(self, path: Path, device: torch.device, label: str | None = None) -> None:
        super().__init__(path, device, label)
        name = self.label
        _check_pt2_archive(path, name)
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise MatchLabError(
                f"{name} could not be read by torch.export.load ({_first_line(e)}); export it "
                f"again with this torch ({torch.__version__})"
            ) from None
        spec = ep.graph_signature
        user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in spec.user_inputs]
        if len(user_inputs) != 1:
            raise MatchLabError(
                f"{name} has {len(user_inputs)} inputs ({', '.join(spec.user_inputs)}); MatchLab "
                f"feeds one image batch: export the model with a single image input"
            )
        val = user_inputs[0].meta.get("val")
        if val is not None and hasattr(val, "shape"):  # a fake tensor: static dims are ints, dynamic ones SymInts
            self.input_shape = [d if isinstance(d, int) else None for d in val.shape]
        if len(spec.user_outputs) != 1:
            raise MatchLabError(
                f"{name} returns {len(spec.user_outputs)} outputs; MatchLab needs one embedding "
                f"per image: export the model returning only the embedding"
            )
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            ep = move_to_device_pass(ep, device)
        self.module = ep.module()

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return _single_output(self.module(x), self.label).float()


class TorchScriptBackend(Backend):
    """torch.jit.load (deprecated by torch, still supported): its input shape is known only by running it."""

    format = "torchscript"

    def __init__(self, path: Path, device: torch.device, label: str | None = None) -> None:
        super().__init__(path, device, label)
        name = self.label
        try:
            with warnings.catch_warnings():  # torch's deprecation notice; the import command says it once
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise MatchLabError(
                f"{name} is not a loadable TorchScript archive ({_first_line(e)}); MatchLab reads "
                f"torch.jit.save files, not torch.save checkpoints: export the model with "
                f"torch.export.save (.pt2) or torch.onnx.export"
            ) from None

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return _single_output(self.module(x), self.label).float()


def _single_output(out: Any, name: str) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        if len(out) != 1:
            raise MatchLabError(
                f"{name} returns {len(out)} outputs; MatchLab needs one embedding per image: "
                f"export the model returning only the embedding"
            )
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise MatchLabError(f"{name} returns a {type(out).__name__}, not a tensor of embeddings")
    return out


BACKENDS: dict[str, type[Backend]] = {"onnx": OnnxBackend, "pt2": Pt2Backend, "torchscript": TorchScriptBackend}


def detect_format(path: Path) -> str:
    """The file's format from its contents (a zip archive's members), else its suffix."""
    suffix = path.suffix.lower()
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            names = []
        tails = {n.split("/", 1)[-1] for n in names}
        if "archive_format" in tails:
            return "pt2"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            raise MatchLabError(
                f"{path.name} is a torch.save checkpoint (a pickle), which MatchLab never loads from "
                f"a user's file: export the model with torch.export.save (.pt2) or torch.onnx.export"
            )
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "pt2"
    if suffix in (".pt", ".ts", ".pth", ".jit", ".torchscript"):
        return "torchscript"
    raise MatchLabError(
        f"{path.name}: unknown model format; give an ONNX (.onnx), torch.export (.pt2) or TorchScript (.pt, .ts) file"
    )


def load_backend(path: Path, fmt: str, device: torch.device, label: str | None = None) -> Backend:
    if fmt not in BACKENDS:
        raise MatchLabError(f"{label or Path(path).name}: model format {fmt!r} is not one of {', '.join(FORMATS)}")
    return BACKENDS[fmt](Path(path), device, label)


# ---------------------------------------------------------------------------------------------- probe


def probe(backend: Backend, res: tuple[int, int]) -> int:
    """Run the model on a seeded probe batch at `res` and check what every consumer relies on: one row of
    D finite numbers per image, the same on a second run. Returns D."""
    name = backend.label
    if backend.input_shape is not None:
        backend.batch = check_input_shape(name, backend.input_shape, res)
    n = backend.batch or PROBE_BATCH
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, 3, *res), generator=gen).to(backend.device)
    shape = f"{n}x3x{res[0]}x{res[1]}"
    try:
        first = backend.run(x)
        second = backend.run(x.clone())
    except MatchLabError:
        raise
    except Exception as e:
        raise MatchLabError(
            f"{name} failed on a probe batch {shape} ({_first_line(e)}); check --res (the model's input height,width)"
        ) from None
    out = tuple(first.shape)
    if first.dim() == 4 and first.shape[2:] == (1, 1):  # (N, D, 1, 1) from a pooled conv net: one vector each
        first, second = first.flatten(1), second.flatten(1)
    if first.dim() != 2 or first.shape[0] != n:
        raise MatchLabError(
            f"{name} returns shape {'x'.join(map(str, out))} for a probe batch {shape}; MatchLab "
            f"needs one embedding per image ({n} x D): export the model returning (N, D) embeddings"
        )
    if not torch.isfinite(first).all():
        bad = int((~torch.isfinite(first)).sum())
        raise MatchLabError(
            f"{name} produced {bad} NaN or infinite values on a probe batch {shape}; check the "
            f"export (and --mean/--std), the model must give finite embeddings"
        )
    if not torch.allclose(first, second, rtol=0, atol=DETERMINISM_ATOL):
        diff = float((first - second).abs().max())
        raise MatchLabError(
            f"{name} gives different outputs for the same input (max difference {diff:.3g}); export "
            f"the model after model.eval() (dropout or batch statistics are still in training mode)"
        )
    if float(first.norm(dim=1).min()) == 0.0:
        raise MatchLabError(f"{name} returns an all-zero embedding on a probe batch {shape}; check the export")
    return int(first.shape[1])


# --------------------------------------------------------------------------------------------- import


def sha256_file(path: Path) -> str:
    """Full sha256 hex of a file (its first 16 digits are the model's identity, as core.layout.file_hash)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _onnx_single_file(src: Path, dst: Path) -> bool:
    """Copy an ONNX model into `dst` as ONE file. torch.onnx.export writes the weights of a model beside it
    (model.onnx.data) by default; those are folded in, so the run folder never depends on the source folder.
    Returns True when it had external data."""
    import onnx

    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as e:
        raise MatchLabError(
            f"{src.name} is not a readable ONNX model ({_first_line(e)}); check that the file is "
            f"complete, or export it again with torch.onnx.export"
        ) from None
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(proto)
    )
    if not external:
        shutil.copyfile(src, dst)
        return False
    try:
        onnx.load_external_data_for_model(proto, str(src.parent))
    except Exception as e:
        raise MatchLabError(
            f"{src.name} keeps its weights in a separate file that could not be read "
            f"({_first_line(e)}); keep the .onnx.data file beside it, or export with "
            f"torch.onnx.export(..., external_data=False)"
        ) from None
    onnx.save_model(proto, str(dst), save_as_external_data=False)
    return True


def import_model(
    model_file: str | Path,
    *,
    name: str,
    preprocess: Preprocess,
    out: str | Path = "checkpoints",
    tta: str | None = None,
    device: str = "cpu",
) -> dict:
    """Check `model_file` on a probe batch and write the run folder `out/name` (config.yaml with
    `kind: external`, the preprocessing, a content-hashed copy of the file and its sha256). The folder is
    assembled under a staging name and renamed into place (core.atomic.replaced_dir): whole or not at all."""
    from core.atomic import atomic_write_yaml, replaced_dir
    from core.run import resolve_device

    src = Path(model_file)
    if not src.is_file():
        raise MatchLabError(f"model file {src} not found")
    if not name or "/" in name or name.startswith("."):
        raise MatchLabError(f"--name {name!r}: give a folder name without '/' (e.g. arcface-r50)")
    if tta not in (None, "flip"):
        raise MatchLabError(f"--tta {tta!r} is not valid; the only test-time augmentation is 'flip'")
    root = Path(out)
    final = root / name
    if final.exists():
        raise MatchLabError(f"{final} already exists; choose another --name (nothing was changed)")
    fmt = detect_format(src)
    dev = resolve_device(device)
    with replaced_dir(final) as staging:  # built aside, renamed into place whole; removed on any failure
        # Hash and check the copy, not the source: the file that will be used is the file that was checked.
        tmp = staging / f"model.{fmt}"
        if fmt == "onnx":
            folded = _onnx_single_file(src, tmp)
        else:
            shutil.copyfile(src, tmp)
            folded = False
        digest = sha256_file(tmp)
        stored = staging / f"model-{digest[:16]}{src.suffix.lower() or '.' + fmt}"
        tmp.rename(stored)
        backend = load_backend(stored, fmt, dev, label=src.name)
        dim = probe(backend, preprocess.res)
        input_text = shape_text(backend.input_shape) if backend.input_shape else "unknown (TorchScript)"
        config = {
            "kind": KIND,
            "name": name,
            "external": {
                "file": stored.name,
                "sha256": digest,
                "format": fmt,
                "source": str(src.resolve()),
                "source_sha256": digest if not folded else sha256_file(src),
                "input": input_text,
                "batch": backend.batch,
                "embedding_dim": dim,
                "tta": tta,
                "imported": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            "preprocess": preprocess.to_dict(),
        }
        atomic_write_yaml(layout.RunFiles(staging).config, config)
    return {
        "run": str(final),
        "file": stored.name,
        "sha256": digest,
        "format": fmt,
        "embedding_dim": dim,
        "input": input_text,
        "batch": backend.batch,
        "preprocess": preprocess.to_dict(),
        "folded_external_data": folded,
    }


def parse_triple(text: str, flag: str) -> tuple[float, float, float]:
    """--mean/--std "a,b,c" (or one value for all three) on the 0..1 scale."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise MatchLabError(f"{flag} {text!r}: give three comma-separated numbers, e.g. {flag} 0.5,0.5,0.5") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not all(np.isfinite(vals)):
        raise MatchLabError(f"{flag} {text!r}: give three comma-separated numbers, e.g. {flag} 0.5,0.5,0.5")
    if any(v > 1.5 for v in vals):
        raise MatchLabError(
            f"{flag} {text!r}: MatchLab takes {flag} on the 0..1 scale; divide by 255 (127.5 -> {127.5 / 255:.4f})"
        )
    if flag == "--std" and any(v <= 0 for v in vals):
        raise MatchLabError(f"{flag} {text!r}: every standard deviation must be > 0")
    return vals[0], vals[1], vals[2]


def parse_res(text: str) -> tuple[int, int]:
    """--res "H,W" (or one side for a square)."""
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise MatchLabError(
            f"--res {text!r}: give the model's input height,width in pixels, e.g. --res 112,112"
        ) from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(8 <= v <= 4096 for v in vals):
        raise MatchLabError(
            f"--res {text!r}: give the model's input height,width in pixels (8..4096), e.g. --res 112,96"
        )
    return vals[0], vals[1]


# ------------------------------------------------------------------------------------------- embedder


class ExternalEmbedder(Embedder):
    """An imported model file as an Embedder: the shared `inputs` (resize, channel order, normalise, crop)
    feed the backend, whose output rows are the raw embeddings. No class head, so no logits."""

    amp = False  # run the user's model in the precision it was exported in

    def __init__(
        self,
        backend: Backend,
        preprocess: Preprocess,
        *,
        name: str,
        identity: str,
        embedding_dim: int,
        run_dir: Path | None = None,
        tta: str | None = None,
    ) -> None:
        self.backend, self.preprocess, self.device = backend, preprocess, backend.device
        self.name, self.identity, self.dir = name, identity, run_dir
        self.class_names: list[str] = []
        self.embedding_dim = embedding_dim
        self.model_name = f"imported {backend.format}"
        self.tta = tta  # test-time augmentation chosen at import: "flip" applies wherever this model embeds

    def forward(
        self, images_u8, *, flip_tta: bool = False, crop: float | None = None, transform=None, features=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return super().forward(
            images_u8, flip_tta=flip_tta or self.tta == "flip", crop=crop, transform=transform, features=features
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backend(x.contiguous())
        return out.flatten(1) if out.dim() == 4 and out.shape[2:] == (1, 1) else out


def external_section(run_dir: Path, config: dict) -> dict:
    """The `external:` section of an imported model's config.yaml, checked for the keys loading needs."""
    ext = config.get("external")
    path = layout.RunFiles(run_dir).config
    if not isinstance(ext, dict) or not all(ext.get(k) for k in ("file", "sha256", "format")):
        raise MatchLabError(
            f"{path} says kind: external but lacks external.file, .sha256 or .format; import the "
            f"model again with python -m core import-model"
        )
    if not isinstance(config.get("preprocess"), dict):
        raise MatchLabError(
            f"{path} lacks its preprocess section; import the model again with python -m core import-model"
        )
    return ext


def load_external_embedder(run_dir: str | Path, *, device: str = "auto") -> ExternalEmbedder:
    """The imported model in `run_dir` (config.yaml `kind: external`), checked against its recorded sha256."""
    from core.run import resolve_device

    run_dir = Path(run_dir)
    config = layout.read_config(run_dir)
    ext = external_section(run_dir, config)
    path = run_dir / str(ext["file"])
    if not path.is_file():
        raise MatchLabError(f"{path} is missing: the imported model's file was moved or deleted; import it again")
    digest = sha256_file(path)
    if digest != ext["sha256"]:
        raise MatchLabError(
            f"{path} does not match the sha256 recorded at import ({str(ext['sha256'])[:16]}..., now "
            f"{digest[:16]}...): the file changed; import the model again"
        )
    preprocess = Preprocess.from_dict(config["preprocess"])
    backend = load_backend(path, str(ext["format"]), resolve_device(device), label=f"{run_dir.name}/{path.name}")
    if backend.input_shape is not None:
        backend.batch = check_input_shape(backend.label, backend.input_shape, preprocess.res)
    dim = ext.get("embedding_dim") or probe(backend, preprocess.res)
    return ExternalEmbedder(
        backend,
        preprocess,
        name=run_dir.name,
        identity=digest[:16],
        embedding_dim=int(dim),
        run_dir=run_dir,
        tta=ext.get("tta"),
    )
