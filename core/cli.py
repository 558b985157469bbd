"""The command line: `python -m core <command>`.

Each command is a small function registered in COMMANDS with its argparse setup; each prints a human
summary, or with `--json` exactly one JSON object on stdout (progress and notes go to stderr). A
MatchLabError becomes one line `error: ...` and exit status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import MatchLabError
from core.layout import RunFiles

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, setup, fn)
        return fn

    return register


def emit(args: argparse.Namespace, payload: dict, human: str) -> None:
    """One strict JSON object with --json (see `strict_json`), else the human summary."""
    if getattr(args, "json", False):
        print(json.dumps(strict_json(payload), default=_json_default, allow_nan=False))
    else:
        print(human)


def strict_json(obj):
    """`obj` with every non-finite float replaced, so strict parsers accept it (JSON has no Infinity/NaN).

    In a dict, a value +inf / -inf / NaN at key k becomes null and gains a sibling "k_nonfinite" with
    "inf", "-inf" or "nan" (e.g. identify's threshold +inf: no finite threshold is best, every probe is
    rejected). Inside a list it becomes null alone. numpy arrays and scalars become lists and numbers.
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = strict_json(v)
            out[k] = v
            if v is None and _nonfinite(obj[k]):
                out[f"{k}_nonfinite"] = _nonfinite(obj[k])
        return out
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return strict_json(obj.tolist())
    if isinstance(obj, float) and _nonfinite(obj):
        return None
    return obj


def _nonfinite(v) -> str | None:
    """ "inf", "-inf" or "nan" for a non-finite float (numpy scalars included), else None."""
    if hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if not isinstance(v, float) or v == v and abs(v) != float("inf"):
        return None
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def _json_default(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def add_device_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    p.add_argument(
        "--infer-backend",
        choices=["auto", "torch", "onnx"],
        help="how a MatchLab model embeds on a CPU: onnx (ONNX Runtime, exported once per checkpoint into "
        "the cache folder), torch, or auto (onnx where the export pays for itself); default: "
        "$MATCHLAB_INFER_BACKEND, else auto",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")


def add_align(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--align",
        choices=["none", "mtcnn"],
        help="face alignment before the model: mtcnn detects the face and aligns its 5 landmarks to the "
        "ArcFace template (default: what the model was trained with, its Preprocess.align)",
    )


def add_pairs(p: argparse.ArgumentParser) -> None:
    from core.pairs import PAIR_FORMATS

    p.add_argument("--pairs", dest="pairs_file", help="pairs file (LFW pairs.txt, CSV) or CFP Protocol folder")
    p.add_argument(
        "--pairs-format",
        choices=sorted(PAIR_FORMATS),
        help="pair protocol; without it, pairs are generated from the folder's identities",
    )


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


# ---------------------------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    from core.config import config_help

    p.add_argument("config", nargs="?", help="recipe YAML (configs/*.yaml); omit with --resume")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override any config key (below)")
    p.add_argument("--name", help="run folder name (default: <recipe>-<date>-<time>)")
    p.add_argument("--out", default="checkpoints", help="folder that holds run folders (default: checkpoints/)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run (and its evaluations) already in the --name folder, once the new run has "
        "validated; without it an existing run folder is refused",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    p.epilog = "config keys (section.key=default  meaning):\n" + config_help()


@command("train", "train a model from a recipe and write a run folder", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    from core import distributed
    from core.config import load_config
    from core.run import resolve_device
    from core.train import check_run_folder, fit

    overrides = list(args.overrides)
    if args.resume and args.overwrite:
        raise MatchLabError("--resume continues a run and --overwrite replaces it: pass only one")
    if args.resume:
        run_dir = Path(args.resume)
        if not RunFiles(run_dir).config.is_file():
            raise MatchLabError(f"--resume {run_dir}: no config.yaml there; is it a run folder?")
        if args.config and "=" in args.config:  # `train --resume RUN key=value` puts the override first
            overrides.insert(0, args.config)
        elif args.config:
            raise MatchLabError("--resume takes the run folder's own config; pass only key=value overrides")
        cfg = load_config(RunFiles(run_dir).config, overrides)
    else:
        if not args.config:
            raise MatchLabError("train needs a recipe: python -m core train configs/orl.yaml (see --help)")
        cfg = load_config(args.config, overrides)
    # Under torchrun every process runs this; they agree on rank 0's run name and check.
    ctx = distributed.init_from_env(resolve_device(cfg.train.device))
    if not args.resume:
        name = distributed.broadcast_object(args.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = Path(args.out) / name
    # Fail before decoding any data (fit checks again under the folder's lock); every rank raises together.
    refused = None
    if ctx.is_main:
        try:
            check_run_folder(run_dir, bool(args.resume), args.overwrite)
        except MatchLabError as e:
            refused = str(e)
    if distributed.broadcast_object(refused):
        raise MatchLabError(refused)
    try:
        summary = fit(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    except KeyboardInterrupt:
        raise MatchLabError(f"interrupted; {ctx.resume_hint(run_dir)}") from None
    except distributed.RankStopped:
        raise MatchLabError(
            f"rank {ctx.rank}: stopped by the launcher because another rank failed (torchrun's "
            f"report names it) or the job was cancelled; {ctx.resume_hint(run_dir)}"
        ) from None
    except RuntimeError as e:
        reason = distributed.peer_failure(e) if ctx.enabled else None
        if reason is None:
            raise
        raise MatchLabError(
            f"rank {ctx.rank}: lost contact with another rank ({reason}); {ctx.resume_hint(run_dir)}"
        ) from None
    distributed.shutdown()
    if not ctx.is_main:
        return 0
    last = summary["last"]
    lines = [
        f"trained {summary['epochs']} epochs; best {summary['select_metric']} "
        f"{_fmt(summary['best'])} at epoch {summary['best_epoch']}; "
        f"{_fmt(last.get('images_per_s'), 0)} img/s"
    ]
    if "sanity" in summary:
        s = summary["sanity"]
        verdict = (
            "memorised: the pipeline can learn"
            if s["memorised"]
            else "did NOT memorise: check the learning rate, the loss and the labels"
        )
        lines.append(f"sanity overfit on {s['images']} images: accuracy {_fmt(s['accuracy'])} -> {verdict}")
    if summary["skipped_images"]:
        lines.append(
            f"{summary['skipped_images']} unreadable images were skipped (listed above and in the cache manifest)"
        )
    lines.append(str(run_dir))  # contract: the run folder is the last line printed
    emit(args, summary, "\n".join(lines))
    return 0


# ------------------------------------------------------------------------------------------- evaluate


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (checkpoints/<run>)")
    p.add_argument("--data", required=True, help="image folder to evaluate on (ImageFolder layout)")
    add_pairs(p)
    p.add_argument("--tta", choices=["flip"], help="test-time augmentation: mean embedding of image and mirror")
    p.add_argument("--crop", type=float, help="centre-crop fraction (default: the run's own data.crop)")
    p.add_argument(
        "--all-pairs",
        action="store_true",
        help="also score every pair of the folder, streamed in blocks (100k images = 5e9 pairs)",
    )
    add_align(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an evaluation of other images stored under the same name (a folder of the same "
        "name elsewhere); without it that is refused",
    )
    add_assurance(p)
    add_device_json(p)


def add_assurance(p: argparse.ArgumentParser) -> None:
    """Intervals, costs and groups (core.assurance): the options behind a threshold you can defend."""
    g = p.add_argument_group("intervals, costs and groups")
    g.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap replicates for the intervals (default 1000; 0 turns them off)",
    )
    g.add_argument("--ci-level", type=float, default=0.95, help="interval coverage (default 0.95)")
    g.add_argument(
        "--resample",
        default="identities",
        choices=["identities", "pairs"],
        help="what the bootstrap draws: identities (default; pairs of one person are not independent) "
        "or pairs (narrower, reported beside it as a contrast)",
    )
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument(
        "--attributes",
        metavar="CSV",
        help="image path + attribute columns (gender, age band, pose, site...): FNMR / FMR per group at one threshold",
    )
    g.add_argument("--prior", type=float, default=0.5, help="probability of a genuine attempt (default 0.5)")
    g.add_argument("--cost-fa", type=float, default=1.0, help="cost of a false accept (default 1)")
    g.add_argument("--cost-fr", type=float, default=1.0, help="cost of a false reject (default 1)")
    g.add_argument(
        "--calibration",
        default="isotonic",
        choices=["isotonic", "platt"],
        help="score -> P(same) map fitted on the other folds (default isotonic)",
    )


def _assurance_options(args: argparse.Namespace):
    from core.assurance import AssuranceOptions

    return AssuranceOptions(
        n_boot=args.bootstrap,
        level=args.ci_level,
        resample=args.resample,
        seed=args.seed,
        prior=args.prior,
        cost_fa=args.cost_fa,
        cost_fr=args.cost_fr,
        attributes=args.attributes,
        calibration=args.calibration,
    ).validate()


def _ci(v: dict, name: str, key: str, digits: int = 4) -> str:
    ci = v.get(f"{name}_{key}") if name else v.get(key)
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _assurance_lines(s: dict) -> list[str]:
    """Intervals, the minimum-cost point, calibration and group ratios for the human summary."""
    v = s["verification"]
    iv = v.get("intervals")
    lines = []
    if iv:
        key, other = iv["key"], "pairs" if iv["default"] == "identities" else "identities"
        o = iv[other]
        lines.append(
            f"  {iv['level']:.0%} intervals ({iv['n_boot']} {iv['default']} bootstrap replicates, seed "
            f"{iv['seed']}, {iv['n_identities']} identities): AUC{_ci(v, 'auc', key)}  EER{_ci(v, 'eer', key)}"
            + (f"  k-fold accuracy{_ci(v, 'kfold_accuracy', key)}" if v.get(f"kfold_accuracy_{key}") else "")
        )
        lines.append(f"    {other} bootstrap for contrast: AUC{_ci(o, '', 'auc')}  EER{_ci(o, '', 'eer')}")
    lines.append(
        f"  smallest FAR these {v['n_impostor']:,} impostor pairs support (rule of 3): {v['rule_of_three_far']:.2e}"
    )
    mc = v.get("min_cost")
    if mc:
        key = iv["key"] if iv else ""
        lines.append(
            f"  minimum cost (prior {mc['prior']:g}, C_fa {mc['cost_fa']:g}, C_fr {mc['cost_fr']:g}): "
            f"threshold {_fmt(mc['threshold'])}, DCF {_fmt(mc['dcf'])}{_ci(mc, '', key) if key else ''} "
            f"(normalised {_fmt(mc['dcf_norm'])}), FAR {_fmt(mc['far'])}, FRR {_fmt(mc['frr'])}"
        )
    c = v.get("calibration")
    if c:
        lines.append(
            f"  calibration ({c['method']}, cross-fitted over {c['n_folds']} folds): Cllr {_fmt(c['cllr'])} "
            f"bits, minCllr {_fmt(c['min_cllr'])}, ECE {_fmt(c['ece'])}"
        )
    for name, g in (s.get("groups") or {}).items():
        lines.append(
            f"  groups by {name} ({g['groups']}): FNMR max/min {_fmt(g['fnmr_ratio'], 2)}, FMR max/min "
            f"{_fmt(g['fmr_ratio'], 2)}, FDR {_fmt(g['fdr'])} over {g['summary_over']}"
        )
    return lines


@contextmanager
def _progress_bar(desc: str) -> Iterator[Callable[[float, str], None]]:
    """A stderr progress bar for a long command; yields the `progress(fraction, message)` callback core takes
    and closes the bar however the command ends (one place, so no command can leave a bar open)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=desc, file=sys.stderr, disable=None, bar_format="{l_bar}{bar}| {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(1000 * fraction)
        bar.set_postfix_str(message)

    try:
        yield update
    finally:
        bar.close()


def _fte_line(f: dict) -> str:
    line = (
        f"  failure to enrol (no face found): {f['n_no_face']} of {f['n_images']} images ({f['rate']:.2%}), "
        f"{f['pairs_with_fte']:,} pairs; several faces (largest, most central used): {f['n_multi_face']}"
    )
    if f["pairs_with_fte"] and "excluded" in f:
        line += (
            f"\n  above, those pairs count as rejections (NIST); without them: AUC {_fmt(f['excluded']['auc'])}  "
            f"EER {_fmt(f['excluded']['eer'])}"
        )
    return line


@command("evaluate", "evaluate a run on a folder: verification, classification, kNN, retrieval", _eval_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    assurance = _assurance_options(args)  # bad costs or levels fail before the model loads
    from core.evaluate import evaluate_run

    with _progress_bar("evaluate") as update:
        s = evaluate_run(
            args.run,
            args.data,
            pairs_file=args.pairs_file,
            pairs_format=args.pairs_format,
            tta=args.tta,
            crop=args.crop,
            device=args.device,
            progress=update,
            all_pairs=args.all_pairs,
            align=args.align,
            overwrite=args.overwrite,
            assurance=assurance,
        )
    v = s["verification"]
    lines = [
        f"{s['key']}: {s['n_images']} images, {s['pairs']}",
        f"  verification: AUC {_fmt(v['auc'])}  EER {_fmt(v['eer'])} (threshold {_fmt(v['eer_threshold'])})  "
        + (
            f"{v['kfold']['k']}-fold accuracy {_fmt(v['kfold_accuracy_mean'])} +- {_fmt(v['kfold_accuracy_std'])}"
            if v.get("kfold")
            else "k-fold accuracy: too few pairs"
        ),
        f"  genuine pairs {v['n_genuine']:,}, impostor pairs {v['n_impostor']:,}"
        + (f"; k-fold accuracy {v['kfold_note']}" if v.get("kfold_note") else ""),
    ]
    if v.get("pooled_slices"):
        lines.append(f"  headline figures: {v['scope']}")
    for level, t in v["tar_at_far"].items():
        lines.append(
            f"  TAR@FAR={level}: "
            + (
                f"{_fmt(t['tar'])} at threshold {_fmt(t['threshold'])} (FAR reached {t['far']:.2e})"
                if t["reachable"]
                else f"unreachable with {v['n_impostor']:,} impostor pairs"
            )
        )
    if v.get("threshold") is not None:
        lines.append(
            f"  at the run's threshold {_fmt(v['threshold'])}: accuracy {_fmt(v['accuracy'])} "
            f"(positives {_fmt(v['accuracy_positives'])}, negatives {_fmt(v['accuracy_negatives'])}), "
            f"FAR {_fmt(v['far'])}, FRR {_fmt(v['frr'])}"
        )
    for name, rep in s.get("slices", {}).items():
        lines.append(
            f"  slice {name}: AUC {_fmt(rep['auc'])}  EER {_fmt(rep['eer'])}  k-fold accuracy "
            f"{_fmt(rep['kfold_accuracy_mean'])}"
            + (
                f"  accuracy at threshold {_fmt(rep['accuracy'])} "
                f"(positives {_fmt(rep['accuracy_positives'])}, negatives {_fmt(rep['accuracy_negatives'])})"
                if "accuracy" in rep
                else ""
            )
        )
    if "classification" in s:
        c = s["classification"]
        lines.append(
            f"  classification ({c['source']}): top-1 {_fmt(c['top1'])}"
            + (f", top-5 {_fmt(c['top5'])}" if "top5" in c else "")
        )
        lines.append(
            f"  kNN accuracy {_fmt(s['knn_accuracy'])}; MAP@R {_fmt(s['retrieval']['mean_average_precision_at_r'])}"
        )
    if "all_pairs" in s:
        a = s["all_pairs"]
        lines.append(
            f"  every pair ({a['pairs']}): AUC {_fmt(a['auc'])}  EER {_fmt(a['eer'])}  "
            f"TAR@FAR=1e-3 {_fmt(a['tar_at_far']['0.001']['tar'])}"
        )
    for kind, what in (
        ("false_accepts", "highest-scoring impostor pairs"),
        ("false_rejects", "lowest-scoring genuine pairs"),
    ):
        lines.append(
            f"  {what}: "
            + "; ".join(f"{h['path_a']} ~ {h['path_b']} ({h['score']:.3f})" for h in v["hardest"][kind][:3])
        )
    if "fte" in s:
        lines.append(_fte_line(s["fte"]))
    lines += _assurance_lines(s)
    lines.append(v["artifacts"])
    emit(args, s, "\n".join(lines))
    return 0


# --------------------------------------------------------------------------------------------- verify


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("image_a")
    p.add_argument("image_b")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="accept as same when score >= this (default: the run's)")
    group.add_argument("--threshold-file", help="operating-point JSON exported by the dashboard")
    p.add_argument("--crop", type=float, help="centre-crop fraction (default: the run's)")
    p.add_argument(
        "--calibration-eval",
        metavar="KEY",
        help="evaluation whose calibration gives P(same) and LR (default: the run's most recent one)",
    )
    add_align(p)
    add_device_json(p)


@command("verify", "are two images the same identity? score and decision", _verify_args)
def cmd_verify(args: argparse.Namespace) -> int:
    from core.embedder import load_model
    from core.verify import implied_far_text, read_operating_point, score_images

    run = load_model(args.run, device=args.device)  # an Embedder, or a Run for a pair model
    point = read_operating_point(args.threshold_file, run) if args.threshold_file else {}
    r = score_images(
        run,
        args.image_a,
        args.image_b,
        args.crop,
        align=args.align,
        names=(Path(args.image_a).name, Path(args.image_b).name),
    )
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise MatchLabError(f"--threshold {args.threshold} is not a finite number")
    threshold = args.threshold if args.threshold is not None else point.get("threshold", run.threshold)
    if threshold is None:
        raise MatchLabError(
            f"{args.run} has no threshold.json (an imported model has none until you choose one); "
            f"pass --threshold, or --threshold-file with an operating point exported from the "
            f"dashboard's Verification page"
        )
    same = r["score"] >= threshold
    payload = {
        "score": r["score"],
        "threshold": threshold,
        "same": bool(same),
        "run": str(Path(args.run)),
        "checkpoint_hash": run.checkpoint_hash,
    }
    if "faces" in r:  # the aligned face of each photo: box, probability, 5 landmarks, how many faces
        payload["faces"] = [
            {
                "box": [round(float(v), 1) for v in f.faces.boxes[f.chosen]],
                "prob": round(float(f.faces.probs[f.chosen]), 4),
                "landmarks": [[round(float(v), 1) for v in p] for p in f.faces.landmarks[f.chosen]],
                "n_faces": len(f.faces),
            }
            for f in r["faces"]
        ]
    implied = implied_far_text(point) if point else None
    from core.assurance import calibrated_meaning, meaning_text, run_calibration

    meaning = calibrated_meaning(
        run_calibration(args.run, args.calibration_eval), r["score"], (args.image_a, args.image_b)
    )
    payload["calibrated"] = meaning
    if meaning and meaning.get("warning"):
        print(f"warning: {meaning['warning']}", file=sys.stderr)
    if point:  # what the exported threshold means: the FAR it had where it was chosen
        payload.update({k: point.get(k) for k in ("far", "target_far", "stable", "dataset")})
    emit(
        args,
        payload,
        f"score {r['score']:.4f} {'>=' if same else '<'} threshold {threshold:.4f}: "
        f"{'SAME' if same else 'DIFFERENT'}"
        + (f"\nthreshold from {args.threshold_file} {implied}" if implied else "")
        + f"\n{meaning_text(meaning)}",
    )
    return 0


# --------------------------------------------------------------------------------------------- ablate


def _ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="image folder")
    add_pairs(p)
    p.add_argument(
        "--crops",
        default="10,20,30,40,50,60,70,80,90,100",
        help="centre sizes X in percent of the shorter side of the run's own input crop (default 10,20,...,100)",
    )
    p.add_argument(
        "--fill",
        default="train-mean",
        choices=["train-mean", "data-mean"],
        help="outer-ring variant: paint the centre with the training set's mean colour (default) or "
        "the evaluated folder's",
    )
    add_device_json(p)


@command("ablate", "centre-crop / outer-ring / grayscale ablation: where does the model look?", _ablate_args)
def cmd_ablate(args: argparse.Namespace) -> int:
    from core.ablation import ablate_run

    try:
        crops = [int(c) for c in args.crops.split(",")]
    except ValueError:
        raise MatchLabError(f"--crops {args.crops!r}: give comma-separated percentages, e.g. 10,20,50,100") from None
    if any(not 0 < c <= 100 for c in crops):
        raise MatchLabError(f"--crops {args.crops!r}: every value must be in 1..100")
    with _progress_bar("ablate") as update:
        r = ablate_run(
            args.run,
            args.data,
            pairs_file=args.pairs_file,
            pairs_format=args.pairs_format,
            crops=crops,
            device=args.device,
            progress=update,
            fill=args.fill,
        )
    key = r["metric"]
    rows = [
        f"{'X%':>4} {'centre AUC':>11} {'outer AUC':>10}"
        + (f" {'centre acc':>11} {'outer acc':>10}" if key == "accuracy" else "")
    ]
    for i, c in enumerate(r["crops"]):
        row = f"{c:>4} {_fmt(r['centre']['auc'][i]):>11} {_fmt(r['outer']['auc'][i]):>10}"
        if key == "accuracy":
            row += f" {_fmt(r['centre']['accuracy'][i]):>11} {_fmt(r['outer']['accuracy'][i]):>10}"
        rows.append(row)
    rows.append(f"grayscale AUC {_fmt(r['grayscale']['auc'])}; best centre crop {r['best_crop']}% ({key})")
    emit(args, r, "\n".join(rows))
    return 0


# ------------------------------------------------------------------------------------- identify/predict


def _identify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--gallery", help="folder of known identities (one sub-folder each)")
    p.add_argument("--probes", help="folder of probe images (any depth)")
    p.add_argument(
        "--truth",
        help="CSV 'image,identity' (image relative to --probes; identity a gallery folder or the no-match label)",
    )
    p.add_argument("--no-match-label", default="n000000", help="identity written for rejected probes")
    p.add_argument(
        "--threshold",
        type=float,
        help="accept the best match when its score >= this (default: the best on --truth, else the run's)",
    )
    p.add_argument(
        "--holdout-from",
        metavar="DIR",
        help="instead of --gallery/--probes: build the task from one identity folder, holding out whole identities",
    )
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of identities held out as unknown")
    p.add_argument(
        "--template",
        default="max",
        choices=["max", "mean"],
        help="how an identity is scored: max = its best gallery image (default), mean = the cosine to "
        "the mean of its gallery embeddings",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write predictions CSV (image, identity, best_match, score)")
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="N",
        help="also write each probe's N best gallery images into the --out CSV: top1_path (relative "
        "to --gallery), top1_score, ..., topN_path, topN_score",
    )
    p.add_argument(
        "--index",
        default="exact",
        choices=["exact", "faiss-ivf", "faiss-hnsw"],
        help="how the --top-k lists are searched: exact, or an approximate FAISS index (pip install "
        "faiss-cpu), faster on a large gallery but it may miss or reorder some of the N images "
        "(an empty path at -inf where it found fewer); identity, best_match, score and every "
        "reported metric stay exact",
    )
    add_align(p)
    add_device_json(p)


def _identify_summary(r: dict) -> str:
    lines = [
        f"{r['n_probes']} probes against {r['n_gallery_images']} gallery images of {r['n_identities']} identities"
        + (" (mean-embedding templates)" if r.get("template") == "mean" else "")
    ]
    if "rank1" in r:
        lines.append(f"  closed set: rank-1 {_fmt(r['rank1'])}, rank-5 {_fmt(r['rank5'])}")
    for level, d in r.get("dir_at_fpir", {}).items():
        lines.append(
            f"  DIR@FPIR={level}: "
            + (
                f"{_fmt(d['dir'])} at threshold {_fmt(d['threshold'])}"
                if d.get("reachable")
                else "unreachable with these probes"
            )
        )
    if "open_set_accuracy" in r:
        lines.append(
            f"  open-set accuracy {_fmt(r['open_set_accuracy'])} at threshold {_fmt(r['threshold'])} "
            f"({r.get('threshold_source', '')})"
        )
    return "\n".join(lines)


@command("identify", "1:N identification: closed-set rank-k and open-set DIR@FPIR", _identify_args)
def cmd_identify(args: argparse.Namespace) -> int:
    from core.atomic import atomic_write_text
    from core.embedder import load_embedder
    from core.identify import holdout_identities, identify

    if (args.top_k or args.index != "exact") and (args.holdout_from or not args.out):
        raise MatchLabError("--top-k/--index write into the predictions CSV: pass --gallery, --probes and --out")
    if args.index != "exact" and args.top_k < 1:
        raise MatchLabError(f"--index {args.index} only searches the --top-k lists: add --top-k N")
    run = load_embedder(args.run, device=args.device)
    if args.align:  # recorded in the model's Preprocess, which every step below reads
        from dataclasses import replace

        run.preprocess = replace(run.preprocess, align=args.align)
    if args.holdout_from:
        report = holdout_identities(
            run,
            args.holdout_from,
            holdout=args.holdout,
            seed=args.seed,
            threshold=args.threshold,
            template=args.template,
        )
    else:
        if not (args.gallery and args.probes):
            raise MatchLabError("identify needs --gallery and --probes (or --holdout-from DIR)")
        report, preds = identify(
            run,
            args.gallery,
            args.probes,
            truth_csv=args.truth,
            no_match_label=args.no_match_label,
            threshold=args.threshold,
            top_k=args.top_k,
            index=args.index,
            template=args.template,
        )
        if args.out:
            atomic_write_text(args.out, preds.to_csv(index=False))
            report["predictions"] = args.out
    emit(args, report, _identify_summary(report) + (f"\n{args.out}" if args.out else ""))
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="folder of images to classify (any depth)")
    p.add_argument("--out", required=True, help="CSV to write: file,label,score")
    p.add_argument("--gallery", help="open set: identity folder to match against (writes identity or no-match)")
    p.add_argument("--no-match-label", default="n000000")
    p.add_argument("--threshold", type=float, help="open set: accept a match when score >= this (default: the run's)")
    add_device_json(p)


@command("predict", "write a predictions CSV (closed-set labels, or open-set identity / no match)", _predict_args)
def cmd_predict(args: argparse.Namespace) -> int:
    from core.atomic import atomic_write_text
    from core.embedder import load_embedder
    from core.identify import identify, predict_folder

    run = load_embedder(args.run, device=args.device)
    if args.gallery:
        _, preds = identify(run, args.gallery, args.data, no_match_label=args.no_match_label, threshold=args.threshold)
        preds = preds.rename(columns={"image": "file", "identity": "label"})[["file", "label", "score"]]
    else:
        preds = predict_folder(run, args.data)
    atomic_write_text(args.out, preds.to_csv(index=False))
    emit(args, {"predictions": args.out, "rows": len(preds)}, f"{len(preds)} predictions\n{args.out}")
    return 0


# -------------------------------------------------------------------------------------------- project


def _project_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="image folder (evaluated first if it has no artifacts)")
    p.add_argument("--method", default="pca", choices=["pca", "umap", "tsne"], help="2-D projection method")
    p.add_argument("--max-points", type=int, default=20000, help="plot at most this many (stratified sample)")
    add_device_json(p)


@command("project", "a cached 2-D projection (UMAP / t-SNE / PCA) of a folder's embeddings", _project_args)
def cmd_project(args: argparse.Namespace) -> int:
    from core.evaluate import evaluate_run
    from core.layout import eval_key
    from core.projection import load_or_compute_projection, projection_path

    files = RunFiles(Path(args.run)).eval(eval_key(args.data))
    if not files.embeddings.is_file():
        evaluate_run(args.run, args.data, device=args.device)
    frame = load_or_compute_projection(files.dir, args.method, max_points=args.max_points)
    path = projection_path(files.dir, args.method, None, args.max_points)
    emit(
        args,
        {"embeddings": str(files.embeddings), "projection": str(path), "points": len(frame)},
        f"{len(frame):,} points projected with {args.method}\n{path}",
    )
    return 0


@command("embed", "deprecated name of `project` (kept for one release)", _project_args)
def cmd_embed(args: argparse.Namespace) -> int:
    print("note: `embed` is now called `project`; `embed` will be removed in the next release", file=sys.stderr)
    return cmd_project(args)


# -------------------------------------------------------------------------------------------- extract


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="image folder (ImageFolder layout), any size")
    p.add_argument("--out", help="artifact folder (default: RUN/eval/<folder>/shards)")
    p.add_argument("--tta", choices=["flip"], help="test-time augmentation: mean embedding of image and mirror")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    add_device_json(p)
    p.epilog = (
        "Under torchrun (torchrun --nproc_per_node=N -m core extract ...) each process embeds its own\n"
        "contiguous block of rows on its own GPU and writes one shard; index.json is written last."
    )


@command(
    "extract", "embeddings of a whole folder as a sharded artifact, in parallel across torchrun ranks", _extract_args
)
def cmd_extract(args: argparse.Namespace) -> int:
    from core import distributed
    from core.evaluate import eval_key
    from core.extract import extract_sharded

    out = Path(args.out) if args.out else RunFiles(Path(args.run)).eval(eval_key(args.data, tta=args.tta)).shards
    index = extract_sharded(
        args.run, args.data, out, device=args.device, flip_tta=args.tta == "flip", batch_size=args.batch_size
    )
    if distributed.current().is_main:
        emit(
            args,
            {**index, "out": str(out)},
            f"{index['n_images']:,} embeddings of width {index['dim']} in {len(index['shards'])} shards\n{out}",
        )
    distributed.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- sweep


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="base recipe YAML (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override applied to every run")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="section.key=v1,v2",
        help="values to try for one key (repeat for more keys; runs = every combination)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="train each combination with seeds 0..N-1 (default: the config's train.seed only); each seed draws "
        "its own split too, unless an override fixes data.split_seed",
    )
    p.add_argument("--out", default="checkpoints", help="folder that holds the sweep folder (default: checkpoints/)")
    p.add_argument("--name", help="sweep folder name (default: <recipe>-sweep); run folders go inside it")
    p.add_argument(
        "--eval-data",
        metavar="DIR",
        help="evaluate every run on this folder (default: the run's own "
        "data.train, pairs among its held-out identities)",
    )
    add_pairs(p)
    p.add_argument("--no-eval", action="store_true", help="train only; the table has no verification columns")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")


def _sweep_command(args: argparse.Namespace) -> str:
    """The command that reproduces this sweep, with its defaults spelled out, for the top of sweep.md."""
    import shlex

    parts = ["python", "-m", "core", "sweep", args.config, *args.overrides]
    for g in args.grid:
        parts += ["--grid", g]
    for flag, value in (
        ("--seeds", args.seeds),
        ("--out", args.out),
        ("--name", args.name),
        ("--eval-data", args.eval_data),
        ("--pairs-format", args.pairs_format),
        ("--pairs", args.pairs_file),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts + (["--no-eval"] if args.no_eval else []))


@command("sweep", "train every combination of a grid of config values (x seeds) and tabulate them", _sweep_args)
def cmd_sweep(args: argparse.Namespace) -> int:
    from core.sweep import parse_grid, run_sweep, summary_text

    try:
        r = run_sweep(
            args.config,
            parse_grid(args.grid),
            list(args.overrides),
            seeds=args.seeds,
            out=args.out,
            name=args.name,
            eval_data=args.eval_data,
            pairs_file=args.pairs_file,
            pairs_format=args.pairs_format,
            evaluate=not args.no_eval,
            command=_sweep_command(args),
        )
    except KeyboardInterrupt:
        raise MatchLabError("interrupted; run the same command again to continue (finished runs are skipped)") from None
    emit(args, {k: r[k] for k in ("sweep", "runs", "aggregate")}, summary_text(r))
    return 0


def _dashboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoints",
        nargs="?",
        default=None,
        help="folder whose sub-folders are runs (default: ./checkpoints, else the checkout's bundled runs)",
    )
    p.add_argument("--port", type=int, default=8501, help="port on localhost (default 8501)")


def _streamlit_flags(config_toml: Path) -> list[str]:
    """`.streamlit/config.toml` as command-line flags, so the server settings hold from any working folder."""
    import tomllib

    if not config_toml.is_file():
        return []
    settings = tomllib.loads(config_toml.read_text())
    return [
        f"--{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for section, values in settings.items()
        for key, value in values.items()
    ]


@command("dashboard", "open the dashboard (Streamlit, localhost) on a checkpoints folder", _dashboard_args)
def cmd_dashboard(args: argparse.Namespace) -> int:
    import os
    import subprocess

    code_root = Path(__file__).resolve().parents[1]  # holds core/ and dashboard/: a checkout, or the wheel's matchlab/
    candidates = (
        [Path(args.checkpoints)] if args.checkpoints else [Path.cwd() / "checkpoints", code_root / "checkpoints"]
    )
    ckpt = next((c for c in candidates if c.is_dir()), None)
    if ckpt is None:
        raise MatchLabError(
            f"no checkpoints folder at {candidates[0]}; pass the folder that holds your runs, "
            f"e.g. matchlab dashboard path/to/checkpoints"
        )
    env = {
        **os.environ,
        "MATCHLAB_CHECKPOINTS": str(ckpt.resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code_root), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(code_root / "dashboard" / "app.py"),
        *_streamlit_flags(code_root / ".streamlit" / "config.toml"),
        f"--server.port={args.port}",
    ]
    print(f"dashboard on http://localhost:{args.port} over {ckpt} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------------------------- audit


def _audit_args(p: argparse.ArgumentParser) -> None:
    from core.audit.settings import AuditSettings

    d = AuditSettings()
    p.add_argument("run", help="run folder (a MatchLab run or an imported model)")
    p.add_argument("--data", required=True, help="image folder to audit (ImageFolder layout)")
    add_pairs(p)
    p.add_argument(
        "--split",
        dest="split_file",
        metavar="FILE",
        help="split.json (or a run folder) saying which images are train/val/test; default: the run's "
        "own split when --data is the folder it trained on",
    )
    p.add_argument(
        "--classifier",
        default=d.classifier,
        choices=["auto", "centroid", "knn"],
        help="out-of-fold class probabilities fed to cleanlab: softmax over the other folds' class means "
        "(centroid), a cross-validated kNN vote (knn), or whichever gives the labels the higher "
        f"out-of-fold likelihood (auto; default {d.classifier})",
    )
    p.add_argument("--k", type=int, default=d.k, help=f"neighbours voting in the cross-validated kNN (default {d.k})")
    p.add_argument(
        "--near-duplicate",
        type=float,
        default=d.near_duplicate,
        help="cosine at or above which two files are near duplicates (default: 1 - "
        f"{d.near_duplicate_ratio} x the median distance of an image to its closest same-identity image)",
    )
    p.add_argument(
        "--min-images",
        type=int,
        default=d.min_images,
        help=f"identities with fewer images are too small to judge (default {d.min_images})",
    )
    add_device_json(p)


@command(
    "audit", "data audit: label errors, duplicates and leakage, outliers, image quality; suggested fixes", _audit_args
)
def cmd_audit(args: argparse.Namespace) -> int:
    from core.audit.run import audit_run, summary_text
    from core.audit.settings import AuditSettings

    settings = AuditSettings(
        k=args.k, near_duplicate=args.near_duplicate, min_images=args.min_images, classifier=args.classifier
    )
    with _progress_bar("audit") as update:
        s = audit_run(
            args.run,
            args.data,
            pairs_file=args.pairs_file,
            pairs_format=args.pairs_format,
            split_file=args.split_file,
            settings=settings,
            device=args.device,
            progress=update,
        )
    emit(args, s, summary_text(s))
    return 0


# ---------------------------------------------------------------------------------------- import-model


def _import_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_file", metavar="MODEL_FILE", help="ONNX (.onnx), torch.export (.pt2) or TorchScript (.pt/.ts)"
    )
    p.add_argument("--name", required=True, help="run folder name for the imported model")
    p.add_argument("--res", required=True, help="model input height,width in pixels, e.g. 112,112 or 112,96")
    p.add_argument("--mean", required=True, help="per-channel mean on the 0..1 scale, in the model's channel order")
    p.add_argument("--std", required=True, help="per-channel std on the 0..1 scale, in the model's channel order")
    p.add_argument("--channels", default="RGB", choices=["RGB", "BGR"], help="channel order the model expects")
    p.add_argument("--crop", type=float, default=1.0, help="centre-crop fraction before the model (default 1.0)")
    p.add_argument(
        "--tta",
        choices=["flip"],
        help="test-time augmentation used wherever this model embeds (evaluate, verify, identify, live)",
    )
    p.add_argument("--out", default="checkpoints", help="folder that holds run folders (default: checkpoints/)")
    add_device_json(p)
    p.epilog = (
        "InsightFace-style ArcFace exports take (x - 127.5) / 127.5 on 0..255, i.e. --mean 0.5,0.5,0.5\n"
        "--std 0.5,0.5,0.5; torchvision models take --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225."
    )


@command(
    "import-model",
    "bring your own model: check an ONNX / .pt2 / TorchScript file and make it a run folder",
    _import_model_args,
)
def cmd_import_model(args: argparse.Namespace) -> int:
    from core.embedder import Preprocess
    from core.external import import_model, parse_res, parse_triple

    preprocess = Preprocess(
        res=parse_res(args.res),
        mean=parse_triple(args.mean, "--mean"),
        std=parse_triple(args.std, "--std"),
        crop=args.crop,
        channels=args.channels,
    )
    r = import_model(
        args.model_file, name=args.name, preprocess=preprocess, out=args.out, tta=args.tta, device=args.device
    )
    lines = [
        f"imported {Path(args.model_file).name} ({r['format']}, input {r['input']}): {r['embedding_dim']}-d "
        f"embeddings, finite and deterministic on a probe batch; sha256 {r['sha256'][:16]}"
    ]
    if r["format"] == "torchscript":
        lines.append("note: torch deprecates TorchScript; torch.export.save (.pt2) or ONNX is the recommended export")
    if r["folded_external_data"]:
        lines.append("note: the weights kept beside the .onnx file were folded into the run folder's copy")
    lines.append(f"next: python -m core evaluate {r['run']} --data data/orl_faces")
    lines.append(r["run"])  # contract: the run folder is the last line printed
    emit(args, r, "\n".join(lines))
    return 0


def _import_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="run folder name for the imported evaluation")
    p.add_argument(
        "--data",
        help="folder the file's image paths are relative to; galleries show pictures only where paths resolve under it",
    )
    p.add_argument("--out", default="checkpoints", help="folder that holds run folders (default: checkpoints/)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")


def _import_scores_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        metavar="FILE",
        help="CSV or Parquet: path_a, path_b, label (1 same, 0 different), "
        "score (higher = more alike)[, fold][, slice]",
    )
    _import_common(p)


def _imported_summary(s: dict) -> str:
    v = s["verification"]
    lines = [
        f"{s['key']}: {s['pairs']}",
        f"  verification: AUC {_fmt(v['auc'])}  EER {_fmt(v['eer'])} (threshold {_fmt(v['eer_threshold'])})  "
        f"genuine {v['n_genuine']:,}, impostor {v['n_impostor']:,}",
    ]
    for name, rep in s.get("slices", {}).items():
        lines.append(f"  slice {name}: AUC {_fmt(rep['auc'])}  EER {_fmt(rep['eer'])}")
    if "knn_accuracy" in s:
        lines.append(
            f"  kNN accuracy {_fmt(s['knn_accuracy'])}; MAP@R {_fmt(s['retrieval']['mean_average_precision_at_r'])}"
        )
    found = s.get("images_found") or {}
    lines.append(
        f"  images: {s['images_note']}"
        + (f" ({found['found']:,} of {found['checked']:,} checked paths found)" if found.get("checked") else "")
    )
    lines.append(s["verification"]["artifacts"])
    return "\n".join(lines)


@command(
    "import-scores",
    "bring your own scores: a pairs file with scores becomes an evaluation to explore",
    _import_scores_args,
)
def cmd_import_scores(args: argparse.Namespace) -> int:
    from core.imported import import_scores

    s = import_scores(args.file, name=args.name, data=args.data, out=args.out)
    emit(args, s, _imported_summary(s))
    return 0


def _import_embeddings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="Parquet with path, label, embedding; or .npy (N x D) with --labels")
    p.add_argument(
        "--labels", metavar="CSV", help="with a .npy: CSV (or Parquet) path,label; row i = row i of the array"
    )
    _import_common(p)
    add_pairs(p)


@command(
    "import-embeddings",
    "bring your own embeddings: verification, kNN and the Embeddings page on them",
    _import_embeddings_args,
)
def cmd_import_embeddings(args: argparse.Namespace) -> int:
    from core.imported import import_embeddings

    s = import_embeddings(
        args.file,
        name=args.name,
        labels=args.labels,
        data=args.data,
        pairs_file=args.pairs_file,
        pairs_format=args.pairs_format,
        out=args.out,
    )
    emit(args, s, _imported_summary(s))
    return 0


# ---------------------------------------------------------------------------------------------- align


def _align_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder of photos (any depth)")
    p.add_argument("--out", required=True, help="folder to write the aligned copies (<same path>.png) and faces.csv")
    p.add_argument("--res", default="112", help="output size: a side (112) or HxW (112x96); default 112, ArcFace's")
    p.add_argument(
        "--on-no-face",
        default="skip",
        choices=["skip", "centre", "fail"],
        help="a photo without a face: no copy (skip), a centre crop (centre), or stop (fail)",
    )
    add_device_json(p)


def parse_res(text: str) -> int | tuple[int, int]:
    """ "112" -> 112, "112x96" -> (112, 96) (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 16:
        raise MatchLabError(f"--res {text!r}: give a side of at least 16 pixels (112) or HEIGHTxWIDTH (112x96)")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


@command("align", "detect faces (MTCNN) and write 5-point aligned copies plus faces.csv", _align_args)
def cmd_align(args: argparse.Namespace) -> int:
    from core.align.folder import align_folder
    from core.run import resolve_device

    r = align_folder(
        args.folder, args.out, parse_res(args.res), device=str(resolve_device(args.device)), on_no_face=args.on_no_face
    )
    emit(
        args,
        r,
        f"{r['images']} photos: {r['aligned']} aligned, {r['no_face'] + r['centre']} without a face "
        f"(failure to enrol {r['fte_rate']:.2%}), {r['unreadable']} unreadable, {r['multi_face']} with "
        f"several faces (largest, most central used)\n{r['csv']}",
    )
    return 0


# ----------------------------------------------------------------------------------------------- main


def build_parser(prog: str = "python -m core") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="MatchLab: train and evaluate image models for classification and verification.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (help_text, setup, fn) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m core") -> int:
    parser = build_parser(prog)
    # Overrides may follow options (`train cfg.yaml --out runs train.epochs=3`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) not in ("train", "sweep") or any(
            x.startswith("-") or "=" not in x for x in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from core.cpu_infer import backend_override

        with backend_override(getattr(args, "infer_backend", None)):
            return args.func(args)
    except MatchLabError as e:
        print(f"error: {e}", file=sys.stderr)
        if "torch.distributed" in sys.modules:
            from core import distributed

            distributed.exit_now_if_distributed(2)
        return 2
