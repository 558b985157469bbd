"""`python -m bench.table FILE.json ...`: the Markdown table docs/performance.md shows for bench results.

Entry point: `main(argv)`. One row per ratio or headline figure of each suite file (the figures whose unit
is "x" or "fraction", plus throughputs), each with the command that measured it, the hardware and the load
average written beside it, so the page is regenerated from `bench/results/`, never retyped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

UNITS = ("x", "fraction", "img/s", "probes/s", "pairs/s", "ms", "s")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def rows(doc: dict) -> list[str]:
    load = doc.get("load_average") or {}
    start = load.get("start_1_5_15m") or [doc.get("hardware", {}).get("load_average_1m_at_start")]
    where = f"load {start[0]:.1f}" if start and start[0] is not None else "load ?"
    out = []
    for name, fig in doc.get("figures", {}).items():
        if fig.get("unit") in UNITS:
            note = f" ({fig['note']})" if fig.get("note") else ""
            out.append(f"| {doc['suite']} | {name}{note} | {_value(fig['value'])} {fig['unit']} | {where} |")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m bench.table bench/results/<suite>-....json ...", file=sys.stderr)
        return 2
    docs = [json.loads(p.read_text()) for p in paths]
    for doc in docs:
        print(
            f"- `{doc['command']}` ({doc['suite']}, {doc['created']}, {doc['device']}, torch "
            f"{doc['versions']['torch']}, numpy {doc['versions']['numpy']})"
        )
    print("\n| suite | figure | value | load (1 min avg, 2 cores) |\n| --- | --- | --- | --- |")
    print("\n".join(row for doc in docs for row in rows(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
