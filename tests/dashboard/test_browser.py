"""The dashboard in a real browser: `streamlit run dashboard/app.py` on a free port, driven by Playwright
through Debian's headless Chromium (/usr/bin/chromium; Playwright's own browser download is not used).

Every page must show no Streamlit exception box and its key element (a drawn Plotly chart, the threshold
slider, the uploaders); the live page gets two uploaded faces and must show a score. Screenshots of every
page go to test-output/screenshots/ (and to docs/screenshots/ with UPDATE_DOCS_SCREENSHOTS=1), load times
to test-output/browser_page_times.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.dashboard.conftest import ROOT, demo_key

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = ROOT / "test-output" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
# url path -> (heading, CSS selector of the page's key element)
PAGES = {
    "": ("Overview", '[data-testid="stPlotlyChart"] .main-svg'),
    "embeddings": ("Embeddings", '[data-testid="stPlotlyChart"] .main-svg'),
    "confusion": ("Confusion", '[data-testid="stPlotlyChart"] .main-svg'),
    "verification": ("Verification", '[data-testid="stSlider"]'),
    "ablation": ("Centre-crop ablation", '[data-testid="stPlotlyChart"] .main-svg'),
    "live": ("Live match", '[data-testid="stFileUploader"]'),
    "compare": ("Compare runs", '[data-testid="stPlotlyChart"] .main-svg'),
    "audit": ("Data audit", '[data-testid="stDataFrame"]'),
}

NAV = {
    "overview": "Overview",
    "embeddings": "Embeddings",
    "confusion": "Confusion",
    "verification": "Verification",
    "ablation": "Ablation",
    "live": "Live match",
    "compare": "Compare",
    "audit": "Data audit",
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium package (apt-get install chromium)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _streamlit(script: str, log_path: Path, env: dict[str, str]):
    """`streamlit run script` on a free localhost port; yields its URL once /_stcore/health answers ok."""
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port)]
            + ["--server.headless", "true", "--server.fileWatcherType", "none"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    with _streamlit("dashboard/app.py", log_path, {**os.environ, "MATCHLAB_CHECKPOINTS": str(checkpoints)}) as url:
        from dashboard.warmup import warm

        warm(url)  # what scripts/demo.sh does before anyone opens a page: the timings are a user's
        yield url


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield tab
        browser.close()


def settle(tab, timeout_s: float = 60.0) -> float:
    """Wait until the script run has finished and every element has replaced its loading skeleton;
    returns the perf_counter time at which the page first stood still (then held for 0.5 s)."""
    deadline = time.time() + timeout_s
    quiet_since = None
    while time.time() < deadline:
        busy = tab.locator('[data-testid="stStatusWidget"]').count() + tab.locator('[data-testid="stSkeleton"]').count()
        now = time.perf_counter()
        quiet_since = (quiet_since or now) if busy == 0 else None
        if quiet_since is not None and now - quiet_since >= 0.5:
            return quiet_since
        time.sleep(0.05)
    raise AssertionError("the page did not finish rendering")


def wait_scored(tab, name_b: str) -> None:
    """Wait until Live match shows the score of the uploaded image B (its input is captioned "B: <name>"):
    a score card alone may still be the built-in example pair's, from before the upload's rerun."""
    tab.get_by_text(f"B: {name_b}", exact=True).wait_for(timeout=180_000)
    settle(tab)


def screenshot(tab, name: str, width: int = 1400) -> Path:
    """The whole page: the viewport is grown to the main area's height (it scrolls inside its own box)."""
    height = tab.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    tab.set_viewport_size({"width": width, "height": min(int(height) + 20, 8000)})
    time.sleep(0.8)  # charts re-layout to the new size
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.screenshot(path=str(path))
    tab.set_viewport_size({"width": width, "height": 1000})
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_SHOTS / path.name)
    return path


def assert_no_exception(tab, where: str) -> None:
    boxes = tab.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()[:2000]}"


def _first_paint(tab, url: str, heading: str) -> float:
    """Seconds from asking for `url` to its page's title being shown."""
    started = time.perf_counter()
    tab.goto(url)
    tab.get_by_role("heading", name=heading).first.wait_for(timeout=120_000)
    return time.perf_counter() - started


def test_every_page_renders_in_chromium(server: str, page, tmp_path: Path):
    """Open the app by URL, then visit every page through the sidebar as a person would."""
    times, painted = {}, {}
    for i, (path, (heading, key)) in enumerate(PAGES.items()):
        name = path or "overview"
        started = time.perf_counter()
        if i == 0:
            page.goto(server)
        else:
            # by the label's own span: a link's text also holds its icon's name ("compare" for Live match)
            page.locator(f'[data-testid="stSidebarNavLink"]:has(span[label="{NAV[name]}"])').first.click()
        page.get_by_role("heading", name=heading).first.wait_for(timeout=120_000)
        painted[name] = round(time.perf_counter() - started, 2)  # first paint: the page's title is shown
        # conditions, not times: on a loaded 2-core machine a chart can take over a minute to draw
        page.locator(key).first.wait_for(state="visible", timeout=180_000)
        times[name] = round(settle(page) - started, 2)
        assert_no_exception(page, name)
        screenshot(page, name)
    # Loading a page by its URL works too (a bookmark), on the page with the most widgets.
    page.goto(f"{server}/verification")
    page.locator(PAGES["verification"][1]).first.wait_for(state="visible", timeout=60_000)
    settle(page)
    assert_no_exception(page, "verification by URL")
    # The baseline, in the same browser and run: Streamlit's own first paint (a one-title app, its assets not
    # yet cached by the browser as the Overview's were not on the first visit above).
    with _streamlit("tests/dashboard/bare_app.py", tmp_path / "bare.log", dict(os.environ)) as bare_url:
        _first_paint(page, bare_url, "Bare Streamlit")  # the server's first script run
        floor = []
        for _ in range(2):  # a new browser context has an empty cache, as the Overview's first visit had
            context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
            floor.append(_first_paint(context.new_page(), bare_url, "Bare Streamlit"))
            context.close()
    overview = painted.pop("overview")
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "browser_page_times.json").write_text(
        json.dumps(
            {
                "server": "warmed by dashboard.warmup after start, as scripts/demo.sh does",
                "load average (1 min) at the end": round(os.getloadavg()[0], 2),
                "first page: first paint, title shown (s)": overview,
                "baseline: a one-title Streamlit app's first paint, best of 2 new tabs (s)": round(min(floor), 2),
                "first page's first paint / baseline": round(overview / min(floor), 2),
                "first page (full load, s)": times.pop("overview"),
                "sidebar navigation to each page: first paint (s)": painted,
                "sidebar navigation to each page (s)": times,
            },
            indent=2,
        )
    )


def test_lasso_and_cell_clicks_show_their_images(server: str, page, demo_run: Path):
    """The Plotly selection round trip: customdata -> sample ids / confusion cell -> images."""
    page.goto(f"{server}/embeddings")
    page.locator(PAGES["embeddings"][1]).first.wait_for(state="visible", timeout=60_000)
    settle(page)
    box = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
    cx, cy, w, h = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"], box["height"]
    corners = [(-0.3, -0.3), (0.3, -0.3), (0.3, 0.3), (-0.3, 0.3), (-0.3, -0.29)]  # a lasso round the middle
    page.mouse.move(cx + corners[0][0] * w, cy + corners[0][1] * h)
    page.mouse.down()
    for dx, dy in corners[1:]:
        page.mouse.move(cx + dx * w, cy + dy * h, steps=8)
    page.mouse.up()
    heading = page.get_by_role("heading", name=re.compile(r"Selected images \(\d+\)"))
    heading.wait_for(timeout=30_000)
    settle(page)
    n = int(re.search(r"\((\d+)\)", heading.inner_text()).group(1))
    assert n > 0
    # The selected images (plus the neighbours section) arrive over the websocket after the heading: wait
    # for the count to be reached rather than reading it once (a loaded machine renders them later). A gallery
    # is one stImage element holding one stImageContainer per picture.
    want = min(n, 60)
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=\"stImageContainer\"]').length >= {want}", timeout=60_000
    )
    assert_no_exception(page, "embeddings after a lasso")

    page.goto(f"{server}/confusion")
    page.locator(PAGES["confusion"][1]).first.wait_for(state="visible", timeout=60_000)
    settle(page)
    page.get_by_text("all images", exact=True).first.click()  # the held-out identities come first; all has errors
    settle(page)
    cell_text = page.locator("p").filter(has_text="classified images").first
    assert "misclassified" in cell_text.inner_text()  # opens on the most confused cell
    n_classes = min(60, pd.read_parquet(demo_run / "eval" / demo_key(demo_run) / "samples.parquet")["label"].nunique())
    box = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
    x = box["x"] + box["width"] * 5.5 / n_classes
    y = box["y"] + box["height"] * 5.5 / n_classes  # a diagonal cell: correctly classified images
    page.mouse.move(x, y)
    time.sleep(0.3)  # Plotly clicks the point under the hover
    page.mouse.click(x, y)
    page.locator("p").filter(has_text="correctly classified images").first.wait_for(timeout=30_000)
    settle(page)
    assert_no_exception(page, "confusion after a click")


def test_live_match_scores_two_uploaded_faces(server: str, page):
    page.goto(f"{server}/live")
    page.get_by_role("heading", name="Live match").first.wait_for(timeout=60_000)
    settle(page)
    inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    assert inputs.count() == 2
    inputs.nth(0).set_input_files(str(ROOT / "data" / "orl_faces" / "s1" / "1.pgm"))
    settle(page)
    inputs.nth(1).set_input_files(str(ROOT / "data" / "orl_faces" / "s1" / "2.pgm"))
    card = page.locator('[data-testid="stMetric"]').filter(has_text="similarity score")
    wait_scored(page, "2.pgm")
    settle(page)
    assert_no_exception(page, "live")
    score = float(card.locator('[data-testid="stMetricValue"]').inner_text())
    assert -1.0 <= score <= 1.0
    assert page.locator('[data-testid="stPlotlyChart"] .main-svg').count() >= 1  # the score on the histograms
    assert page.get_by_text("What the model sees").count() == 1
    screenshot(page, "live")


def test_live_match_aligns_two_off_centre_faces(server: str, page, tmp_path: Path):
    """Issue 12: with alignment on, two photos whose faces sit far from the centre (ORL faces pasted into
    larger canvases) show the annotated photos, the two aligned crops the model sees, and a score."""
    from tests.face_photos import off_centre_photo

    a, b = tmp_path / "left.jpg", tmp_path / "right.jpg"
    a.write_bytes(off_centre_photo("s1/1.pgm", at=(30, 20)))
    b.write_bytes(off_centre_photo("s1/2.pgm", at=(430, 230)))
    page.goto(f"{server}/live")
    page.get_by_role("heading", name="Live match").first.wait_for(timeout=60_000)
    settle(page)
    page.get_by_text("Detect and align faces (MTCNN)").click()
    settle(page)
    inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    inputs.nth(0).set_input_files(str(a))
    settle(page)
    inputs.nth(1).set_input_files(str(b))
    card = page.locator('[data-testid="stMetric"]').filter(has_text="similarity score")
    wait_scored(page, b.name)
    settle(page)
    assert_no_exception(page, "live with alignment")
    assert page.get_by_role("heading", name="Faces found").count() == 1
    assert page.get_by_text("1 face; using face 1").count() == 2  # one face found in each photo
    assert page.get_by_text("faces aligned (MTCNN").count() == 1
    # the two annotated photos and the two aligned crops the model sees, all drawn
    images = page.locator('[data-testid="stImage"] img')
    assert images.count() >= 4
    assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(images.count()))
    assert -1.0 <= float(card.locator('[data-testid="stMetricValue"]').inner_text()) <= 1.0
    screenshot(page, "live_aligned")


def test_audit_row_click_shows_its_image(server: str, page, demo_run: Path):
    """Data audit page: click the second row of the ranked table (its row-marker cell) and the page shows
    that image, headed by its path, with its nearest neighbours."""
    from dashboard import views

    issues = pd.read_parquet(demo_run / "eval" / demo_key(demo_run) / "audit" / "issues.parquet")
    first = next(k for k in views.AUDIT_ISSUES if (issues["issue"] == k).any())
    rows = views.audit_rows(issues, first)
    assert len(rows) >= 2, "the demo audit flags too few rows to click the second"
    page.goto(f"{server}/audit")
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for(state="visible", timeout=180_000)  # a fresh server's first page imports pandas, plotly...
    settle(page)
    images_before = page.locator('[data-testid="stImageContainer"]').count()
    box = grid.bounding_box()
    row_h = 35  # glide-data-grid's default row (and header) height in Streamlit
    page.mouse.click(box["x"] + 18, box["y"] + row_h + row_h * 1.5)  # the row marker of the second row
    heading = page.get_by_role("heading", name=f"Selected: {rows.loc[1, 'path']}")
    heading.wait_for(timeout=30_000)
    settle(page)
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=\"stImageContainer\"]').length > {images_before}",
        timeout=60_000,
    )
    assert_no_exception(page, "audit after a row click")
    screenshot(page, "audit-selected")


def test_slider_moves_the_far_interval(server: str, page, demo_run: Path):
    """Move the threshold slider with the keyboard and read the FAR interval the page shows at the new τ:
    it must be core's subject-bootstrap interval at that τ (issue 13)."""
    import numpy as np

    from core.metrics import uncertainty as unc
    from dashboard.defend import pair_identities

    files = demo_run / "eval" / demo_key(demo_run)
    ver = json.loads((files / "summary.json").read_text())["verification"]
    assert ver.get("intervals"), "the bundled demo evaluation must carry intervals (python -m core evaluate)"
    page.goto(f"{server}/verification")
    settle(page, 240)
    card = page.locator('[data-testid="stMetric"]').filter(has_text="FAR 95% interval")
    card.first.wait_for(timeout=120_000)
    value = card.first.locator('[data-testid="stMetricValue"]')
    before = value.inner_text()
    # the threshold slider (the target-FAR select slider is an stSlider too); its thumb is an input type=range
    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").locator('input[type="range"]').first
    thumb.focus()
    for _ in range(25):  # 25 slider steps up: fewer impostors accepted
        thumb.press("ArrowRight")
    # the τ the page settled on: the slider's value once the URL (written by the rerun) shows the same, since
    # under load the value read right after the last key press can lag the one the page finally uses
    page.wait_for_function(
        "() => { const s = [...document.querySelectorAll('[data-testid=\"stSlider\"]')]"
        ".find(e => e.innerText.includes('Threshold')); const i = s && s.querySelector('input[type=\"range\"]'); "
        "const u = new URLSearchParams(location.search).get('tau'); "
        "return !!i && u !== null && Math.abs(parseFloat(u) - parseFloat(i.value)) < 5e-5; }",
        timeout=180_000,
    )
    tau = float(thumb.input_value())
    pairs = pd.read_parquet(files / "pairs.parquet")
    ids_a, ids_b = pair_identities(pairs, files / "samples.parquet")
    prep = unc.prepare(pairs["score"].to_numpy(np.float64), pairs["label"].to_numpy(), ids_a, ids_b)
    iv = ver["intervals"]
    reps = unc.replicates(prep, resample=iv["default"], n_boot=iv["n_boot"], seed=iv["seed"], thresholds=[tau])
    lo, hi = unc.interval(reps["far"][:, 0], iv["level"])
    want = f"[{lo:.2%}, {hi:.2%}]"  # as dashboard/defend.py prints it
    assert want != before, "25 steps should move the interval"
    # wait for the rerun at the new τ to show its interval (a condition, not a time)
    page.wait_for_function(
        "(w) => { for (const m of document.querySelectorAll('[data-testid=\"stMetric\"]')) { "
        "if (m.innerText.includes('FAR 95% interval') && m.innerText.includes(w)) return true; } "
        "return false; }",
        arg=want,
        timeout=180_000,
    )
    assert value.inner_text() == want
    assert_no_exception(page, "verification after moving the slider")
    screenshot(page, "verification-interval")


def _cut_text(tab) -> list[str]:
    """Metric values and button labels whose text is wider than their box (cut or ellipsised)."""
    return tab.evaluate("""() => [...document.querySelectorAll(
        '[data-testid="stMetricValue"], [data-testid="stMetricValue"] *, button p')]
        .filter(e => e.offsetParent !== null && e.innerText.trim() !== "" && e.scrollWidth > e.clientWidth + 1)
        .map(e => e.innerText)""")


def test_narrow_viewport_wraps_metrics_and_collapses_the_sidebar(server: str, page):
    """At 800 px (issue 21): metric rows wrap instead of cutting values, buttons keep their labels, the sidebar
    starts collapsed; screenshots of the two pages with the most metric cards."""
    try:
        page.set_viewport_size({"width": 800, "height": 1000})
        for path, heading in (("verification", "Verification"), ("", "Overview")):
            page.goto(f"{server}/{path}")
            page.get_by_role("heading", name=heading).first.wait_for(timeout=180_000)
            page.locator(PAGES[path][1]).first.wait_for(state="visible", timeout=180_000)
            settle(page)
            page.wait_for_function(
                "() => document.querySelector('[data-testid=\"stSidebar\"]').getAttribute('data-collapsed') === 'true'",
                timeout=120_000,
            )
            assert_no_exception(page, f"{heading} at 800 px")
            assert _cut_text(page) == [], f"{heading} at 800 px cuts: {_cut_text(page)}"
            if path == "verification":  # one download element, no hidden copy of it
                assert page.locator('[data-testid="stDownloadButton"]').count() == 1
            screenshot(page, f"narrow-{path or 'overview'}", width=800)
        # the automatic collapse is not remembered: a wide window opens with the sidebar as usual
        assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('stSidebarCollapsed'))") == []
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})


def test_url_keeps_run_evaluation_and_tau_across_pages_and_reloads(server: str, page, demo_run: Path):
    key = demo_key(demo_run)
    page.goto(f"{server}/verification?run=orl_demo_b&eval={key}&tau=0.55")
    page.locator(PAGES["verification"][1]).first.wait_for(state="visible", timeout=120_000)
    settle(page)
    assert page.locator('[data-testid="stSliderThumbValue"]').filter(has_text="0.550").count() == 1
    page.wait_for_url(re.compile(r"run=orl_demo_b.*tau=0\.5500"), timeout=120_000)
    page.locator('[data-testid="stSidebarNavLink"]:has(span[label="Overview"])').first.click()
    page.get_by_role("heading", name="Overview").first.wait_for(timeout=180_000)
    settle(page)
    page.wait_for_url(re.compile(r"run=orl_demo_b"), timeout=120_000)  # the view's state follows the page
    page.reload()
    page.get_by_role("heading", name="Overview").first.wait_for(timeout=180_000)
    settle(page)
    assert "Run orl_demo_b" in page.locator('[data-testid="stMain"]').inner_text()  # the Overview's run line
    assert_no_exception(page, "overview after a reload")


def test_live_match_scores_two_faces_with_an_imported_model(server: str, page, checkpoints: Path):
    """Issue 11: the demo network exported to ONNX and imported; Live match in Chromium gives its score, which
    is the native demo run's (ONNX Runtime agrees to 4e-7, the page shows 4 decimals). The imported run is
    added to the shared checkpoints folder for this test only."""
    from core.embedder import load_embedder
    from core.verify import score_images
    from tests.dashboard.imported_runs import MODEL, make_imported_model

    faces = ROOT / "data" / "orl_faces"
    run = make_imported_model(checkpoints / "orl_demo", checkpoints)
    try:
        native = score_images(
            load_embedder(checkpoints / "orl_demo", device="cpu"), faces / "s1" / "1.pgm", faces / "s1" / "2.pgm"
        )["score"]
        page.goto(f"{server}/live?run={MODEL}")
        page.get_by_role("heading", name="Live match").first.wait_for(timeout=60_000)
        settle(page)
        # the link chose the imported run (not yet evaluated; the demo run has evaluations)
        assert "No evaluation yet" in page.locator('[data-testid="stSidebar"]').inner_text()
        inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        inputs.nth(0).set_input_files(str(faces / "s1" / "1.pgm"))
        settle(page)
        inputs.nth(1).set_input_files(str(faces / "s1" / "2.pgm"))
        card = page.locator('[data-testid="stMetric"]').filter(has_text="similarity score")
        wait_scored(page, "2.pgm")
        settle(page)
        assert_no_exception(page, "live on an imported model")
        assert float(card.locator('[data-testid="stMetricValue"]').inner_text()) == pytest.approx(native, abs=1e-4)
        screenshot(page, "live-imported")
    finally:
        shutil.rmtree(run, ignore_errors=True)
