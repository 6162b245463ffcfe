"""Paper-style tables from long scores: one row per method, per category and Overall one cell per metric.

``make_table`` gives the numbers: a ``DataFrame`` indexed by method with columns ``(category, metric)``; categories
in sorted order as found, ``Overall`` last. A category cell is the mean over that category's images; ``Overall`` is
the mean over ALL images of the method (not the mean of the category means), as in WResVLM Tables 1-2. Folder-level
scores (FID, ``image == "*"``) are taken as they are, their ``Overall`` computed over all images by the runner.

The renderers format each metric with its own precision (3 decimals, 2 for wide ranges such as MUSIQ or PSNR) and
bold the best value of each (category, metric) column, honouring ``lower_better``: markdown ``**x**``, LaTeX
``\\textbf{x}``. ``grouped=True`` puts all metrics of a category in one cell, "5.084 / 59.34 / 0.456", with bold
per metric, as the papers print them.
"""

from __future__ import annotations

import io
import math

import pandas as pd

from eval.metrics import metric_info

OVERALL = "Overall"

DISPLAY_NAMES = {
    "nima": "NIMA", "musiq": "MUSIQ", "clipiqa": "CLIP-IQA", "clipiqa+": "CLIP-IQA+", "liqe": "LIQE",
    "qalign": "Q-Align", "vlm_vis": "VLM-Vis", "psnr": "PSNR", "psnry": "PSNR-Y", "ssim": "SSIM", "ssimc": "SSIM-C",
    "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "lpips-vgg": "LPIPS-VGG", "dists": "DISTS", "fid": "FID", "niqe": "NIQE",
    "brisque": "BRISQUE", "piqe": "PIQE", "entropy": "Entropy",
}


def display_name(metric: str) -> str:
    """Human name of a metric for table headers (``"clipiqa"`` -> ``"CLIP-IQA"``)."""
    return DISPLAY_NAMES.get(metric, metric.upper())


def _category_order(categories) -> list[str]:
    cats = sorted({str(c) for c in categories if str(c) != OVERALL})
    return cats + [OVERALL]


def make_table(scores: pd.DataFrame, grouped: bool = False) -> pd.DataFrame:
    """Mean scores per method, category and metric.

    Args:
        scores: long scores with columns method, category, image, metric, score (``eval.run``'s result).
        grouped: return the formatted paper-style cells instead of numbers: one string column per category,
            "a / b / c" over the metrics (no bold; the renderers add it).

    Returns:
        ``grouped=False``: float ``DataFrame``, index ``method``, columns ``MultiIndex (category, metric)`` with
        ``Overall`` last and metrics in the order first seen. ``grouped=True``: string ``DataFrame``, columns categories.
    """
    missing = {"method", "category", "image", "metric", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lack column(s) {sorted(missing)}; expected method, category, image, metric, score")
    metrics = list(dict.fromkeys(scores["metric"]))
    per_image = scores[scores["image"] != "*"]
    folder = scores[scores["image"] == "*"]
    cat_means = per_image.groupby(["method", "category", "metric"], sort=False)["score"].mean()
    overall = per_image.groupby(["method", "metric"], sort=False)["score"].mean()
    cells: dict[tuple[str, str, str], float] = {}
    for (m, c, k), v in cat_means.items():
        cells[(m, c, k)] = float(v)
    for (m, k), v in overall.items():
        cells[(m, OVERALL, k)] = float(v)
    for row in folder.itertuples(index=False):
        cells[(row.method, row.category, row.metric)] = float(row.score)
    methods = sorted({m for m, _, _ in cells}) if cells else []
    cats = _category_order({c for _, c, _ in cells})
    columns = pd.MultiIndex.from_tuples([(c, k) for c in cats for k in metrics if any((m, c, k) in cells for m in methods)],
                                        names=["category", "metric"])
    table = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for (m, c, k), v in cells.items():
        table.loc[m, (c, k)] = v
    if grouped:
        return format_table(table, grouped=True, style="plain")
    return table


def _fmt(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{metric_info(metric).decimals}f}"


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a cell is the best of its (category, metric) column (ties all best), judged on the shown digits."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for col in table.columns:
        metric = col[1]
        info = metric_info(metric)
        shown = table[col].map(lambda v, m=metric: float(_fmt(v, m)) if not pd.isna(v) else float("nan"))
        if shown.notna().sum() < 1:
            continue
        best = shown.min() if info.lower_better else shown.max()
        mask[col] = shown == best
    return mask


def _bold(text: str, style: str) -> str:
    if style == "md":
        return f"**{text}**"
    if style == "tex":
        return f"\\textbf{{{text}}}"
    return text


def format_table(table: pd.DataFrame, grouped: bool = False, style: str = "plain") -> pd.DataFrame:
    """String cells of a numeric table: per-metric precision, best bold in ``style`` (``"md"``, ``"tex"``, ``"plain"``)."""
    if style not in ("md", "tex", "plain"):
        raise ValueError(f"style {style!r} is not one of 'md', 'tex', 'plain'")
    mask = best_mask(table)
    text = pd.DataFrame(index=table.index, columns=table.columns, dtype=object)
    for col in table.columns:
        for m in table.index:
            s = _fmt(table.loc[m, col], col[1])
            text.loc[m, col] = _bold(s, style) if mask.loc[m, col] and s != "-" else s
    if not grouped:
        return text
    cats = list(dict.fromkeys(c for c, _ in table.columns))
    out = pd.DataFrame(index=table.index, columns=pd.Index(cats, name="category"), dtype=object)
    for c in cats:
        cols = [col for col in table.columns if col[0] == c]
        for m in table.index:
            out.loc[m, c] = " / ".join(text.loc[m, col] for col in cols)
    return out


def _arrow(metric: str, style: str) -> str:
    down = metric_info(metric).lower_better
    if style == "tex":
        return "$\\downarrow$" if down else "$\\uparrow$"
    return "↓" if down else "↑"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("#", "\\#"), ("_", "\\_"), ("$", "\\$"),
                 ("{", "\\{"), ("}", "\\}")):
        s = s.replace(a, b)
    return s


def _metrics_of(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(k for _, k in table.columns))


def render_markdown(table: pd.DataFrame, grouped: bool = False, notes: list[str] | None = None) -> str:
    """Markdown table (GitHub pipes); best per column in ``**bold**``; ``notes`` become lines below."""
    text = format_table(table, grouped=grouped, style="md")
    lines = []
    if grouped:
        head = " / ".join(f"{display_name(k)} {_arrow(k, 'md')}" for k in _metrics_of(table))
        lines.append(f"Metrics per cell: {head}\n")
        cols = list(text.columns)
        lines.append("| Method | " + " | ".join(cols) + " |")
    else:
        cols = list(text.columns)
        lines.append("| Method | " + " | ".join(f"{c} {display_name(k)} {_arrow(k, 'md')}" for c, k in cols) + " |")
    lines.append("|---|" + "|".join("---" for _ in cols) + "|")
    for m in text.index:
        lines.append(f"| {m} | " + " | ".join(str(text.loc[m, c]) for c in cols) + " |")
    for n in notes or []:
        lines.append(f"\nNote: {n}")
    return "\n".join(lines) + "\n"


def render_latex(table: pd.DataFrame, grouped: bool = False, notes: list[str] | None = None) -> str:
    """A ``tabular`` (booktabs) with a category header row; best per column in ``\\textbf``."""
    text = format_table(table, grouped=grouped, style="tex")
    cats = list(dict.fromkeys(c for c, _ in table.columns))
    lines = []
    for n in notes or []:
        lines.append(f"% Note: {n}")
    if grouped:
        head = " / ".join(f"{_tex_escape(display_name(k))} {_arrow(k, 'tex')}" for k in _metrics_of(table))
        lines.append("\\begin{tabular}{l" + "c" * len(cats) + "}")
        lines.append("\\toprule")
        lines.append(f"Method & \\multicolumn{{{len(cats)}}}{{c}}{{{head}}} \\\\")
        lines.append(" & " + " & ".join(_tex_escape(c) for c in cats) + " \\\\")
        lines.append("\\midrule")
        for m in text.index:
            lines.append(_tex_escape(str(m)) + " & " + " & ".join(str(text.loc[m, c]) for c in cats) + " \\\\")
    else:
        cols = list(table.columns)
        lines.append("\\begin{tabular}{l" + "c" * len(cols) + "}")
        lines.append("\\toprule")
        spans = [(c, sum(1 for cc, _ in cols if cc == c)) for c in cats]
        lines.append("Method & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_tex_escape(c)}}}" for c, n in spans) + " \\\\")
        lines.append(" & " + " & ".join(f"{_tex_escape(display_name(k))} {_arrow(k, 'tex')}" for _, k in cols) + " \\\\")
        lines.append("\\midrule")
        for m in text.index:
            lines.append(_tex_escape(str(m)) + " & " + " & ".join(str(text.loc[m, c]) for c in cols) + " \\\\")
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def render_csv(table: pd.DataFrame, grouped: bool = False) -> str:
    """CSV of the shown numbers (no bold): columns ``<category>/<metric>``, or one per category when grouped."""
    text = format_table(table, grouped=grouped, style="plain")
    if not grouped:
        text = text.copy()
        text.columns = [f"{c}/{k}" for c, k in text.columns]
    buf = io.StringIO()
    text.to_csv(buf, index=True, index_label="method", lineterminator="\n")
    return buf.getvalue()
