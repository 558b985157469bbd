"""The Verification page's intervals, cost and groups (issue 13) on the bundled demo run, with AppTest: the
interval at the slider is the core bootstrap's at that τ, the "τ at minimum cost" button lands on the
brute-force minimum, the TAR@FAR table carries intervals, and the export records rule, interval and cost."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.dashboard.conftest import demo_key
from tests.dashboard.test_pages import assert_clean, metric, open_page


def _pct(ci) -> str:
    return f"[{ci[0]:.2%}, {ci[1]:.2%}]"


def test_slider_interval_min_cost_button_and_table(app_env: Path, demo_run: Path):
    from core.metrics import uncertainty as unc
    from dashboard.defend import pair_identities

    files = demo_run / "eval" / demo_key(demo_run)
    ver = json.loads((files / "summary.json").read_text())["verification"]
    assert ver.get("intervals"), "the bundled demo evaluation must carry intervals (python -m core evaluate)"
    pairs = pd.read_parquet(files / "pairs.parquet")
    at = open_page("verification")
    tau = round(float(np.quantile(pairs["score"], 0.9)), 3)
    at.slider[0].set_value(tau).run()
    assert_clean(at)
    # the page's interval is core's subject bootstrap at that τ, with the evaluation's settings
    iv = ver["intervals"]
    ids_a, ids_b = pair_identities(pairs, files / "samples.parquet")
    prep = unc.prepare(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(), ids_a, ids_b)
    reps = unc.replicates(prep, resample=iv["default"], n_boot=iv["n_boot"], seed=iv["seed"], thresholds=[tau])
    assert metric(at, "FAR 95% interval") == _pct(unc.interval(reps["far"][:, 0], iv["level"]))
    assert metric(at, "FRR 95% interval") == _pct(unc.interval(reps["frr"][:, 0], iv["level"]))
    assert metric(at, "smallest supportable FAR") == f"{unc.rule_of_three(ver['n_impostor']):.2e}"

    next(b for b in at.button if b.label == "τ at minimum cost").click().run()
    s, y = pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy()
    cost = {t: 0.5 * np.mean(s[y == 1] < t) + 0.5 * np.mean(s[y == 0] >= t) for t in np.unique(s)}
    assert cost[min(cost, key=lambda t: (cost[t], -t))] == pytest.approx(
        0.5 * np.mean(s[y == 1] < at.slider[0].value) + 0.5 * np.mean(s[y == 0] >= at.slider[0].value)
    )

    table = next(d.value for d in at.dataframe if "interval" in d.value.columns)
    reachable = table["TAR"].notna()
    assert (table.loc[reachable, "interval"] != "").all()
    assert at.get("plotly_chart")  # bands, reliability diagram, groups drew without error
