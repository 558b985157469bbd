"""Progress reporting shared by long commands and the dashboard's progress bars (torch-free).

`Progress` is the callback type every long computation takes: `progress(fraction_done, message)`.
`span(progress, start, stop)` maps a step's own 0..1 onto its share of the whole, so nested steps report
one monotone bar; `silent` is the callback that reports nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def silent(fraction: float, message: str) -> None:
    """A Progress that reports nothing."""


def span(progress: Progress | None, start: float, stop: float) -> Progress:
    """A Progress for one step that fills [start, stop] of `progress` (silent when progress is None)."""
    if progress is None:
        return silent
    return lambda fraction, message: progress(start + (stop - start) * fraction, message)
