"""The WResVLM lite run and its ablation (each loss term on/off, with and without pseudo-label refresh) on this CPU.

Run: ``OMP_NUM_THREADS=1 python benchmarks/wresvlm_ablation.py --out runs/wresvlm_lite [--steps-per-round 40]``.
Resumable: a variant whose ``final/`` exists is not trained again; a killed variant resumes from its checkpoint.

1. Splits (engine images, so the numbers are reproducible offline): the *unlabelled* training set from the config's
   ``unlabelled`` photos (labels withheld), and an unlabelled *report* split from the three held-out photos (chelsea,
   coffee, grace_hopper), two images each of rain, haze and snow, ``OUT/report/Input/<Rain|Haze|Snow>/``; their
   clean images are kept in ``OUT/report/GT`` only for PSNR/SSIM, which WResVLM's real-world tables do not have.
2. Variants, all from the same student (the embedded restorer), the same labelled sampler and the same initial
   pseudo-labels (the first variant's store, copied): ``L_sup``; ``+L_ps``; ``+L_wpl``; ``+L_sem``; ``+L_feat``
   (without refresh); ``+iter`` (all terms, pseudo-labels refreshed by the teacher between rounds: the full method);
   ``+iter@s=1``, the full method with the slides' softmax over plain cosines (``clip_scale: 1.0``); ``@3x80``, the
   full method for 3 rounds x 80 steps (the shipped ``wresvlm-lite``); ``L_sup+L_ps@no-r_vlm``, pseudo-labels from
   the embedded restorer alone (no choice by r^vlm: the paper's row without r_vlm).
3. Each variant's EMA teacher restores the report split (``OUT/report/<variant>/...``), beside ``Input``, the
   initial student ``embedded`` and ``classical``; ``eval.run`` scores VLM-Vis (embedded rater), the weight-free
   no-reference metrics PIQE and entropy, and PSNR/SSIM against ``GT``.
4. ``OUT/REPORT.md``: per variant the mean r^vlm of the teacher's outputs on the unlabelled set per round, the
   ablation table (ours and the paper's), and our rows beside WResVLM Table 2's (VLM-Vis).
5. The weather report set (numbers no choice was made on): the catalogue's ``report`` photos
   (:mod:`vlmir.training.photos`, short side 256 px), rain, haze and snow at severities 2 and 3 made by the
   *independent* engine (:mod:`benchmarks.independent_degradations`, one fixed seed per (photo, type) as in
   :mod:`benchmarks.generalisation`), ``OUT/weather_report/Input/<Rain|Haze|Snow>/<photo>_s<severity>.png``, clean
   photos in ``OUT/weather_report/GT`` for PSNR/SSIM only. The same methods and metrics as step 3, scored by
   ``eval.run`` into ``OUT/weather_report_eval``; a section of ``OUT/REPORT.md`` (and ``OUT/WEATHER_REPORT.md``).
   The step-3 split (three photos now in the catalogue's ``select`` split, our own engine) is where choices were
   made.

Only the weather report set, for variants trained earlier (no training)::

    OMP_NUM_THREADS=1 python benchmarks/wresvlm_ablation.py --weather-report-only --out runs/wresvlm_report \
        --runs-dir runs/wresvlm_lite/runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALL_OFF = {"ps": 0.0, "wpl": 0.0, "sem": 0.0, "feat": 0.0}
# (name, weights overriding the config's, refresh, other config overrides): the rows of the ablation, in order;
# the last is the full method with the slides' literal softmax over plain cosines (no temperature, s = 1)
VARIANTS = (
    ("L_sup", ALL_OFF, False, {}),
    ("L_sup+L_ps", {"wpl": 0.0, "sem": 0.0, "feat": 0.0}, False, {}),
    ("L_sup+L_ps+L_wpl", {"sem": 0.0, "feat": 0.0}, False, {}),
    ("L_sup+L_ps+L_wpl+L_sem", {"feat": 0.0}, False, {}),
    ("L_sup+L_ps+L_wpl+L_sem+L_feat", {}, False, {}),
    ("L_sup+L_ps+L_wpl+L_sem+L_feat+iter", {}, True, {}),
    ("L_sup+L_ps+L_wpl+L_sem+L_feat+iter@s=1", {}, True, {"clip_scale": 1.0}),
    ("L_sup+L_ps+L_wpl+L_sem+L_feat+iter@3x80", {}, True, {"rounds": 3, "steps_per_round": 80}),
    # the paper's "L_ps without r_vlm": pseudo-labels from one restorer (the student's start), no choice by rating
    ("L_sup+L_ps@no-r_vlm", {"wpl": 0.0, "sem": 0.0, "feat": 0.0}, False, {"init_restorers": ["embedded"]}),
)
METRICS = "vlm_vis,piqe,entropy,psnr,ssim"
METRIC_TITLES = {"vlm_vis": "VLM-Vis ↑", "piqe": "PIQE ↓", "entropy": "entropy ↑", "psnr": "PSNR ↑", "ssim": "SSIM ↑"}
# the weather report set (module docstring, step 5)
WEATHER_REPORT_SEVERITIES = (2, 3)
WEATHER_REPORT_SHORT_SIDE = 256


FLAGS = ("L_sup", "L_ps", "r_vlm", "L_wpl", "L_sem", "L_feat", "iter")


def _flags(name: str) -> dict[str, int]:
    """The ablation flags of a variant name; r_vlm: pseudo-labels chosen by rating (all with L_ps but
    ``@no-r_vlm``)."""
    parts = set(name.split("@")[0].split("+"))
    if "L_ps" in parts and "@no-r_vlm" not in name:
        parts.add("r_vlm")
    return {k: int(k in parts) for k in FLAGS}


def _markdown(df) -> str:
    """A DataFrame as a Markdown table (no ``tabulate`` dependency)."""
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def weather_report_cases(limit: int | None = None, *, severities=WEATHER_REPORT_SEVERITIES,
                         short_side: int = WEATHER_REPORT_SHORT_SIDE):
    """The weather report set in memory: the catalogue's ``report`` photos degraded by the independent engine.

    Args:
        limit: only the first ``limit`` report photos (quick runs; default all).
        severities: the severities of each (photo, type), default (2, 3).
        short_side: photos resized so the shorter side is this many px (default 256).

    Returns:
        ``(clean, cases)`` as :func:`benchmarks.generalisation.build_cases`: clean float32 (H, W, 3) images by photo
        name, and per (photo, type in rainy / hazy / snowy, severity) a dict with ``photo``, ``type``,
        ``severity``, ``seed`` (:func:`~benchmarks.generalisation.case_seed`) and ``lq``.
    """
    from benchmarks.generalisation import build_cases, photo_names
    from vlmir.training.wresvlm import WEATHER_TYPES

    return build_cases("independent", photo_names("report", limit), severities=severities, short_side=short_side,
                       types=WEATHER_TYPES)


def write_weather_report_split(root: str | Path, limit: int | None = None, *, severities=WEATHER_REPORT_SEVERITIES,
                               short_side: int = WEATHER_REPORT_SHORT_SIDE) -> list[Path]:
    """:func:`weather_report_cases` written as ``root/Input/<Rain|Haze|Snow>/<photo>_s<severity>.png``, each clean
    photo beside it as ``root/GT/<category>/<same name>`` (for PSNR/SSIM only). Returns the input paths."""
    import torch

    from vlmir.io import save_image
    from vlmir.training.wresvlm import CATEGORY_OF

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]

    root = Path(root)
    clean, cases = weather_report_cases(limit, severities=severities, short_side=short_side)
    written = []
    for c in cases:
        rel = Path(CATEGORY_OF[c["type"]]) / f"{c['photo']}_s{c['severity']}.png"
        for sub, img in (("Input", c["lq"]), ("GT", clean[c["photo"]])):
            (root / sub / rel).parent.mkdir(parents=True, exist_ok=True)
            save_image(tensor(img), root / sub / rel)
        written.append(root / "Input" / rel)
    return written


def report_methods(runs_dir: str | Path) -> dict:
    """The restorers every report split is scored on: ``embedded`` (the student's start), ``classical`` and each
    variant of :data:`VARIANTS` whose exported EMA teacher ``runs_dir/<variant>/final`` exists, in that order."""
    from vlmir.models.embedded import build_restorer
    from vlmir.registry import create_model

    methods = {"embedded": create_model("embedded", task="restorer"),
               "classical": create_model("classical", task="restorer")}
    for name, *_ in VARIANTS:
        final = Path(runs_dir) / name / "final"
        if final.is_dir():
            methods[name] = build_restorer(path=final)
    return methods


def evaluate_split(root: str | Path, methods: dict, out: str | Path, metrics: str = METRICS):
    """Restore ``root/Input/<category>/*.png`` with each of ``methods`` (name -> object with ``restore(x)``) into
    ``root/<name>/...`` (an output already on disk is kept) and score every folder with ``eval.run`` against
    ``root/GT`` into ``out`` (``scores.csv``, ``table.md`` ...). Returns ``(scores, table)``: the long scores and
    ``eval.make_table``'s numbers."""
    import eval as ev
    from vlmir.io import load_image, save_image

    root = Path(root)
    inputs = sorted((root / "Input").rglob("*.png"))
    if not inputs:
        raise FileNotFoundError(f"no input image under {root / 'Input'}")
    for m, r in methods.items():
        for p in inputs:
            dst = root / m / p.relative_to(root / "Input")
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_image(r.restore(load_image(p)), dst)
    scores = ev.run(root, metrics, reference="GT", out=out, skip_unavailable=True, verbose=False)
    return scores, ev.make_table(scores)


def _cell(metric: str, v: float) -> str:
    return f"{v:.4f}" if metric in ("vlm_vis", "ssim") else f"{v:.3f}"


def weather_report_lines(scores, table, root: str | Path, eval_dir: str | Path,
                         metrics: str = METRICS) -> list[str]:
    """The Markdown section of the weather report set: Overall per method and metric, then per category
    (``eval.make_table(grouped=True)``'s cells)."""
    import eval as ev

    keys = [k for k in metrics.split(",") if ("Overall", k) in table.columns]
    cats = [c for c in ("Rain", "Haze", "Snow") if c in {c for c, _ in table.columns}]
    counts = {c: scores[(scores["method"] == "Input") & (scores["category"] == c)]["image"].nunique() for c in cats}
    n_img = sum(counts.values())
    lines = ["## The weather report set: numbers no choice was made on", "",
             f"The catalogue's `report` photos (`vlmir/training/photos.py`, short side {WEATHER_REPORT_SHORT_SIDE} px), "
             "rain, haze and snow at severities " + ", ".join(map(str, WEATHER_REPORT_SEVERITIES)) + " made by the "
             "independent engine (`benchmarks/independent_degradations.py`, one fixed seed per (photo, type)): "
             f"{n_img} images (" + ", ".join(f"{c} {counts[c]}" for c in cats) + f"), `{root}`. Treated as an "
             "unlabelled real-world-like set: VLM-Vis with the embedded rater, the weight-free PIQE and entropy; "
             "PSNR / SSIM against the withheld clean photos. No training, setting or checkpoint was chosen on "
             f"these images. eval tables: `{eval_dir}/table.md`, `table.csv`.", "",
             "Overall:", "", "| method | " + " | ".join(METRIC_TITLES.get(k, k) for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for m in table.index:
        lines.append(f"| {m} | " + " | ".join(_cell(k, float(table.loc[m, ('Overall', k)])) for k in keys) + " |")
    grouped = ev.make_table(scores, grouped=True).loc[list(table.index)]
    lines += ["", "Per category (" + " / ".join(METRIC_TITLES.get(k, k) for k in keys) + "):", "",
              "| method | " + " | ".join(grouped.columns) + " |", "|---|" + "---|" * len(grouped.columns)]
    lines += [f"| {m} | " + " | ".join(str(v) for v in row) + " |" for m, row in grouped.iterrows()]
    return lines + [""]


def weather_report(out: Path, runs_dir: Path, methods: dict | None = None) -> list[str]:
    """Step 5 of the module docstring: write (once) and score the weather report set; returns its report lines."""
    root = out / "weather_report"
    if not (root / "Input").is_dir():
        write_weather_report_split(root)
    methods = report_methods(runs_dir) if methods is None else methods
    scores, table = evaluate_split(root, methods, out / "weather_report_eval")
    first = ["Input", "classical", "embedded"]
    order = [m for m in [*first, *(m for m in methods if m not in first)] if m in table.index]
    return weather_report_lines(scores, table.loc[order], root, out / "weather_report_eval")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="vlmir/training/configs/wresvlm.json")
    ap.add_argument("--out", default="runs/wresvlm_lite")
    ap.add_argument("--steps-per-round", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default all)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--runs-dir", default=None, help="where the variants' runs are (default OUT/runs)")
    ap.add_argument("--weather-report-only", action="store_true", help="no training and no step-3 split: only the "
                    "weather report set (step 5) for the variants found in --runs-dir; writes OUT/WEATHER_REPORT.md")
    ap.add_argument("--ship", default=None, metavar="VARIANT", help="copy this variant's weights and the report "
                    "to assets/weights/wresvlm-lite (its MODEL_CARD.md is kept)")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    import eval as ev
    from vlmir.training.common import load_config
    from vlmir.training.data import HELDOUT_PHOTOS, TRAIN_PHOTOS
    from vlmir.training.wresvlm import train, write_engine_split

    torch.set_num_threads(1)
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    if args.weather_report_only:
        lines = weather_report(out, runs_dir)
        (out / "WEATHER_REPORT.md").write_text("\n".join(["# WResVLM lite: the weather report set", "",
                                                        f"Variants from `{runs_dir}`.", "", *lines]))
        print("\n".join(lines))
        return 0
    base = load_config(args.config)
    if args.steps_per_round is not None:
        base["steps_per_round"] = args.steps_per_round
    if args.rounds is not None:
        base["rounds"] = args.rounds
    u = dict(base.get("unlabelled", {}))
    u_dir = out / "unlabelled"
    if not u_dir.is_dir():
        write_engine_split(u_dir, photos=u.get("photos", TRAIN_PHOTOS[:6]), per_photo=int(u.get("per_photo", 3)),
                           seed=int(u.get("seed", 7)), short_side=int(u.get("short_side", 160)),
                           p_mixture=float(u.get("p_mixture", 0.2)))
    base["unlabelled"] = {"folder": str(u_dir), "short_side": int(u.get("short_side", 160))}
    report = out / "report"
    if not (report / "Input").is_dir():
        write_engine_split(report / "Input", photos=HELDOUT_PHOTOS, per_photo=6, seed=123, short_side=192,
                           clean_out=report / "GT", p_mixture=0.0)

    chosen = [v for v in VARIANTS if args.only is None or v[0] in args.only.split(",")]
    first_store = runs_dir / VARIANTS[0][0] / "pseudo_labels"
    for name, weights, refresh, overrides in chosen:
        run_dir = runs_dir / name
        if (run_dir / "final" / "model.safetensors").is_file():
            continue
        cfg = json.loads(json.dumps(base))
        cfg["weights"] = {**base.get("weights", {}), **weights}
        cfg["refresh"] = refresh
        cfg["name"] = name
        cfg.update(overrides)
        if name != VARIANTS[0][0] and "init_restorers" not in overrides and (first_store / "index.json").is_file():
            cfg["pseudo_labels_from"] = str(first_store)
        train(cfg, run_dir, resume=True, progress=False)

    if args.no_eval:
        return 0
    # restorations of the step-3 split (three photos, our engine: where choices were made)
    methods = report_methods(runs_dir)
    _, table = evaluate_split(report, methods, out / "eval")
    overall = {m: {k: float(table.loc[m, ("Overall", k)]) for k in METRICS.split(",") if ("Overall", k) in table.columns}
               for m in table.index}

    lines = ["# WResVLM lite run (CPU) and ablation", "",
             f"Config `{args.config}`, {base['rounds']} rounds x {base['steps_per_round']} steps (the `@3x80` variant: 3 "
             f"rounds x 80; `@s=1`: softmax over plain cosines, `clip_scale: 1.0`), batch "
             f"{base.get('batch_size', 4)} labelled + {base.get('unlabelled_batch_size', 4)} unlabelled crops, one CPU "
             "thread. Student: the embedded restorer; frozen CLIP: the embedded encoder (degradation embedding, our "
             "own small model, not OpenAI CLIP); L_feat: the embedded encoder's content-tower features (no Depth "
             "Anything weights offline); rater: the embedded rater (not LLaVA); IQA votes: none (MUSIQ, CLIP-IQA, "
             "Q-Align weights absent). Splits: engine images (rain, haze, snow, mixtures), so 'real' is simulated.",
             "", "The numbers no choice was made on are in the last section (the weather report set: the catalogue's "
             "`report` photos, the independent engine's weather). The ablation and Table 2 sections are on the "
             "three-photo split (chelsea, coffee, grace_hopper; now the catalogue's `select` split), the split this "
             "run was reported and judged on.",
             "", "## Mean r^vlm of the EMA teacher's outputs on the unlabelled set, per round", ""]
    history = {}
    for name, *_ in VARIANTS:
        path = runs_dir / name / "rounds.jsonl"
        if path.is_file():
            history[name] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    n = max((len(r) for r in history.values()), default=1)
    lines += ["| variant | " + " | ".join(f"round {i}" for i in range(n)) + " | pseudo-labels replaced | mean r^vlm of "
              "the pseudo-labels at the end |", "|---|" + "---|" * (n + 2)]
    for name, recs in history.items():
        cells = [f"{r['mean_r_vlm_teacher']:.4f}" for r in recs] + [""] * (n - len(recs))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r['replaced'] for r in recs)} | "
                     f"{recs[-1]['mean_r_vlm_pseudo']:.4f} |")
    lines += ["", "## Ablation on the three-photo split (Overall; VLM-Vis with the embedded rater)", "",
              "chelsea, coffee, grace_hopper (now the catalogue's `select` split), our own engine's weather, short "
              "side 192: the numbers the shipped variant and the settings were chosen on. The numbers no choice was "
              "made on are the weather report set's, below.", "",
              "| method | " + " | ".join(FLAGS) + " | VLM-Vis ↑ | PIQE ↓ | entropy ↑ | PSNR ↑ | SSIM ↑ |",
              "|---|" + "---|" * (len(FLAGS) + 5)]
    rows = []
    for m in ["Input", "classical", "embedded"] + [v[0] for v in VARIANTS]:
        if m not in overall:
            continue
        f = _flags(m) if m.startswith("L_sup") else dict.fromkeys(FLAGS, "")
        o = overall[m]
        rows.append({"method": m, "category": "Overall", **f, **o})
        cells = [("✓" if f[k] == 1 else "") for k in f]
        vals = [f"{o.get(k, float('nan')):.4f}" if k in ("vlm_vis", "ssim") else f"{o.get(k, float('nan')):.3f}"
                for k in ("vlm_vis", "piqe", "entropy", "psnr", "ssim")]
        lines.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(vals) + " |")
    pd.DataFrame(rows).to_csv(out / "ablation.csv", index=False)
    paper = ev.load_reference("wresvlm_ablation")
    lines += ["", "The paper's ablation (real-world test set, LLaVA rater), for the layout:", "",
              _markdown(paper), ""]
    try:
        from eval.reference import write_comparison

        cmp = ev.compare(out / "eval", "wresvlm_table2", label="(ours, lite)")
        write_comparison(cmp, out / "compare_table2")
        lines += ["## Beside WResVLM Table 2 (VLM-Vis per category; ours: embedded rater, our engine's weather on "
                  "the three-photo split)", "",
                  (out / "compare_table2" / "compare.md").read_text() if (out / "compare_table2" / "compare.md").is_file()
                  else _markdown(cmp.round(3).reset_index()), ""]
    except (ValueError, OSError) as e:
        lines += [f"Table 2 comparison not made: {e}", ""]
    lines += ["Table 1 (NIMA / MUSIQ / CLIP-IQA) has no column we can compute here: their weights are not on this "
              "machine, so our rows there are empty.", ""]
    lines += weather_report(out, runs_dir, methods)
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    full = runs_dir / str(args.ship) / "final"
    if args.ship and not full.is_dir():
        raise FileNotFoundError(f"--ship {args.ship}: {full} does not exist")
    if args.ship:
        from vlmir.models.embedded import WRESVLM_DIR
        from vlmir.training.common import copy_export

        copy_export(full, WRESVLM_DIR)
        (WRESVLM_DIR / "lite_run_report.md").write_text("\n".join(lines) + "\n")
        for ext in ("md", "csv"):  # eval's tables of the weather report set
            shutil.copy2(out / "weather_report_eval" / f"table.{ext}", WRESVLM_DIR / f"weather_report_table.{ext}")
        print(f"shipped {full} to {WRESVLM_DIR}")
    print("\n".join(lines))
    shutil.copy2(out / "eval" / "table.md", out / "eval_table.md") if (out / "eval" / "table.md").is_file() else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
