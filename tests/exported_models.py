"""What a user brings to `import-model` and its loaders, for the tests of imported models (test_external.py,
test_imported.py, tests/dashboard/imported_runs.py): `Features` (a MatchLab network's embedding function
as a module to export), `export_onnx` (the fast ONNX exporter) and `Trap` (a pickle that leaves a file
behind if anything unpickles it). One copy, so every test exports and traps the same way."""

import warnings
from pathlib import Path

import torch


class Features(torch.nn.Module):
    """What a user exports: the model's embedding function (MatchLab's forward_features)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def export_onnx(
    module: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = True, names: list[str] | None = None
) -> Path:
    """torch.onnx.export's TorchScript-based exporter: the dynamo exporter takes ~30 s per model on a
    loaded 2-core machine, this one ~1 s, and onnxruntime runs both files the same way."""
    names = names or [f"input{i}" for i in range(len(example) if isinstance(example, tuple) else 1)]
    args = example if isinstance(example, tuple) else (example,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=names,
            dynamic_axes={n: {0: "n"} for n in names} if dynamic else None,
        )
    return path


class Trap:
    """Unpickling this creates a file: proof that a loader unpickled the user's file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
