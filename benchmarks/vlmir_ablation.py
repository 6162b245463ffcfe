"""VLMIR ablation, as the paper's table, from one command: train every variant, restore the report split, tabulate.

Variants (``variants`` in the config; each a set of overrides of the stage-1 and stage-2 configs):

- ``VLMIR``: LoRA caption alignment, degradation predictor, multi-token cross-attention with caption tokens;
- ``w/o LoRA``: stage 1 without adapters (the frozen CLIP; only the predictor trains);
- ``w/o predictor``: stage 1 without the degradation predictor (``e_c = e``, no ``e_d`` token or prompt);
- ``single-token``: DA-CLIP's one-token context ``e_c`` instead of the multi-token cross-attention;
- ``w/o captions``: the multi-token context without the caption's tokens.

Settings (``settings``): ``universal`` trains and tests on every type; a degradation-specific setting
(``{"type": "noisy"}``) trains stage 2 on that type alone and tests on it; ``restorer_steps`` in a setting
overrides the stage-2 budget of its runs. Variants with the same stage-1 config
share one stage-1 run; every run is resumable, so an interrupted ablation picks up where it stopped.

Evaluation: the report split of :mod:`vlmir.training.photos` (no choice is made on it), degraded by the
independent engine (:mod:`benchmarks.independent_degradations`, never imported by training) at severities 2-3;
each variant restores every image; the results are laid out as ``D/<method>/<type>/<image>.png`` with the clean
photos as ``D/gt`` and the degraded ones as the ``input`` row, then scored by ``eval.run`` (PSNR, SSIM, and LPIPS
when its weights are present) into ``OUT/<setting>/table.{md,tex,csv}`` and ``scores.csv``.

Run::

    python benchmarks/vlmir_ablation.py --config benchmarks/vlmir_ablation.json --out runs/vlmir_ablation
    python benchmarks/vlmir_ablation.py --config ... --out ... --limit 2 --eval-only   # re-score existing runs
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

UNIVERSAL = "universal"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, recursively for nested dicts (a copy)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _key(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]


def folder_name(variant: str) -> str:
    """The results folder of a variant: its name without path separators ("w/o LoRA" -> "wo LoRA"), so that the
    layout stays ``D/<method>/<type>/<image>``; the tables show the variant's own name again."""
    name = variant.replace("/", "").replace("\\", "").strip()
    if not name or name in (".", "..", "gt", "input"):
        raise ValueError(f"variant name {variant!r} gives no usable results folder")
    return name


def specific_data(cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    """A stage config whose data are degraded by ``kind`` alone (no mixtures; clean crops kept)."""
    from vlmir.degradations import DEGRADATIONS

    weights = {t: (1.0 if t == kind else 0.0) for t in DEGRADATIONS}
    return merge(cfg, {"data": {"type_weights": weights, "p_mixture": 0.0}})


def plan(config: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The runs of an ablation config: per (setting, variant) the stage-1 and stage-2 configs and run folders."""
    from vlmir.training.common import load_config

    align = load_config(config["align"])
    restorer = load_config(config["restorer"])
    align["steps"] = int(config.get("align_steps", align["steps"]))
    restorer["steps"] = int(config.get("restorer_steps", restorer["steps"]))
    runs = []
    for setting, sopts in config.get("settings", {UNIVERSAL: {}}).items():
        for variant, over in config["variants"].items():
            a = merge(align, over.get("align", {}))
            a_dir = out / "align" / _key(a)
            r = merge(restorer, over.get("restorer", {}))
            if sopts.get("type"):
                r = specific_data(r, sopts["type"])
            r["steps"] = int(sopts.get("restorer_steps", r["steps"]))
            r["aligner"] = str(a_dir / "final")
            runs.append({"setting": setting, "type": sopts.get("type"), "variant": variant, "align": a,
                         "align_dir": a_dir, "restorer": r, "restorer_dir": out / setting / "runs" / _key(r)})
    return runs


def train_all(runs: list[dict[str, Any]], progress: bool = False) -> None:
    from vlmir.training.train_vlmir import train_align, train_restorer

    for run in runs:
        for stage, fn, cfg, d in (("align", train_align, run["align"], run["align_dir"]),
                                  ("restorer", train_restorer, run["restorer"], run["restorer_dir"])):
            if (d / "final" / ("pipeline.json" if stage == "restorer" else "config.json")).is_file():
                continue
            print(f"[{run['setting']} / {run['variant']}] {stage} -> {d}", file=sys.stderr)
            fn(cfg, d, resume=True, progress=progress)


def write_results(runs: list[dict[str, Any]], out: Path, *, limit: int | None, split: str, engine: str,
                  steps: int | None, severities: tuple[int, ...] = (2, 3)) -> dict[str, Path]:
    """Restore the evaluation images with every variant and lay them out for ``eval.run``; per setting the
    dataset folder."""
    from benchmarks.generalisation import build_cases, photo_names
    from vlmir.io import from_numpy, save_image
    from vlmir.pipelines.vlmir import load_vlmir

    photos = photo_names(split, limit)
    clean, cases = build_cases(engine, photos, severities=severities)
    folders = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        d = out / setting / "dataset"
        kind = next(r["type"] for r in runs if r["setting"] == setting)
        mine = [c for c in cases if kind is None or c["type"] == kind]
        for c in mine:
            name = f"{c['photo']}_s{c['severity']}.png"
            save_image(from_numpy(clean[c["photo"]]), d / "gt" / c["type"] / name)
            save_image(from_numpy(c["lq"]), d / "input" / c["type"] / name)
        for run in (r for r in runs if r["setting"] == setting):
            pipe = load_vlmir(run["restorer_dir"] / "final")
            method = run["variant"]
            for c in mine:
                dst = d / folder_name(method) / c["type"] / f"{c['photo']}_s{c['severity']}.png"
                if dst.is_file():
                    continue
                save_image(pipe.restore(from_numpy(c["lq"]), steps=steps, seed=0), dst)
            print(f"[{setting}] {method}: {len(mine)} images restored", file=sys.stderr)
        folders[setting] = d
    return folders


def score_setting(dataset: Path, out: Path, variants: list[str], metrics: str) -> Any:
    """Score one setting's results with ``eval.run`` and write its tables under ``out`` with the variants' names
    (folders are :func:`folder_name`)."""
    import eval as ev

    scores, report = ev.run(dataset, metrics=metrics, reference="gt", out=None, skip_unavailable=True,
                            verbose=False, cache=out / "score_cache.sqlite", return_report=True)
    labels = {folder_name(v): v for v in variants}
    scores["method"] = scores["method"].map(lambda m: labels.get(m, m))
    ev.write_outputs(scores, out, report=report)
    return scores


def ship_table(scores_csv: Path, name: str) -> Path:
    """Write one setting's table as ``eval/reference/<name>.csv`` (method, category, one column per metric; the
    layout of the shipped WResVLM tables), so the app's Metric tables tab lists it."""
    import pandas as pd

    import eval as ev
    from eval.reference import REFERENCE_DIR

    table = ev.make_table(pd.read_csv(scores_csv))
    rows = []
    for method in table.index:
        for category in dict.fromkeys(c for c, _ in table.columns):
            cells = table.loc[method, category]
            rows.append({"method": method, "category": category, **{m: float(v) for m, v in cells.items()}})
    path = REFERENCE_DIR / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.4f")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="ablation config (benchmarks/vlmir_ablation.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=None, help="first N report photos (default: the config's)")
    ap.add_argument("--eval-only", action="store_true", help="no training: score the runs that exist")
    ap.add_argument("--metrics", default="psnr,ssim,lpips")
    ap.add_argument("--ship", action="store_true",
                    help="also write each setting's table to eval/reference/vlmir_ablation_<setting>.csv")
    args = ap.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    out = Path(args.out)
    runs = plan(config, out)
    if not args.eval_only:
        train_all(runs)
    opts = config.get("eval", {})
    limit = args.limit if args.limit is not None else opts.get("limit")
    folders = write_results(runs, out, limit=limit, split=opts.get("split", "report"),
                            engine=opts.get("engine", "independent"), steps=opts.get("steps"),
                            severities=tuple(opts.get("severities", (2, 3))))
    for setting, d in folders.items():
        variants = [r["variant"] for r in runs if r["setting"] == setting]
        scores = score_setting(d, out / setting, variants, args.metrics)
        print(f"\n## {setting}\n")
        print((out / setting / "table.md").read_text())
        del scores
        if args.ship:
            print(f"shipped {ship_table(out / setting / 'scores.csv', f'vlmir_ablation_{setting}')}")
    (out / "plan.json").write_text(json.dumps([{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}
                                               for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
