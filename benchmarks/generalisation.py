"""Generalisation benchmark: the classifier, restorer and rater on photos and degradations no choice was made on.

Protocol:

- photos: a split of :mod:`vlmir.training.photos`, ``report`` by default (no decision may be made on it; use
  ``select`` for choosing), each resized so its short side is 256 px;
- degradations: ``independent`` (:mod:`benchmarks.independent_degradations`, a second implementation written
  apart from :mod:`vlmir.degradations` and never imported by training) or ``ours``
  (:func:`vlmir.degradations.degrade`), seven types (motion-blurry, hazy, jpeg-compressed, low-light, noisy,
  rainy, snowy), one fixed seed per (photo, type), the same for both engines and every severity;
- classifier: top-1 over the seven types at severities 2 and 3, overall and per type (a prediction of any other
  label, ``clear`` included, is wrong); the share of clean photos called ``clear`` is shown apart;
- restorer: PSNR gain (restored minus degraded, dB, to the clean photo) at severities 2 and 3, the mean over all
  images (= over types: each type has the same images), per type, and the worst single image; SSIM (scikit-image)
  before and after per type; clean photos restored, PSNR to themselves (identity preservation);
- rater: every type at severities 1..5 plus the clean photos (severity 0): Spearman(severity, r), also on
  severities {0, 2, 3} only, and the share of (photo, type) pairs whose clean photo scores above its severity-4
  image;
- reference (``--reference``): the classical restorer given the true type, on the same images.

Run::

    python benchmarks/generalisation.py                       # report split, both engines, embedded models
    python benchmarks/generalisation.py --engine independent --limit 2 --json out.json
    python benchmarks/generalisation.py --restorer classical --classifier embedded-classifier --rater none

From another benchmark::

    from benchmarks.generalisation import evaluate
    metrics = evaluate(restorer=my_restorer, classifier="embedded-classifier", rater=None, engine="independent")
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import independent_degradations  # noqa: E402

TYPES: tuple[str, ...] = independent_degradations.TYPES
ENGINES: tuple[str, ...] = ("independent", "ours", "randomised")
BOTH: tuple[str, ...] = ("independent", "ours")  # --engine both
SEVERITIES: tuple[int, ...] = (2, 3)  # classifier and restorer
RATER_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
SHORT_SIDE = 256
CLEAR = "clear"

# issue 17's "done when" targets, checked and printed (not used for anything else)
TARGETS: dict[str, tuple[str, float]] = {
    "classifier.top1": (">=", 0.90),
    "classifier.top1_min_type": (">=", 0.90),
    "restorer.mean_gain_db": (">=", 4.0),
    "restorer.min_type_gain_db": (">=", 0.5),
    "restorer.worst_image_gain_db": (">=", -1.0),
    "restorer.clean_psnr_min_db": (">=", 33.0),
    "rater.spearman": ("<=", -0.7),
    "rater.clean_above_severity4": (">=", 0.9),
}


# ----------------------------------------------------------------------------------------------------------------
# the evaluation set
# ----------------------------------------------------------------------------------------------------------------
def case_seed(photo: str, kind: str) -> int:
    """The fixed seed of (photo, type): the same for every severity and both engines."""
    return zlib.crc32(f"{photo}/{kind}".encode()) % 100_000


def degrade_with(engine: str, img: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
    """``img`` degraded by ``engine``: float32 (H, W, 3) in [0, 1]. ``independent`` is the validation engine,
    ``ours`` the training engine's default families, ``randomised`` its domain-randomised ones (a stand-in for
    "another implementation" that may be used for choosing, since training draws from it too)."""
    if engine == "independent":
        return independent_degradations.degrade(img, kind, severity, seed)
    if engine in ("ours", "randomised"):
        from vlmir.degradations import degrade

        return degrade(img, kind, severity, seed=seed, randomise=engine == "randomised")[0]
    raise ValueError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")


def photo_names(split: str = "report", limit: int | None = None) -> tuple[str, ...]:
    """The available photos of ``split`` (catalogue order), the first ``limit`` when given."""
    from vlmir.training.photos import list_photos, missing_photos

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    names = list_photos(split)
    if not names:
        raise ValueError(f"no photo of split {split!r} is on disk; missing: {', '.join(missing_photos(split))}")
    return names[:limit] if limit is not None else names


def build_cases(engine: str, photos: Sequence[str], *, severities: Sequence[int] = RATER_SEVERITIES,
                short_side: int = SHORT_SIDE, types: Sequence[str] = TYPES
                ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Clean images by photo name and the degraded cases: dicts with ``photo``, ``type``, ``severity``, ``seed``
    and ``lq`` (float32 (H, W, 3)). ``types``: a subset of :data:`TYPES` (default all seven); a case's seed does
    not depend on which other types are asked for."""
    from vlmir.training.photos import photo_image

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise ValueError(f"types must be a non-empty subset of {', '.join(TYPES)}, got {list(types)!r}")
    clean = {p: photo_image(p, short_side) for p in photos}
    cases = []
    for p in photos:
        for t in types:
            seed = case_seed(p, t)
            for s in severities:
                cases.append({"photo": p, "type": t, "severity": int(s), "seed": seed,
                              "lq": degrade_with(engine, clean[p], t, int(s), seed)})
    return clean, cases


# ----------------------------------------------------------------------------------------------------------------
# metrics (plain functions of labels and numbers, so they can be checked by hand)
# ----------------------------------------------------------------------------------------------------------------
def classifier_metrics(true: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Top-1 accuracy overall and per true type, and the confusion counts.

    Args:
        true: the true type of each image.
        pred: the predicted label of each image (any label; one not equal to the true type is wrong).
    """
    if len(true) != len(pred) or not true:
        raise ValueError(f"true and pred must be non-empty and of one length, got {len(true)} and {len(pred)}")
    per_type: dict[str, list[bool]] = {}
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(true, pred, strict=True):
        per_type.setdefault(t, []).append(t == p)
        confusion.setdefault(t, {})
        confusion[t][p] = confusion[t].get(p, 0) + 1
    hits = [t == p for t, p in zip(true, pred, strict=True)]
    top1_type = {t: float(np.mean(v)) for t, v in per_type.items()}
    return {"top1": float(np.mean(hits)), "top1_per_type": top1_type, "top1_min_type": min(top1_type.values()),
            "confusion": confusion, "n_images": len(hits)}


def restorer_metrics(rows: Sequence[dict[str, Any]], clean_psnr: Sequence[float]) -> dict[str, Any]:
    """PSNR gain summary.

    Args:
        rows: one dict per degraded image with ``photo``, ``type``, ``severity``, ``psnr_in`` and ``psnr_out`` (dB);
            optionally ``ssim_in`` and ``ssim_out``.
        clean_psnr: PSNR (dB) of each restored clean photo to itself.
    """
    if not rows:
        raise ValueError("rows is empty")
    gains = np.array([r["psnr_out"] - r["psnr_in"] for r in rows])
    per_type: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(r["type"] for r in rows):
        sel = [r for r in rows if r["type"] == t]
        g = np.array([r["psnr_out"] - r["psnr_in"] for r in sel])
        d = {"gain_db": float(g.mean()), "min_gain_db": float(g.min()),
             "psnr_in": float(np.mean([r["psnr_in"] for r in sel])),
             "psnr_out": float(np.mean([r["psnr_out"] for r in sel]))}
        if all("ssim_in" in r for r in sel):
            d["ssim_in"] = float(np.mean([r["ssim_in"] for r in sel]))
            d["ssim_out"] = float(np.mean([r["ssim_out"] for r in sel]))
        per_type[t] = d
    w = int(np.argmin(gains))
    worst = {k: rows[w][k] for k in ("photo", "type", "severity")} | {"gain_db": float(gains[w])}
    out = {"mean_gain_db": float(gains.mean()), "min_type_gain_db": min(v["gain_db"] for v in per_type.values()),
           "worst_image": worst, "worst_image_gain_db": float(gains[w]), "per_type": per_type,
           "n_images": len(rows)}
    if len(clean_psnr):
        out["clean_psnr_db"] = float(np.mean(clean_psnr))
        out["clean_psnr_min_db"] = float(np.min(clean_psnr))
    return out


def rater_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rater summary from rows with ``photo``, ``type`` (``clear`` for the clean photo), ``severity`` (0 clean) and
    ``score`` r: Spearman(severity, r) over all rows and over severities {0, 2, 3}, the share of (photo, type)
    pairs whose clean photo scores above its severity-4 image, and the mean r by severity."""
    from scipy.stats import spearmanr

    if not rows:
        raise ValueError("rows is empty")
    sev = np.array([r["severity"] for r in rows])
    score = np.array([r["score"] for r in rows], np.float64)

    def sp(mask: np.ndarray) -> float:
        s, r = sev[mask], score[mask]
        if len(set(s.tolist())) < 2 or len(set(r.tolist())) < 2:
            return float("nan")
        return float(spearmanr(s, r).statistic)

    clean = {r["photo"]: r["score"] for r in rows if r["severity"] == 0}
    above = [clean[r["photo"]] > r["score"] for r in rows if r["severity"] == 4 and r["photo"] in clean]
    per_type = {}
    for t in dict.fromkeys(r["type"] for r in rows if r["severity"] > 0):
        per_type[t] = sp(np.array([r["type"] == t or r["severity"] == 0 for r in rows]))
    return {"spearman": sp(np.ones(len(rows), bool)), "spearman_0_2_3": sp(np.isin(sev, (0, 2, 3))),
            "clean_above_severity4": float(np.mean(above)) if above else float("nan"),
            "spearman_per_type": per_type,
            "mean_r_by_severity": {str(k): float(score[sev == k].mean()) for k in sorted(set(sev.tolist()))},
            "n_images": len(rows)}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W, 3) images in [0, 1] (scikit-image, per channel, data range 1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def check_targets(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each :data:`TARGETS` entry present in ``metrics``: its value, the target and whether it is met."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        part, name = key.split(".")
        if part not in metrics or name not in metrics[part]:
            continue
        v = float(metrics[part][name])
        ok = bool(v >= bound) if op == ">=" else bool(v <= bound)
        out[key] = {"value": v, "target": f"{op} {bound:g}", "met": ok}
    return out


# ----------------------------------------------------------------------------------------------------------------
# running models
# ----------------------------------------------------------------------------------------------------------------
def _model(obj: Any, task: str, method: str) -> Any:
    """A registry name -> the built model; an object is used as it is (it must have ``method``); None -> None."""
    if obj is None:
        return None
    if isinstance(obj, str):
        from vlmir.registry import create_model

        obj = create_model(obj, task=task)
    if not callable(getattr(obj, method, None)):
        raise ValueError(f"the {task} must be a registry name or an object with a {method}() method, got {obj!r}")
    return obj


def _tensor(img: np.ndarray):
    from vlmir.io import from_numpy

    return from_numpy(img)


def run_classifier(classifier: Any, clean: dict[str, np.ndarray], cases: Sequence[dict[str, Any]],
                   severities: Sequence[int] = SEVERITIES) -> dict[str, Any]:
    """:func:`classifier_metrics` of ``classifier.classify`` on the cases of ``severities``, plus ``clear_share``
    (clean photos called ``clear``) and the per-image predictions."""
    true, pred, images = [], [], []
    for c in cases:
        if c["severity"] not in severities:
            continue
        probs = classifier.classify(_tensor(c["lq"]))
        label = max(probs, key=probs.get)
        true.append(c["type"])
        pred.append(label)
        images.append({"photo": c["photo"], "type": c["type"], "severity": c["severity"], "pred": label})
    out = classifier_metrics(true, pred)
    clear = []
    for img in clean.values():
        probs = classifier.classify(_tensor(img))
        clear.append(max(probs, key=probs.get) == CLEAR)
    out["clear_share"] = float(np.mean(clear))
    out["images"] = images
    return out


def run_restorer(restore: Callable[[Any, str], Any], clean: dict[str, np.ndarray], cases: Sequence[dict[str, Any]],
                 severities: Sequence[int] = SEVERITIES, with_ssim: bool = True) -> dict[str, Any]:
    """:func:`restorer_metrics` of ``restore(x, true_type)`` (a blind restorer ignores the type; ``clear`` is
    passed for the clean photos), plus the per-image rows and the median seconds per image."""
    from vlmir.io import to_numpy
    from vlmir.training.evaluate import psnr

    rows, times = [], []
    for c in cases:
        if c["severity"] not in severities:
            continue
        x, ref = _tensor(c["lq"]), _tensor(clean[c["photo"]])
        t0 = time.perf_counter()
        y = restore(x, c["type"])
        times.append(time.perf_counter() - t0)
        row = {"photo": c["photo"], "type": c["type"], "severity": c["severity"],
               "psnr_in": psnr(x, ref), "psnr_out": psnr(y, ref)}
        if with_ssim:
            row["ssim_in"] = ssim(clean[c["photo"]], c["lq"])
            row["ssim_out"] = ssim(clean[c["photo"]], to_numpy(y))
        rows.append(row)
    clean_psnr = {}
    for p, img in clean.items():
        x = _tensor(img)
        clean_psnr[p] = psnr(restore(x, CLEAR), x)
    out = restorer_metrics(rows, list(clean_psnr.values()))
    out["clean_psnr_min_photo"] = min(clean_psnr, key=clean_psnr.get)
    out["clean_images"] = [{"photo": p, "psnr": v} for p, v in clean_psnr.items()]
    out["median_restore_s"] = float(np.median(times))
    out["images"] = rows
    return out


def run_rater(rater: Any, clean: dict[str, np.ndarray], cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`rater_metrics` of ``rater.rate(x)["score"]`` on every case and the clean photos."""
    rows = [{"photo": p, "type": CLEAR, "severity": 0, "score": float(rater.rate(_tensor(img))["score"])}
            for p, img in clean.items()]
    for c in cases:
        rows.append({"photo": c["photo"], "type": c["type"], "severity": c["severity"],
                     "score": float(rater.rate(_tensor(c["lq"]))["score"])})
    out = rater_metrics(rows)
    out["images"] = rows
    return out


def evaluate(restorer: Any = "embedded", classifier: Any = "embedded-classifier", rater: Any = "embedded-rater", *,
             engine: str = "independent", split: str = "report", limit: int | None = None,
             short_side: int = SHORT_SIDE, reference: bool = False, with_ssim: bool = True,
             log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run the protocol (module docstring) on one engine and split.

    Args:
        restorer: a registry name, or an object with ``restore(x)`` (x float tensor (1, 3, H, W) in [0, 1], returns
            the same shape), or ``None`` to skip.
        classifier: a registry name, an object with ``classify(x) -> dict[label, prob]``, or ``None``.
        rater: a registry name, an object with ``rate(x) -> dict`` with ``score`` (r in [1, 5]), or ``None``.
        engine: ``independent``, ``ours`` or ``randomised`` (see :func:`degrade_with`).
        split: photo split of :mod:`vlmir.training.photos` (``report``, or ``select`` for choosing).
        limit: only the first ``limit`` photos of the split (quick runs).
        short_side: photos are resized so the short side is this many px (default 256).
        reference: also the classical restorer given the true type (key ``reference``).
        with_ssim: also SSIM per type (restorer).
        log: called with a line of progress text per part (e.g. ``print``).

    Returns:
        dict with ``engine``, ``split``, ``photos``, and per part run ``classifier``, ``restorer``, ``rater``,
        ``reference`` (see :func:`classifier_metrics`, :func:`restorer_metrics`, :func:`rater_metrics`; each with
        its per-image ``images``), and ``targets`` (:func:`check_targets`).
    """
    log = log or (lambda _msg: None)
    photos = photo_names(split, limit)
    restorer_m = _model(restorer, "restorer", "restore")
    classifier_m = _model(classifier, "classifier", "classify")
    rater_m = _model(rater, "rater", "rate")
    sevs = RATER_SEVERITIES if rater_m is not None else SEVERITIES
    t0 = time.perf_counter()
    clean, cases = build_cases(engine, photos, severities=sevs, short_side=short_side)
    out: dict[str, Any] = {"engine": engine, "split": split, "photos": list(photos), "short_side": short_side,
                           "severities": list(SEVERITIES), "rater_severities": list(RATER_SEVERITIES),
                           "types": list(TYPES)}
    log(f"[{engine}/{split}] {len(photos)} photos, {len(cases)} degraded images ({time.perf_counter() - t0:.1f} s)")
    if classifier_m is not None:
        t0 = time.perf_counter()
        out["classifier"] = run_classifier(classifier_m, clean, cases)
        log(f"[{engine}/{split}] classifier done ({time.perf_counter() - t0:.0f} s)")
    if restorer_m is not None:
        t0 = time.perf_counter()
        out["restorer"] = run_restorer(lambda x, _t: restorer_m.restore(x), clean, cases, with_ssim=with_ssim)
        log(f"[{engine}/{split}] restorer done ({time.perf_counter() - t0:.0f} s)")
    if reference:
        from vlmir.models.classical import ClassicalRestorer

        classical = ClassicalRestorer()
        t0 = time.perf_counter()
        out["reference"] = run_restorer(lambda x, t: classical.restore(x, degradation=t), clean, cases,
                                        with_ssim=with_ssim)
        out["reference"]["name"] = "classical given the true type"
        log(f"[{engine}/{split}] reference done ({time.perf_counter() - t0:.0f} s)")
    if rater_m is not None:
        t0 = time.perf_counter()
        out["rater"] = run_rater(rater_m, clean, cases)
        log(f"[{engine}/{split}] rater done ({time.perf_counter() - t0:.0f} s)")
    out["targets"] = check_targets(out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------------------------
def format_report(m: dict[str, Any]) -> str:
    """The human-readable summary of one :func:`evaluate` result."""
    lines = [f"== engine {m['engine']}, split {m['split']} ({len(m['photos'])} photos: {', '.join(m['photos'])}), "
             f"short side {m['short_side']} px"]
    c, r, ref, q = m.get("classifier"), m.get("restorer"), m.get("reference"), m.get("rater")
    nan = float("nan")

    def ssim_cell(t: str) -> str:
        pt = r["per_type"][t]
        return f"{pt['ssim_in']:.3f}>{pt['ssim_out']:.3f}" if "ssim_in" in pt else "-"

    columns: list[tuple[str, Callable[[str], str]]] = []  # (title, cell of a type), right-aligned
    if c:
        columns.append(("top-1", lambda t: f"{c['top1_per_type'].get(t, nan):.3f}"))
    if r:
        columns += [("gain dB", lambda t: f"{r['per_type'][t]['gain_db']:+.2f}"),
                    ("min dB", lambda t: f"{r['per_type'][t]['min_gain_db']:+.2f}"), ("SSIM in>out", ssim_cell)]
    if ref:
        columns.append(("classical|type dB", lambda t: f"{ref['per_type'][t]['gain_db']:+.2f}"))
    if q:
        columns.append(("rater rho", lambda t: f"{q['spearman_per_type'].get(t, nan):+.3f}"))
    widths = [max(len(title), 8) for title, _ in columns]
    lines.append(f"{'type':16s}" + "".join(f" {title:>{w}s}" for (title, _), w in zip(columns, widths, strict=True)))
    for t in m["types"]:
        lines.append(f"{t:16s}" + "".join(f" {cell(t):>{w}s}" for (_, cell), w in zip(columns, widths, strict=True)))
    if c:
        lines.append(f"classifier: top-1 {c['top1']:.3f} over {c['n_images']} images (7 types, severities 2-3); "
                     f"lowest type {c['top1_min_type']:.3f}; clean photos called clear {c['clear_share']:.2f}")
    if r:
        w = r["worst_image"]
        lines.append(f"restorer: mean gain {r['mean_gain_db']:+.2f} dB over {r['n_images']} images; lowest type "
                     f"{r['min_type_gain_db']:+.2f} dB; worst image {w['photo']} {w['type']} s{w['severity']} "
                     f"{w['gain_db']:+.2f} dB; clean inputs kept at {r['clean_psnr_db']:.1f} dB (min "
                     f"{r['clean_psnr_min_db']:.1f}, {r['clean_psnr_min_photo']}); {r['median_restore_s']:.2f} "
                     "s/image median")
    if ref:
        w = ref["worst_image"]
        lines.append(f"reference (classical given the true type): mean gain {ref['mean_gain_db']:+.2f} dB; worst "
                     f"image {w['photo']} {w['type']} s{w['severity']} {w['gain_db']:+.2f} dB")
    if q:
        means = ", ".join(f"{k}: {v:.2f}" for k, v in q["mean_r_by_severity"].items())
        lines.append(f"rater: Spearman(severity 0-5, r) {q['spearman']:+.3f} (severities 0, 2, 3: "
                     f"{q['spearman_0_2_3']:+.3f}); clean above severity 4 in {q['clean_above_severity4']:.0%} of "
                     f"(photo, type) pairs; mean r by severity {means}")
    if m.get("targets"):
        lines.append("targets (issue 17): " + "; ".join(
            f"{k} {v['value']:.3g} {v['target']} {'ok' if v['met'] else 'MISSED'}" for k, v in m["targets"].items()))
    return "\n".join(lines)


def write_json(path: str | Path | None, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path``, creating its folder; nothing when ``path`` is None (no
    ``--json``)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _name_or_none(v: str) -> str | None:
    return None if v.lower() == "none" else v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/generalisation.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=(*ENGINES, "both"), default="both",
                    help="both = independent and ours (default); randomised = our engine's randomised families")
    ap.add_argument("--encoder-weights", default=None, metavar="DIR",
                    help="build the embedded restorer, classifier and rater on this encoder folder instead")
    ap.add_argument("--restorer-weights", default=None, metavar="DIR",
                    help="the embedded restorer's network from this folder instead (with --restorer embedded)")
    ap.add_argument("--split", choices=("report", "select"), default="report")
    ap.add_argument("--restorer", default="embedded", help="registry name, or 'none' to skip (default embedded)")
    ap.add_argument("--classifier", default="embedded-classifier", help="registry name or 'none'")
    ap.add_argument("--rater", default="embedded-rater", help="registry name or 'none'")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also the classical restorer given the true type (default on)")
    ap.add_argument("--ssim", action=argparse.BooleanOptionalAction, default=True, help="SSIM per type")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos of the split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write every number (and per-image rows) here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    engines = BOTH if args.engine == "both" else (args.engine,)
    restorer, classifier, rater = (_name_or_none(args.restorer), _name_or_none(args.classifier),
                                   _name_or_none(args.rater))
    if args.encoder_weights or args.restorer_weights:  # the embedded models from other folders (a retrained run)
        from vlmir.models import embedded

        enc = args.encoder_weights
        restorer = (embedded.build_restorer(path=args.restorer_weights, encoder_path=enc) if restorer == "embedded"
                    else restorer)
        classifier = embedded.build_classifier(path=enc) if classifier == "embedded-classifier" else classifier
        rater = embedded.build_rater(encoder_path=enc) if rater == "embedded-rater" else rater
    results = {}
    for engine in engines:
        m = evaluate(restorer, classifier, rater,
                     engine=engine, split=args.split, limit=args.limit, reference=args.reference,
                     with_ssim=args.ssim, log=lambda s: print(s, file=sys.stderr, flush=True))
        m["models"] = {"restorer": args.restorer, "classifier": args.classifier, "rater": args.rater}
        results[engine] = m
        print(format_report(m), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
