"""eval: paper-style metric tables (NIMA, MUSIQ, CLIP-IQA, LIQE, Q-Align, VLM-Vis; PSNR, SSIM, LPIPS, FID ...) for
folders of restoration results laid out as ``D/<method>/<category>/<image>``.

Command line: ``python -m eval run --dataset D --reference GT --metrics psnr,ssim,musiq --out O`` and
``python -m eval compare --ours O``. Python::

    import eval
    scores = eval.run("results", ["psnr", "ssim"], reference="gt", out="tables")   # long DataFrame
    table = eval.make_table(scores)                                                 # methods x (category, metric)
    eval.load_reference("wresvlm_table1"); eval.list_reference_tables()

Imports are lazy: ``import eval`` loads neither torch nor pyiqa.
"""

from __future__ import annotations

import importlib

_API = {
    "run": "eval.runner",
    "compute_scores": "eval.runner",
    "merge_scores": "eval.runner",
    "write_outputs": "eval.runner",
    "make_table": "eval.tables",
    "format_table": "eval.tables",
    "load_reference": "eval.reference",
    "list_reference_tables": "eval.reference",
    "compare": "eval.reference",
    "bar_charts": "eval.plots",
    "available_metrics": "eval.metrics",
    "metric_info": "eval.metrics",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
