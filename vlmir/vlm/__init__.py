"""VLM image assessment on transformers: WResVLM's visibility rating r^vlm / VLM-Vis, quality rating, scene
descriptions with weather, and their weather-free rewrite.

Importing this package is cheap (no transformers import, no network); the objects load lazily:

- :class:`vlmir.vlm.visibility.VisibilityRater`: ``from_pretrained(name_or_path, device=, dtype=, quantization=)``,
  ``rate(x)``, ``rate_batch(images, batch_size=)``, ``describe(x)``;
- :func:`vlmir.vlm.rater.load_rater`: a registry rater name, a local folder or a hub id -> a rater;
- :func:`vlmir.vlm.weather.remove_weather`: rules or an LLM.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VisibilityRater", "load_rater", "remove_weather", "scores_from_logits", "resolve_level_tokens"]

_WHERE = {
    "VisibilityRater": "vlmir.vlm.visibility",
    "scores_from_logits": "vlmir.vlm.visibility",
    "resolve_level_tokens": "vlmir.vlm.visibility",
    "load_rater": "vlmir.vlm.rater",
    "remove_weather": "vlmir.vlm.weather",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vlmir.vlm' has no attribute {name!r}")
