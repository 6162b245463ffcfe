"""The services behind the demo, free of Gradio: model choices, a thread-safe model cache, upload loading, and the
restore / classify / rate / compare / metric-table operations the UI calls.

Everything here goes through the public contracts only (``vlmir.registry`` for models, ``vlmir.io`` for images,
``eval`` for tables), so the app picks up whatever models are registered. Errors a user can fix are raised as
``ValueError`` (bad image, bad setting) or ``RuntimeError`` (model not available) with a message saying what is
wrong and what is allowed; the UI turns them into ``gr.Error``.

Example::

    >>> from vlmir.app import service
    >>> [c.name for c in service.model_choices("restorer")]  # doctest: +SKIP
    ['embedded', 'classical', 'daclip']
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmir.constants import LEVELS  # (WResVLM's five visibility levels, 5 ... 1)

# No-reference metrics for the Compare tab: pyiqa name -> weight file pyiqa needs in its cache (None: weight-free).
# NIQE and BRISQUE need parameter files pyiqa downloads on first use; they are offered only when already cached.
NR_METRICS: dict[str, str | None] = {
    "piqe": None,
    "niqe": "niqe_modelparameters.mat",
    "brisque": "brisque_svm_weights.pth",
    "entropy": None,
}

OUTPUT_TTL_S = 3600.0  # per-request output folders older than this are removed


def device() -> str:
    """Device the app builds models on: ``VLMIR_DEVICE`` when set, else ``cuda`` when available, else ``cpu``."""
    env = os.environ.get("VLMIR_DEVICE", "").strip()
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def max_pixels() -> int:
    """Largest upload accepted, in pixels: ``VLMIR_MAX_PIXELS`` or :data:`vlmir.io.DEFAULT_MAX_PIXELS`."""
    from vlmir.io import max_pixels_default

    return max_pixels_default()


# ------------------------------------------------------------------------------------------------ model choices


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model dropdown.

    Args:
        name: registry name.
        task: registry task.
        label: what the dropdown shows (names the reason when the model is unavailable).
        available: whether the model can be built now.
        reason: why not, or a note (e.g. weights will be downloaded); ``""`` otherwise.
        description: the spec's one-line description.
        default: the default model of its task.
        extra: the spec's ``extra`` (``diffusion``, ``steps`` ...).
    """

    name: str
    task: str
    label: str
    available: bool
    reason: str = ""
    description: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diffusion(self) -> bool:
        return bool(self.extra.get("diffusion"))

    @property
    def default_steps(self) -> int:
        """Sampling steps the model uses by default (``extra["steps"]`` or ``extra["default_steps"]``), 0 if unknown."""
        return int(self.extra.get("steps") or self.extra.get("default_steps") or 0)


def model_choices(task: str) -> list[ModelChoice]:
    """Every registered model of ``task``: the default first, then available ones, then unavailable ones."""
    from vlmir.registry import get_spec, list_models

    out = []
    for name in list_models(task=task):
        spec = get_spec(name)
        try:
            ok, reason = spec.availability()
        except Exception as e:  # an availability check that breaks must not take the dropdown down; show why
            ok, reason = False, f"availability check failed: {type(e).__name__}: {e}"
        if not ok:
            label = f"{name} (unavailable: {reason})"
        elif spec.default:
            label = f"{name} (default)"
        elif "download" in reason:
            label = f"{name} (downloads its weights on first use)"
        else:
            label = name
        out.append(ModelChoice(name, task, label, ok, reason, spec.description, spec.default, dict(spec.extra or {})))
    out.sort(key=lambda c: (not c.default, not c.available, c.name))
    return out


def default_choice(task: str) -> str | None:
    """Name of the model a dropdown starts on: the first available one (the default when it is available)."""
    for c in model_choices(task):
        if c.available:
            return c.name
    return None


def choice(name: str, task: str) -> ModelChoice:
    """The :class:`ModelChoice` for ``name``; ``ValueError`` listing the valid names when unknown."""
    choices = model_choices(task)
    for c in choices:
        if c.name == name:
            return c
    valid = ", ".join(c.name for c in choices) or "(none registered)"
    raise ValueError(f"unknown {task} {name!r}; choose one of: {valid}")


# -------------------------------------------------------------------------------------------------- model cache


class ModelCache:
    """Builds each model once, on first use, and shares it between requests.

    Thread-safe: concurrent first requests for the same name build it once (one lock per name), requests for
    different names build in parallel. A build that fails is not cached, so a later request retries.
    """

    def __init__(self, *, device: str | None = None) -> None:
        self.device = device
        self._models: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str, task: str) -> Any:
        """The model ``name`` of ``task``, built with ``vlmir.registry.create_model`` on first use."""
        key = (task, name)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._models.get(key)
            if model is None:
                from vlmir.registry import create_model

                c = choice(name, task)
                if not c.available:
                    raise RuntimeError(f"model {name!r} is not available here: {c.reason}")
                model = create_model(name, task=task, device=self.device or device())
                self._models[key] = model
        return model

    def loaded(self) -> list[str]:
        return sorted(n for _, n in self._models)


MODELS = ModelCache()


def is_random(model: Any) -> bool:
    return bool(getattr(model, "random_weights", False))


def random_note(model: Any, name: str) -> str:
    """A warning users must see when ``model`` runs on random (untrained) weights, else ``""``."""
    if not is_random(model):
        return ""
    return f"WARNING: {name!r} runs on RANDOM weights (its weight file is missing); its output is meaningless."


# -------------------------------------------------------------------------------------------------------- inputs


def load_upload(path: str | os.PathLike | None, *, limit: int | None = None) -> torch.Tensor:
    """Load an uploaded file through :func:`vlmir.io.load_image` as float32 ``(1, 3, H, W)`` in [0, 1].

    Raises:
        ValueError: no file, unreadable/corrupt file, or more than ``limit`` (default :func:`max_pixels`) pixels.
    """
    from vlmir.io import load_image

    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError("no image given: upload a PNG, JPEG, WebP, TIFF, BMP or GIF image")
    try:
        return load_image(path, max_pixels=limit if limit is not None else max_pixels())
    except ValueError as e:  # name the user's file, not the server's upload path
        raise ValueError(str(e).replace(str(path), Path(path).name)) from None


_OUT_ROOT: Path | None = None
_OUT_LOCK = threading.Lock()


def output_root() -> Path:
    """Folder holding the per-request output folders (``VLMIR_APP_OUTPUT_DIR`` or a temp folder)."""
    global _OUT_ROOT
    with _OUT_LOCK:
        if _OUT_ROOT is None:
            env = os.environ.get("VLMIR_APP_OUTPUT_DIR", "").strip()
            _OUT_ROOT = Path(env) if env else Path(tempfile.gettempdir()) / "vlmir_app"
            _OUT_ROOT.mkdir(parents=True, exist_ok=True)
        return _OUT_ROOT


def request_dir() -> Path:
    """A new folder that belongs to one request only (no two users ever share an output path).

    Old request folders (older than :data:`OUTPUT_TTL_S`) are removed on the way.
    """
    root = output_root()
    now = time.time()
    for p in root.iterdir():
        try:
            if p.is_dir() and now - p.stat().st_mtime > OUTPUT_TTL_S:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:  # removed by a concurrent request
            pass
    d = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
    d.mkdir()
    return d


def save_png(x: torch.Tensor, path: Path) -> Path:
    from vlmir.io import save_image

    return save_image(x, path)


# ------------------------------------------------------------------------------------------------------ restore


@dataclass
class RestoreResult:
    """What :func:`restore` gives back.

    Args:
        image: restored float32 ``(1, 3, H, W)`` in [0, 1].
        input_png, output_png: the input and the result written losslessly in this request's folder.
        model: the model name; seconds: wall time of the restore call; note: random-weights warning or ``""``.
    """

    image: torch.Tensor
    input_png: Path
    output_png: Path
    model: str
    seconds: float
    note: str = ""
    random_weights: bool = False


def _check_int(value: Any, what: str, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {v}")
    return v


def restore(
    x: torch.Tensor,
    name: str,
    *,
    steps: int | None = None,
    seed: int = 0,
    tile: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    degradation: str | None = None,
    stem: str = "image",
    out_dir: Path | None = None,
) -> RestoreResult:
    """Restore ``x`` (float32 ``(1, 3, H, W)``) with restorer ``name``; write input and output PNGs.

    Args:
        steps: sampling steps, used only for diffusion models (``spec.extra["diffusion"]``).
        seed: seed of stochastic samplers (0 .. 2**31 - 1).
        tile: tile size in pixels (``None`` or 0: the model's own default), 64 .. 4096.
        progress: ``progress(done, total)`` callback (sampling steps of diffusion models, tiles of others).
        degradation: the degradation type, for restorers that take one (``spec.extra["degradations"]``, e.g.
            ``classical``); ``None`` or ``"auto"`` lets the model predict it.
        stem: file name stem for the PNGs.
        out_dir: where to write (default: a new :func:`request_dir`).
    """
    c = choice(name, "restorer")
    seed = _check_int(seed, "seed", 0, 2**31 - 1)
    tile_px = None if tile in (None, 0, "0", "") else _check_int(tile, "tile size", 64, 4096)
    kwargs: dict[str, Any] = {"seed": seed, "tile": tile_px}
    kwargs["progress"] = progress  # per sampling step (diffusion) or per tile
    if c.diffusion:
        max_steps = int(c.extra.get("max_steps", 1000))
        kwargs["steps"] = None if steps in (None, 0) else _check_int(steps, "steps", 1, max_steps)
    types = tuple(c.extra.get("degradations") or ())
    if types and degradation not in (None, "", "auto"):
        if degradation not in types:
            raise ValueError(
                f"degradation {degradation!r} is not one {name!r} handles; choose auto or one of: {', '.join(types)}"
            )
        kwargs["degradation"] = degradation
    model = MODELS.get(name, "restorer")
    out_dir = out_dir or request_dir()
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = model.restore(x, **kwargs)
    seconds = time.perf_counter() - t0
    y = y.detach().float().cpu().clamp(0, 1)
    if tuple(y.shape) != tuple(x.shape):
        raise RuntimeError(f"restorer {name!r} returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:64] or "image"
    inp = save_png(x, out_dir / f"{safe}_input.png")
    out = save_png(y, out_dir / f"{safe}_{name}.png")
    return RestoreResult(y, inp, out, name, seconds, random_note(model, name), is_random(model))


# ------------------------------------------------------------------------------------------ classify and rate


def classify(x: torch.Tensor, name: str) -> tuple[dict[str, float], str]:
    """Degradation probabilities of ``x`` from classifier ``name``, sorted high to low, and a random-weights note."""
    model = MODELS.get(name, "classifier")
    with torch.inference_mode():
        probs = model.classify(x)
    probs = {str(k): float(v) for k, v in probs.items()}
    probs = dict(sorted(probs.items(), key=lambda kv: -kv[1]))
    return probs, random_note(model, name)


def rate(x: torch.Tensor, name: str, *, describe: bool = False) -> dict[str, Any]:
    """Visibility rating of ``x`` by rater ``name``.

    Returns ``{"score": r, "vlm_vis": (r - 1) / 4, "probs": {level: p}, "description": str | None,
    "can_describe": bool, "note": str}``; the description is computed only when asked and supported.
    """
    model = MODELS.get(name, "rater")
    with torch.inference_mode():
        res = model.rate(x)
    probs = {lv: float(res["probs"].get(lv, 0.0)) for lv in LEVELS}
    can = hasattr(model, "describe")
    text = None
    if describe and can:
        with torch.inference_mode():
            text = str(model.describe(x))
    return {
        "score": float(res["score"]),
        "vlm_vis": float(res["vlm_vis"]),
        "probs": probs,
        "description": text,
        "can_describe": can,
        "note": random_note(model, name),
    }


def describable(name: str) -> bool:
    """Whether rater ``name`` can describe scenes (only known once built; unbuilt models say False)."""
    model = MODELS._models.get(("rater", name))
    return model is not None and hasattr(model, "describe")


# ------------------------------------------------------------------------------------------ no-reference metrics

_METRICS: dict[str, Any] = {}
_METRIC_LOCK = threading.RLock()  # pyiqa metrics are shared: one call at a time


def _pyiqa_cache_dir() -> Path:
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    return Path(DEFAULT_CACHE_DIR)


def nr_metrics_available() -> list[str]:
    """The no-reference pyiqa metrics usable offline here: weight-free ones, and those whose files are cached."""
    try:
        cache = _pyiqa_cache_dir()
    except ImportError:
        return []
    return [m for m, f in NR_METRICS.items() if f is None or (cache / f).is_file()]


METRIC_NAMES = {"piqe": "PIQE", "niqe": "NIQE", "brisque": "BRISQUE", "entropy": "Entropy"}


def lower_better(metric: str) -> bool:
    """Whether a lower score is better for a Compare metric (pyiqa name or display name)."""
    return metric.lower() in ("piqe", "niqe", "brisque")


def _metric(name: str) -> Any:
    with _METRIC_LOCK:
        m = _METRICS.get(name)
        if m is None:
            import pyiqa

            m = pyiqa.create_metric(name, device="cpu", as_loss=False)
            _METRICS[name] = m
        return m


def compare_rater() -> str | None:
    """The rater behind the Compare tab's VLM-Vis: ``embedded-rater`` when registered and available, else the
    first available rater that needs no download, else ``None`` (no VLM-Vis column)."""
    cs = [c for c in model_choices("rater") if c.available and "download" not in c.reason]
    for c in cs:
        if c.name == "embedded-rater":
            return c.name
    return cs[0].name if cs else None


def nr_scores(x: torch.Tensor, *, rater: str | None = None, metrics: list[str] | None = None) -> dict[str, float]:
    """No-reference scores of ``x``: ``VLM-Vis`` from ``rater`` (default: the default rater) and pyiqa metrics.

    A metric that cannot score this image (e.g. too small) gets ``nan``.
    """
    out: dict[str, float] = {}
    rater = rater or compare_rater()
    if rater is not None:
        out["VLM-Vis"] = rate(x, rater)["vlm_vis"]
    xm = x.detach().float().cpu()
    for m in metrics if metrics is not None else nr_metrics_available():
        try:
            with torch.inference_mode(), _METRIC_LOCK:
                out[METRIC_NAMES.get(m, m)] = float(_metric(m)(xm).mean())
        except (RuntimeError, ValueError, IndexError, ZeroDivisionError):  # pyiqa fails on tiny images
            out[METRIC_NAMES.get(m, m)] = float("nan")
    return out


# ------------------------------------------------------------------------------------------------------ compare


@dataclass
class CompareRow:
    method: str
    png: Path
    seconds: float
    scores: dict[str, float]
    note: str = ""


def compare(
    x: torch.Tensor,
    methods: list[str],
    *,
    steps: int | None = None,
    seed: int = 0,
    degradation: str | None = None,
    rater: str | None = None,
    out_dir: Path | None = None,
) -> list[CompareRow]:
    """Run ``x`` through each restorer in ``methods``; score the input and every output without reference.

    The first row is the input itself (method ``"input"``). Unavailable methods raise ``RuntimeError``.
    """
    if not methods:
        raise ValueError("choose at least one method to compare")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {methods}")
    for m in methods:
        c = choice(m, "restorer")
        if not c.available:
            raise RuntimeError(f"method {m!r} is not available here: {c.reason}")
    out_dir = out_dir or request_dir()
    rows = [CompareRow("input", save_png(x, out_dir / "input.png"), 0.0, nr_scores(x, rater=rater))]
    for m in methods:
        takes = degradation in (choice(m, "restorer").extra.get("degradations") or ())
        r = restore(
            x, m, steps=steps, seed=seed, degradation=degradation if takes else None, out_dir=out_dir, stem="compare"
        )
        rows.append(CompareRow(m, r.output_png, r.seconds, nr_scores(r.image, rater=rater), r.note))
    return rows


# ------------------------------------------------------------------------------------------------ metric tables


def eval_roots() -> list[Path]:
    """Folders the Metric tables tab may read eval outputs from (``VLMIR_EVAL_ROOTS``, ``os.pathsep``-separated;
    default: the working directory). A public Space must not read arbitrary server paths."""
    env = os.environ.get("VLMIR_EVAL_ROOTS", "").strip()
    roots = [Path(p) for p in env.split(os.pathsep) if p.strip()] if env else [Path.cwd()]
    return [r.resolve() for r in roots]


def _metric_label(metric: str) -> str:
    try:
        from eval.tables import display_name

        return str(display_name(metric))
    except (ImportError, ValueError, KeyError):
        return metric


def _flatten(df: Any) -> Any:
    """A table with a (method) index and maybe (category, metric) columns as a flat frame for display:
    columns like ``"Rain · NIMA"``, numbers rounded to 4 decimals."""
    import pandas as pd

    df = df.copy()
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [f"{c} · {_metric_label(str(k))}" for c, k in df.columns]
        df = df.apply(pd.to_numeric, errors="coerce").round(4)
    if df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    df.columns = [str(c) for c in df.columns]
    return df


def reference_tables() -> list[str]:
    """Names of the reference tables the eval module ships (empty when it is not installed)."""
    try:
        import eval as ev

        return list(ev.list_reference_tables())
    except (ImportError, AttributeError):
        return []


def load_reference_table(name: str) -> Any:
    """A shipped reference table laid out as the papers print it: one row per method, one column per
    (category, metric), through ``eval.make_table`` (so it reads like our own eval outputs)."""
    import eval as ev

    valid = reference_tables()
    if name not in valid:
        raise ValueError(f"unknown reference table {name!r}; choose one of: {', '.join(valid) or '(none shipped)'}")
    return _flatten(ev.make_table(reference_plot_input(name)))


def reference_plot_input(name: str) -> Any:
    """A reference table in the long form ``eval.plots.bar_charts`` takes."""
    from eval.reference import reference_scores

    return reference_scores(name)


def load_eval_output(path: str | os.PathLike) -> tuple[Any, Any]:
    """Read an eval output: a folder with ``scores.csv`` / ``table.csv``, or one of those CSV files.

    Returns ``(table for display, input for plots)``: from ``scores.csv`` (preferred) the table is
    ``eval.make_table(scores)``; from ``table.csv`` (columns ``<category>/<metric>``) the numbers as written.
    A folder must lie under one of :func:`eval_roots`.
    """
    import pandas as pd

    if path is None or not str(path).strip():
        raise ValueError("give an eval output folder (with table.csv or scores.csv) or upload a CSV")
    p = Path(str(path).strip()).expanduser().resolve()
    if p.is_dir():
        roots = eval_roots()
        if not any(p == r or r in p.parents for r in roots):
            raise ValueError(
                f"folder {str(p)!r} is outside the folders this app may read ({', '.join(map(str, roots))}); "
                "set VLMIR_EVAL_ROOTS to allow it"
            )
        scores_p, table_p = p / "scores.csv", p / "table.csv"
    elif p.is_file() and p.suffix.lower() == ".csv":
        scores_p, table_p = (p, None) if _is_long(p) else (None, p)
    else:
        raise ValueError(f"{str(p)!r} is neither an eval output folder nor a .csv file")
    if scores_p is not None and scores_p.is_file():
        scores = pd.read_csv(scores_p)
        need = {"method", "category", "image", "metric", "score"}
        if not need <= set(scores.columns):
            raise ValueError(f"scores.csv needs columns {sorted(need)}, found {list(scores.columns)}")
        import eval as ev

        table = ev.make_table(scores)
        return _flatten(table), table
    if table_p is not None and table_p.is_file():
        table = pd.read_csv(table_p, index_col=0)
        pairs = [str(c).split("/", 1) for c in table.columns]
        if not table.columns.size or any(len(pr) != 2 for pr in pairs):
            raise ValueError(
                f"{table_p.name} is not an eval table (columns <category>/<metric>): {list(table.columns)}"
            )
        numeric = table.apply(
            lambda col: pd.to_numeric(col.astype(str).str.replace("*", "", regex=False), errors="coerce")
        )
        numeric.columns = pd.MultiIndex.from_tuples([tuple(pr) for pr in pairs], names=["category", "metric"])
        numeric.index.name = "method"
        return _flatten(numeric), numeric
    raise ValueError(f"no scores.csv or table.csv in {str(p)!r}")


def _is_long(p: Path) -> bool:
    with open(p, encoding="utf-8", errors="replace") as f:
        head = f.readline().lower()
    return all(c in head for c in ("method", "metric", "score"))


def bar_charts(table_or_scores: Any, out_dir: Path) -> list[Path]:
    """Per-metric bar charts (PNG) through ``eval.plots.bar_charts``; ``[]`` when the eval module lacks plots."""
    try:
        from eval.plots import bar_charts as _bars
    except ImportError:
        return []
    return [Path(p) for p in _bars(table_or_scores, out_dir)]


def degradation_types() -> list[str]:
    """Every degradation type some registered restorer takes as an argument (``spec.extra["degradations"]``)."""
    seen: list[str] = []
    for c in model_choices("restorer"):
        for t in c.extra.get("degradations") or ():
            if t not in seen:
                seen.append(t)
    return seen


def warm_up(models: list[tuple[str, str]] | None = None, *, size: int = 512, metrics: bool = True) -> list[str]:
    """Build models ahead of the first request and run each once on a grey image, so the first visitor does
    not wait for weight loading and first-call set-up. Called in a background thread after launch (never at import).

    Args:
        models: ``(name, task)`` pairs; default: each task's default choice that is available without a download.
        size: side of the warm-up image in pixels (512: the size most visitors upload, so first-call set-up for
            those shapes is done too).
        metrics: also build the Compare tab's no-reference pyiqa metrics (``"nr-metrics"`` in the result).

    Returns:
        the names warmed up. A model that fails here is skipped (its error shows on first real use).
    """
    if models is None:
        models = []
        for task in ("restorer", "classifier", "rater"):
            c = next((c for c in model_choices(task) if c.available and "download" not in c.reason), None)
            if c is not None:
                models.append((c.name, task))
    x = torch.full((1, 3, size, size), 0.5)
    done = []
    for name, task in models:
        try:
            if task == "restorer":
                restore(x, name, out_dir=request_dir(), stem="warmup")
            elif task == "classifier":
                classify(x, name)
            elif task == "rater":
                rate(x, name)
            done.append(name)
        except Exception as e:  # reported, not fatal: warm-up is an optimisation only
            print(f"vlmir app: warm-up of {name!r} failed: {type(e).__name__}: {e}", file=sys.stderr)
    if metrics:
        try:  # import pyiqa and build the Compare tab's metrics once
            with torch.inference_mode(), _METRIC_LOCK:
                for m in nr_metrics_available():
                    _metric(m)(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
            done.append("nr-metrics")
        except Exception as e:
            print(f"vlmir app: warm-up of the no-reference metrics failed: {type(e).__name__}: {e}", file=sys.stderr)
    return done
