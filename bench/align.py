"""Bench suites for face detection and alignment (issue 12): `live` and `align`.

`suite_live(ctx)`: the live match end to end on two 1-megapixel JPEGs (decode, MTCNN, 5-point warp, embed,
score: `core.verify.score_images(..., align="mtcnn")`) after warm-up, against the same call without
alignment (the issue's target: under 0.5 s on 2 CPU cores). `suite_align(ctx)`: detection + alignment
throughput on 250x250 photos, batched (`Aligner.align_arrays` over all of them) against a per-image loop
of the same call, with a check that both found the same faces (target: at least 40 images/s on 2 cores).
The photos are the bundled ORL faces pasted at varied places into larger colour canvases.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.env import repeat_timed, summary
from bench.suites import Context, SuiteResult, _log, _precision

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / "data" / "orl_faces"
LIVE_TARGET_S = 0.5
ALIGN_TARGET = 40.0  # images/s


def _photo(face: Path, size: tuple[int, int], scale: float, at: tuple[int, int], seed: int) -> Image.Image:
    """An ORL face scaled and pasted at `at` on a noisy colour gradient of size (W, H)."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([80 + x * 90 // w, 110 + y * 70 // h, np.full_like(x, 140)], 2) + rng.normal(0, 6, (h, w, 3))
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    img = Image.open(face).convert("RGB")
    canvas.paste(img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC), at)
    return canvas


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _live_model(ctx: Context):
    """The bundled face run (what the live page shows first), else train's run folder."""
    from core.embedder import load_embedder

    run = ROOT / "checkpoints" / "orl_demo"
    if not (run / "best.safetensors").is_file():
        if ctx.run_dir is None:
            raise AssertionError("live: no face model (checkpoints/orl_demo) and no train suite run folder")
        run = ctx.run_dir
    return load_embedder(run, device=str(ctx.device)), run


def suite_live(ctx: Context) -> SuiteResult:
    from core.verify import score_images

    model, run = _live_model(ctx)
    res = SuiteResult("live", _precision(ctx.device), ctx.args.repeats)
    # Two 1 MP photos (1155 x 866): a face of ~370 x 450 px each, off centre, as a phone photo holds it.
    a = _jpeg(_photo(ORL / "s1" / "1.pgm", (1155, 866), 4.0, (90, 120), 0))
    b = _jpeg(_photo(ORL / "s1" / "2.pgm", (1155, 866), 3.6, (640, 300), 1))
    repeats = max(5, ctx.args.repeats)
    _log(f"live: 2 x 1 MP JPEGs through score_images with and without alignment, {repeats} repeats")
    aligned = repeat_timed(
        lambda: score_images(model, a, b, align="mtcnn", names=("a.jpg", "b.jpg")), ctx.device, repeats, warmup=2
    )
    plain = repeat_timed(lambda: score_images(model, a, b, align="none"), ctx.device, repeats, warmup=1)
    r = score_images(model, a, b, align="mtcnn")
    found = [len(f.faces) for f in r["faces"]]
    assert found == [1, 1], f"live: expected one face per photo, found {found}"
    s_al, s_pl = summary(aligned), summary(plain)
    res.add(
        "live_aligned_s", s_al["median_s"], "s", f"2 photos, decode+detect+align+embed+score; target < {LIVE_TARGET_S}"
    )
    res.add("live_unaligned_s", s_pl["median_s"], "s", "the same call without alignment (decode+resize+embed+score)")
    res.add("live_alignment_cost_ratio", s_al["median_s"] / s_pl["median_s"], "x", "aligned / unaligned")
    res.checks.update(
        {
            "faces_found": found,
            "meets_target": s_al["median_s"] < LIVE_TARGET_S,
            "times_aligned_s": aligned,
            "times_unaligned_s": plain,
        }
    )
    res.conditions.update(
        {"model": str(run), "photos": "2 x 1155x866 JPEG q90", "torch_threads": torch.get_num_threads()}
    )
    return res


def suite_align(ctx: Context) -> SuiteResult:
    from core.align.faces import Aligner

    n = 64 if ctx.device.type == "cpu" else 1024
    rng = np.random.default_rng(ctx.args.seed)
    faces = sorted(ORL.glob("s*/*.pgm"))
    photos = [
        np.asarray(
            _photo(faces[i % len(faces)], (250, 250), 1.4, (int(rng.integers(0, 120)), int(rng.integers(0, 90))), i)
        )
        for i in range(n)
    ]
    aligner = Aligner(112, str(ctx.device))
    res = SuiteResult("align", _precision(ctx.device), ctx.args.repeats)
    _log(f"align: {n} photos of 250x250, batched against a per-image loop")
    batched = repeat_timed(lambda: aligner.align_arrays(photos), ctx.device, ctx.args.repeats, warmup=1)
    looped = repeat_timed(
        lambda: [aligner.align_arrays([p])[0] for p in photos], ctx.device, ctx.args.repeats, warmup=1
    )
    one = aligner.align_arrays(photos)
    each = [aligner.align_arrays([p])[0] for p in photos]
    assert [a.found for a in one] == [a.found for a in each], "align: batched and per-image runs found different faces"
    both = [i for i, a in enumerate(one) if a.found]
    worst = max(
        (
            float(np.abs(one[i].faces.landmarks[one[i].chosen] - each[i].faces.landmarks[each[i].chosen]).max())
            for i in both
        ),
        default=0.0,
    )
    assert worst < 1.0, f"align: batched landmarks differ from per-image ones by {worst:.3f} px"
    s_b, s_l = summary(batched), summary(looped)
    res.add(
        "align_batched_img_per_s",
        n / s_b["median_s"],
        "img/s",
        f"detect + align, {n} photos in one call; target >= {ALIGN_TARGET:g}",
    )
    res.add("align_loop_img_per_s", n / s_l["median_s"], "img/s", "the same photos, one call each")
    res.add("align_batched_speedup", s_l["median_s"] / s_b["median_s"], "x", "per-image loop time / batched time")
    res.checks.update(
        {
            "faces_found": len(both),
            "photos": n,
            "max_landmark_diff_px": worst,
            "meets_target": n / s_b["median_s"] >= ALIGN_TARGET,
        }
    )
    res.conditions.update({"photo_size": "250x250", "output": "112x112", "torch_threads": torch.get_num_threads()})
    return res


ALIGN_SUITES = {"live": suite_live, "align": suite_align}
