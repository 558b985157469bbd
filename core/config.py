"""Run configuration: dataclasses with defaults, loaded from YAML, overridden by `section.key=value`.

Entry point: `load_config(path, overrides) -> Config`. Every field has a default and a one-line comment
with its unit; values are type-checked against the field's annotation, and an unknown section or key
fails with the list of valid ones, so a typo never silently trains the wrong recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from core.errors import MatchLabError


@dataclass
class DataConfig:
    train: str = "data/orl_faces"  # image folder (ImageFolder layout; class folders may nest sub-folders)
    val: str = ""  # separate validation folder; empty = split `train` as `split` says
    split: str = "identity"  # "identity" (val/test identities unseen in training) or "image" (stratified by image)
    val_fraction: float = 0.2  # fraction of identities (or images per class) used for validation
    test_fraction: float = 0.0  # identity split only: fraction of identities held out entirely for testing
    split_seed: int = -1  # seeds the split alone (-1: train.seed), so seeds of one recipe can share their people
    res: int | list = 64  # model input side in pixels (cached square), or [height, width], e.g. [112, 96]
    residency: str = "auto"  # "auto", "device" (copy the uint8 cache to the training device) or "stream" (read batches from its memory-mapped file)
    crop: float = 1.0  # centre-crop fraction of the shorter side fed to the model (1.0 = whole image)
    on_bad_image: str = "skip"  # "skip" (report and go on) or "fail" (stop naming the file)
    align: str = (
        "none"  # "none" (whole image) or "mtcnn" (detect the face, 5-point align it to the ArcFace template at res)
    )
    on_no_face: str = (
        "skip"  # with align=mtcnn, an image without a face: "skip" (leave it out), "centre" (centre crop) or "fail"
    )
    # protocol over data.train (e.g. "shoes"). Pair models train on its pairs; embedding models hold out its
    # connected groups whole and validate (val AUC, threshold) on its pairs among them
    pairs_format: str = ""
    pairs_file: str = ""  # pairs file for formats that need one
    exclude: str = (
        ""  # CSV with a 'path' column (e.g. an audit's fixes.csv, its action=exclude rows): images left out of training
    )
    max_pixels: int = (
        40_000_000  # images with more pixels than this are skipped (decompression-bomb guard; about 120 MB decoded)
    )
    relabel: str = ""  # CSV with 'path' and 'suggested_label' columns (fixes.csv: its action=relabel rows): labels replaced before splitting


@dataclass
class ModelConfig:
    name: str = "resnet18_small"  # a name from core.models.list_models()
    embedding_dim: int = 128  # embedding size (features before the class head)
    dropout: float = 0.0  # dropout probability before the embedding layer
    width: float = 1.0  # channel-width multiplier
    kwargs: dict = field(default_factory=dict)  # extra family-specific arguments (e.g. {n: 8, kernel_size: 3})
    init_from: str = ""  # run folder whose best weights initialise this model (two-stage recipes)
    freeze_backbone: bool = False  # with init_from: train only the embedding layer and head


@dataclass
class LossConfig:
    name: str = "cross_entropy"  # a name from core.losses.list_losses()
    kwargs: dict = field(default_factory=dict)  # loss arguments (label_smoothing, margin, scale, ...)
    center_weight: float = 0.0  # weight of the add-on center-loss term (0 = off)
    pk_p: int = 16  # PK sampler: identities per batch (metric losses)
    pk_k: int = 4  # PK sampler: images per identity
    # PK sampler: a regular expression on class names; classes with the same match (its first group, if it
    # has one) are drawn into a batch together, for same-group hard negatives ("" = off). Shoes: ^(.+)_\d+$
    pk_group: str = ""


@dataclass
class TrainConfig:
    epochs: int = 30  # passes over the training set
    batch_size: int = 128  # images (or pairs) per step, summed over all processes under torchrun (global batch)
    lr: float = 0.1  # peak learning rate
    optimizer: str = "sgd"  # "sgd" or "adamw"
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # decoupled for AdamW; never applied to norms and biases
    schedule: str = "onecycle"  # "onecycle", "cosine", "cosine_restarts", "step", "plateau" or "constant"
    warmup_epochs: float = 1.0  # linear warm-up length for cosine schedules, epochs
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.2  # step / plateau schedule: decay factor
    restart_epochs: int = 10  # cosine_restarts: epochs in the first cycle
    early_stop: int = 0  # stop after this many epochs without a better validation metric (0 = never)
    select_metric: str = "auto"  # metric choosing best.safetensors: "auto", "val_acc", "val_auc" or "val_loss"
    threshold_rule: str = "eer"  # recommended verification threshold: "eer", "best_accuracy" or "far=1e-3"
    flip: bool = True  # random horizontal flip augmentation
    crop_padding: int = 4  # random-crop augmentation: padding in pixels (0 = off)
    crop_scale: float = 1.0  # random-resized crop: smallest area fraction kept (1.0 = off; replaces crop_padding)
    color_jitter: float = 0.0  # brightness and contrast each scaled by a random factor in [1 - j, 1 + j] (0 = off)
    random_erasing: float = 0.0  # probability that one random box of an image is filled by the mean colour (0 = off)
    # comma-separated run folders (MatchLab or imported models) whose pairwise similarities the model learns too
    distill_from: str = ""
    distill_weight: float = 100.0  # weight of the distillation term (mean squared cosine difference) in the loss
    device: str = "auto"  # "auto", "cpu" or "cuda"
    amp: bool = True  # bf16 autocast on CUDA (CPU always runs fp32)
    channels_last: bool = True  # NHWC memory format, on CUDA and CPU (1.4x train img/s on 2 cores: bench cpu_train)
    compile: bool = False  # torch.compile the model (pays off on long GPU runs)
    seed: int = 0  # seeds weights, split, sampling and augmentation
    sanity_overfit: int = 0  # memorise this many training images and report whether ~100% was reached (0 = off)
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over the global batch, as one process computes them


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_comment(source: list[str], name: str) -> str:
    """A field's comment in this file: at the end of its line, on the next line where the formatter wrapped
    a long default in parentheses, or on the comment lines just above it."""
    for i, line in enumerate(source):
        if not line.strip().startswith(f"{name}:"):
            continue
        if "#" in line:
            return line.split("#", 1)[1].strip()
        if line.rstrip().endswith("(") and "#" in source[i + 1]:
            return source[i + 1].split("#", 1)[1].strip()
        above: list[str] = []
        for prev in reversed(source[:i]):
            if not prev.strip().startswith("#"):
                break
            above.insert(0, prev.strip().lstrip("#").strip())
        return " ".join(above)
    return ""


def config_help() -> str:
    """Every key with its default and comment, read from this file so `--help` never drifts."""
    lines = []
    source = Path(__file__).read_text().splitlines()
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        # every Config section is a default_factory field (a dataclass), never a plain default
        factory = cast(Callable[[], Any], section.default_factory)
        for f in dataclasses.fields(factory()):
            comment = _field_comment(source, f.name)
            default = getattr(factory(), f.name)
            lines.append(f"  {section.name}.{f.name}={default!r:<18} {comment}")
    return "\n".join(lines)


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Check `value` against a field annotation, converting what a command line or YAML naturally gives."""
    if annotation == "int | list":  # data.res: a square side, or [height, width]
        if isinstance(value, (list, tuple)):
            return [_coerce(v, "int", where) for v in value]
        return _coerce(value, "int", where)
    kind = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}[annotation]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind in (int, float) and not isinstance(value, bool):
        # YAML 1.1 reads "1e-3" as a string; accept any text Python parses as the field's number type.
        try:
            number = kind(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, (int, float)) and (kind is float or float(number).is_integer()):
            return kind(number)
    elif kind is str:
        return "" if value is None else str(value)
    elif kind is dict and isinstance(value, dict):
        return value
    raise MatchLabError(f"{where}: expected {annotation}, got {value!r}")


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules give 1e-3 -> float, true -> bool, {a: 1} -> dict, as in a config file.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise MatchLabError(f"{where}: unknown section '{section}'; valid sections: {', '.join(sections)}")
    sub = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if key not in fields:
        raise MatchLabError(
            f"{where}: unknown key '{section}.{key}'; valid keys: " + ", ".join(f"{section}.{k}" for k in fields)
        )
    setattr(sub, key, _coerce(value, str(fields[key].type), f"{where}: {section}.{key}"))


_CHOICES = {
    ("data", "split"): ("identity", "image"),
    ("data", "on_bad_image"): ("skip", "fail"),
    ("data", "align"): ("none", "mtcnn"),
    ("data", "on_no_face"): ("skip", "centre", "fail"),
    ("train", "optimizer"): ("sgd", "adamw"),
    ("train", "schedule"): ("onecycle", "cosine", "cosine_restarts", "step", "plateau", "constant"),
    ("train", "select_metric"): ("auto", "val_acc", "val_auc", "val_loss"),
    ("train", "device"): ("auto", "cpu", "cuda"),
}


def validate(cfg: Config) -> Config:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise MatchLabError(f"{section}.{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    rule = cfg.train.threshold_rule
    if rule not in ("eer", "best_accuracy") and not rule.startswith("far="):
        raise MatchLabError(f"train.threshold_rule={rule!r} is not valid; use eer, best_accuracy or far=<rate>")
    if not 0.0 < cfg.data.crop <= 1.0:
        raise MatchLabError(f"data.crop={cfg.data.crop} must be in (0, 1]")
    from core.data.images import as_hw

    if min(as_hw(cfg.data.res, "data.res")) < 16:
        raise MatchLabError(f"data.res={cfg.data.res} is too small; use at least 16 pixels")
    if isinstance(cfg.data.res, list) and cfg.data.res[0] == cfg.data.res[1]:
        cfg.data.res = cfg.data.res[0]  # [64, 64] is the square 64: one cache, one name
    for key in ("epochs", "batch_size"):
        if getattr(cfg.train, key) < 1:
            raise MatchLabError(f"train.{key} must be at least 1")
    _validate_numbers(cfg)
    _validate_kwargs(cfg)
    return cfg


# Largest model input side: a 4096 x 4096 RGB image is 48 MiB as uint8 and 192 MiB as a float32 input,
# before a single activation; nothing MatchLab trains needs more.
MAX_RES = 4096


def _validate_numbers(cfg: Config) -> None:
    """Every float finite, and the ranges a recipe can get wrong, named by their key (a NaN learning rate
    used to surface only as 'scores contain NaN values' after an epoch)."""
    for section in dataclasses.fields(Config):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if f.type == "float" and not math.isfinite(value):
                raise MatchLabError(f"{section.name}.{f.name}={value} is not a finite number")
    t, d = cfg.train, cfg.data
    checks = [
        (t.lr >= 0, f"train.lr={t.lr} must be >= 0"),
        (t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0"),
        (0 <= t.momentum < 1, f"train.momentum={t.momentum} must be in [0, 1)"),
        (t.crop_padding >= 0, f"train.crop_padding={t.crop_padding} must be >= 0 pixels (0 = off)"),
        (0 < t.crop_scale <= 1, f"train.crop_scale={t.crop_scale} must be in (0, 1] (1 = off)"),
        (0 <= t.color_jitter < 1, f"train.color_jitter={t.color_jitter} must be in [0, 1) (0 = off)"),
        (0 <= t.random_erasing <= 1, f"train.random_erasing={t.random_erasing} must be in [0, 1] (0 = off)"),
        (t.distill_weight >= 0, f"train.distill_weight={t.distill_weight} must be >= 0"),
        (t.num_threads >= 0, f"train.num_threads={t.num_threads} must be >= 1 (or 0: torch's default)"),
        (t.warmup_epochs >= 0, f"train.warmup_epochs={t.warmup_epochs} must be >= 0"),
        (t.gamma > 0, f"train.gamma={t.gamma} must be > 0"),
        (t.step_size >= 1 and t.restart_epochs >= 1, "train.step_size and train.restart_epochs must be at least 1"),
        (t.early_stop >= 0 and t.sanity_overfit >= 0, "train.early_stop and train.sanity_overfit must be >= 0"),
        (
            0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
            f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} must each be in [0, 1) "
            f"and sum to less than 1",
        ),
        (d.max_pixels >= 1, f"data.max_pixels={d.max_pixels} must be at least 1"),
        (d.split_seed >= -1, f"data.split_seed={d.split_seed} must be >= 0 (or -1: train.seed)"),
        (
            cfg.model.embedding_dim >= 1 and cfg.model.width > 0 and 0 <= cfg.model.dropout < 1,
            "model.embedding_dim must be >= 1, model.width > 0 and model.dropout in [0, 1)",
        ),
        (
            cfg.loss.center_weight >= 0 and cfg.loss.pk_p >= 2 and cfg.loss.pk_k >= 2,
            "loss.center_weight must be >= 0, loss.pk_p and loss.pk_k at least 2",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise MatchLabError(message)
    try:
        re.compile(cfg.loss.pk_group)
    except re.error as e:
        raise MatchLabError(
            f"loss.pk_group={cfg.loss.pk_group!r} is not a regular expression ({e}): fix or remove it"
        ) from None
    if t.lr == 0:
        print("warning: train.lr=0: the weights will not change", file=sys.stderr)
    rule = t.threshold_rule
    if rule.startswith("far="):
        try:
            far = float(rule.split("=", 1)[1])
        except ValueError:
            far = math.nan
        if not 0 < far < 1:
            raise MatchLabError(
                f"train.threshold_rule={rule!r}: the false-accept rate must be a number in (0, 1), e.g. far=1e-3"
            )
    from core.data.images import as_hw

    h, w = as_hw(d.res, "data.res")
    if max(h, w) > MAX_RES:
        gib = h * w * 3 * 4 * t.batch_size / 2**30
        raise MatchLabError(
            f"data.res={d.res} is too large to fit: one batch of {t.batch_size} float32 inputs alone "
            f"would need {gib:,.1f} GiB; use at most {MAX_RES} pixels a side"
        )


def _validate_kwargs(cfg: Config) -> None:
    """model.kwargs and loss.kwargs: known options, and numbers where the option's default is a number."""
    from core.losses import LOSSES
    from core.models.registry import MODELS

    for section, registry, name, kwargs in (
        ("model", MODELS, cfg.model.name, cfg.model.kwargs),
        ("loss", LOSSES, cfg.loss.name, cfg.loss.kwargs),
    ):
        params = inspect.signature(registry.get(name).factory).parameters
        for key, value in kwargs.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and (isinstance(default, float) or float(value).is_integer())
                )
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                ok = True
            if not ok:
                raise MatchLabError(
                    f"{section}.kwargs.{key}={value!r} is not valid for {section} {name!r}: expected "
                    f"a {type(default).__name__}, like its default {default!r}"
                )


def config_from_dict(raw: dict, where: str = "config") -> Config:
    cfg = Config()
    for section, values in (raw or {}).items():
        if not isinstance(values, dict):
            raise MatchLabError(f"{where}: section '{section}' must be a mapping of keys to values")
        for key, value in values.items():
            _apply(cfg, section, key, value, where)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML recipe (or the defaults when path is None) and apply `section.key=value` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MatchLabError(f"config file {path} not found; recipes live in configs/")
        try:
            raw = yaml.safe_load(path.read_text("utf-8")) or {}
        except UnicodeDecodeError:
            raise MatchLabError(f"{path}: not UTF-8 text; save the recipe as UTF-8 YAML") from None
        except OSError as e:
            raise MatchLabError(f"{path}: cannot be read ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise MatchLabError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise MatchLabError(
                f"{path}: the top level must be a mapping of sections (data:, model:, loss:, "
                f"train:), not a {type(raw).__name__}"
            )
    cfg = config_from_dict(raw, str(path) if path else "config")
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise MatchLabError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        if section in ("model", "loss") and key.startswith("kwargs."):
            # model.kwargs.n=8 sets one entry of a kwargs dict without retyping the whole mapping.
            getattr(cfg, section).kwargs[key.split(".", 1)[1]] = _parse_scalar(value)
            continue
        _apply(cfg, section, key, _parse_scalar(value), f"override {item!r}")
    return validate(cfg)
