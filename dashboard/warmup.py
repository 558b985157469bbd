"""Open headless dashboard sessions over Streamlit's websocket: warm a fresh server, or load it.

Entry points: `python -m dashboard.warmup --url http://localhost:8501` (scripts/demo.sh runs it right after
the server starts, so the first person to open a page does not wait for pandas/plotly imports, artifact
reads and figure building: they are done once here and shared through the st.cache_* caches), and
`open_sessions(url, page, n)`, which bench suite `dashboard_load` uses to time n concurrent viewers.
A session is one script run of one page, timed from connect to the server's "script finished" message;
only localhost URLs are accepted, so this cannot be pointed at someone else's server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

PAGES = ("", "embeddings", "confusion", "verification", "ablation", "live", "compare")  # "" is the Overview
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass
class SessionResult:
    page: str
    seconds: float
    ok: bool
    detail: str = ""  # why it failed (an exception box, a timeout, a compile error)
    heading: str = ""  # the page's first heading (st.title), to check the right page was drawn


def _ws_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.hostname not in LOCAL_HOSTS:
        raise ValueError(f"{url}: only a dashboard on this machine (localhost) may be opened")
    return f"ws://{parsed.netloc}/_stcore/stream"


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Block until the server answers /_stcore/health with ok (it starts in a few seconds)."""
    _ws_url(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout_s:.0f} s")
        time.sleep(0.3)


async def open_session(url: str, page: str = "", query: str = "", timeout_s: float = 300.0) -> SessionResult:
    """One viewer: connect, ask for `page` (its url path) with `query`, wait until its script finished."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    started = time.perf_counter()
    msg = BackMsg()
    msg.rerun_script.query_string = query
    msg.rerun_script.page_name = page
    try:
        async with websockets.connect(
            _ws_url(url), subprotocols=["streamlit"], max_size=None, open_timeout=timeout_s
        ) as ws:
            await ws.send(msg.SerializeToString())
            deadline = started + timeout_s
            error, heading = "", ""
            while True:
                raw = await asyncio.wait_for(ws.recv(), timeout=max(deadline - time.perf_counter(), 0.1))
                fwd = ForwardMsg()
                fwd.ParseFromString(raw)
                kind = fwd.WhichOneof("type")
                element = (
                    fwd.delta.new_element if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element" else None
                )
                if element is not None and element.WhichOneof("type") == "exception":
                    error = "the page showed an exception box"
                if element is not None and element.WhichOneof("type") == "heading" and not heading:
                    heading = element.heading.body
                if kind == "script_finished":
                    status = fwd.script_finished
                    if status == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                        continue  # the script reran itself (st.rerun): wait for that run
                    ok = status == ForwardMsg.FINISHED_SUCCESSFULLY and not error
                    return SessionResult(
                        page,
                        time.perf_counter() - started,
                        ok,
                        error or ("" if ok else f"script finished with status {status}"),
                        heading,
                    )
    except (TimeoutError, OSError) as e:
        return SessionResult(page, time.perf_counter() - started, False, f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001  (websockets' ConnectionClosed and kin: report, do not crash a bench)
        return SessionResult(page, time.perf_counter() - started, False, f"{type(e).__name__}: {e}")


async def _gather(url: str, page: str, n: int, query: str, timeout_s: float) -> list[SessionResult]:
    return list(await asyncio.gather(*(open_session(url, page, query, timeout_s) for _ in range(n))))


def open_sessions(
    url: str, page: str = "", n: int = 1, query: str = "", timeout_s: float = 300.0
) -> list[SessionResult]:
    """n viewers opening `page` at the same moment; one SessionResult each."""
    return asyncio.run(_gather(url, page, n, query, timeout_s))


def warm(url: str, pages: tuple[str, ...] = PAGES) -> list[SessionResult]:
    """Open every page once, one after the other (imports, artifact reads and shared figures get cached)."""
    wait_healthy(url)
    return [open_sessions(url, page)[0] for page in pages]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://localhost:8501", help="the dashboard on this machine")
    args = p.parse_args(argv)
    try:
        results = warm(args.url)
    except (ValueError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        "dashboard warmed: "
        + ", ".join(f"{r.page or 'overview'} {r.seconds:.1f} s" + ("" if r.ok else " (failed)") for r in results)
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
