"""Run folders: save the chosen weights with everything needed to use them, and load them back.

Entry points: `save_best_weights(...)` (called by the trainer) and `load_run(run_dir) -> Run`, which
every command and the dashboard use. Weights are safetensors with their architecture, classes and input
normalisation in the metadata, so a run folder is self-describing and nothing untrusted is unpickled.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.atomic import save_safetensors_atomic
from core.errors import MatchLabError

BEST = "best.safetensors"
LAST = "last.pt"
THRESHOLD = "threshold.json"


@dataclass
class Run:
    dir: Path
    config: dict  # the resolved config.yaml
    model: torch.nn.Module  # in eval mode, on `device`
    model_name: str
    kind: str  # "image" or "pair"
    class_names: list[str]
    res: int  # input side, pixels
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


def save_best_weights(run_dir: Path, model: torch.nn.Module, model_name: str, model_kwargs: dict,
                      class_names: list[str], res: int, crop: float, mean, std) -> None:
    metadata = {
        "model_name": model_name,
        "model_kwargs": json.dumps(model_kwargs),
        "class_names": json.dumps(list(class_names)),
        "res": str(res),
        "crop": str(crop),
        "mean": json.dumps([float(x) for x in mean]),
        "std": json.dumps([float(x) for x in std]),
    }
    # torch.compile wraps the module; the state dict of the original keeps plain parameter names.
    module = getattr(model, "_orig_mod", model)
    save_safetensors_atomic(run_dir / BEST, module.state_dict(), metadata)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MatchLabError("train.device=cuda but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(name)


def load_run(run_dir: str | Path, device: str = "auto") -> Run:
    """Load a run folder's best weights into its model (eval mode) with its metadata."""
    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file

    from core.models import create_model, model_kind

    run_dir = Path(run_dir)
    weights = run_dir / BEST
    if not run_dir.is_dir():
        raise MatchLabError(f"run folder {run_dir} does not exist; runs live under checkpoints/")
    if not weights.is_file():
        raise MatchLabError(f"{weights} is missing: the run has not finished an epoch yet "
                            f"(resume it with: python -m core train --resume {run_dir})")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise MatchLabError(f"{weights} is not a readable safetensors file ({e})") from None
    if "model_name" not in meta:
        raise MatchLabError(f"{weights} has no MatchLab metadata (model_name); it was not written by MatchLab")
    dev = resolve_device(device)
    model = create_model(meta["model_name"], **json.loads(meta["model_kwargs"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise MatchLabError(f"{weights} does not fit model {meta['model_name']}: {first}") from None
    model.to(dev).eval()
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    threshold_info = json.loads((run_dir / THRESHOLD).read_text()) if (run_dir / THRESHOLD).is_file() else {}
    return Run(
        dir=run_dir, config=config, model=model, model_name=meta["model_name"],
        kind=model_kind(meta["model_name"]), class_names=json.loads(meta["class_names"]),
        res=int(meta["res"]), crop=float(meta.get("crop", 1.0)),
        mean=json.loads(meta["mean"]), std=json.loads(meta["std"]),
        threshold=threshold_info.get("threshold"), threshold_info=threshold_info,
        checkpoint_hash=file_hash(weights), device=dev,
    )


def list_runs(checkpoints_dir: str | Path = "checkpoints") -> list[Path]:
    """Run folders (holding best.safetensors) under `checkpoints_dir`, newest first: its children, and the
    children of a sweep folder (`checkpoints/<sweep>/<run>`)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    runs = [p.parent for p in list(root.glob(f"*/{BEST}")) + list(root.glob(f"*/*/{BEST}"))]
    return sorted(runs, key=lambda p: (p / BEST).stat().st_mtime, reverse=True)
