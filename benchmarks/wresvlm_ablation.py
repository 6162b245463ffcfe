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
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="vlmir/training/configs/wresvlm.json")
    ap.add_argument("--out", default="runs/wresvlm_lite")
    ap.add_argument("--steps-per-round", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default all)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--ship", default=None, metavar="VARIANT", help="copy this variant's weights and the report "
                    "to assets/weights/wresvlm-lite (its MODEL_CARD.md is kept)")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    import eval as ev
    from vlmir.io import load_image, save_image
    from vlmir.models.embedded import build_restorer
    from vlmir.registry import create_model
    from vlmir.training.common import load_config
    from vlmir.training.data import HELDOUT_PHOTOS, TRAIN_PHOTOS
    from vlmir.training.wresvlm import train, write_engine_split

    torch.set_num_threads(1)
    out = Path(args.out)
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
    first_store = out / "runs" / VARIANTS[0][0] / "pseudo_labels"
    for name, weights, refresh, overrides in chosen:
        run_dir = out / "runs" / name
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
    # restorations of the report split
    inputs = sorted((report / "Input").rglob("*.png"))
    methods = {"embedded": create_model("embedded", task="restorer"), "classical": create_model("classical", task="restorer")}
    for name, *_ in VARIANTS:
        final = out / "runs" / name / "final"
        if final.is_dir():
            methods[name] = build_restorer(path=final)
    for m, r in methods.items():
        for p in inputs:
            dst = report / m / p.relative_to(report / "Input")
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_image(r.restore(load_image(p)), dst)
    scores = ev.run(report, METRICS, reference="GT", out=out / "eval", skip_unavailable=True, verbose=False)
    table = ev.make_table(scores)
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
             "", "## Mean r^vlm of the EMA teacher's outputs on the unlabelled set, per round", ""]
    history = {}
    for name, *_ in VARIANTS:
        path = out / "runs" / name / "rounds.jsonl"
        if path.is_file():
            history[name] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    n = max((len(r) for r in history.values()), default=1)
    lines += ["| variant | " + " | ".join(f"round {i}" for i in range(n)) + " | pseudo-labels replaced | mean r^vlm of "
              "the pseudo-labels at the end |", "|---|" + "---|" * (n + 2)]
    for name, recs in history.items():
        cells = [f"{r['mean_r_vlm_teacher']:.4f}" for r in recs] + [""] * (n - len(recs))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r['replaced'] for r in recs)} | "
                     f"{recs[-1]['mean_r_vlm_pseudo']:.4f} |")
    lines += ["", "## Ablation on the report split (Overall; VLM-Vis with the embedded rater)", "",
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
        lines += ["## Beside WResVLM Table 2 (VLM-Vis per category; ours: embedded rater, engine weather)", "",
                  (out / "compare_table2" / "compare.md").read_text() if (out / "compare_table2" / "compare.md").is_file()
                  else _markdown(cmp.round(3).reset_index()), ""]
    except (ValueError, OSError) as e:
        lines += [f"Table 2 comparison not made: {e}", ""]
    lines += ["Table 1 (NIMA / MUSIQ / CLIP-IQA) has no column we can compute here: their weights are not on this "
              "machine, so our rows there are empty.", ""]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    full = out / "runs" / str(args.ship) / "final"
    if args.ship and not full.is_dir():
        raise FileNotFoundError(f"--ship {args.ship}: {full} does not exist")
    if args.ship:
        from vlmir.models.embedded import WRESVLM_DIR
        from vlmir.training.common import copy_export

        copy_export(full, WRESVLM_DIR)
        (WRESVLM_DIR / "lite_run_report.md").write_text("\n".join(lines) + "\n")
        print(f"shipped {full} to {WRESVLM_DIR}")
    print("\n".join(lines))
    shutil.copy2(out / "eval" / "table.md", out / "eval_table.md") if (out / "eval" / "table.md").is_file() else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
