"""Validation of the embedded models on the held-out photos (never seen in training), fixed seeds.

Protocol (the numbers in the model cards): the held-out photos (``chelsea``, ``coffee``, ``grace_hopper``) resized
so the short side is 256 px, degraded by :func:`vlmir.degradations.degrade` with each of the ten types at
severities 2 and 3 and seeds 0 and 1 (classification) or seed 0 (restoration), plus the clean photos.

- classifier: top-1 accuracy per type, over the ten types, and on clean photos (``clear``);
- restorer: PSNR of the degraded input and of the restored output to the clean photo, per type; the gain; and
  PSNR of the restored clean photo to itself (should stay high: nothing to do);
- rater: every type at severities 1..5 (seed 0) plus clean: Spearman correlation of the combined severity (0 for
  clean) with the score r, and the share of (photo, type) pairs whose clean image scores above its severity-4 image;
  per type, the Spearman correlation within the type (its severities and the clean photos) and the mean r by
  severity, which show whether a low pooled correlation comes from a type's ordering or from its scale.

``python -m vlmir.training.evaluate --task all --out metrics.json`` (``--restorer/--encoder/--rater`` paths).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vlmir.degradations import DEGRADATIONS, degrade
from vlmir.io import from_numpy
from vlmir.training.data import CLEAR, HELDOUT_PHOTOS, heldout_image


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (capped at 100 dB for identical images)."""
    mse = float((a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).mean())
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(1.0 / mse))


def _cases(photos: Sequence[str], severities: Sequence[int], seeds: Sequence[int], short_side: int):
    for p in photos:
        clean = heldout_image(p, short_side)
        for t in DEGRADATIONS:
            for s in severities:
                for seed in seeds:
                    lq, _ = degrade(clean, t, s, seed=seed)
                    yield p, t, s, seed, clean, lq


def eval_classifier(classify: Callable[[torch.Tensor], dict[str, float]], *, photos: Sequence[str] = HELDOUT_PHOTOS,
                    severities: Sequence[int] = (2, 3), seeds: Sequence[int] = (0, 1),
                    short_side: int = 256) -> dict[str, Any]:
    """Top-1 accuracy of ``classify`` per type, overall (ten types) and on clean photos."""
    hits: dict[str, list[bool]] = {t: [] for t in DEGRADATIONS}
    confusion: dict[str, dict[str, int]] = {t: {} for t in DEGRADATIONS}
    for _, t, _, _, _, lq in _cases(photos, severities, seeds, short_side):
        probs = classify(from_numpy(lq))
        pred = max(probs, key=probs.get)
        hits[t].append(pred == t)
        confusion[t][pred] = confusion[t].get(pred, 0) + 1
    clear_hits = []
    for p in photos:
        for side in (short_side, int(short_side * 1.5)):
            probs = classify(from_numpy(heldout_image(p, side)))
            clear_hits.append(max(probs, key=probs.get) == CLEAR)
    per_type = {t: float(np.mean(v)) for t, v in hits.items()}
    all_hits = [h for v in hits.values() for h in v]
    return {
        "top1_ten_types": float(np.mean(all_hits)),
        "top1_with_clear": float(np.mean(all_hits + clear_hits)),
        "clear_accuracy": float(np.mean(clear_hits)),
        "per_type": per_type,
        "confusion": confusion,
        "n_images": len(all_hits) + len(clear_hits),
    }


def eval_restorer(restore: Callable[..., torch.Tensor], *, photos: Sequence[str] = HELDOUT_PHOTOS,
                  severities: Sequence[int] = (2, 3), seeds: Sequence[int] = (0,),
                  short_side: int = 256, given_type: bool = False) -> dict[str, Any]:
    """PSNR before/after ``restore`` per type; PSNR of restored clean photos to themselves.

    ``given_type``: call ``restore(x, degradation)`` with the true type (``clear`` for the clean photos), as for
    the classical baseline "given the true type"; otherwise ``restore(x)`` (blind).
    """
    rows: dict[str, list[tuple[float, float]]] = {t: [] for t in DEGRADATIONS}
    times = []
    for _, t, _, _, clean, lq in _cases(photos, severities, seeds, short_side):
        c, x = from_numpy(clean), from_numpy(lq)
        t0 = time.perf_counter()
        y = restore(x, t) if given_type else restore(x)
        times.append(time.perf_counter() - t0)
        rows[t].append((psnr(x, c), psnr(y, c)))
    per_type = {}
    for t, v in rows.items():
        a = np.array(v)
        per_type[t] = {"psnr_in": float(a[:, 0].mean()), "psnr_out": float(a[:, 1].mean()),
                       "gain": float((a[:, 1] - a[:, 0]).mean())}
    clean_psnr = []
    for p in photos:
        c = from_numpy(heldout_image(p, short_side))
        clean_psnr.append(psnr(restore(c, CLEAR) if given_type else restore(c), c))
    gains = [v["gain"] for v in per_type.values()]
    return {
        "mean_gain_db": float(np.mean(gains)),
        "min_gain_db": float(np.min(gains)),
        "per_type": per_type,
        "clean_psnr_db": float(np.mean(clean_psnr)),
        "clean_psnr_min_db": float(np.min(clean_psnr)),
        "median_restore_s": float(np.median(times)),
        "n_images": sum(len(v) for v in rows.values()),
    }


def eval_rater(rate: Callable[[torch.Tensor], dict], *, photos: Sequence[str] = HELDOUT_PHOTOS,
               severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0, short_side: int = 256) -> dict[str, Any]:
    """Spearman(severity, r) and the clean-above-severity-4 share."""
    from scipy.stats import spearmanr

    sev, score, above = [], [], []
    per_level: dict[int, list[float]] = {}
    per_type: dict[str, list[tuple[int, float]]] = {t: [] for t in DEGRADATIONS}
    for p in photos:
        clean = heldout_image(p, short_side)
        r_clean = float(rate(from_numpy(clean))["score"])
        sev.append(0)
        score.append(r_clean)
        per_level.setdefault(0, []).append(r_clean)
        for t in DEGRADATIONS:
            per_type[t].append((0, r_clean))
            for s in severities:
                lq, _ = degrade(clean, t, s, seed=seed)
                r = float(rate(from_numpy(lq))["score"])
                sev.append(s)
                score.append(r)
                per_level.setdefault(s, []).append(r)
                per_type[t].append((s, r))
                if s == 4:
                    above.append(r_clean > r)
    sp_all = float(spearmanr(sev, score).statistic)
    mask = [s in (0, 2, 3) for s in sev]
    sp_23 = float(spearmanr(np.array(sev)[mask], np.array(score)[mask]).statistic)
    return {
        "spearman_severity_r": sp_all,
        "spearman_severity_r_clean_2_3": sp_23,
        "clean_above_severity4": float(np.mean(above)) if above else float("nan"),
        "mean_r_by_severity": {str(k): float(np.mean(v)) for k, v in sorted(per_level.items())},
        "n_images": len(sev),
        "by_type": {t: _type_summary(v) for t, v in per_type.items()},
    }


def _type_summary(pairs: list[tuple[int, float]]) -> dict[str, Any]:
    """Spearman(severity, r) over one type's images and the clean photos, and its mean r by severity."""
    from scipy.stats import spearmanr

    s, r = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    sp = float(spearmanr(s, r).statistic) if len(set(s)) > 1 and len(set(r)) > 1 else float("nan")
    return {"spearman": sp, "mean_r_by_severity": {str(k): float(r[s == k].mean()) for k in sorted(set(s.tolist()))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlmir.training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("classifier", "restorer", "rater", "classical", "all"), default="all",
                    help="'classical': the classical baseline given the true type (the restorer's comparison "
                         "point; included in 'all')")
    ap.add_argument("--encoder", default=None, help="encoder weights folder (default assets/weights/embedded-encoder)")
    ap.add_argument("--restorer", default=None, help="restorer weights folder")
    ap.add_argument("--rater", default=None, help="rater weights folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the metrics JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vlmir.models.embedded import build_classifier, build_rater, build_restorer

    metrics: dict[str, Any] = {"protocol": __doc__.split("\n\n")[1].replace("\n", " ")}
    if args.task in ("classifier", "all"):
        metrics["classifier"] = eval_classifier(build_classifier(path=args.encoder).classify)
        print(json.dumps({"classifier": {k: v for k, v in metrics["classifier"].items() if k != "confusion"}}))
    if args.task in ("restorer", "all"):
        restorer = build_restorer(path=args.restorer, encoder_path=args.encoder)
        metrics["restorer"] = eval_restorer(restorer.restore)
        print(json.dumps({"restorer": metrics["restorer"]}))
        if restorer.net.prior:  # the same network with the true type's classical prior
            metrics["restorer_given_type"] = eval_restorer(
                lambda x, t: restorer.restore(x, degradation=t), given_type=True)
            print(json.dumps({"restorer_given_type": metrics["restorer_given_type"]}))
    if args.task in ("classical", "all"):
        from vlmir.models.classical import ClassicalRestorer

        classical = ClassicalRestorer()
        metrics["classical_given_type"] = eval_restorer(
            lambda x, t: classical.restore(x, degradation=t), given_type=True)
        print(json.dumps({"classical_given_type": metrics["classical_given_type"]}))
    if args.task in ("rater", "all"):
        metrics["rater"] = eval_rater(build_rater(path=args.rater, encoder_path=args.encoder).rate)
        print(json.dumps({"rater": metrics["rater"]}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
