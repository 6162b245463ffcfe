"""Does each add-on of the embedded models earn its place? Each one switched off at inference, on the select split.

The shipped models carry inference-time add-ons on top of their networks. This benchmark builds the shipped
models, changes one thing at a time, and runs :func:`benchmarks.generalisation.evaluate` on every variant:

- classifier ``no view_head``: DA-CLIP's plain mean of the views' cosine logits instead of the linear view head
  over the views' logits, statistics and hole statistics;
- restorer ``no deblur``: the network's output without the deblurring ring filter weighted by p(motion-blurry);
- restorer ``no flip_ensemble``: one pass instead of the two-pass flip self-ensemble;
- restorer ``view-head types``: the prior's type and the deblurring weight from the encoder's view head (the
  previous release) instead of the plain mean of views (shipped since the first run of this benchmark);
- restorer ``no deblur, no flip_ensemble``: both of the restorer's remaining add-ons off together.

The first run (model cards) also switched off the rater's per-type calibration and severity network, which were
then removed from the shipped rater; ``vlmir/training/configs/experiments/rater_calibrated.json`` rebuilds them.

Rule (fixed before the first run): an add-on stays when switching it off loses on the select split with the
randomised engine at least 0.01 top-1 (classifier), 0.05 dB mean gain or 0.3 dB on the worst image (restorer),
or loses as much with our engine. Otherwise it is a candidate for removal. The report split is not used here;
its numbers for the shipped models come from ``benchmarks/generalisation.py``.

Run::

    python benchmarks/addons.py --json runs/addons.json              # select split, randomised and ours engines
    python benchmarks/addons.py --limit 1 --engines ours --parts classifier
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generalisation import evaluate, write_json  # noqa: E402

PARTS = ("classifier", "restorer")
THRESHOLDS = {"classifier": ("top1", 0.01), "restorer": ("mean_gain_db", 0.05), "rater": ("spearman", 0.01)}
# (the rater's threshold is kept for loss_of_switching_off: its first run measured the rater's calibration)
WORST_DB = 0.3


def _plain_types(model: Any) -> Any:
    model.encoder.view_head = None
    return model


def _no_deblur(model: Any) -> Any:
    model.net.deblur = None
    return model


def _one_pass(model: Any) -> Any:
    model.ensemble = 1
    return model


def _view_head_types(model: Any) -> Any:
    model.types = "view_head"
    return model


# part -> [(variant name, switch)], switch(model) -> the model with that add-on off (None: the shipped model)
VARIANTS: dict[str, list[tuple[str, Callable[[Any], Any] | None]]] = {
    "classifier": [("shipped", None), ("no view_head", _plain_types)],
    "restorer": [("shipped", None), ("no deblur", _no_deblur), ("no flip_ensemble", _one_pass),
                 ("view-head types", _view_head_types),
                 ("no deblur, no flip_ensemble", lambda m: _no_deblur(_one_pass(m)))],
}


def build(part: str, switch: Callable[[Any], Any] | None) -> Any:
    """A freshly built shipped model of ``part`` with ``switch`` applied."""
    from vlmir.registry import create_model

    name = {"classifier": "embedded-classifier", "restorer": "embedded"}[part]
    model = create_model(name, task=part)
    return switch(model) if switch is not None else model


def summary(part: str, m: dict[str, Any]) -> dict[str, float]:
    """The numbers of one part's metrics that the rule reads (and a few to show)."""
    if part == "classifier":
        return {"top1": m["top1"], "top1_min_type": m["top1_min_type"], "clear_share": m["clear_share"]}
    if part == "restorer":
        return {"mean_gain_db": m["mean_gain_db"], "min_type_gain_db": m["min_type_gain_db"],
                "worst_image_gain_db": m["worst_image_gain_db"], "clean_psnr_min_db": m["clean_psnr_min_db"]}
    return {"spearman": m["spearman"], "clean_above_severity4": m["clean_above_severity4"]}


def loss_of_switching_off(part: str, shipped: dict[str, float], off: dict[str, float]) -> tuple[float, bool]:
    """How much switching the add-on off loses on the rule's metric (positive = the add-on helps), and whether
    that loss (or the worst image's, for the restorer) reaches the rule's threshold."""
    key, threshold = THRESHOLDS[part]
    loss = off[key] - shipped[key] if part == "rater" else shipped[key] - off[key]
    helps = loss >= threshold
    if part == "restorer":
        helps = helps or shipped["worst_image_gain_db"] - off["worst_image_gain_db"] >= WORST_DB
    return float(loss), bool(helps)


def run(parts: tuple[str, ...] = PARTS, engines: tuple[str, ...] = ("randomised", "ours"), split: str = "select",
        limit: int | None = None, log: Callable[[str], Any] = print,
        variants: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every variant of ``parts`` (only ``variants`` by name, with ``shipped``, when given) on ``engines``:
    ``{part: {variant: {engine: summary}}}`` plus ``verdicts``."""
    out: dict[str, Any] = {"split": split, "engines": list(engines), "results": {}, "verdicts": {}}
    for part in parts:
        res = out["results"].setdefault(part, {})
        chosen = [(v, f) for v, f in VARIANTS[part] if variants is None or v == "shipped" or v in variants]
        for variant, switch in chosen:
            for engine in engines:
                t0 = time.perf_counter()
                model = build(part, switch)
                kwargs = {"restorer": None, "classifier": None, "rater": None, part: model}
                m = evaluate(**kwargs, engine=engine, split=split, limit=limit, with_ssim=False)
                res.setdefault(variant, {})[engine] = summary(part, m[part])
                log(f"{part:10s} {variant:18s} {engine:10s} "
                    + " ".join(f"{k} {v:+.3f}" for k, v in res[variant][engine].items())
                    + f" ({time.perf_counter() - t0:.0f} s)")
        for variant, _ in chosen[1:]:
            per_engine = {e: loss_of_switching_off(part, res["shipped"][e], res[variant][e]) for e in engines}
            out["verdicts"][f"{part}: {variant}"] = {
                "loss_when_off": {e: v[0] for e, v in per_engine.items()},
                "keep": any(v[1] for v in per_engine.values())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/addons.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--engines", nargs="+", choices=("randomised", "ours", "independent"),
                    default=["randomised", "ours"])
    ap.add_argument("--split", choices=("select", "report"), default="select",
                    help="select (default; for choosing). report only to show, never to choose")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos of the split")
    ap.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                    help="only these variants (and shipped), e.g. 'no deblur'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = run(tuple(args.parts), tuple(args.engines), args.split, args.limit,
              variants=tuple(args.variants) if args.variants else None)
    for name, v in out["verdicts"].items():
        losses = ", ".join(f"{e} {x:+.3f}" for e, x in v["loss_when_off"].items())
        print(f"{name}: loss when off {losses} -> {'keep' if v['keep'] else 'candidate for removal'}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
