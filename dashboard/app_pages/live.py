"""Live match page: do two photos I bring now show the same person (or object)?

Two images from an upload, the camera (st.camera_input works on localhost) or the evaluated dataset; an
optional centre crop; the two model inputs; the score (core.verify.score_images) and the decision at the
chosen threshold; and the score drawn on the reference evaluation's genuine / impostor histograms with the
FAR and TAR that threshold implies, with a warning when the images do not resemble that evaluation's (colour
against grayscale, size). Bad or oversized files get a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core import layout
from core.errors import MatchLabError
from dashboard import artifacts, defend, figures, ui, views

MAX_BYTES = 10 * 1024 * 1024  # same as server.maxUploadSize in .streamlit/config.toml
IMAGE_TYPES = ["jpg", "jpeg", "png", "pgm", "ppm", "bmp", "webp", "tif", "tiff", "gif"]

ctx = ui.context()
st.title("Live match")
if ctx.run_dir is None or not layout.has_model(ctx.run_dir):
    st.info("Choose a run with trained weights (best.safetensors) in the sidebar.")
    st.stop()
config = artifacts.read_config(ctx.run_dir)
# The reference evaluation: the data whose score distribution, FAR and TAR are set beside a live score.
keys = artifacts.list_eval_keys(ctx.run_dir)
reference = (
    st.selectbox(
        "Reference evaluation",
        keys,
        index=keys.index(ctx.key) if ctx.key in keys else 0,
        key=f"live_ref::{ctx.run_name}",
        help="the percentiles, FAR and TAR beside the score come "
        "from this evaluation's pairs: choose data like the photos you bring",
    )
    if keys
    else None
)
ctx = ui.Context(ctx.run_dir, reference)  # the threshold below is the one chosen for this evaluation
files = ctx.files
root = ui.data_root(files) if files is not None else None
samples = ui.table(files.samples) if files is not None and files.samples.is_file() else None
kind = ui.json_file(files.summary).get("kind", "image") if files is not None else "image"


def _image_input(side: str) -> tuple[str, bytes] | None:
    """One image from the chosen source as (name, bytes), or None; size problems are shown here."""
    sources = ["Upload", "Camera"] + (["Dataset"] if samples is not None and root is not None else [])
    source = st.segmented_control(f"Image {side}", sources, default="Upload", key=f"live_src_{side}") or "Upload"
    if source == "Upload":
        f = st.file_uploader(f"Image {side}", type=IMAGE_TYPES, key=f"live_up_{side}", label_visibility="collapsed")
    elif source == "Camera":
        f = st.camera_input(f"Photo {side}", key=f"live_cam_{side}")
    else:
        # no image until one is picked: switching the source must not score a pair nobody chose
        i = st.selectbox(
            f"Dataset image {side}",
            range(len(samples)),
            index=None,
            key=f"live_ds_{side}",
            format_func=lambda j: samples["path"].iloc[j],
            placeholder="choose an image of the dataset",
        )
        if i is None:
            return None
        path = artifacts.image_path(root, samples["path"].iloc[i])
        return (path.name, path.read_bytes()) if path.is_file() else None
    if f is None:
        return None
    data = f.getvalue()
    if len(data) > MAX_BYTES:
        st.error(f"{f.name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_BYTES // 2**20} MB. Use a smaller photo.")
        return None
    return f.name, data


@st.cache_data(show_spinner="Scoring…", max_entries=32)
def _score(
    run_dir: str,
    stamp: float,
    a: bytes,
    b: bytes,
    crop: float | None,
    align: str = "none",
    names: tuple[str, str] = ("A", "B"),
    pick: tuple[int | None, int | None] = (None, None),
) -> dict:
    from core.verify import score_images

    return score_images(ui.load_model(Path(run_dir)), a, b, crop, align=align, names=names, pick=pick)


# ---- face detection and alignment (issue 12): the toggle, the face pickers and the annotated photos


def _align_toggle() -> str:
    """'mtcnn' when face alignment is on: by default when the run was trained on aligned faces, since a model
    trained on whole images scores aligned crops worse; the user may turn it on for any face model."""
    trained = (config.get("data") or {}).get("align", "none")
    on = st.toggle(
        "Detect and align faces (MTCNN)",
        value=trained == "mtcnn",
        key="live_align",
        help="find the face in each photo and align its eyes, nose and mouth to the ArcFace template, "
        "as evaluate --align mtcnn does" + (" (this run was trained on aligned faces)" if trained == "mtcnn" else ""),
    )
    return "mtcnn" if on else "none"


def _face_key(side: str, data: bytes) -> str:
    import hashlib

    return f"live_face_{side}_{hashlib.sha1(data).hexdigest()[:10]}"  # a new photo starts from the default face


def _picked(side: str, data: bytes) -> int | None:
    """The face the user chose in this photo last time round (None: the largest, most central)."""
    value = st.session_state.get(_face_key(side, data))
    return None if value is None else int(value) - 1


def _show_faces(result: dict, images: list[tuple[str, bytes]]) -> None:
    """Each photo with its boxes and landmarks, and a picker where a photo holds several faces."""
    st.subheader("Faces found")
    cols = st.columns(2)
    for col, side, (name, data), found, drawn in zip(cols, "AB", images, result["faces"], result["annotated"]):
        n = len(found.faces)
        col.image(
            drawn,
            caption=f"{side}: {name}: {n} face{'s' if n != 1 else ''}; using face {found.chosen + 1} "
            f"(detector probability {found.faces.probs[found.chosen]:.3f})",
            width=320,
        )
        if n > 1:
            col.radio(
                f"Face to use in {side}",
                list(range(1, n + 1)),
                index=found.chosen,
                horizontal=True,
                key=_face_key(side, data),
                help="numbered as on the photo; the default is the largest, most central face",
            )


@st.cache_data(show_spinner=False, max_entries=64)
def _look(data: bytes) -> dict:
    """views.image_look of an uploaded file (header size, a 64 px copy for colour); {} when unreadable."""
    import io

    from PIL import Image

    from core.data.images import load_rgb

    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
        small = load_rgb(data, draft_size=64)
    except (MatchLabError, OSError, ValueError):
        return {"gray": False, "width": 0, "height": 0}
    small.thumbnail((64, 64))
    return views.image_look(np.asarray(small), size)


@st.cache_data(show_spinner=False, max_entries=8)
def _reference_looks(root: str, paths: tuple[str, ...]) -> list[dict]:
    """image_look of about 24 images spread over the reference evaluation (read once per evaluation)."""
    looks = []
    for rel in paths:
        path = artifacts.image_path(Path(root), rel)
        size = artifacts.image_size(path)
        thumb = ui._thumbnail_array(str(path), 64)
        if size is not None and thumb is not None:
            looks.append(views.image_look(thumb, size))
    return looks


left, right = st.columns(2)
with left:
    img_a = _image_input("A")
with right:
    img_b = _image_input("B")

run_crop = float((config.get("data") or {}).get("crop", 1.0))
start_crop, crop_why = views.live_crop_start(ui.json_file(files.ablation) if files is not None else {}, run_crop)
use_crop = st.toggle(
    "Centre crop",
    value=False,
    key="live_crop_on",
    help=f"the run was trained at crop {run_crop:.2f}; try a tighter crop for unaligned photos",
)
crop = (
    st.slider(
        "Centre square side (fraction of the shorter side)",
        0.1,
        1.0,
        start_crop,
        0.05,
        key="live_crop",
        disabled=not use_crop,
        help=f"starts at {start_crop:.2f}: {crop_why}",
    )
    if use_crop
    else None
)

align = _align_toggle()
if img_a is None and img_b is None and kind != "pair":
    # Issue 18: until an image is given, a built-in example pair of bundled photos is scored, so a first
    # visit shows a score with nothing uploaded (a pair model compares objects, not faces: none offered).
    # With alignment on (the bundled face model's default), MTCNN finds the face in each example as in any photo.
    from core.verify import EXAMPLE_PAIRS, example_pair

    labels = {"genuine": "same person", "impostor": "two people"}
    chosen = st.segmented_control(
        "Example pair (bundled ORL photos; give your own images above to score them instead)",
        [labels[k] for k in EXAMPLE_PAIRS],
        default=labels["genuine"],
        key="live_example",
    )
    example = next((k for k, v in labels.items() if v == chosen), None)
    if example is not None and all(f.is_file() for f in example_pair(example)):
        img_a, img_b = ((f"{f.parent.name}/{f.name}", f.read_bytes()) for f in example_pair(example))
if img_a is None or img_b is None:
    st.info("Give two images (upload, camera or dataset) to see their score.")
    st.stop()

try:
    stamp = artifacts.mtime(layout.model_file(ctx.run_dir))
    pick = (_picked("A", img_a[1]), _picked("B", img_b[1])) if align != "none" else (None, None)
    result = _score(str(ctx.run_dir), stamp, img_a[1], img_b[1], crop, align, (img_a[0], img_b[0]), pick)
except MatchLabError as e:
    st.error(str(e))
    st.stop()
if "faces" in result:
    _show_faces(result, [img_a, img_b])

score = float(result["score"])
if files is not None and samples is not None and root is not None:
    unlike = views.resemblance_warnings(
        {f"A ({img_a[0]})": _look(img_a[1]), f"B ({img_b[0]})": _look(img_b[1])},
        _reference_looks(str(root), tuple(samples["path"].iloc[:: max(1, len(samples) // 24)])),
        ctx.key or "the reference evaluation",
    )
    if unlike:
        st.warning(
            " ".join(unlike) + " The FAR and TAR beside the score describe that evaluation's images, so they "
            "may not hold for these: choose a reference evaluation that resembles them.",
            icon=":material/warning:",
        )
has_pairs = files is not None and files.pairs.is_file()
if has_pairs:
    points = ui.roc_points(files)
    pairs = ui.pairs_table(files.pairs)
    bounds = views.slider_bounds(pairs["score"].to_numpy(), score, ui.default_threshold(ctx))
    tau = ui.threshold_slider_ui(ctx, bounds, ui.default_threshold(ctx) or views.threshold_presets(points)["eer"])
else:
    tau = result.get("threshold")

st.subheader("What the model sees")
c1, c2, c3 = st.columns([1, 1, 2])
c1.image(result["input_a"], caption=f"A: {img_a[0]}", width=192)
c2.image(result["input_b"], caption=f"B: {img_b[0]}", width=192)
with c3:
    st.metric(
        "similarity score",
        f"{score:.4f}",
        help="the pair model's same-pair score" if kind == "pair" else "cosine similarity of the two embeddings",
    )
    if tau is None:
        st.warning("No threshold: evaluate the run to choose one.")
    elif score >= tau:
        st.success(f"**Same** — score {score:.4f} ≥ τ {tau:.4f}", icon=":material/check_circle:")
    else:
        st.error(f"**Different** — score {score:.4f} < τ {tau:.4f}", icon=":material/cancel:")
    st.caption(
        f"model input {config.get('data', {}).get('res', '?')} px · centre crop {result.get('crop', 1.0):.2f}"
        + (" · faces aligned (MTCNN, ArcFace template)" if "faces" in result else "")
    )
    meaning = defend.live_meaning(files, ctx.run_dir, score)  # issue 13: calibrated P(same) and LR
    if meaning:
        st.markdown("**Calibrated:** " + meaning.replace("\nwarning: ", "  \n⚠ "))

if has_pairs and tau is not None:
    op = views.operating_point(points, tau)
    here = views.implied_rates(points, score)
    st.subheader(f"Where this score sits on {ctx.key}")
    ui.metric_row(
        [
            ("FAR at τ", f"{op['far']:.4%}", "share of impostor pairs that this threshold accepts"),
            ("TAR at τ", f"{op['tar']:.4%}", "share of genuine pairs that this threshold accepts"),
            ("impostors scoring ≥ this", f"{here['far']:.4%}", "FAR if this score were the threshold"),
            ("genuines scoring ≥ this", f"{here['tar']:.4%}", "TAR if this score were the threshold"),
        ]
    )
    ui.threshold_transfer_ui(ctx, points)
    ui.plot(figures.score_histogram(ui.histograms(files), tau=tau, score=score), key="live_hist")
