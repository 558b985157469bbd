"""Run folders: save the chosen weights with everything needed to use them, and load them back.

Entry points: `save_best_weights(...)` (called by the trainer) and `load_run(run_dir) -> Run`, which
every command and the dashboard use. Weights are safetensors with their architecture, classes and input
normalisation in the metadata, so a run folder is self-describing and nothing untrusted is unpickled.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from core.atomic import save_safetensors_atomic
from core.data.images import as_hw
from core.errors import MatchLabError
from core.layout import (  # noqa: F401  (BEST, LAST, THRESHOLD, file_hash: re-exported for the trainer)
    BEST,
    CONFIG,
    EVAL_DIR,
    LAST,
    METRICS,
    SPLIT,
    THRESHOLD,
    file_hash,
    read_config,
    read_threshold,
)

# Everything a run folder holds: `train` refuses a folder with any of these unless --resume or --overwrite.
RUN_FILES = (CONFIG, METRICS, BEST, LAST, SPLIT, THRESHOLD, EVAL_DIR)

if TYPE_CHECKING:
    from core.embedder import Preprocess
    from core.models.base import EmbeddingNet


@dataclass
class Run:
    dir: Path
    config: dict  # the resolved config.yaml
    model: torch.nn.Module  # in eval mode, on `device`
    model_name: str
    kind: str  # "image" or "pair"
    class_names: list[str]
    res: int | tuple[int, int]  # input side in pixels, or (H, W) for a rectangular input
    crop: float  # centre-crop fraction the model was trained with
    mean: list[float]  # per-channel, 0..1 scale
    std: list[float]
    threshold: float | None  # recommended verification threshold (threshold.json), if any
    threshold_info: dict
    checkpoint_hash: str  # sha256 of best.safetensors, first 16 hex digits
    device: torch.device

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def identity(self) -> str:
        return self.checkpoint_hash

    @property
    def preprocess(self) -> Preprocess:
        """The input contract the model was trained with (what every consumer passes around)."""
        from core.embedder import Preprocess

        align = str((self.config.get("data") or {}).get("align", "none"))  # data.align the run trained with
        # Preprocess refuses anything but 3 values per channel statistic
        return Preprocess(
            res=as_hw(self.res),
            mean=cast("tuple[float, float, float]", tuple(self.mean)),
            std=cast("tuple[float, float, float]", tuple(self.std)),
            crop=self.crop,
            align=align,
        )


def save_best_weights(
    run_dir: Path,
    model: torch.nn.Module,
    *,
    model_name: str,
    model_kwargs: dict,
    class_names: list[str],
    res: int | Sequence[int],
    crop: float,
    mean,
    std,
    name: str = BEST,
) -> None:
    """Write the weights with their metadata as run_dir/name (the trainer first writes a pending name)."""
    h, w = as_hw(res)
    metadata = {
        "model_name": model_name,
        "model_kwargs": json.dumps(model_kwargs),
        "class_names": json.dumps(list(class_names)),
        "res": str(h) if h == w else json.dumps([h, w]),  # a square stays "64", as older runs wrote it
        "crop": str(crop),
        "mean": json.dumps([float(x) for x in mean]),
        "std": json.dumps([float(x) for x in std]),
    }
    # torch.compile wraps the module; the state dict of the original keeps plain parameter names.
    module = getattr(model, "_orig_mod", model)
    state = module.state_dict()
    metadata["tensor_sha256"] = _tensor_digest(state)  # safetensors checks no checksum: load_run does
    save_safetensors_atomic(run_dir / name, state, metadata)


LAST_KEYS = ("model", "loss", "optimizer", "scheduler", "state", "rng", "config", "digest")


def _tensor_digest(obj: Any, h: Any = None) -> str:
    """sha256 over every tensor's bytes in a checkpoint, walked in a fixed order. torch.load checks no
    checksum, so bytes flipped inside a tensor would otherwise load as silently wrong weights."""
    import hashlib

    h = h or hashlib.sha256()
    if torch.is_tensor(obj):
        h.update(str((obj.dtype, tuple(obj.shape))).encode())
        h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(str(key).encode())
            _tensor_digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensor_digest(item, h)
    return h.hexdigest()


def write_last_checkpoint(path: Path, ckpt: dict) -> None:
    """Write last.pt atomically with the digest of its tensors (see read_last_checkpoint)."""
    from core.atomic import torch_save_atomic

    torch_save_atomic(path, {**ckpt, "digest": _tensor_digest(ckpt)})


def read_last_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """last.pt's contents. Loaded with weights_only=True (tensors, numbers, strings, lists and dicts only),
    so a crafted file cannot run code; a damaged or foreign one raises MatchLabError naming it."""
    path = Path(path)
    fix = f"it cannot be resumed: train again with --overwrite (or restore {path.name} from a backup)"
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MatchLabError(f"{path} not found: the run has not finished an epoch yet") from None
    except Exception:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError... on bad files
        raise MatchLabError(
            f"{path} is not a MatchLab checkpoint that can be loaded safely (damaged, or it holds "
            f"objects other than tensors, numbers and strings); {fix}"
        ) from None
    missing = [k for k in LAST_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(LAST_KEYS)
    if missing:
        raise MatchLabError(f"{path} is not a MatchLab training checkpoint (no {', '.join(missing)}); {fix}")
    if ckpt["digest"] != _tensor_digest({k: v for k, v in ckpt.items() if k != "digest"}):
        raise MatchLabError(f"{path} is damaged: its tensors do not match the checksum written with them; {fix}")
    return ckpt


def _meta_res(meta: dict) -> int | tuple[int, int]:
    """The input size in best.safetensors' metadata: "64" (a square side) or "[112, 96]" (H, W)."""
    value = json.loads(meta["res"])
    h, w = as_hw(value)
    return h if isinstance(value, int) else (h, w)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MatchLabError("train.device=cuda but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(name)


def load_run(run_dir: str | Path, device: str = "auto") -> Run:
    """Load a run folder's best weights into its model (eval mode) with its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from core.models import create_model, model_kind

    run_dir = Path(run_dir)
    weights = run_dir / BEST
    if not run_dir.is_dir():
        raise MatchLabError(f"run folder {run_dir} does not exist; runs live under checkpoints/")
    if not weights.is_file():
        raise MatchLabError(
            f"{weights} is missing: the run has not finished an epoch yet "
            f"(resume it with: python -m core train --resume {run_dir})"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MatchLabError(f"{weights} is not a readable safetensors file ({first})") from None
    if "model_name" not in meta:
        raise MatchLabError(f"{weights} has no MatchLab metadata (model_name); it was not written by MatchLab")
    dev = resolve_device(device)
    try:
        model = create_model(meta["model_name"], **json.loads(meta["model_kwargs"]))
        json.loads(meta["class_names"]), _meta_res(meta), json.loads(meta["mean"]), json.loads(meta["std"])
    except MatchLabError:
        raise
    except Exception:  # noqa: BLE001 - damaged metadata: bad JSON, missing keys, arguments the model rejects
        raise MatchLabError(f"{weights} has damaged MatchLab metadata; restore the file from a backup") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise MatchLabError(f"{weights} does not fit model {meta['model_name']}: {first}") from None
    model.to(dev).eval()
    _check_weights_finite(weights, model, state, model_kind(meta["model_name"]), _meta_res(meta), dev)
    if "tensor_sha256" in meta and meta["tensor_sha256"] != _tensor_digest(state):  # runs saved before: none
        raise MatchLabError(
            f"{weights} is damaged: its tensors do not match the checksum written with them; "
            f"restore it from a backup or train the run again"
        )
    config = read_config(run_dir)
    threshold_info = read_threshold(run_dir)
    threshold = threshold_info.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
    ):
        raise MatchLabError(
            f"{run_dir / THRESHOLD}: threshold {threshold!r} is not a finite number; "
            f"delete the file or restore it from a backup"
        )
    return Run(
        dir=run_dir,
        config=config,
        model=model,
        model_name=meta["model_name"],
        kind=model_kind(meta["model_name"]),
        class_names=json.loads(meta["class_names"]),
        res=_meta_res(meta),
        crop=float(meta.get("crop", 1.0)),
        mean=json.loads(meta["mean"]),
        std=json.loads(meta["std"]),
        threshold=threshold,
        threshold_info=threshold_info,
        checkpoint_hash=file_hash(weights),
        device=dev,
    )


@torch.no_grad()
def _check_weights_finite(
    weights: Path, model: torch.nn.Module, state: dict, kind: str, res: int | tuple[int, int], device: torch.device
) -> None:
    """A file whose tensor bytes were damaged loads without complaint; catch it here, naming the file,
    instead of as NaN scores far downstream: every weight finite, and one mid-grey input gives finite outputs."""
    bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is None:
        x = torch.zeros(2, 3, *as_hw(res), device=device)
        out = model(x, x) if kind == "pair" else cast("EmbeddingNet", model).forward_features(x)  # "image" models
        if bool(torch.isfinite(out).all()):
            return
    where = f"tensor {bad} holds NaN or inf" if bad else "they give NaN or inf on a plain grey image"
    raise MatchLabError(
        f"{weights}: the weights give NaN ({where}); the file is damaged: restore it from a "
        f"backup or train the run again"
    )
