"""Paired training data from clean photographs: LQ/GT images, metadata and a DA-CLIP caption CSV.

``make_dataset`` degrades every image of a folder ``per_image`` times with randomly drawn specs
(:func:`vlmir.degradations.sample_degradation`) and writes::

    OUT/LQ/<name>.png         degraded image (lossless PNG)
    OUT/GT/<name>.png         the clean image it came from (same size; one copy per pair, so pairs match by name)
    OUT/meta.jsonl            one JSON object per pair: name, lq, gt, source, caption, title, types, severity, seed,
                              visibility, visibility_score, and VLMIR's captions: hq_caption, lq_caption and
                              caption_source (the captioner's name, or ``metadata-template``)
    OUT/captions.jsonl        the caption cache (:class:`vlmir.captions.CaptionCache`): a re-run with the same
                              captioner captions nothing twice
    OUT/daclip_train.csv      open_clip CSV (tab-separated, open_clip's default ``--csv-separator``) with columns
                              ``filepath`` (absolute LQ path) and ``title``

The title follows DA-CLIP's ``scripts/generate_captions.py``: ``"<clean caption>: <degradation>"``, where the caption
describes the *clean* image (DA-CLIP captions the HQ image with BLIP) and DA-CLIP's training splits the title at
the ": ". Captions are therefore cleaned of ":" (and tabs/newlines). For a mixture the degradation part is the
names joined with ", " in the order they were applied (``"a dog on a beach: hazy, noisy"``), which keeps the
single ": " separator; a clean sample is titled ``clear``. Without a captioning model, the title is the
degradation alone (``"hazy"``).

Captions come from an image-captioning model in the transformers format (BLIP, GIT, VisionEncoderDecoder, ...),
given as a local folder or a hub name; a hub name that is not in the local cache fails at once when the hub is
offline, with a message saying how to provide it.

VLMIR's caption alignment needs a caption of the HQ *and* of the LQ image of every pair (``hq_caption``,
``lq_caption``). With a captioner both come from it; without one both are the deterministic template of the pair's
metadata (:func:`vlmir.captions.metadata_caption`: the source file's name, then the degradations and severity),
and ``caption_source`` says ``metadata-template``. The DA-CLIP fields (``caption``, ``title``) are unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlmir.captions import METADATA_CAPTIONER, CaptionCache, captioner_name, metadata_caption
from vlmir.degradations import DEGRADATIONS, degrade, parse_types, sample_degradation

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
CLEAN_TITLE = "clear"


def find_images(src: str | os.PathLike) -> list[Path]:
    """Image files under ``src`` (recursive), sorted by relative path so the order (and the seeds) is stable."""
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) found under {str(root)!r}")
    return files


def parse_severities(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1-5"``, ``"2-4"``, ``"1,3,5"`` or ``"3"`` (or a sequence of ints) to a sorted tuple of severities 1..5."""
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        values = []
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise ValueError(f"severity range {part!r} is empty (write low-high, e.g. 1-5)")
                values.extend(range(lo, hi + 1))
            elif part.isdigit():
                values.append(int(part))
            else:
                raise ValueError(f"cannot read severities {text!r}: write a range like 1-5 or a list like 1,3,5")
    bad = [v for v in values if not 1 <= v <= 5]
    if bad or not values:
        raise ValueError(f"severities must lie in 1..5, got {text!r}")
    return tuple(sorted(set(values)))


def center_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize ``img`` (HWC float32) so its shorter side is ``size`` (area interpolation when shrinking, bicubic
    when enlarging), then crop the central ``size x size`` square."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = np.clip(cv2.resize(img, (nw, nh), interpolation=interp), 0.0, 1.0)
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[y0 : y0 + size, x0 : x0 + size])


def clean_caption(text: str) -> str:
    """One line, no ':' (DA-CLIP splits titles at ': '), no tabs, collapsed spaces."""
    text = re.sub(r"[:\t\r\n]+", " ", str(text))
    return re.sub(r"\s+", " ", text).strip()


def title_for(caption: str | None, types: Sequence[str]) -> str:
    """DA-CLIP's CSV title: ``"<caption>: <degradation>"`` (names joined by ", "), or the degradation alone."""
    deg = ", ".join(types) if types else CLEAN_TITLE
    caption = clean_caption(caption) if caption else ""
    return f"{caption}: {deg}" if caption else deg


class Captioner:
    """An image-captioning model in the transformers format, loaded from a local folder (or the HF cache).

    Args:
        name_or_path: a local model folder, or a hub repo id (used only when cached, or when the hub is online).
        device: torch device string (default ``"cpu"``).
        max_new_tokens: longest caption in tokens (default 30).

    Transformers 4 had an ``image-to-text`` pipeline; transformers 5 dropped it, so when the pipeline is absent the
    model is loaded with ``AutoModelForImageTextToText`` and its processor (or image processor + tokenizer) and
    captions come from ``generate`` (greedy, deterministic).
    """

    def __init__(self, name_or_path: str, *, device: str = "cpu", max_new_tokens: int = 30) -> None:
        self.name = str(name_or_path)
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        local = Path(name_or_path).is_dir()
        if not local:
            _check_hub_model(self.name)
        import torch  # noqa: F401  (transformers needs it; imported here, not at module import)
        from transformers import AutoModelForImageTextToText

        kw = {} if local else {"local_files_only": _offline()}
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(self.name, **kw).to(device).eval()
            self.image_processor, self.tokenizer, self.processor = _load_processors(self.name, kw)
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeError(
                f"could not load caption model {self.name!r} ({type(e).__name__}: {e}); give a folder holding a "
                "transformers image-captioning model (config.json, weights, processor/tokenizer files)"
            ) from e

    def __call__(self, image: np.ndarray) -> str:
        """Caption one image (HWC float32 in [0, 1]); returns a cleaned one-line caption."""
        import torch
        from PIL import Image

        pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")
        if self.processor is not None:
            inputs = self.processor(images=pil, return_tensors="pt")
        else:
            inputs = self.image_processor(images=pil, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if hasattr(v, "to")}
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        decoder = self.processor if self.processor is not None else self.tokenizer
        return clean_caption(decoder.batch_decode(ids, skip_special_tokens=True)[0])


def _offline() -> bool:
    from vlmir.registry import hub_offline

    return hub_offline()


def _check_hub_model(name: str) -> None:
    """Fail fast, with how to fix it, when hub model ``name`` is not cached and the hub is offline."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(name, "config.json")
    if isinstance(hit, str) and os.path.isfile(hit):
        return
    if _offline():
        raise FileNotFoundError(
            f"caption model {name!r} is neither a local folder nor in the Hugging Face cache, and the hub is offline "
            f"(HF_HUB_OFFLINE). Download it on a machine with network (huggingface-cli download {name}) and copy the "
            "cache, or pass the path of a local model folder; or leave --caption-model out to title by degradation only."
        )


def _load_processors(name: str, kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(image_processor, tokenizer, processor)``: a full processor when the model ships one, else the two parts."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError, TypeError, KeyError):  # no processor_config: fall back to the two parts
        proc = None
    if proc is not None and hasattr(proc, "image_processor") and hasattr(proc, "batch_decode"):
        return None, None, proc
    return AutoImageProcessor.from_pretrained(name, **kw), AutoTokenizer.from_pretrained(name, **kw), None


def _sample_name(path: Path, root: Path, k: int) -> str:
    rel = path.relative_to(root).with_suffix("")
    stem = "__".join(rel.parts)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    return f"{stem}_{k:03d}"


def make_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    types: str | Sequence[str] = DEGRADATIONS,
    per_image: int = 1,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    p_mixture: float = 0.0,
    p_clean: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    captioner: Callable[[np.ndarray], str] | None = None,
    max_pixels: int | None = None,
    log: Callable[[str], None] = print,
    caption_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write a paired, captioned degradation dataset (layout in the module docstring).

    Args:
        src: folder of clean images (searched recursively).
        out: output folder (created; existing files of the same names are overwritten).
        types: the degradation types to draw from (names or a comma-separated string; default all ten).
        per_image: degraded versions per source image (>= 1).
        severities: the severities to draw from, e.g. ``(1, 2, 3, 4, 5)``.
        p_mixture: probability that a sample is a mixture of 2..3 types (0 = single types only, as DA-CLIP).
        p_clean: probability that a sample is left clean (title ``clear``).
        seed: root seed; the same arguments and files give the same dataset.
        size: if given, each source is resized (shorter side) and centre-cropped to ``size x size`` first.
        captioner: ``captioner(hwc_image) -> str`` for the clean and the degraded images (e.g. a
            :class:`Captioner`); ``None`` titles by degradation only and writes metadata-template captions.
        max_pixels: largest source image accepted (see :func:`vlmir.io.load_image`).
        log: where progress lines go.
        caption_cache: the caption cache file (default ``OUT/captions.jsonl``).

    Returns:
        ``{"pairs": n, "sources": m, "out": str, "csv": str, "per_type": {type: count}}``.
    """
    from vlmir.io import load_image, save_image, to_numpy

    if isinstance(per_image, bool) or not isinstance(per_image, int) or per_image < 1:
        raise ValueError(f"per_image must be a positive integer, got {per_image!r}")
    pool = parse_types(types)
    if not pool:
        raise ValueError("types must name at least one degradation type")
    sev = parse_severities(severities)
    root = Path(src)
    files = find_images(root)
    out = Path(out)
    (out / "LQ").mkdir(parents=True, exist_ok=True)
    (out / "GT").mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    cache = CaptionCache(caption_cache if caption_cache is not None else out / "captions.jsonl")
    source_name = captioner_name(captioner) if captioner is not None else METADATA_CAPTIONER
    per_type: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    n_pairs = 0
    with open(out / "meta.jsonl", "w", encoding="utf-8") as meta_file:
        for i, path in enumerate(files):
            clean = to_numpy(load_image(path, max_pixels=max_pixels))
            if size is not None:
                clean = center_square(clean, int(size))
            caption = cache.caption(captioner, source_name, clean) if captioner is not None else None
            for k in range(per_image):
                spec = sample_degradation(
                    rng, allow_mixtures=p_mixture > 0, p_mixture=p_mixture, p_clean=p_clean, severities=sev, types=pool
                )
                lq, meta = degrade(clean, **spec)
                name = _sample_name(path, root, k)
                lq_path, gt_path = out / "LQ" / f"{name}.png", out / "GT" / f"{name}.png"
                save_image(lq, lq_path)
                save_image(clean, gt_path)
                title = title_for(caption, meta["types"])
                rows.append((str(lq_path.resolve()), title))
                record = {"name": name, "lq": f"LQ/{name}.png", "gt": f"GT/{name}.png", "source": str(path)}
                if captioner is not None:
                    captions = {"hq_caption": caption, "lq_caption": cache.caption(captioner, source_name, lq)}
                else:
                    combined = min(sum(meta["severity"]), 5) if meta["types"] else None
                    captions = {"hq_caption": metadata_caption(path.stem),
                                "lq_caption": metadata_caption(path.stem, meta["types"], severity=combined)}
                record.update({"caption": caption, "title": title, **meta, **captions, "caption_source": source_name})
                meta_file.write(json.dumps(record) + "\n")
                for t in meta["types"] or [CLEAN_TITLE]:
                    per_type[t] = per_type.get(t, 0) + 1
                n_pairs += 1
            log(
                f"[{i + 1}/{len(files)}] {path.name}: {per_image} pair(s)"
                + (f", caption {caption!r}" if caption else "")
            )
    csv_path = out / "daclip_train.csv"
    _write_csv(csv_path, rows)
    return {"pairs": n_pairs, "sources": len(files), "out": str(out), "csv": str(csv_path), "per_type": per_type}


def _write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """Tab-separated ``filepath<TAB>title`` with a header, as open_clip's ``CsvDataset`` (pandas, ``sep="\\t"``)
    reads by default; fields with quotes are quoted the csv way."""
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
