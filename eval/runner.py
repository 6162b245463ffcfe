"""``eval.run``: score every image of a results folder with every metric, cached, optionally sharded.

Flow: scan ``D/<method>/<category>/<image>`` (:mod:`eval.dataset`) -> for each metric (built once per run, and only
when something is not cached yet) look up each image's score in the cache by content hash, compute the rest in
batches of same-size images, store each batch at once -> long scores (method, category, image, metric, score) ->
tables, written atomically.

Under ``accelerate launch -m eval run ...`` the images are split over the processes with
``accelerate.PartialState().split_between_processes`` (contiguous shards), each process scores its shard, the
records are gathered with ``accelerate.utils.gather_object`` and the main process writes the outputs. Folder-level
metrics (FID) run on the main process.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.cache import ScoreCache, file_sha256
from eval.dataset import Item, scan_dataset
from eval.metrics import FOLDER_METRICS, create_metric, metric_info, parse_metrics
from eval.weights import MetricUnavailable

SCORE_COLUMNS = ["method", "category", "image", "metric", "score"]
FOLDER_IMAGE = "*"  # the ``image`` of a folder-level score (FID)


@dataclass
class RunReport:
    """What happened in a run besides the scores: problems (unreadable/unmatched images, skipped metrics) and notes."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    computed: dict[str, int] = field(default_factory=dict)  # metric -> scores computed (not from the cache)
    cached: dict[str, int] = field(default_factory=dict)  # metric -> scores taken from the cache
    skipped_metrics: list[str] = field(default_factory=list)


def shard_items(items: Sequence[Any], num_shards: int, index: int) -> list[Any]:
    """Contiguous shard ``index`` of ``num_shards``, as ``accelerate``'s ``split_between_processes`` splits a list.

    The first ``len(items) % num_shards`` shards get one item more; shards cover ``items`` exactly once, in order.
    """
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} of {num_shards} shards is out of range")
    per, extra = divmod(len(items), num_shards)
    start = index * per + min(index, extra)
    end = start + per + (1 if index < extra else 0)
    return list(items[start:end])


class _Hashes:
    """SHA-256 of each file, computed at most once per run."""

    def __init__(self):
        self._memo: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._memo:
            self._memo[path] = file_sha256(path)
        return self._memo[path]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _score_images(metric_name: str, metric_factory: Callable[[], Any], version: str, items: list[Item],
                  cache: ScoreCache, hashes: _Hashes, report: RunReport, bad: set[Path], *, batch_size: int,
                  verbose: bool) -> list[dict]:
    """Per-image scores of one metric over ``items`` (cache first; the metric is built only if needed)."""
    from vlmir.io import image_size, load_image

    info = metric_info(metric_name)
    keyed: list[tuple[Item, str]] = []
    for it in items:
        if it.path in bad:
            continue
        if info.mode == "FR" and it.ref_path is None:
            continue
        if info.mode == "FR" and it.ref_path in bad:
            continue
        try:
            content = hashes(it.path) if info.mode != "FR" else f"{hashes(it.path)}:{hashes(it.ref_path)}"
        except OSError as e:
            bad.add(it.path)
            report.problems.append(f"{it.path}: cannot be read ({e}); skipped")
            continue
        keyed.append((it, content))
    have = cache.get_many(metric_name, version, [c for _, c in keyed])
    todo: dict[str, Item] = {}
    for it, c in keyed:
        if c not in have and c not in todo:
            todo[c] = it
    n_cached = sum(1 for _, c in keyed if c in have)
    report.cached[metric_name] = report.cached.get(metric_name, 0) + n_cached
    if n_cached:
        _log(f"{metric_name}: {n_cached} score(s) from the cache", verbose)
    # group by image size (read from the header) so that batches stack; unreadable files drop out here, before
    # any model is built
    groups: dict[tuple, list[tuple[str, Item]]] = defaultdict(list)
    for c, it in todo.items():
        try:
            size = image_size(it.path)
            if info.mode == "FR":
                size = (size, image_size(it.ref_path))
        except (ValueError, OSError) as e:
            bad.add(it.path)
            report.problems.append(f"{it.method}/{it.category}/{it.image}: unreadable image ({e}); skipped")
            continue
        groups[size].append((c, it))
    if groups:
        metric = metric_factory()
        done, t0 = 0, time.perf_counter()
        for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                xs, refs, ok = [], [], []
                for c, it in batch:
                    try:
                        x = load_image(it.path)
                        r = load_image(it.ref_path) if info.mode == "FR" else None
                    except (ValueError, OSError) as e:
                        bad.add(it.path)
                        report.problems.append(f"{it.method}/{it.category}/{it.image}: unreadable image ({e}); skipped")
                        continue
                    if r is not None and r.shape != x.shape:
                        report.problems.append(
                            f"{it.method}/{it.category}/{it.image}: size {tuple(x.shape[-2:])} differs from its reference "
                            f"{tuple(r.shape[-2:])}; {metric_name} skipped for it")
                        continue
                    xs.append(x)
                    refs.append(r)
                    ok.append(c)
                if not ok:
                    continue
                import torch

                x = torch.cat(xs)
                ref = torch.cat(refs) if info.mode == "FR" else None
                scores = metric(x, ref)
                cache.put_many(metric_name, version, zip(ok, scores, strict=True))
                have.update(zip(ok, scores, strict=True))
                done += len(ok)
        report.computed[metric_name] = report.computed.get(metric_name, 0) + done
        if done:
            dt = time.perf_counter() - t0
            _log(f"{metric_name}: computed {done} score(s) in {dt:.1f}s ({done / max(dt, 1e-9):.2f} img/s)", verbose)
    return [dict(method=it.method, category=it.category, image=it.image, metric=metric_name, score=have[c])
            for it, c in keyed if c in have]


def _score_folders(metric_name: str, metric_factory: Callable[[], Any], version: str, items: list[Item],
                   root: Path, reference: str | None, cache: ScoreCache, hashes: _Hashes, report: RunReport,
                   bad: set[Path], verbose: bool) -> list[dict]:
    """Folder-level scores (FID) per (method, category) and per method over all categories (``Overall``)."""
    if reference is None:
        report.problems.append(f"{metric_name} compares folders with the reference: give --reference; skipped")
        return []
    from eval.dataset import IMAGE_EXTENSIONS
    from vlmir.io import image_size

    def readable(p: Path, label: str) -> bool:
        if p in bad:
            return False
        try:
            image_size(p)
            return True
        except (ValueError, OSError) as e:
            bad.add(p)
            report.problems.append(f"{label}: unreadable image ({e}); skipped")
            return False

    ref_root = root / reference
    by_folder: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for it in items:
        if readable(it.path, f"{it.method}/{it.category}/{it.image}"):
            by_folder[(it.method, it.category)].append(it)
    ref_files = {c.name: [p for p in sorted(c.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                          and readable(p, f"{reference}/{c.name}/{p.name}")]
                 for c in sorted(ref_root.iterdir()) if c.is_dir()}
    metric = None
    records = []
    methods = sorted({m for m, _ in by_folder})
    for method in methods:
        cats = sorted(c for m, c in by_folder if m == method and ref_files.get(c))
        groups = [(c, [it.path for it in by_folder[(method, c)]], ref_files[c]) for c in cats]
        jobs = list(groups)
        if len(groups) > 1:
            jobs.append(("Overall", [p for _, ps, _ in groups for p in ps], [p for _, _, rs in groups for p in rs]))
        for cat, paths, ref_paths in jobs:
            # content: the multiset of image digests on each side (file names and order do not matter)
            side = [",".join(sorted(hashes(p) for p in ps)) for ps in (paths, ref_paths)]
            content = hashlib.sha256("|".join(side).encode()).hexdigest()
            hit = cache.get_many(metric_name, version, [content])
            if content in hit:
                score = hit[content]
                report.cached[metric_name] = report.cached.get(metric_name, 0) + 1
            else:
                if metric is None:
                    metric = metric_factory()
                with tempfile.TemporaryDirectory() as tmp:
                    # link the images into two flat folders (pyiqa's FID reads folders); names keep category apart
                    d1, d2 = Path(tmp, "a"), Path(tmp, "b")
                    for d, ps in ((d1, paths), (d2, ref_paths)):
                        d.mkdir()
                        for i, p in enumerate(ps):
                            os.symlink(p.resolve(), d / f"{i:06d}_{p.parent.name}_{p.name}")
                    score = metric.score_folders(d1, d2)
                cache.put_many(metric_name, version, [(content, score)])
                report.computed[metric_name] = report.computed.get(metric_name, 0) + 1
            records.append(dict(method=method, category=cat, image=FOLDER_IMAGE, metric=metric_name, score=score))
    return records


def _metric_version(name: str, *, weights_dir, options, rater) -> str:
    """The cache version of a metric, known without building it."""
    import json

    if name == "vlm_vis":
        from vlmir.registry import default_model, get_spec, list_models

        rater_name = rater or default_model("rater")
        if rater_name in list_models(task="rater"):
            spec = get_spec(rater_name, task="rater")
            return f"vlmir-rater={rater_name};source={spec.source};sha={json.dumps(spec.sha256, sort_keys=True)}"
        p = Path(rater_name).expanduser()
        if p.is_dir():
            stamp = max((f.stat().st_mtime_ns for f in p.iterdir() if f.is_file()), default=0)
            return f"vlmir-rater=path:{p.resolve()};mtime={stamp}"
        return f"vlmir-rater=hub:{rater_name}"
    import pyiqa

    from eval.metrics import _weights_signature

    return (f"pyiqa={pyiqa.__version__};{name};{json.dumps(options.get(name, {}), sort_keys=True)};"
            f"weights={_weights_signature(name, weights_dir, options.get(name))}")


def _process_state(device: str | None):
    """``accelerate.PartialState`` when launched with several processes, else ``None`` (no accelerate import).

    On CPU (``device="cpu"``, or no CUDA) the state is made with ``cpu=True``, so that ``torchrun`` / ``accelerate
    launch`` processes join one gloo group (accelerate otherwise treats each CPU process as a lone one).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        cpu = (device is not None and str(device).startswith("cpu")) or not torch.cuda.is_available()
        return PartialState(cpu=cpu)
    return None


def compute_scores(dataset: str | os.PathLike, metrics: str | Sequence[str], reference: str | None = None, *,
                   device: str | None = None, weights_dir: str | os.PathLike | None = None,
                   skip_unavailable: bool = False, batch_size: int = 8, cache: str | os.PathLike | None = None,
                   rater: str | None = None, options: dict[str, dict] | None = None,
                   shard: tuple[int, int] | None = None, indices: Sequence[int] | None = None,
                   folder_metrics: bool = True,
                   verbose: bool = True) -> tuple[pd.DataFrame, RunReport]:
    """Long scores of one shard (default: all images) without writing tables; see :func:`run` for the arguments.

    ``shard=(index, count)`` scores only shard ``index`` of ``count`` (as one ``accelerate`` process would;
    ``indices``: exactly those positions of the sorted image list);
    ``folder_metrics=False`` leaves FID out (the main process computes it once).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = parse_metrics(metrics)
    options = dict(options or {})
    device = device or "cpu"
    root = Path(dataset)
    items, problems = scan_dataset(root, reference)
    report = RunReport(problems=list(problems))
    all_items = items
    if shard is not None:
        items = shard_items(items, shard[1], shard[0])
    if indices is not None:
        items = [all_items[i] for i in indices]
    needs_ref = [n for n in names if metric_info(n).mode in ("FR", "folder")]
    if needs_ref and reference is None:
        raise ValueError(f"metric(s) {', '.join(needs_ref)} need a reference: give --reference <folder in the dataset>")
    cache_obj = ScoreCache(cache)
    hashes = _Hashes()
    bad: set[Path] = set()
    records: list[dict] = []
    writable = Path(cache).parent / "pyiqa_cache" if cache is not None else Path(tempfile.gettempdir()) / "vlmir_eval_pyiqa"
    try:
        for name in names:
            is_folder = name in FOLDER_METRICS or metric_info(name).mode == "folder"
            if is_folder and not folder_metrics:
                continue
            try:
                from eval.weights import check_weights

                if name != "vlm_vis":
                    check_weights(name, weights_dir, options.get(name))
                version = _metric_version(name, weights_dir=weights_dir, options=options, rater=rater)
            except (MetricUnavailable, ValueError) as e:
                if not skip_unavailable:
                    raise
                report.skipped_metrics.append(name)
                report.problems.append(f"metric {name} skipped: {e}")
                _log(f"metric {name} skipped: {e}", verbose)
                continue

            built: dict[str, Any] = {}

            def factory(name=name, built=built):
                if "m" not in built:
                    t0 = time.perf_counter()
                    built["m"] = create_metric(name, device=device, weights_dir=weights_dir, writable_cache=writable,
                                               rater=rater, options=options.get(name))
                    _log(f"{name}: model loaded in {time.perf_counter() - t0:.1f}s", verbose)
                    if getattr(built["m"], "random_weights", False):
                        report.notes.append(f"{name}: computed with RANDOM weights ({getattr(built['m'], 'rater_name', name)}); "
                                            "the numbers are not meaningful")
                return built["m"]

            if name == "vlm_vis":
                factory()  # cheap, and tells whether the rater's weights are random (user-visible note)
            try:
                if is_folder:
                    records += _score_folders(name, factory, version, all_items, root, reference, cache_obj, hashes,
                                              report, bad, verbose)
                else:
                    records += _score_images(name, factory, version, items, cache_obj, hashes, report, bad,
                                             batch_size=batch_size, verbose=verbose)
            except MetricUnavailable as e:
                if not skip_unavailable:
                    raise
                report.skipped_metrics.append(name)
                report.problems.append(f"metric {name} skipped: {e}")
    finally:
        cache_obj.close()
    df = pd.DataFrame.from_records(records, columns=SCORE_COLUMNS)
    return df, report


def merge_scores(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate shard scores into one long table, sorted (method, category, image, metric), duplicates dropped."""
    df = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else \
        pd.DataFrame(columns=SCORE_COLUMNS)
    df = df.drop_duplicates(subset=["method", "category", "image", "metric"], keep="last")
    # metrics keep the order they were asked in (first appearance), the rest sorts by name
    order = {m: i for i, m in enumerate(dict.fromkeys(df["metric"]))}
    df = df.assign(_m=df["metric"].map(order))
    df = df.sort_values(["method", "category", "image", "_m"], kind="stable").drop(columns="_m")
    return df.reset_index(drop=True)


def write_outputs(scores: pd.DataFrame, out: str | os.PathLike, *, grouped: bool = False,
                  report: RunReport | None = None) -> dict[str, Path]:
    """Write ``scores.csv``, ``table.csv``, ``table.md``, ``table.tex`` (and ``problems.txt``) under ``out``, atomically."""
    from eval.tables import make_table, render_csv, render_latex, render_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f for k, f in (("scores", "scores.csv"), ("csv", "table.csv"), ("md", "table.md"), ("tex", "table.tex"))}
    _atomic_write_text(paths["scores"], scores[SCORE_COLUMNS].to_csv(index=False, float_format="%.6g"))
    table = make_table(scores)
    notes = list(report.notes) if report else []
    _atomic_write_text(paths["csv"], render_csv(table, grouped=grouped))
    _atomic_write_text(paths["md"], render_markdown(table, grouped=grouped, notes=notes))
    _atomic_write_text(paths["tex"], render_latex(table, grouped=grouped, notes=notes))
    if report is not None:
        paths["problems"] = out / "problems.txt"
        _atomic_write_text(paths["problems"], "".join(f"{p}\n" for p in report.problems + report.notes))
    return paths


def run(dataset: str | os.PathLike, metrics: str | Sequence[str], reference: str | None = None,
        out: str | os.PathLike | None = None, *, device: str | None = None,
        weights_dir: str | os.PathLike | None = None, skip_unavailable: bool = False, grouped: bool = False,
        batch_size: int = 8, cache: str | os.PathLike | None = None, rater: str | None = None,
        options: dict[str, dict] | None = None, verbose: bool = True, return_report: bool = False):
    """Score a results folder and (with ``out``) write the paper-style tables.

    Args:
        dataset: folder laid out as ``D/<method>/<category>/<image>``.
        metrics: ``"psnr,ssim,musiq"`` or a list: pyiqa metric names and/or ``vlm_vis``.
        reference: name of the ground-truth folder inside ``dataset`` (needed by PSNR/SSIM/LPIPS/FID ...).
        out: output folder (``scores.csv``, ``table.csv/.md/.tex``, ``problems.txt``); ``None`` writes nothing.
        device: torch device, default ``"cpu"`` (under ``accelerate launch``: each process's device).
        weights_dir: torch-hub style folder with the metric weights (``<dir>/pyiqa/<file>`` ...; see
            :mod:`eval.weights`); default ``$TORCH_HOME/hub``.
        skip_unavailable: leave out metrics whose weights are missing instead of failing.
        grouped: table cells hold all metrics of a category ("5.084 / 59.34 / 0.456").
        batch_size: images per metric call (same-size images are batched).
        cache: score cache file; default ``<out>/score_cache.sqlite`` (in memory when ``out`` is ``None``).
        rater: vlmir rater for ``vlm_vis`` (registry name; default the embedded rater).
        options: per-metric pyiqa options, e.g. ``{"psnr": {"test_y_channel": True}}``.
        verbose: progress lines on stderr.
        return_report: also return the :class:`RunReport`.

    Returns:
        The long scores ``DataFrame`` (method, category, image, metric, score); FID rows have ``image == "*"``.
        With ``return_report``: ``(scores, report)``.

    Example::

        >>> import eval
        >>> df = eval.run("results", "psnr,ssim", reference="gt", out="tables")  # doctest: +SKIP
    """
    if cache is None and out is not None:
        cache = Path(out) / "score_cache.sqlite"
    kw = dict(device=device, weights_dir=weights_dir, skip_unavailable=skip_unavailable, batch_size=batch_size,
              cache=cache, rater=rater, options=options, verbose=verbose)
    state = _process_state(device)
    if state is None:
        scores, report = compute_scores(dataset, metrics, reference, **kw)
    else:
        from accelerate.utils import gather_object

        if device is None:
            kw["device"] = str(state.device)
        items, _ = scan_dataset(dataset, reference)
        # split_between_processes gives each process its contiguous slice (the cut shard_items reproduces)
        with state.split_between_processes(list(range(len(items)))) as mine:
            indices = list(mine)
        part, report = compute_scores(dataset, metrics, reference, indices=indices,
                                      folder_metrics=state.is_main_process, **kw)
        gathered = gather_object([part.to_dict("records")])
        reports = gather_object([report])
        scores = merge_scores([pd.DataFrame.from_records(r, columns=SCORE_COLUMNS) for r in gathered])
        report = RunReport(problems=list(dict.fromkeys(p for r in reports for p in r.problems)),
                           notes=list(dict.fromkeys(n for r in reports for n in r.notes)))
        if not state.is_main_process:
            out = None
    scores = merge_scores([scores])
    if scores.empty:
        report.problems.append("no scores were computed: every metric was skipped or no image could be scored")
    if out is not None:
        write_outputs(scores, out, grouped=grouped, report=report)
    for p in report.problems:
        _log(p, verbose)
    for n in report.notes:
        _log(f"NOTE: {n}", verbose)
    return (scores, report) if return_report else scores
