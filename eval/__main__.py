"""``python -m eval``: ``run`` (score a results folder, write tables), ``compare`` (beside a published table),
``plot`` (bar charts), ``weights`` (which files each metric needs and where they go).

Also under ``accelerate launch -m eval run ...`` (images sharded over the processes, the main process writes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from eval.runner import run
    from eval.weights import MetricUnavailable

    try:
        scores, report = run(args.dataset, args.metrics, reference=args.reference, out=args.out, device=args.device,
                             weights_dir=args.weights_dir, skip_unavailable=args.skip_unavailable,
                             grouped=args.grouped, batch_size=args.batch_size, cache=args.cache, rater=args.vlm,
                             verbose=not args.quiet, return_report=True)
    except (MetricUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # other accelerate/torchrun processes: the main one reports
        return 0
    if args.out is not None and Path(args.out, "table.md").is_file():
        print(Path(args.out, "table.md").read_text(encoding="utf-8"))
    if args.plots and args.out is not None:
        from eval.plots import bar_charts

        for p in bar_charts(scores, Path(args.out) / "plots"):
            print(f"plot: {p}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from eval.reference import compare, write_comparison
    from eval.tables import render_markdown

    try:
        table = compare(args.ours, args.reference_table)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (Path(args.ours) if Path(args.ours).is_dir() else Path(args.ours).parent)
    for p in write_comparison(table, out):
        print(f"wrote {p}", file=sys.stderr)
    print(render_markdown(table))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import pandas as pd

    from eval.plots import bar_charts

    src = Path(args.scores)
    scores = pd.read_csv(src / "scores.csv" if src.is_dir() else src)
    for p in bar_charts(scores, args.out):
        print(p)
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from eval.weights import METRIC_WEIGHTS, missing_weights, weight_path

    names = args.metrics.split(",") if args.metrics else sorted(METRIC_WEIGHTS)
    for name in names:
        files = METRIC_WEIGHTS.get(name, ())
        state = "ok" if not missing_weights(name, args.weights_dir) else "MISSING"
        print(f"{name}: {'(weight-free)' if not files else state}")
        for wf in files:
            print(f"    {weight_path(wf, args.weights_dir)}  <- {wf.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="score D/<method>/<category>/<image> and write scores.csv + table.csv/.md/.tex")
    r.add_argument("--dataset", required=True, help="results folder D/<method>/<category>/<image>")
    r.add_argument("--reference", default=None, help="ground-truth folder name inside D (full-reference metrics, FID)")
    r.add_argument("--metrics", required=True, help="comma list of pyiqa metric names and/or vlm_vis, e.g. psnr,ssim,musiq")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--device", default=None, help="torch device (default cpu; under accelerate: each process's)")
    r.add_argument("--weights-dir", default=None,
                   help="torch-hub style folder with metric weights: DIR/pyiqa/<file>, DIR/checkpoints/<file>, DIR/clip/<file> "
                        "(default $TORCH_HOME/hub); see `python -m eval weights`")
    r.add_argument("--skip-unavailable", action="store_true", help="leave out metrics whose weights are missing")
    r.add_argument("--grouped", action="store_true", help='paper-style cells: "5.084 / 59.34 / 0.456" per category')
    r.add_argument("--batch-size", type=int, default=8, help="images per metric call (same-size images), default 8")
    r.add_argument("--cache", default=None, help="score cache file (default OUT/score_cache.sqlite)")
    r.add_argument("--vlm", default=None, help="vlmir rater for vlm_vis (registry name; default the embedded rater)")
    r.add_argument("--plots", action="store_true", help="also write OUT/plots/<metric>.png")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("compare", help="put our table beside a published one (writes compare.md / compare.csv)")
    c.add_argument("--ours", required=True, help="an `eval run` output folder or its scores.csv")
    c.add_argument("--reference-table", default=None, help="reference table name (default: most shared metrics)")
    c.add_argument("--out", default=None, help="folder for compare.md/.csv (default: the --ours folder)")
    c.set_defaults(func=_cmd_compare)

    pl = sub.add_parser("plot", help="bar charts per metric from scores.csv")
    pl.add_argument("--scores", required=True, help="an output folder or scores.csv")
    pl.add_argument("--out", required=True, help="folder for the PNGs")
    pl.set_defaults(func=_cmd_plot)

    w = sub.add_parser("weights", help="list the weight files each metric needs, where they go, and what is missing")
    w.add_argument("--metrics", default=None, help="comma list (default: all known)")
    w.add_argument("--weights-dir", default=None)
    w.set_defaults(func=_cmd_weights)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
