"""Captions of low- and high-quality images for VLMIR's caption alignment: from a captioning model, cached on disk,
or (offline) a deterministic template from the dataset's metadata, labelled as such.

VLMIR (stage 1) aligns the embedding of a caption of the low-quality (LQ) image with that of the high-quality (HQ)
image's caption. A caption therefore always travels with the name of what produced it: a model name (a transformers
captioner or VLM) or :data:`METADATA_CAPTIONER` for the template built from what the dataset knows (the source
photo's name, the degradation types and severity). Template captions carry no more than that metadata; every table
and card that uses them says so.

:class:`CaptionCache` keeps captions on disk, one JSON line per (captioner, image content) pair, so a dataset is
captioned once per model, an interrupted run loses nothing it wrote, and captions of two models never mix.

Example::

    >>> metadata_caption("motorcycle_left")
    'a photo of motorcycle left'
    >>> metadata_caption("motorcycle_left", ["hazy", "noisy"], severity=4)
    'a photo of motorcycle left, heavily hazy and noisy'
    >>> metadata_caption(None, ["low-light"], severity=1)
    'a photo, slightly low-light'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The captioner name of template captions (no model involved).
METADATA_CAPTIONER = "metadata-template"
# severity 1..5 -> adverb of the LQ template caption
SEVERITY_WORDS = {1: "slightly", 2: "mildly", 3: "", 4: "heavily", 5: "extremely"}
PROCEDURAL_SCENE = "a synthetic pattern"


def scene_words(name: str | None) -> str | None:
    """A photo or file name as words: ``"motorcycle_left"`` -> ``"motorcycle left"``; ``None``/empty -> None."""
    if not name:
        return None
    stem = Path(str(name)).stem
    words = re.sub(r"[_\-.]+", " ", stem)
    words = re.sub(r"\s*\d+$", "", words).strip()  # trailing sample counters (``chelsea_003``)
    return words or None


def metadata_caption(scene: str | None, types: Sequence[str] = (), *, severity: int | None = None) -> str:
    """Template caption from metadata: ``"a photo of <scene>[, <severity> <type> and <type>]"``.

    Args:
        scene: the source photo's name (turned into words by :func:`scene_words`), ``"procedural"`` for synthetic
            content, or None when unknown (inference on a user's photo).
        types: degradation names applied to the image (empty for the HQ image or a clean one).
        severity: 1..5, rendered as an adverb (3 has none); None for no adverb.
    """
    if severity is not None and severity not in SEVERITY_WORDS:
        raise ValueError(f"severity must be 1..5 or None, got {severity!r}")
    if scene == "procedural":
        head = f"a photo of {PROCEDURAL_SCENE}"
    else:
        words = scene_words(scene)
        head = f"a photo of {words}" if words else "a photo"
    types = [t for t in types if t and t != "clear"]
    if not types:
        return head
    adverb = SEVERITY_WORDS.get(severity, "") if severity is not None else ""
    deg = " and ".join(types)
    return f"{head}, {adverb + ' ' if adverb else ''}{deg}"


def image_key(image: np.ndarray) -> str:
    """Content hash of an HWC float image in [0, 1] (its 8-bit rendering, so a PNG round trip keeps the key)."""
    arr = np.ascontiguousarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    h = hashlib.sha256()
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class CaptionCache:
    """Captions on disk: ``path`` holds one JSON object a line, ``{"captioner", "key", "caption"}``.

    Lines are appended and flushed as captions are made, so a killed run keeps every caption it wrote; a torn last
    line (a kill mid-write) is ignored on reading, any other unreadable line raises ``ValueError`` naming the line.

    Args:
        path: the cache file (created with its folder on first write).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._entries: dict[tuple[str, str], str] = {}
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self._entries[(str(rec["captioner"]), str(rec["key"]))] = str(rec["caption"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    if i == len(lines) - 1:  # the last line of a run killed while writing it
                        continue
                    raise ValueError(f"caption cache {self.path} line {i + 1} is not a caption record: {e}") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, captioner: str, key: str) -> str | None:
        return self._entries.get((captioner, key))

    def put(self, captioner: str, key: str, caption: str) -> None:
        if self._entries.get((captioner, key)) == caption:
            return
        self._entries[(captioner, key)] = caption
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"captioner": captioner, "key": key, "caption": caption}) + "\n")
            f.flush()

    def caption(self, captioner: Callable[[np.ndarray], str], name: str, image: np.ndarray) -> str:
        """``captioner(image)``, computed once per (``name``, image content) and remembered on disk."""
        key = image_key(image)
        hit = self.get(name, key)
        if hit is None:
            hit = str(captioner(image))
            self.put(name, key, hit)
        return hit


def captioner_name(captioner: Any) -> str:
    """The name a caption is stored under: the captioner's ``name`` attribute, else its class name."""
    return str(getattr(captioner, "name", None) or type(captioner).__name__)
