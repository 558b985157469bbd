"""Name -> factory registries whose mistakes are one-line `MatchLabError`s.

`Registry` backs both the model registry (`register_model`, `create_model`, `list_models`, `model_kind`,
exported from `core.models`) and the loss registry in `core.losses`. Configs name models and losses by
string, so an unknown name or option must come back listing the valid ones instead of a TypeError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from core.errors import MatchLabError

F = TypeVar("F", bound=Callable[..., Any])

MODEL_KINDS = ("image", "pair")


@dataclass(frozen=True)
class Entry:
    """One registered factory and its tags (e.g. {"kind": "image"})."""

    name: str
    factory: Callable[..., Any]
    tags: dict[str, Any] = field(default_factory=dict)

    def options(self) -> list[str]:
        """Keyword arguments the factory accepts, in signature order."""
        params = inspect.signature(self.factory).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class Registry:
    """A named collection of factories; `what` ("model", "loss") words the error messages."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any], **tags: Any) -> None:
        if name in self._entries:
            # Two modules claiming one name would make configs mean different things by import order.
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = Entry(name, factory, tags)

    def names(self, **tags: Any) -> list[str]:
        """Sorted names whose tags match every given tag (None matches anything)."""
        return sorted(
            n for n, e in self._entries.items() if all(v is None or e.tags.get(k) == v for k, v in tags.items())
        )

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise MatchLabError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def check_options(
        self, name: str, kwargs: Iterable[str], fixed: Iterable[str] = (), extra: Iterable[str] = ()
    ) -> None:
        """Raise if a key in `kwargs` is not an option of `name`.

        fixed: options the caller passes itself (not user-settable); extra: options handled outside
        the factory (e.g. a loss add-on).
        """
        fixed = set(fixed)
        valid = [o for o in self.get(name).options() if o not in fixed] + list(extra)
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise MatchLabError(
                f"unknown option {unknown[0]!r} for {self.what} {name!r}; valid: {', '.join(sorted(valid))}"
            )

    def build(self, name: str, /, **kwargs: Any) -> Any:
        self.check_options(name, kwargs)
        return self.get(name).factory(**kwargs)


MODELS = Registry("model")


def register_model(name: str, kind: str = "image") -> Callable[[F], F]:
    """Decorator registering a model class or factory under `name`; kind is "image" or "pair"."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")

    def decorate(factory: F) -> F:
        MODELS.register(name, factory, kind=kind)
        return factory

    return decorate


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` with keyword options; unknown names and options raise MatchLabError."""
    return MODELS.build(name, **kwargs)


def list_models(kind: str | None = None) -> list[str]:
    """Registered model names, sorted; `kind` ("image" or "pair") filters."""
    if kind is not None and kind not in MODEL_KINDS:
        raise MatchLabError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
    return MODELS.names(kind=kind)


def model_kind(name: str) -> str:
    """ "image" (one image -> embedding/logits) or "pair" (two images -> one same-pair logit)."""
    return MODELS.get(name).tags["kind"]
