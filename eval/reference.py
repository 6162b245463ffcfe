"""Published tables shipped as CSV (``eval/reference/*.csv``) and putting our numbers beside them.

The WResVLM tables are transcribed from the paper (Xu et al., "Towards Real-World Adverse Weather Image Restoration:
Enhancing Clearness and Semantics with Vision-Language Models", ECCV 2024): Table 1 (NIMA / MUSIQ / CLIP-IQA) and
Table 2 (LIQE / Q-Align / VLM-Vis) per Rain / Haze / Snow / Overall for nine methods, and the ablation
(MUSIQ / CLIP-IQA / VLM-Vis, Overall). Metric columns use the pyiqa names our runs write (nima, musiq, clipiqa,
liqe, qalign, vlm_vis), so both sides line up by (category, metric).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from eval.tables import OVERALL, make_table, render_markdown

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

DESCRIPTIONS = {
    "wresvlm_table1": "WResVLM Table 1: NIMA / MUSIQ / CLIP-IQA on real-world Rain / Haze / Snow",
    "wresvlm_table2": "WResVLM Table 2: LIQE / Q-Align / VLM-Vis on real-world Rain / Haze / Snow",
    "wresvlm_ablation": "WResVLM ablation: MUSIQ / CLIP-IQA / VLM-Vis (Overall) per training component",
    # ours, not published: written by benchmarks/vlmir_ablation.py --ship (lite runs, see its model card)
    "vlmir_ablation_universal": "VLMIR lite ablation (ours), all types: PSNR / SSIM on the report split",
    "vlmir_ablation_noisy": "VLMIR lite ablation (ours), noisy only: PSNR / SSIM on the report split",
}

_ID_COLUMNS = ("method", "category")


def list_reference_tables() -> list[str]:
    """Names of the shipped reference tables (file stems under ``eval/reference``)."""
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.csv"))


def load_reference(name: str) -> pd.DataFrame:
    """A reference table as printed: columns method, category, the flags (ablation) and one column per metric."""
    path = REFERENCE_DIR / f"{name}.csv"
    if not path.is_file():
        raise ValueError(f"unknown reference table {name!r}; available: {', '.join(list_reference_tables())}")
    return pd.read_csv(path)


def reference_metrics(name: str) -> list[str]:
    """The metric columns of a reference table (pyiqa names / vlm_vis)."""
    from eval.metrics import metric_info

    cols = []
    for c in load_reference(name).columns:
        if c in _ID_COLUMNS:
            continue
        try:
            metric_info(c)
        except ValueError:
            continue  # ablation flags
        cols.append(c)
    return cols


def reference_scores(name: str) -> pd.DataFrame:
    """A reference table in long form (method, category, image="*", metric, score), ready for ``make_table``."""
    df = load_reference(name)
    long = df.melt(id_vars=list(_ID_COLUMNS), value_vars=reference_metrics(name), var_name="metric", value_name="score")
    long.insert(2, "image", "*")
    return long[["method", "category", "image", "metric", "score"]]


def _our_scores(ours) -> pd.DataFrame:
    if isinstance(ours, pd.DataFrame):
        return ours
    p = Path(ours)
    if p.is_dir():
        p = p / "scores.csv"
    if not p.is_file():
        raise ValueError(f"{str(ours)!r} is neither an eval output folder (with scores.csv) nor a scores CSV")
    return pd.read_csv(p)


def compare(ours, reference_table: str | None = None, *, label: str = "(ours)", paper_label: str = "(paper)") -> pd.DataFrame:
    """Our table beside a published one, on the metrics and categories both have.

    Args:
        ours: an ``eval run`` output folder, its ``scores.csv``, or a long scores ``DataFrame``.
        reference_table: a name from :func:`list_reference_tables`; default: the one sharing most metrics with ours.
        label / paper_label: suffixes added to method names of each side.

    Returns:
        Numeric table as :func:`eval.tables.make_table` (rows: paper methods, then ours). Our categories are matched
        to the paper's case-insensitively (``rain`` -> ``Rain``); ours keep their Overall (mean over all our images).
    """
    scores = _our_scores(ours).copy()
    our_metrics = set(scores["metric"])
    if reference_table is None:
        ranked = sorted(list_reference_tables(), key=lambda n: -len(our_metrics & set(reference_metrics(n))))
        if not ranked or not our_metrics & set(reference_metrics(ranked[0])):
            raise ValueError(f"no reference table shares a metric with ours ({', '.join(sorted(our_metrics))}); "
                             f"tables: {', '.join(list_reference_tables())}")
        reference_table = ranked[0]
    ref = reference_scores(reference_table)
    shared = [m for m in reference_metrics(reference_table) if m in our_metrics]
    if not shared:
        raise ValueError(f"reference table {reference_table!r} has metrics {reference_metrics(reference_table)}, "
                         f"none of ours ({', '.join(sorted(our_metrics))})")
    ref_cats = {c.lower(): c for c in ref["category"].unique()}
    scores = scores[scores["metric"].isin(shared)]
    ours_table = make_table(scores)
    ours_long = []
    for m in ours_table.index:
        for (c, k), v in ours_table.loc[m].items():
            if pd.isna(v):
                continue
            cat = OVERALL if c == OVERALL else ref_cats.get(str(c).lower())
            if cat is not None:
                ours_long.append(dict(method=f"{m} {label}", category=cat, image="*", metric=k, score=v))
    ref = ref[ref["metric"].isin(shared)].copy()
    ref["method"] = ref["method"] + f" {paper_label}"
    combined = pd.concat([ref, pd.DataFrame(ours_long, columns=ref.columns)], ignore_index=True)
    table = make_table(combined)
    order = list(dict.fromkeys(ref["method"])) + [m for m in dict.fromkeys(r["method"] for r in ours_long)]
    table = table.reindex(order)
    table.attrs["reference_table"] = reference_table
    return table


def write_comparison(table: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write ``compare.md`` and ``compare.csv`` (flat ``category/metric`` columns, full precision) under ``out``."""
    from eval.runner import _atomic_write_text

    out = Path(out)
    name = table.attrs.get("reference_table", "")
    md = f"Compared with {DESCRIPTIONS.get(name, name)} (reference table `{name}`).\n\n" + render_markdown(table)
    flat = table.copy()
    flat.columns = [f"{c}/{k}" for c, k in flat.columns]
    _atomic_write_text(out / "compare.md", md)
    _atomic_write_text(out / "compare.csv", flat.to_csv(index_label="method", float_format="%.6g", lineterminator="\n"))
    return [out / "compare.md", out / "compare.csv"]
