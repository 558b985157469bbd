"""The one model interface every consumer takes: uint8 images in, unit-length embeddings out.

Entry points: `load_embedder(run_dir)` -> `Embedder` (a MatchLab run, or an imported model whose run folder
says `kind: external`), `embed_all(embedder, images_u8, ...)` -> `Extracted`, and `Preprocess`, the input
contract (size, normalisation, crop, channel order, alignment) that travels with a model. Evaluate, verify,
identify, ablate, extract and the live page depend on this interface only, so any backend can fill it.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from core import layout
from core.cpu_infer import FeaturePlan, feature_plan
from core.crops import centre_crop
from core.data.augment import BatchAugment
from core.data.images import as_hw
from core.errors import MatchLabError
from core.progress import Progress

if TYPE_CHECKING:
    from core.data.cache import ImageCache
    from core.run import Run

Transform = Callable[[torch.Tensor], torch.Tensor]
ImagesU8 = np.ndarray | torch.Tensor  # (B, H, W, 3) uint8 RGB: a cache slice (numpy or memmap) or a tensor
CHANNELS = ("RGB", "BGR")
ALIGN = ("none", "mtcnn")


@dataclass(frozen=True)
class Preprocess:
    """What a model expects of its input, applied to the decode-once cache's uint8 RGB images."""

    res: tuple[int, int]  # (H, W) model input in pixels; rectangular allowed (112x96)
    mean: tuple[float, float, float]  # per channel on the 0..1 scale, in the model's channel order
    std: tuple[float, float, float]
    crop: float = 1.0  # centre-crop fraction applied to the cached image before the model
    channels: str = "RGB"  # "RGB" | "BGR": the order the model expects
    align: str = "none"  # "none" | "mtcnn": detect + 5-point align before caching

    def __post_init__(self) -> None:
        # Normalise what configs and JSON give (an int side, lists) so equal settings compare equal.
        object.__setattr__(self, "res", as_hw(self.res, "preprocess.res"))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise MatchLabError(f"preprocess.{name}={list(value)!r} must have 3 values (one per channel)")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise MatchLabError(f"preprocess.std={list(self.std)!r} must be positive")
        if not 0.0 < float(self.crop) <= 1.0:
            raise MatchLabError(f"preprocess.crop={self.crop!r} must be in (0, 1]")
        object.__setattr__(self, "crop", float(self.crop))
        if self.channels not in CHANNELS:
            raise MatchLabError(f"preprocess.channels={self.channels!r} is not valid; use one of {', '.join(CHANNELS)}")
        if self.align not in ALIGN:
            raise MatchLabError(f"preprocess.align={self.align!r} is not valid; use one of {', '.join(ALIGN)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "res": list(self.res), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        unknown = set(d) - {"res", "mean", "std", "crop", "channels", "align"}
        if unknown:
            raise MatchLabError(
                f"preprocess has unknown keys {sorted(unknown)}; valid: res, mean, std, crop, channels, align"
            )
        missing = {"res", "mean", "std"} - set(d)
        if missing:
            raise MatchLabError(f"preprocess lacks {sorted(missing)}; give res, mean and std")
        return cls(**d)

    @property
    def cache_res(self) -> int | tuple[int, int]:
        """`res` as the decode-once cache takes it: an int for a square (the cache key it always had)."""
        h, w = self.res
        return h if h == w else (h, w)


@dataclass
class Extracted:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray | None  # (N, C) float32 when the model has a class head


def autocast_for(device: torch.device, enabled: bool = True) -> Callable[[], AbstractContextManager[Any]]:
    """bf16 autocast on CUDA; CPU runs fp32 (bf16 on CPU is slower there and changes the numbers)."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(n) in steps of batch_size."""
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def model_inputs(
    images_u8: ImagesU8,
    preprocess: Preprocess,
    device: torch.device,
    *,
    crop: float | None = None,
    transform: Transform | None = None,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB array or tensor -> normalised (B, 3, *preprocess.res) on `device`: resized,
    channel order, normalised, centre-cropped, then `transform` (the ablation's masks) if given."""
    # np.array copies the batch: the cache is a read-only memmap, which torch will not wrap.
    x = torch.from_numpy(np.array(images_u8)) if isinstance(images_u8, np.ndarray) else images_u8
    if preprocess.channels == "BGR":
        x = x.flip(-1)  # mean/std are given in the model's order, so swap before normalising
    prep = BatchAugment(
        mean=preprocess.mean,
        std=preprocess.std,
        flip=False,
        crop_padding=0,
        out_res=preprocess.res,
        channels_last=device.type == "cuda",
    )
    x = centre_crop(prep(x.to(device), train=False), preprocess.crop if crop is None else crop)
    return transform(x) if transform is not None else x


class Embedder(abc.ABC):
    """A model that maps images to embeddings. Subclasses set the attributes and implement `features`."""

    name: str  # run name
    identity: str  # content hash of the weights / model file (first 16 hex of sha256)
    preprocess: Preprocess
    device: torch.device
    class_names: list[str]  # [] when the model has no class head
    embedding_dim: int
    dir: Path | None = None  # the run folder it was loaded from, if any
    model_name: str = ""  # architecture or file format, for reports
    amp: bool = True  # bf16 autocast on CUDA
    kind = "image"  # pair models are not embedders (core.run.Run, core.pair_scores.score_pair_model)

    def inputs(
        self, images_u8: ImagesU8, *, crop: float | None = None, transform: Transform | None = None
    ) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> the model's normalised float (B, 3, H, W) on `device`."""
        return model_inputs(images_u8, self.preprocess, self.device, crop=crop, transform=transform)

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) raw embedding of normalised inputs."""

    def logits(self, feats: torch.Tensor) -> torch.Tensor | None:
        """Class scores from raw features, or None without a class head."""
        return None

    def feature_plan(self, n_images: int) -> FeaturePlan:
        """What computes `features` for each batch of an embed_all call of n_images: this model's own."""
        return FeaturePlan(self.features)

    @torch.no_grad()
    def forward(
        self,
        images_u8: ImagesU8,
        *,
        flip_tta: bool = False,
        crop: float | None = None,
        transform: Transform | None = None,
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(unit embeddings (B, D) float32, logits (B, C) float32 or None) of one batch, on `device`.
        features: what replaces `self.features` for this batch (a feature_plan's ONNX Runtime session)."""
        x = self.inputs(images_u8, crop=crop, transform=transform)
        features = features or self.features
        with autocast_for(self.device, self.amp)():
            feats = features(x).float()
            if flip_tta:  # the mean of the image's and its mirror's features, then normalised
                feats = (feats + features(torch.flip(x, dims=[3])).float()) / 2
            logits = self.logits(feats)
            logits = logits.float() if logits is not None else None
        return F.normalize(feats, dim=1), logits

    def embed(
        self,
        images_u8: ImagesU8,
        *,
        flip_tta: bool = False,
        crop: float | None = None,
        transform: Transform | None = None,
    ) -> torch.Tensor:
        """(B, D) float32, L2-normalised embeddings of a uint8 (B, H, W, 3) RGB batch."""
        return self.forward(images_u8, flip_tta=flip_tta, crop=crop, transform=transform)[0]

    # Run-folder facts that reports and commands read; an embedder without a folder has none.
    @property
    def checkpoint_hash(self) -> str:
        return self.identity

    @property
    def threshold_info(self) -> dict:
        return layout.read_threshold(self.dir) if self.dir is not None else {}

    @property
    def threshold(self) -> float | None:
        value = self.threshold_info.get("threshold")
        return None if value is None else float(value)

    @property
    def config(self) -> dict:
        return layout.read_config(self.dir) if self.dir is not None else {}


class RunEmbedder(Embedder):
    """A MatchLab image model (`forward_features`, optional `head`) as an Embedder."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Preprocess,
        *,
        device: torch.device | None = None,
        name: str = "",
        identity: str = "",
        class_names: list[str] | None = None,
        run_dir: Path | None = None,
        model_name: str = "",
        amp: bool = True,
        channels_last: bool = False,
    ):
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device if device is not None else next(model.parameters()).device
        # channels_last: weights and inputs in NHWC (the layout of the uint8 cache), an option measured by
        # bench `infer` (issue 17): 0.79x-1.40x eager NCHW on the 2-core CPU (1.57x at faces_cfp), embeddings
        # equal within 1e-3 cosine; not the default: ONNX Runtime gains more (core.cpu_infer, 3.7-4.8x there).
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name, self.identity, self.dir, self.model_name, self.amp = name, identity, run_dir, model_name, amp
        self.head: torch.nn.Module | None = getattr(model, "head", None)
        self.class_names = list(class_names or []) if self.head is not None else []
        self.embedding_dim = int(getattr(model, "embedding_dim", 0))

    @classmethod
    def from_run(cls, run: Run) -> RunEmbedder:
        if run.kind == "pair":
            raise MatchLabError(
                f"{run.dir} is a pair model (two images in, one score): it has no embedding; "
                f"use evaluate or verify, which score pairs"
            )
        return cls(
            run.model,
            run.preprocess,
            device=run.device,
            name=run.name,
            identity=run.checkpoint_hash,
            class_names=run.class_names,
            run_dir=run.dir,
            model_name=run.model_name,
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.model.forward_features(x)  # type: ignore[operator]  # nn.Module attribute
        return out

    def logits(self, feats: torch.Tensor) -> torch.Tensor | None:
        return self.head(feats) if self.head is not None else None

    def feature_plan(self, n_images: int) -> FeaturePlan:
        """ONNX Runtime on a CPU where it pays, or as --infer-backend / $MATCHLAB_INFER_BACKEND say
        (core.cpu_infer); the class head stays in torch on the features either path gives."""
        return feature_plan(self, n_images)


@torch.no_grad()
def embed_all(
    embedder: Embedder,
    images_u8: ImagesU8,
    *,
    batch_size: int = 256,
    flip_tta: bool = False,
    crop: float | None = None,
    transform: Transform | None = None,
    progress: Progress | None = None,
) -> Extracted:
    """Embeddings (and logits) of every image of a uint8 (N, H, W, 3) numpy array or tensor, in batches.
    The embedder's feature_plan picks each batch's backend (torch, or ONNX Runtime on a CPU where it pays)
    from the wall time of the batches before it."""
    embs, logits = [], []
    spans = batches(len(images_u8), batch_size)
    plan = embedder.feature_plan(len(images_u8))
    for i, (s, e) in enumerate(spans):
        start = time.perf_counter()
        emb, lg = embedder.forward(
            images_u8[s:e], flip_tta=flip_tta, crop=crop, transform=transform, features=plan.features
        )
        emb = emb.cpu()  # before the clock stops: on a GPU this waits for the batch
        plan.record(e - s, time.perf_counter() - start, len(images_u8) - e)
        embs.append(emb)
        if lg is not None:
            logits.append(lg.cpu())
        if progress:
            progress((i + 1) / len(spans), f"embedding {e}/{len(images_u8)} images")
    out = torch.cat(embs).numpy() if embs else np.zeros((0, embedder.embedding_dim), np.float32)
    return Extracted(out.astype(np.float32), torch.cat(logits).numpy() if logits else None)


def load_model(run_dir: str | Path, *, device: str = "auto") -> Embedder | Run:
    """A run folder's model: an Embedder for image models and imported models, a Run for pair models."""
    from core.run import load_run

    run_dir = Path(run_dir)
    kind = layout.read_config(run_dir).get("kind")
    if kind in ("scores", "embeddings"):  # core.imported: results computed elsewhere, no model to run
        raise MatchLabError(
            f"{run_dir} holds imported {kind}, not a model: explore its evaluation in the dashboard; "
            f"commands that run a model need one (python -m core import-model)"
        )
    if kind == "external":
        try:
            from core.external import load_external_embedder
        except ImportError:
            raise MatchLabError(
                f"{run_dir} holds an imported model (kind: external) but this MatchLab has no "
                f"core/external.py to load it; update MatchLab"
            ) from None
        return load_external_embedder(run_dir, device=device)
    run = load_run(run_dir, device)
    return run if run.kind == "pair" else RunEmbedder.from_run(run)


def folder_cache(model: Embedder | Run, data: str | Path, *, on_no_face: str = "centre") -> ImageCache:
    """The decode-once cache of `data` as `model` sees it: at its cache resolution, aligned as it was trained,
    faces detected on its device; undecodable files are skipped (listed on stderr). One place, so every
    command that runs a model on a folder reads the same cache file. on_no_face: as in build_or_load_cache
    ("centre" keeps every image's row, so that protocol pairs still index)."""
    from core.data.cache import build_or_load_cache

    return build_or_load_cache(
        data,
        model.preprocess.cache_res,
        on_bad_image="skip",
        align=model.preprocess.align,
        on_no_face=on_no_face,
        device=str(model.device),
    )


def load_embedder(run_dir: str | Path, *, device: str = "auto") -> Embedder:
    """A MatchLab image-model run or an imported model (`kind: external`) as an Embedder."""
    model = load_model(run_dir, device=device)
    if not isinstance(model, Embedder):
        raise MatchLabError(
            f"{run_dir} is a pair model (two images in, one score): it has no embedding; "
            f"use evaluate or verify, which score pairs"
        )
    return model
