"""Rater-guarded restoration: let the visibility rater pick between the input and the restorer's outputs.

A blind restorer that trusts a wrong type applies the wrong classical prior at full strength, and single images
lose several dB. WResVLM chooses its pseudo-labels by the VLM's visibility score r (sum_i i p_i over the five level
words); the same judge can choose at inference. For each image the candidates are

- ``input``: the image itself (identity),
- ``restored``: the embedded restorer's output (prior of the predicted type),
- ``second``: the restorer's output with the prior of the second most likely type,

and a policy keeps ``restored`` unless another candidate rates at least ``margin`` higher (r on 1-5):

- ``guard-input@m``: candidates input and restored;
- ``guard-all@m``: all three.

Rule (fixed before the first run): on the select split with the randomised engine, a policy passes when its worst
image is at least 0.5 dB above the plain restorer's, its mean gain is at most 0.1 dB lower, and with our engine
its mean gain is at most 0.3 dB lower; clean photos must stay at least 33 dB. Among passing policies the one with
the highest mean gain on the randomised engine would become the default. Nothing is chosen on the report split;
``--split report`` only shows a chosen policy there.

Run::

    python benchmarks/restorer_guard.py --json runs/guard_select.json       # select split, randomised + ours
    python benchmarks/restorer_guard.py --split report --engines independent ours --json runs/guard_report.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generalisation import CLEAR, SEVERITIES, build_cases, photo_names, restorer_metrics, write_json  # noqa: E402

CANDIDATES = ("input", "restored", "second")
MARGINS = (0.0, 0.1, 0.25, 0.5)
RULE = {"worst_gain_db": 0.5, "mean_slack_randomised_db": 0.1, "mean_slack_ours_db": 0.3, "clean_min_db": 33.0}


def policies() -> dict[str, tuple[tuple[str, ...], float]]:
    """``{name: (candidates, margin)}``: ``plain`` (always restored) and every guard at every margin."""
    out = {"plain": (("restored",), 0.0)}
    for m in MARGINS:
        out[f"guard-input@{m:g}"] = (("input", "restored"), m)
        out[f"guard-all@{m:g}"] = (CANDIDATES, m)
    return out


def choose(scores: dict[str, float], candidates: tuple[str, ...], margin: float) -> str:
    """The candidate a policy keeps: ``restored`` unless the best-rated other candidate rates more than ``margin``
    above it (ties go to ``restored``)."""
    others = [c for c in candidates if c != "restored"]
    if not others:
        return "restored"
    best = max(others, key=lambda c: scores[c])
    return best if scores[best] > scores["restored"] + margin else "restored"


def score_images(restorer: Any, rater: Any, clean: dict[str, np.ndarray], cases: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Per image (the degraded cases of :data:`SEVERITIES`, then each clean photo as type ``clear``): PSNR to the
    clean photo and the rating r of every candidate."""
    from vlmir.io import from_numpy
    from vlmir.training.evaluate import psnr

    rows = []
    items = [(c["photo"], c["type"], c["severity"], c["lq"]) for c in cases if c["severity"] in SEVERITIES]
    items += [(p, CLEAR, 0, img) for p, img in clean.items()]
    for photo, kind, sev, lq in items:
        x, ref = from_numpy(lq), from_numpy(clean[photo])
        probs = restorer.type_probabilities(x)
        ranked = sorted(probs, key=probs.get, reverse=True)
        second = next(t for t in ranked if t not in (CLEAR, ranked[0]))  # the runner-up degradation type
        outs = {"input": x, "restored": restorer.restore(x), "second": restorer.restore(x, prior_type=second)}
        rows.append({"photo": photo, "type": kind, "severity": sev, "second_type": second,
                     "psnr_in": psnr(x, ref), **{f"psnr_{c}": psnr(y, ref) for c, y in outs.items()},
                     **{f"r_{c}": float(rater.rate(y)["score"]) for c, y in outs.items()}})
    return rows


def policy_metrics(rows: list[dict[str, Any]], candidates: tuple[str, ...], margin: float) -> dict[str, Any]:
    """:func:`restorer_metrics` of one policy over scored rows, plus how often it kept each candidate."""
    picked, metric_rows, clean_psnr = [], [], []
    for r in rows:
        c = choose({k: r[f"r_{k}"] for k in CANDIDATES}, candidates, margin)
        picked.append(c)
        if r["type"] == CLEAR:
            clean_psnr.append(r[f"psnr_{c}"])
        else:
            metric_rows.append({"photo": r["photo"], "type": r["type"], "severity": r["severity"],
                                "psnr_in": r["psnr_in"], "psnr_out": r[f"psnr_{c}"]})
    out = restorer_metrics(metric_rows, clean_psnr)
    out["kept"] = {c: picked.count(c) for c in CANDIDATES}
    return out


def verdict(res: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The rule (module docstring) over ``{engine: {policy: metrics}}`` with engines randomised and ours."""
    plain_r, plain_o = res["randomised"]["plain"], res["ours"]["plain"]
    passing = {}
    for name in res["randomised"]:
        if name == "plain":
            continue
        r, o = res["randomised"][name], res["ours"][name]
        ok = (r["worst_image_gain_db"] - plain_r["worst_image_gain_db"] >= RULE["worst_gain_db"]
              and plain_r["mean_gain_db"] - r["mean_gain_db"] <= RULE["mean_slack_randomised_db"]
              and plain_o["mean_gain_db"] - o["mean_gain_db"] <= RULE["mean_slack_ours_db"]
              and min(r["clean_psnr_min_db"], o["clean_psnr_min_db"]) >= RULE["clean_min_db"])
        if ok:
            passing[name] = r["mean_gain_db"]
    return {"passing": sorted(passing, key=passing.get, reverse=True),
            "chosen": max(passing, key=passing.get) if passing else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/restorer_guard.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("select", "report"), default="select")
    ap.add_argument("--engines", nargs="+", choices=("randomised", "ours", "independent"),
                    default=["randomised", "ours"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args(argv)
    import torch

    from vlmir.registry import create_model

    torch.set_num_threads(args.threads)
    restorer, rater = create_model("embedded", task="restorer"), create_model("embedded-rater", task="rater")
    photos = photo_names(args.split, args.limit)
    out: dict[str, Any] = {"split": args.split, "photos": list(photos), "rule": RULE, "results": {}, "rows": {}}
    for engine in args.engines:
        t0 = time.perf_counter()
        clean, cases = build_cases(engine, photos, severities=SEVERITIES)
        rows = score_images(restorer, rater, clean, cases)
        out["rows"][engine] = rows
        res = out["results"][engine] = {}
        for name, (cands, margin) in policies().items():
            m = policy_metrics(rows, cands, margin)
            res[name] = {k: v for k, v in m.items() if k != "per_type"} | {
                "per_type": {t: v["gain_db"] for t, v in m["per_type"].items()}}
            w = m["worst_image"]
            print(f"[{engine}] {name:18s} mean {m['mean_gain_db']:+.2f} dB, lowest type {m['min_type_gain_db']:+.2f}, "
                  f"worst {w['photo']} {w['type']} s{w['severity']} {w['gain_db']:+.2f}, clean min "
                  f"{m['clean_psnr_min_db']:.1f} dB, kept {m['kept']}")
        print(f"[{engine}] {len(rows)} images in {time.perf_counter() - t0:.0f} s")
    if args.split == "select" and {"randomised", "ours"} <= set(args.engines):
        out["verdict"] = verdict(out["results"])
        print(f"rule: passing {out['verdict']['passing'] or 'none'}; chosen {out['verdict']['chosen']}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
