"""The Gradio UI of the vlmir demo: ``create_demo() -> gr.Blocks``, a thin layer over :mod:`vlmir.app.service`.

Tabs: Restore, Degradation type, Visibility rating, Compare, Metric tables. Every tab starts from one uploaded image
(except the tables); its button is also an API endpoint for ``gradio_client`` (``/restore``, ``/classify``, ``/rate``,
``/compare``), each taking the image first. Uploads reach the app undecoded (:func:`raw_image`), so every file is
decoded by :func:`vlmir.io.load_image` and a bad one becomes a ``gr.Error`` that says what is wrong and what is
allowed, never a crash. Set ``GRADIO_ANALYTICS_ENABLED=False`` before importing this module to keep analytics off
(``app.py`` does).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from vlmir.app import service  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"

CSS = """
.vlmir-header {text-align: center; margin-bottom: 0.2rem}
.vlmir-header h1 {margin-bottom: 0.1rem}
.vlmir-note {font-size: 0.9rem; opacity: 0.85}
.vlmir-warn {color: #b45309; font-weight: 600}
footer {visibility: hidden}
#vlmir-plots .thumbnail-item {aspect-ratio: 2.6 / 1 !important}
#vlmir-plots .grid-container {grid-template-rows: none !important; grid-auto-rows: auto !important}
"""


def theme() -> gr.themes.Base:
    """The demo's theme (pass to ``launch``; Gradio 6 takes theme and CSS there)."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


def style_kwargs() -> dict[str, Any]:
    """``theme`` and ``css`` keyword arguments for ``Blocks.launch``."""
    return {"theme": theme(), "css": CSS}


def _raw_preprocess(self: gr.Image, payload: Any) -> str | None:
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return gr.Image.preprocess(self, payload)  # base64 upload (webcam/clipboard): gradio writes it to a file
    if payload.path is None:
        raise gr.Error("the upload carries no file; upload an image file (PNG, JPEG, WebP, TIFF, BMP or GIF)")
    return str(payload.path)


def raw_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose upload reaches the handler as the uploaded file's path, undecoded.

    ``gr.Image(type="filepath")`` still opens the file with PIL, and fails on corrupt or unusual files before the app
    sees them; this one hands the path over so that :func:`vlmir.io.load_image` decodes it and reports problems
    clearly. The browser side is the ordinary image component. (An instance override rather than a subclass:
    Gradio writes a ``.pyi`` stub next to the source of every component subclass.)
    """
    img = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    img.preprocess = types.MethodType(_raw_preprocess, img)  # type: ignore[method-assign]
    return img


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can act on into ``gr.Error`` with their message (the app keeps running)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as e:
            raise gr.Error(str(e), title="Invalid input") from None
        except FileNotFoundError as e:  # hub weights absent offline: the message says how to provide them
            raise gr.Error(str(e), title="Weights not found") from None
        except MemoryError:
            raise gr.Error(
                "out of memory on this image; choose a smaller tile size or a smaller image", title="Out of memory"
            ) from None
        except RuntimeError as e:
            msg = str(e)
            if "out of memory" in msg.lower():
                msg = "out of memory on this image; choose a smaller tile size or a smaller image"
            raise gr.Error(msg, title="Could not run") from None

    return wrapper


def _gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    """On Hugging Face ZeroGPU Spaces, run ``fn`` with a GPU attached (``spaces.GPU``); elsewhere unchanged."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return functools.wraps(fn)(spaces.GPU(duration=120)(fn))


def _choices(task: str) -> list[tuple[str, str]]:
    return [(c.label, c.name) for c in service.model_choices(task)]


def _pick(task: str, name: str | None) -> str:
    if not name:
        valid = ", ".join(c.name for c in service.model_choices(task) if c.available) or "(none available)"
        raise ValueError(f"choose a {task} model; available: {valid}")
    c = service.choice(name, task)
    if not c.available:
        raise RuntimeError(f"{name!r} is not available here: {c.reason}")
    return name


def _warn(note: str) -> str:
    return f"\n\n<span class='vlmir-warn'>⚠ {note}</span>" if note else ""


def _stem(path: str | None) -> str:
    return Path(path).stem if path else "image"


def _size_line(x: Any) -> str:
    return f"{x.shape[-1]}×{x.shape[-2]}"


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# ---------------------------------------------------------------------------------------------------- handlers


@_gpu
@_user_errors
def restore_image(
    image: str | None,
    model: str | None,
    steps: float = 0,
    seed: float = 0,
    tile: float = 0,
    degradation: str | None = "auto",
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's own idiom)
) -> tuple[tuple[str, str], str, str]:
    """``/restore``: (image path, model, steps, seed, tile, degradation) -> ((input PNG, restored PNG), PNG to
    download, info). ``degradation`` is used by restorers that take the type (``classical``); "auto" predicts it."""
    name = _pick("restorer", model)
    x = service.load_upload(image)

    def report(step: int, total: int) -> None:
        progress((step, total), desc=f"{name}: sampling")

    r = service.restore(
        x,
        name,
        steps=int(steps or 0) or None,
        seed=int(seed or 0),
        tile=int(tile or 0),
        progress=report,
        degradation=degradation,
        stem=_stem(image),
    )
    info = f"**{name}** restored a {_size_line(x)} image in **{r.seconds:.2f} s** on `{service.MODELS.device or service.device()}`."
    return (str(r.input_png), str(r.output_png)), str(r.output_png), info + _warn(r.note)


@_gpu
@_user_errors
def classify_image(image: str | None, model: str | None) -> tuple[dict[str, float], pd.DataFrame, str]:
    """``/classify``: (image path, classifier) -> (probabilities by type, bar chart frame, info)."""
    name = _pick("classifier", model)
    x = service.load_upload(image)
    probs, note = service.classify(x, name)
    top = next(iter(probs))
    df = pd.DataFrame({"degradation": list(probs), "probability": [round(p, 4) for p in probs.values()]})
    info = f"Most likely degradation: **{top}** ({probs[top]:.1%}) by **{name}** on a {_size_line(x)} image."
    return probs, df, info + _warn(note)


@_gpu
@_user_errors
def rate_image(image: str | None, rater: str | None, describe: bool = False) -> tuple[str, pd.DataFrame, str]:
    """``/rate``: (image path, rater, describe) -> (r and VLM-Vis, level probabilities frame, scene description)."""
    name = _pick("rater", rater)
    x = service.load_upload(image)
    res = service.rate(x, name, describe=bool(describe))
    info = (
        f"### r = {res['score']:.3f} / 5 &nbsp;·&nbsp; VLM-Vis = {res['vlm_vis']:.3f}\n"
        f"r = Σ i·p<sub>i</sub> over the five levels (excellent = 5 … bad = 1), VLM-Vis = (r − 1) / 4, "
        f"by **{name}**."
    )
    df = pd.DataFrame(
        {"level": list(service.LEVELS), "probability": [round(res["probs"][lv], 4) for lv in service.LEVELS]}
    )
    if not res["can_describe"]:
        text = f"({name} does not describe scenes; choose a VLM rater such as llava-1.5-7b for descriptions.)"
    elif res["description"] is None:
        text = "(tick 'Describe the scene' to ask the rater for a description.)"
    else:
        text = res["description"]
    return info + _warn(res["note"]), df, text


@_gpu
@_user_errors
def compare_methods(
    image: str | None, methods: list[str] | None, steps: float = 0, seed: float = 0, degradation: str | None = "auto"
) -> tuple[list[tuple[str, str]], pd.DataFrame, str]:
    """``/compare``: (image path, methods, steps, seed, degradation) -> (gallery of (PNG, caption), metrics frame,
    info)."""
    if not methods:
        raise ValueError("tick at least one method to compare")
    for m in methods:
        _pick("restorer", m)
    x = service.load_upload(image)
    rows = service.compare(
        x, list(methods), steps=int(steps or 0) or None, seed=int(seed or 0), degradation=degradation
    )
    gallery, records, notes = [], [], []
    for r in rows:
        cap = " · ".join(f"{k} {_fmt(v)}" for k, v in r.scores.items())
        t = f" · {r.seconds:.2f} s" if r.method != "input" else ""
        gallery.append((str(r.png), f"{r.method}: {cap}{t}" + (" · RANDOM WEIGHTS" if r.note else "")))
        records.append(
            {"method": r.method, **{k: round(v, 4) for k, v in r.scores.items()}, "seconds": round(r.seconds, 3)}
        )
        if r.note:
            notes.append(r.note)
    rater = service.compare_rater()
    if rater is not None:
        note = service.random_note(service.MODELS.get(rater, "rater"), rater)
        if note:
            notes.append(f"VLM-Vis comes from {rater!r}. {note}")
    metrics = [k for k in rows[0].scores]
    arrows = ", ".join(f"{k} {'↓' if service.lower_better(k.lower()) else '↑'}" for k in metrics)
    info = f"{len(methods)} method(s) on a {_size_line(x)} image. No-reference metrics: {arrows or 'none available'}."
    return gallery, pd.DataFrame.from_records(records), info + "".join(_warn(n) for n in notes)


@_user_errors
def load_tables(
    source: str, reference: str | None, folder: str | None, upload: str | None
) -> tuple[pd.DataFrame, list[str], str]:
    """Metric tables: (source, reference name, folder, uploaded CSV) -> (table, plot PNGs, info)."""
    out_dir = service.request_dir()
    if source == "Reference table":
        if not reference:
            raise ValueError(f"choose a reference table: {', '.join(service.reference_tables()) or '(none shipped)'}")
        table = service.load_reference_table(reference)
        plots = service.bar_charts(service.reference_plot_input(reference), out_dir)
        what = f"reference table **{reference}**"
    else:
        path = upload if source == "Upload CSV" else folder
        table, plot_input = service.load_eval_output(path)
        plots = service.bar_charts(plot_input, out_dir)
        what = f"`{Path(str(path)).name}`"
    info = f"Loaded {what}: {len(table)} methods × {len(table.columns) - 1} cells. Click a column header to sort."
    if not plots:
        info += " (No plots: eval.plots is not available.)"
    return table, [str(p) for p in plots], info


def _restorer_settings(model: str | None) -> tuple[Any, Any, Any, str]:
    """Show steps and seed only for diffusion models, the type only for restorers that take it; describe the model."""
    if not model:
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), ""
    c = service.choice(model, "restorer")
    steps = c.default_steps
    max_steps = int(c.extra.get("max_steps", max(100, steps)))
    md = c.description
    if not c.available:
        md += f"\n\n<span class='vlmir-warn'>Unavailable: {c.reason}</span>"
    elif c.reason:
        md += f"\n\n<span class='vlmir-note'>{c.reason}</span>"
    types = list(c.extra.get("degradations") or ())
    return (
        gr.update(visible=c.diffusion, maximum=max_steps, value=min(steps, max_steps)),
        gr.update(visible=c.diffusion),
        gr.update(visible=bool(types), choices=["auto", *types], value="auto"),
        md,
    )


def _short(reason: str, limit: int = 120) -> str:
    """The first clause of a (long) availability reason, for the status table; the full text shows on selection."""
    first = reason.split("; ")[0].split(". ")[0].strip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _model_table() -> str:
    lines = ["| model | task | status | description |", "|:--|:--|:--|:--|"]
    for task in ("restorer", "classifier", "rater"):
        for c in service.model_choices(task):
            if not c.available:
                status = f"unavailable: {_short(c.reason)}"
            elif c.default:
                status = "**default**"
            elif "download" in c.reason:
                status = "downloads its weights on first use"
            else:
                status = "available"
            lines.append(f"| `{c.name}` | {task} | {status} | {c.description} |")
    return "\n".join(lines)


def _examples(pattern: str = "*") -> list[str]:
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(str(p) for p in EXAMPLES_DIR.glob(pattern) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


class ExampleCache:
    """Results of example clicks, computed on first use and reused (in memory, per process: a restart or a change of
    weights never serves stale results, unlike a disk cache). Thread-safe; a hit whose files were removed (request
    folders expire) is recomputed."""

    def __init__(self) -> None:
        self._hits: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def cached(*args: Any) -> Any:
            key = (fn.__name__, *(tuple(a) if isinstance(a, list) else a for a in args))
            with self._lock:
                hit = self._hits.get(key)
            if hit is not None and all(Path(f).exists() for f in _files(hit)):
                return hit
            out = fn(*args)
            with self._lock:
                self._hits[key] = out
            return out

        cached.__name__ = f"example_{fn.__name__}"
        return cached

    def __len__(self) -> int:
        return len(self._hits)


EXAMPLE_CACHE = ExampleCache()


def _files(value: Any) -> list[str]:
    """File paths inside a handler's result (the restore outputs), for the cache's existence check."""
    if isinstance(value, str) and value.startswith(str(service.output_root())):
        return [value]
    if isinstance(value, (tuple, list)):
        return [f for v in value for f in _files(v)]
    return []


def _example_block(
    ex: list[str], inp: gr.Image, inputs: list[Any], outputs: list[Any], fn: Callable[..., Any] | None
) -> None:
    """Example thumbnails that fill ``inp``; with ``fn``, a click also runs ``fn`` on the tab's current settings
    (``inputs``), through :data:`EXAMPLE_CACHE`, so each example is computed once per model and settings."""
    if not ex:
        return
    block = gr.Examples(
        [[p] for p in ex],
        [inp],
        cache_examples=False,
        label="Examples: synthetic degradations of public-domain photos (click one)",
        examples_per_page=12,
    )
    if fn is not None:
        block.load_input_event.then(EXAMPLE_CACHE.wrap(fn), inputs, outputs, api_visibility="private")


# -------------------------------------------------------------------------------------------------------- layout


def create_demo(*, examples: bool = True, run_examples: bool = True) -> gr.Blocks:
    """Build the demo.

    Args:
        examples: show the example images from ``assets/examples/``.
        run_examples: a click on an example also runs the tab on it with the current settings, cached lazily in
            memory (:class:`ExampleCache`); ``False`` only fills the image.

    Returns:
        the ``gr.Blocks``; launch it with ``demo.queue().launch(**style_kwargs())``.
    """
    limit_mp = service.max_pixels() / 1e6
    ex = _examples() if examples else []
    upload_info = f"PNG, JPEG, WebP, TIFF, BMP or GIF; up to {limit_mp:g} MP (VLMIR_MAX_PIXELS)."

    with gr.Blocks(title="vlmir: vision-language guided image restoration", analytics_enabled=False) as demo:
        gr.Markdown(
            "# vlmir · vision-language guided image restoration\n"
            "Restore degraded photos (rain, haze, snow, noise, blur, low light, JPEG, shadows, holes), recognise the "
            "degradation with a degradation-aware CLIP (DA-CLIP), and rate visibility like WResVLM's VLM-Vis.",
            elem_classes=["vlmir-header"],
        )
        with gr.Accordion("Models in this app", open=False):
            gr.Markdown(_model_table())

        # ---------------------------------------------------------------------------------------- Restore
        with gr.Tab("Restore", id="restore"):
            r_choices = _choices("restorer")
            with gr.Row():
                with gr.Column(scale=2):
                    r_in = raw_image(label="Degraded image", height=380, placeholder=upload_info)
                    r_model = gr.Dropdown(
                        r_choices,
                        value=service.default_choice("restorer"),
                        label="Restorer",
                        info="Unavailable models say why.",
                    )
                    r_desc = gr.Markdown(elem_classes=["vlmir-note"])
                    r_deg = gr.Dropdown(
                        ["auto", *service.degradation_types()],
                        value="auto",
                        label="Degradation type",
                        info="For restorers that take the type; auto = predicted by the classifier.",
                        visible=False,
                    )
                    with gr.Group():
                        r_steps = gr.Slider(
                            0,
                            100,
                            value=0,
                            step=1,
                            label="Sampling steps",
                            visible=False,
                            info="Diffusion restorers only; 0 = the model's default.",
                        )
                        r_seed = gr.Number(0, precision=0, minimum=0, label="Seed", visible=False)
                    r_tile = gr.Slider(
                        0,
                        2048,
                        value=0,
                        step=64,
                        label="Tile size (px)",
                        info="0 = the model's default; large images are processed in overlapping tiles.",
                    )
                    r_btn = gr.Button("Restore", variant="primary")
                with gr.Column(scale=3):
                    r_out = gr.ImageSlider(label="Before / after", format="png", type="filepath", max_height=560)
                    r_info = gr.Markdown()
                    r_file = gr.File(label="Download restored PNG")
            r_model.change(_restorer_settings, r_model, [r_steps, r_seed, r_deg, r_desc], api_visibility="private")
            demo.load(_restorer_settings, r_model, [r_steps, r_seed, r_deg, r_desc], api_visibility="private")
            r_btn.click(
                restore_image,
                [r_in, r_model, r_steps, r_seed, r_tile, r_deg],
                [r_out, r_file, r_info],
                api_name="restore",
                concurrency_limit=2,
            )
            _example_block(
                ex,
                r_in,
                [r_in, r_model, r_steps, r_seed, r_tile, r_deg],
                [r_out, r_file, r_info],
                restore_image if run_examples else None,
            )

        # ------------------------------------------------------------------------------ Degradation type
        with gr.Tab("Degradation type", id="classify"):
            with gr.Row():
                with gr.Column(scale=2):
                    c_in = raw_image(label="Image", height=380, placeholder=upload_info)
                    c_model = gr.Dropdown(
                        _choices("classifier"), value=service.default_choice("classifier"), label="Classifier"
                    )
                    c_btn = gr.Button("Classify", variant="primary")
                with gr.Column(scale=3):
                    c_info = gr.Markdown()
                    c_label = gr.Label(num_top_classes=3, label="Top degradations")
                    c_plot = gr.BarPlot(
                        x="degradation",
                        y="probability",
                        title="Probability of every type",
                        y_lim=[0, 1],
                        sort="-y",
                        height=300,
                        x_label_angle=-30,
                    )
            c_btn.click(classify_image, [c_in, c_model], [c_label, c_plot, c_info], api_name="classify")
            _example_block(
                ex, c_in, [c_in, c_model], [c_label, c_plot, c_info], classify_image if run_examples else None
            )

        # ----------------------------------------------------------------------------- Visibility rating
        with gr.Tab("Visibility rating", id="rate"):
            with gr.Row():
                with gr.Column(scale=2):
                    v_in = raw_image(label="Image", height=380, placeholder=upload_info)
                    v_model = gr.Dropdown(_choices("rater"), value=service.default_choice("rater"), label="Rater")
                    v_desc = gr.Checkbox(
                        False,
                        label="Describe the scene (VLM raters only)",
                        info="WResVLM's prompt: describe the scene with weather information.",
                    )
                    v_btn = gr.Button("Rate visibility", variant="primary")
                with gr.Column(scale=3):
                    v_info = gr.Markdown()
                    v_plot = gr.BarPlot(
                        x="level",
                        y="probability",
                        title="Visibility level probabilities",
                        y_lim=[0, 1],
                        sort=list(service.LEVELS),
                        height=280,
                    )
                    v_text = gr.Textbox(label="Scene description", lines=3, interactive=False)
            v_btn.click(rate_image, [v_in, v_model, v_desc], [v_info, v_plot, v_text], api_name="rate")
            _example_block(
                ex, v_in, [v_in, v_model, v_desc], [v_info, v_plot, v_text], rate_image if run_examples else None
            )

        # ------------------------------------------------------------------------------------- Compare
        with gr.Tab("Compare", id="compare"):
            available = [(c.label, c.name) for c in service.model_choices("restorer") if c.available]
            fast = [n for _, n in available if not service.choice(n, "restorer").diffusion][:3]
            with gr.Row():
                with gr.Column(scale=2):
                    k_in = raw_image(label="Image", height=320, placeholder=upload_info)
                    k_methods = gr.CheckboxGroup(
                        available, value=fast, label="Methods", info="Only available restorers are listed."
                    )
                    with gr.Row():
                        k_steps = gr.Number(0, precision=0, minimum=0, label="Steps (diffusion; 0 = default)")
                        k_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    k_types = service.degradation_types()
                    k_deg = gr.Dropdown(
                        ["auto", *k_types],
                        value="auto",
                        label="Degradation type",
                        info="For methods that take it (classical); auto = predicted.",
                        visible=bool(k_types),
                    )
                    k_btn = gr.Button("Compare", variant="primary")
                with gr.Column(scale=3):
                    k_gallery = gr.Gallery(
                        label="Input and results", columns=2, height=640, object_fit="contain", format="png"
                    )
                    k_info = gr.Markdown()
                    k_table = gr.Dataframe(
                        label="No-reference metrics (↑ higher is better, ↓ lower is better)", interactive=False
                    )
            _example_block(ex, k_in, [], [], None)
            k_btn.click(
                compare_methods,
                [k_in, k_methods, k_steps, k_seed, k_deg],
                [k_gallery, k_table, k_info],
                api_name="compare",
                concurrency_limit=1,
            )

        # -------------------------------------------------------------------------------- Metric tables
        with gr.Tab("Metric tables", id="tables"):
            refs = service.reference_tables()
            first = next((r for r in refs if "table1" in r), refs[0] if refs else None)
            with gr.Row():
                with gr.Column(scale=1):
                    t_source = gr.Radio(
                        ["Reference table", "Eval output folder", "Upload CSV"],
                        value="Reference table" if refs else "Eval output folder",
                        label="Source",
                    )
                    t_ref = gr.Dropdown(
                        refs,
                        value=first,
                        label="Shipped reference table",
                        info="Published tables (WResVLM) shipped with the eval module.",
                    )
                    t_folder = gr.Textbox(
                        label="Eval output folder",
                        placeholder="runs/eval_out (from python -m eval run)",
                        info="A folder with table.csv or scores.csv, under VLMIR_EVAL_ROOTS.",
                    )
                    t_upload = gr.File(label="Or upload scores.csv / table.csv", file_types=[".csv"], type="filepath")
                    t_btn = gr.Button("Load table", variant="primary")
                with gr.Column(scale=3):
                    t_info = gr.Markdown()
                    t_table = gr.Dataframe(label="Metric table", interactive=False, wrap=True)
                    t_plots = gr.Gallery(
                        label="Per-metric bar charts",
                        columns=1,
                        height="auto",
                        object_fit="contain",
                        elem_id="vlmir-plots",
                    )
            t_btn.click(
                load_tables, [t_source, t_ref, t_folder, t_upload], [t_table, t_plots, t_info], api_name="tables"
            )

        gr.Markdown(
            f"Uploads are decoded by `vlmir.io` (EXIF, alpha on white, 16-bit, CMYK); limit {limit_mp:g} MP. "
            "Outputs are lossless PNG, one private folder per request. Models marked RANDOM WEIGHTS are untrained "
            "test builds and their outputs mean nothing.",
            elem_classes=["vlmir-note"],
        )
    return demo
