"""Wrong-type stress test: the embedded restorer given the classical prior of a type the image does not have.

The blind restorer takes the classical prior of the type its encoder predicts, and a trust mask decides how much
of it to keep. On photos and degradations the encoder has not seen, its type is often wrong, and a confident
wrong type (a sunset called hazy) used to apply the wrong prior at full strength. This benchmark forces that case
on every image, so that robustness to a wrong type can be measured without waiting for the encoder to be wrong:

- ``blind``: the restorer as shipped (the prior's type from the encoder), severities 2-3, seven types;
- ``wrong``: for every degraded image, the prior of each of the other six types (``restore(prior_type=...)``; the
  conditioning and the deblurring weight stay the encoder's own), and for every clean photo each of the seven;
- per restorer: blind mean gain and worst image, clean photos' PSNR to themselves (blind), and under wrong priors
  the mean gain, the worst image and the clean photos' minimum.

Rule for shipping a restorer trained against wrong priors (``prior_wrong_p``), fixed before its first run, on the
select split with the randomised engine and with ours, against the shipped restorer: its worst image under wrong
priors rises by at least 1 dB with one engine and falls with neither; its blind mean gain is at most 0.1 dB lower
with the randomised engine and 0.3 dB with ours; its blind worst image is at most 0.3 dB lower with either; its
clean photos stay at 33 dB or more, blind. Two candidates were tried, written down before either was scored:
``experiments/restorer_wrong_prior.json`` (the shipped data) and ``experiments/restorer_wrong_prior_randomised.json``
(also the 23 train photos and a quarter of samples from the randomised families). If both pass, the one with the
higher blind mean gain with the randomised engine ships. Both failed narrowly (blind worst image with our engine
0.33 dB lower; blind mean with ours 0.34 dB lower), so two gentler ones followed, again written down before
scoring and under the same rule and tie-break: ``restorer_wrong_prior_gentle.json`` (learning rate 1e-4, 15% wrong
priors) and ``restorer_wrong_prior_slow.json`` (learning rate 1e-4, 25%). Both passed; the gentle one won the
tie-break and ships (the restorer's card has the table). Nothing is chosen on the report split; ``--split report``
only shows the shipped model there (with ``--candidate`` another one beside it, for the card, not for choosing).

Run::

    python benchmarks/restorer_wrong_prior.py --candidate runs/restorer_wrong_prior/final --json runs/wp.json
    python benchmarks/restorer_wrong_prior.py --split report --engines independent ours
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

from benchmarks.generalisation import (  # noqa: E402
    SEVERITIES,
    TYPES,
    build_cases,
    photo_names,
    restorer_metrics,
    write_json,
)

RULE = {"wrong_worst_gain_db": 1.0, "mean_slack_randomised_db": 0.1, "mean_slack_ours_db": 0.3,
        "worst_slack_db": 0.3, "clean_min_db": 33.0}


def score(restorer: Any, clean: dict[str, np.ndarray], cases: list[dict[str, Any]],
          types: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """Blind and wrong-prior metrics of ``restorer`` (an :class:`~vlmir.models.embedded.EmbeddedRestorer`) on the
    degraded ``cases`` of :data:`SEVERITIES` and the ``clean`` photos."""
    from vlmir.io import from_numpy
    from vlmir.training.evaluate import psnr

    blind, wrong, clean_blind, clean_wrong = [], [], [], []
    for c in cases:
        if c["severity"] not in SEVERITIES:
            continue
        x, ref = from_numpy(c["lq"]), from_numpy(clean[c["photo"]])
        base = {"photo": c["photo"], "type": c["type"], "severity": c["severity"], "psnr_in": psnr(x, ref)}
        blind.append({**base, "psnr_out": psnr(restorer.restore(x), ref)})
        for w in types:
            if w != c["type"]:
                wrong.append({**base, "prior": w, "psnr_out": psnr(restorer.restore(x, prior_type=w), ref)})
    for img in clean.values():
        x = from_numpy(img)
        clean_blind.append(psnr(restorer.restore(x), x))
        clean_wrong.extend(psnr(restorer.restore(x, prior_type=w), x) for w in types)
    b, wr = restorer_metrics(blind, clean_blind), restorer_metrics(wrong, clean_wrong)
    worst = min(wrong, key=lambda r: r["psnr_out"] - r["psnr_in"])
    # which wrong prior costs most: per forced type, the mean and the worst gain over the images it was forced on
    per_prior = {}
    for w in types:
        gains = [r["psnr_out"] - r["psnr_in"] for r in wrong if r["prior"] == w]
        if gains:
            per_prior[w] = {"mean_gain_db": float(np.mean(gains)), "worst_image_gain_db": float(min(gains)),
                            "images": len(gains)}
    return {"blind": {"mean_gain_db": b["mean_gain_db"], "worst_image_gain_db": b["worst_image_gain_db"],
                      "worst_image": b["worst_image"], "clean_psnr_mean_db": b["clean_psnr_db"],
                      "clean_psnr_min_db": b["clean_psnr_min_db"],
                      "per_type_gain_db": {t: v["gain_db"] for t, v in b["per_type"].items()}},
            "wrong": {"mean_gain_db": wr["mean_gain_db"], "worst_image_gain_db": wr["worst_image_gain_db"],
                      "worst_image": {k: worst[k] for k in ("photo", "type", "severity", "prior")},
                      "clean_psnr_mean_db": wr["clean_psnr_db"], "clean_psnr_min_db": wr["clean_psnr_min_db"],
                      "images": len(wrong), "per_prior": per_prior}}


def verdict(shipped: dict[str, dict[str, Any]], candidate: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rule (module docstring) over ``{engine: score()}`` of the shipped and the candidate restorer, with
    engines ``randomised`` and ``ours``."""
    rise = {e: candidate[e]["wrong"]["worst_image_gain_db"] - shipped[e]["wrong"]["worst_image_gain_db"]
            for e in ("randomised", "ours")}
    mean_loss = {e: shipped[e]["blind"]["mean_gain_db"] - candidate[e]["blind"]["mean_gain_db"] for e in rise}
    worst_loss = {e: shipped[e]["blind"]["worst_image_gain_db"] - candidate[e]["blind"]["worst_image_gain_db"]
                  for e in rise}
    checks = {
        "wrong_worst_rises": max(rise.values()) >= RULE["wrong_worst_gain_db"] and min(rise.values()) >= 0.0,
        "blind_mean_kept": mean_loss["randomised"] <= RULE["mean_slack_randomised_db"]
        and mean_loss["ours"] <= RULE["mean_slack_ours_db"],
        "blind_worst_kept": max(worst_loss.values()) <= RULE["worst_slack_db"],
        "clean_kept": min(candidate[e]["blind"]["clean_psnr_min_db"] for e in rise) >= RULE["clean_min_db"],
    }
    return {"wrong_worst_rise_db": rise, "blind_mean_loss_db": mean_loss, "blind_worst_loss_db": worst_loss,
            "checks": checks, "passes": all(checks.values())}


def load(path: str | None, like: Any = None) -> Any:
    """The embedded restorer from a weights folder (``None``: the shipped one). ``like`` (a loaded restorer) gives
    its inference options (type source, ensemble, deblurring), so that a training run's folder is scored the way
    the shipped model runs."""
    from vlmir.models.embedded import build_restorer

    r = build_restorer(path=path)
    if like is not None:
        r.types, r.ensemble, r.deblur = like.types, like.ensemble, like.deblur
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/restorer_wrong_prior.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("select", "report"), default="select")
    ap.add_argument("--engines", nargs="+", choices=("randomised", "ours", "independent"),
                    default=["randomised", "ours"])
    ap.add_argument("--candidate", default=None, metavar="DIR", help="a trained restorer's weights folder")
    ap.add_argument("--shipped-from", default=None, metavar="JSON",
                    help="reuse the shipped restorer's scores from an earlier --json of the same split and engines")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import json

    shipped = load(None)
    models = {"shipped": shipped}
    if args.candidate:
        models["candidate"] = load(args.candidate, like=shipped)
    photos = photo_names(args.split, args.limit)
    res: dict[str, dict[str, Any]] = {m: {} for m in models}
    if args.shipped_from:
        earlier = json.loads(Path(args.shipped_from).read_text())
        if earlier["split"] != args.split or earlier["photos"] != list(photos):
            raise SystemExit(f"{args.shipped_from} scored other photos ({earlier['split']}); drop --shipped-from")
        res["shipped"] = {e: earlier["results"]["shipped"][e] for e in args.engines}
        del models["shipped"]
    t0 = time.perf_counter()
    for engine in args.engines:
        clean, cases = build_cases(engine, photos, severities=SEVERITIES)
        for name, model in models.items():
            res[name][engine] = s = score(model, clean, cases)
            print(f"{args.split}/{engine}/{name}: blind {s['blind']['mean_gain_db']:+.2f} dB, worst "
                  f"{s['blind']['worst_image_gain_db']:+.2f}, clean min {s['blind']['clean_psnr_min_db']:.1f} | "
                  f"wrong prior {s['wrong']['mean_gain_db']:+.2f} dB, worst {s['wrong']['worst_image_gain_db']:+.2f}"
                  f" ({s['wrong']['worst_image']}), clean min {s['wrong']['clean_psnr_min_db']:.1f}", flush=True)
            print("  per wrong prior (mean / worst dB): " + ", ".join(
                f"{w} {v['mean_gain_db']:+.2f} / {v['worst_image_gain_db']:+.2f}"
                for w, v in s["wrong"]["per_prior"].items()), flush=True)
    out: dict[str, Any] = {"split": args.split, "photos": list(photos), "rule": RULE, "results": res,
                           "seconds": round(time.perf_counter() - t0, 1)}
    if args.candidate and {"randomised", "ours"} <= set(args.engines) and args.split == "select":
        out["verdict"] = verdict(res["shipped"], res["candidate"])
        print("verdict:", out["verdict"])
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
