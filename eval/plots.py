"""Bar charts of a metric table: one PNG per metric, categories on the x axis, one bar per method (matplotlib Agg)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd


def _as_table(table_or_scores: pd.DataFrame) -> pd.DataFrame:
    from eval.tables import make_table

    if isinstance(table_or_scores.columns, pd.MultiIndex):
        return table_or_scores
    if {"metric", "score"} <= set(table_or_scores.columns):
        return make_table(table_or_scores)
    raise ValueError("expected long scores (method, category, image, metric, score) or a table from eval.make_table")


def bar_charts(table_or_scores: pd.DataFrame, out_dir: str | os.PathLike, *, dpi: int = 120) -> list[Path]:
    """Write ``<out_dir>/<metric>.png`` for every metric of the table; returns the paths in metric order.

    Args:
        table_or_scores: ``eval.make_table`` output or long scores (made into a table).
        out_dir: folder for the PNGs (created).
        dpi: resolution of the PNGs.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from eval.metrics import metric_info
    from eval.tables import display_name

    table = _as_table(table_or_scores)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(dict.fromkeys(k for _, k in table.columns))
    methods = list(table.index)
    paths = []
    for metric in metrics:
        cols = [col for col in table.columns if col[1] == metric]
        cats = [c for c, _ in cols]
        x = np.arange(len(cats))
        width = 0.8 / max(len(methods), 1)
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(cats) + 0.3 * len(methods)), 3.2))
        for i, m in enumerate(methods):
            vals = [float(table.loc[m, col]) if not pd.isna(table.loc[m, col]) else 0.0 for col in cols]
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, label=str(m))
        arrow = "lower is better" if metric_info(metric).lower_better else "higher is better"
        ax.set_title(f"{display_name(metric)} ({arrow})")
        ax.set_xticks(x, cats)
        # legend beside the axes, so it never hides a bar
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                  ncol=1 if len(methods) <= 12 else 2)
        fig.tight_layout()
        path = out / f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', metric)}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
