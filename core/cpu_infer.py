"""ONNX Runtime as the CPU backend of MatchLab's own image models (issue 17), used only where it pays.

Entry points: `feature_plan(embedder, n_images)` -> `FeaturePlan`, which `embed_all` asks for the features
function of each batch; `backend_override(name)` (the CLI's --infer-backend) and $MATCHLAB_INFER_BACKEND
(auto | torch | onnx). On the 2-core CPU ONNX Runtime embeds the bundled 64 px models 2.3-4.7x faster than
eager torch within 3e-7 cosine, but exporting costs 1-2.5 s (docs/performance.md), so `auto` exports only
when a call's remaining eager time would repay that at the smallest gain measured, and keeps ONNX only if its
first batch is faster. Exports live in memory and in $MATCHLAB_CACHE_DIR/onnx, keyed by the checkpoint hash.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import MatchLabError

if TYPE_CHECKING:
    from core.embedder import RunEmbedder

Features = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "torch", "onnx")
ENV = "MATCHLAB_INFER_BACKEND"
# Measured on the 2-core CPU (docs/performance.md, "CPU inference options"): torch.onnx.export + session of
# checkpoints/faces_cfp took 0.8-2.4 s (the first export in a process is the slow one); the smallest gain of
# ONNX Runtime over eager measured was 1.5x. An export pays once the eager seconds it replaces, times
# (1 - 1/gain), exceed its cost: with 2.5 s and 1.5x, 7.5 s of eager work left in the call.
EXPORT_S = 2.5
CACHED_S = 0.1  # a session from an export already made (memory or disk): 0.03 s measured
MIN_GAIN = 1.5

_override: ContextVar[str | None] = ContextVar("matchlab_infer_backend", default=None)
_sessions: dict[str, OrtFeatures] = {}  # key -> session made in this process
_refused: set[str] = set()  # keys whose export failed or ran slower than eager here: not tried again
_warned: set[str] = set()
_lock = threading.Lock()  # one export per key even when dashboard sessions embed at once


def infer_backend() -> str:
    """The backend asked for: --infer-backend, else $MATCHLAB_INFER_BACKEND, else auto."""
    name = _override.get() or os.environ.get(ENV) or "auto"
    if name not in BACKENDS:
        raise MatchLabError(f"{ENV}={name!r} is not a backend; use one of {', '.join(BACKENDS)}")
    return name


@contextmanager
def backend_override(name: str | None) -> Iterator[None]:
    """Within the block, `name` (when given) replaces $MATCHLAB_INFER_BACKEND for this thread."""
    if name is not None and name not in BACKENDS:
        raise MatchLabError(f"--infer-backend {name!r} is not a backend; use one of {', '.join(BACKENDS)}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def _warn(key: str, message: str) -> None:
    """One line on stderr, once per process and key (a dashboard embeds many times)."""
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {message}", file=sys.stderr)


class _ForwardFeatures(torch.nn.Module):
    """forward_features as forward, which is what the exporter traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.forward_features(x)  # type: ignore[operator]  # nn.Module attribute
        return out


def export_onnx(model: torch.nn.Module, res: tuple[int, int]) -> bytes:
    """The model's forward_features as ONNX bytes: float (B, 3, *res) -> (B, D), any batch size."""
    # A copy: the exporter runs the module while tracing, and other threads may be embedding with it.
    module = _ForwardFeatures(copy.deepcopy(model).float().cpu()).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, *res),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to any binary file object
            input_names=["x"],
            output_names=["f"],
            dynamic_axes={"x": {0: "b"}, "f": {0: "b"}},
            dynamo=False,
        )
    return buf.getvalue()


class OrtFeatures:
    """An exported forward_features in an onnxruntime CPU session: normalised (B, 3, H, W) -> (B, D)."""

    def __init__(self, onnx: bytes, res: tuple[int, int], fallback: Features):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = torch.get_num_threads()  # the threads torch was given, no more
        # Idle workers sleep instead of spinning: as fast here (measured), and kinder to a shared CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
        self.res, self.fallback = tuple(res), fallback

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, *self.res):  # the export's input size is fixed; anything else: torch
            return self.fallback(x)
        out = self.session.run(None, {"x": np.ascontiguousarray(x.detach().float().numpy())})[0]
        return torch.from_numpy(out)


@functools.cache  # the code does not change within a process; embed_all asks on every call
def _models_source_hash() -> str:
    """The model code's hash: an export made with other layer code must not be reused for the same weights."""
    h = hashlib.sha256(torch.__version__.encode())
    for f in sorted((Path(__file__).parent / "models").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def export_key(identity: str, res: tuple[int, int]) -> str:
    return f"{identity}-{res[0]}x{res[1]}-{_models_source_hash()}"


def export_path(key: str) -> Path:
    """Where the export of `key` is kept between processes: the cache folder, never a run folder."""
    from core.data.cache import cache_root

    return cache_root() / "onnx" / f"{key}.onnx"


def _session(embedder: RunEmbedder, key: str | None) -> OrtFeatures | None:
    """An ONNX Runtime session of the embedder's model (made in this process, read from the cache folder, or
    exported now), or None after a one-line warning when onnxruntime or the export fails. key None: no
    caching (a model without a checkpoint hash)."""
    with _lock:
        if key is not None and key in _sessions:
            return _sessions[key]
        res = embedder.preprocess.res
        path = export_path(key) if key is not None else None
        try:
            import onnxruntime  # noqa: F401  # before the export, which would be wasted without it

            if path is not None and path.is_file():
                try:
                    return OrtFeatures(path.read_bytes(), res, embedder.features)
                except Exception:  # unreadable or from another onnxruntime: export again below
                    pass
            onnx = export_onnx(embedder.model, res)
            ort_features = OrtFeatures(onnx, res, embedder.features)
        except Exception as e:  # onnxruntime missing, an operator the exporter lacks, a session error
            if key is not None:
                _refused.add(key)
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            _warn(
                f"export:{key}",
                f"ONNX Runtime is not available for {embedder.name or 'this model'} ({type(e).__name__}: "
                f"{reason}); embedding with torch (set {ENV}=torch to skip the attempt)",
            )
            return None
        if path is not None:
            from core.atomic import atomic_write_bytes

            try:
                atomic_write_bytes(path, onnx)
            except (OSError, MatchLabError):  # a read-only cache folder: the export still serves this process
                pass
        return ort_features


class FeaturePlan:
    """The features function for each batch of one embed_all call. This one never changes it (torch)."""

    def __init__(self, features: Features):
        self.features = features

    def record(self, n_images: int, seconds: float, remaining: int) -> None:
        """The batch just embedded: its images, its wall seconds, and the images the call has left."""


class AutoPlan(FeaturePlan):
    """auto on a CPU: the first batch eager and timed; ONNX Runtime once the eager time left would repay an
    export at MIN_GAIN; its first batch timed too, and kept only when faster per image than eager's."""

    def __init__(self, embedder: RunEmbedder, key: str):
        super().__init__(embedder.features)
        self.embedder, self.key = embedder, key
        self.eager_s = 0.0  # seconds per image of the first (eager) batch; 0 until it has run
        self.trial: OrtFeatures | None = None  # the ONNX session whose first batch is being timed

    def record(self, n_images: int, seconds: float, remaining: int) -> None:
        per_image = seconds / max(n_images, 1)
        if self.trial is not None:
            if per_image < self.eager_s:
                _sessions[self.key] = self.trial
            else:  # slower here: back to torch, and not tried again in this process
                _refused.add(self.key)
                self.features = self.embedder.features
            self.trial = None
            return
        if self.eager_s or not remaining or self.key in _refused:
            return
        self.eager_s = per_image
        cost = CACHED_S if self.key in _sessions or export_path(self.key).is_file() else EXPORT_S
        if per_image * remaining * (1 - 1 / MIN_GAIN) >= cost:
            session = _session(self.embedder, self.key)
            if session is not None:
                self.features = self.trial = session


def feature_plan(embedder: RunEmbedder, n_images: int) -> FeaturePlan:
    """How `embed_all` embeds `n_images` with a MatchLab model: torch, ONNX Runtime (forced), or auto.

    auto uses ONNX Runtime on a CPU only, for a model with a checkpoint hash (a model in training changes
    every epoch), and only when it pays (AutoPlan). onnx forces it on a CPU, falling back to torch with a
    one-line warning when the export or onnxruntime fails."""
    backend = infer_backend()
    torch_only = FeaturePlan(embedder.features)
    if backend == "torch" or n_images == 0:
        return torch_only
    if embedder.device.type != "cpu":
        if backend == "onnx":
            _warn(
                f"device:{embedder.device}", f"{ENV}=onnx runs on a CPU only; embedding with torch on {embedder.device}"
            )
        return torch_only
    key = export_key(embedder.identity, embedder.preprocess.res) if embedder.identity else None
    if backend == "onnx":
        session = _session(embedder, key)
        if session is not None and key is not None:
            _sessions[key] = session
        return FeaturePlan(session) if session is not None else torch_only
    if key is None or key in _refused:
        return torch_only
    return AutoPlan(embedder, key)
