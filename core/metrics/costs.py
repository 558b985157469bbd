"""Detection cost: the threshold that minimises expected cost given a prior and two error costs.

Entry point: `min_cost_threshold(points, prior, cost_fa, cost_fr) -> dict`. DCF(tau) = C_fr x P_gen x
FRR(tau) + C_fa x (1 - P_gen) x FAR(tau), minimised over every operating point of the ROC (accept
nothing and accept all included), with the normalised cost DCF / min(C_fr P_gen, C_fa (1 - P_gen)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.errors import MatchLabError
from core.metrics.verification import RocPoints

DEFAULT_PRIOR = 0.5
DEFAULT_COST = 1.0


def check_costs(prior: float, cost_fa: float, cost_fr: float) -> tuple[float, float, float]:
    """Validate the cost model: a prior strictly between 0 and 1, costs strictly positive."""
    try:
        prior, cost_fa, cost_fr = float(prior), float(cost_fa), float(cost_fr)
    except (TypeError, ValueError):
        raise MatchLabError(
            f"--prior/--cost-fa/--cost-fr must be numbers: got {prior!r}, {cost_fa!r}, {cost_fr!r}"
        ) from None
    if not 0.0 < prior < 1.0:
        raise MatchLabError(
            f"--prior {prior}: the probability of a genuine attempt must lie strictly between 0 and 1, e.g. 0.01"
        )
    for name, c in (("--cost-fa", cost_fa), ("--cost-fr", cost_fr)):
        if not (c > 0.0 and math.isfinite(c)):
            raise MatchLabError(f"{name} {c}: an error cost must be a positive number, e.g. 1 or 10")
    return prior, cost_fa, cost_fr


def dcf(far: Any, frr: Any, prior: float, cost_fa: float, cost_fr: float) -> np.ndarray:
    """Expected cost per attempt at the given rates (arrays broadcast)."""
    return cost_fr * prior * np.asarray(frr, np.float64) + cost_fa * (1.0 - prior) * np.asarray(far, np.float64)


def default_cost(prior: float, cost_fa: float, cost_fr: float) -> float:
    """The cost of the better of the two trivial systems (accept all / reject all): the DCF normaliser."""
    return min(cost_fr * prior, cost_fa * (1.0 - prior))


def min_cost_threshold(
    points: RocPoints, prior: float = DEFAULT_PRIOR, cost_fa: float = DEFAULT_COST, cost_fr: float = DEFAULT_COST
) -> dict[str, Any]:
    """The operating point of least DCF (ties: the highest threshold). threshold +inf = accept nothing."""
    prior, cost_fa, cost_fr = check_costs(prior, cost_fa, cost_fr)
    cost = dcf(points.far, points.frr, prior, cost_fa, cost_fr)
    i = int(np.argmin(cost))
    norm = default_cost(prior, cost_fa, cost_fr)
    return {
        "threshold": float(points.thresholds[i]),
        "dcf": float(cost[i]),
        "dcf_norm": float(cost[i] / norm),
        "far": float(points.far[i]),
        "frr": float(points.frr[i]),
        "prior": prior,
        "cost_fa": cost_fa,
        "cost_fr": cost_fr,
    }
