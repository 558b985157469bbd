"""MatchLab dashboard entry point: `streamlit run dashboard/app.py`.

The router of a multipage app (st.navigation + st.Page, one file per page in app_pages/): it draws the
shared sidebar (run and evaluation pickers, dashboard.ui.sidebar_ui) on every rerun, then runs the chosen
page. The dashboard only reads what `core` wrote; pages offer a button where an artifact is missing.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root that holds core/.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import streamlit as st  # noqa: E402

from core.errors import MatchLabError  # noqa: E402
from dashboard import ui  # noqa: E402

PAGES_DIR = Path(__file__).parent / "app_pages"
PAGES = [
    st.Page(PAGES_DIR / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page(PAGES_DIR / "embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page(PAGES_DIR / "confusion.py", title="Confusion", icon=":material/grid_on:"),
    st.Page(PAGES_DIR / "verification.py", title="Verification", icon=":material/verified_user:"),
    st.Page(PAGES_DIR / "ablation.py", title="Ablation", icon=":material/crop:"),
    st.Page(PAGES_DIR / "live.py", title="Live match", icon=":material/compare:"),
    st.Page(PAGES_DIR / "compare.py", title="Compare", icon=":material/difference:"),
    st.Page(PAGES_DIR / "audit.py", title="Data audit", icon=":material/fact_check:"),
]


@st.cache_resource(show_spinner=False)
def _prewarm() -> threading.Thread:
    """Import core.metrics (torch, seconds) in the background once per server process, so the first
    visit to Verification, Confusion, Live match or Compare does not wait for it while Overview is read."""
    thread = threading.Thread(target=importlib.import_module, args=("core.metrics",), daemon=True)
    thread.start()
    return thread


st.set_page_config(page_title="MatchLab", page_icon=":material/face:", layout="wide")
page = st.navigation(PAGES)
ui.narrow_screen_ui()
try:
    # A corrupt artifact or config is an expected failure: one line naming the file, not a traceback box.
    try:
        ui.sidebar_ui()
        page.run()
    except MatchLabError as e:
        ui.failure_ui(e)
finally:
    ui.write_url_state()  # also after st.stop(): the address bar always names what is shown
    _prewarm()  # after the first page has rendered, so the import does not compete with it
