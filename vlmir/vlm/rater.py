"""Registry provider: hub VLM raters (WResVLM's r^vlm) by name, and :func:`load_rater` for names or folders.

Importing this module registers one ``task="rater"`` :class:`~vlmir.registry.ModelSpec` per VLM below; it imports
neither transformers nor torch models and never touches the network. A VLM is a whole repository snapshot, so a
spec is available when the repo's ``config.json`` is in the local Hugging Face cache (or, online, on first use).

Example::

    >>> from vlmir.vlm.rater import load_rater
    >>> rater = load_rater("llava-1.5-7b", device="cuda")      # doctest: +SKIP
    >>> rater = load_rater("/models/my-llava")                  # a local folder, offline   # doctest: +SKIP
    >>> rater.rate(x)["vlm_vis"]                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmir.registry import ModelSpec, create_model, get_spec, hub_offline, list_models, register


@dataclass(frozen=True)
class HubVLM:
    """A transformers image-text-to-text model on the hub that can rate images.

    Args:
        name: registry name.
        repo_id: hub repository.
        description: one line for users.
        license: licence of the weights.
        size_gb: approximate download size (fp16/bf16 safetensors), for messages.
    """

    name: str
    repo_id: str
    description: str
    license: str
    size_gb: float


HUB_VLMS: tuple[HubVLM, ...] = (
    HubVLM("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf",
           "LLaVA-1.5 7B, WResVLM's rater (VLM-Vis); fp16 on CUDA, 8/4-bit with quantization=", "llama2", 14.1),
    HubVLM("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", "LLaVA-1.5 13B rater", "llama2", 26.1),
    HubVLM("llava-onevision-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
           "LLaVA-OneVision Qwen2 0.5B: a small rater that runs on CPU", "apache-2.0", 1.8),
    HubVLM("smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLM 256M: the smallest CPU rater",
           "apache-2.0", 0.5),
    HubVLM("smolvlm-500m", "HuggingFaceTB/SmolVLM-500M-Instruct", "SmolVLM 500M: a small CPU rater",
           "apache-2.0", 1.0),
)


def vlm_available(repo_id: str, size_gb: float | None = None) -> tuple[bool, str]:
    """``(True, "")`` when ``repo_id``'s ``config.json`` is in the local HF cache; offline otherwise ``(False, why)``.

    Online and not cached it is available, with a note that the first use downloads the snapshot.
    """
    from vlmir.vlm.loading import cached_snapshot, how_to_provide

    if cached_snapshot(repo_id) is not None:
        return True, ""
    size = f" (~{size_gb:g} GB)" if size_gb else ""
    if hub_offline():
        return False, f"{repo_id} is not in the local Hugging Face cache and the hub is offline. {how_to_provide(repo_id)}"
    return True, f"{repo_id}{size} will be downloaded on first use"


def _builder(vlm: HubVLM) -> Callable[..., Any]:
    def build(device: str = "cpu", **kwargs: Any) -> Any:
        from vlmir.vlm.visibility import VisibilityRater

        kwargs.setdefault("name", vlm.name)
        return VisibilityRater.from_pretrained(vlm.repo_id, device=device, **kwargs)

    build.__doc__ = f"Build the {vlm.name} rater ({vlm.repo_id}); kwargs go to VisibilityRater.from_pretrained."
    return build


def _availability(vlm: HubVLM) -> Callable[[], tuple[bool, str]]:
    return lambda: vlm_available(vlm.repo_id, vlm.size_gb)


for _vlm in HUB_VLMS:
    register(
        ModelSpec(
            name=_vlm.name,
            task="rater",
            build=_builder(_vlm),
            description=_vlm.description,
            source=f"hf:{_vlm.repo_id}",
            license=_vlm.license,
            extra={"repo_id": _vlm.repo_id, "vlm": True, "describe": True, "size_gb": _vlm.size_gb},
            available=_availability(_vlm),
        ),
        overwrite=True,
    )


def load_rater(name_or_path: str | os.PathLike | None = None, *, device: str = "cpu", **kwargs: Any) -> Any:
    """A rater (``.rate(x) -> {"score", "vlm_vis", "probs"}``) from a registry name, a local folder or a hub id.

    Args:
        name_or_path: ``None`` for the default rater; a registered rater name (``list_models(task="rater")``,
            e.g. ``"llava-1.5-7b"`` or the embedded one); a local transformers model folder (loaded offline as a
            :class:`~vlmir.vlm.visibility.VisibilityRater`); or a hub repo id ``"owner/name"`` not in the registry.
        device: ``"cpu"`` (default) or ``"cuda"``.
        **kwargs: passed to the builder / :meth:`VisibilityRater.from_pretrained` (``prompt=``, ``dtype=``,
            ``quantization=``, ...).

    Raises:
        ValueError: an unknown name that is neither a folder nor a hub id (the message lists valid names).
        FileNotFoundError: a folder without a model, or a hub model that is not available offline.
        RuntimeError: a registered model that is not available (the reason says why).
    """
    if name_or_path is None:
        return create_model(task="rater", device=device, **kwargs)
    text = os.fspath(name_or_path)
    if Path(text).expanduser().is_dir():
        from vlmir.vlm.visibility import VisibilityRater

        return VisibilityRater.from_pretrained(text, device=device, **kwargs)
    if text in list_models(task="rater"):
        return create_model(text, task="rater", device=device, **kwargs)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists():
        from vlmir.vlm.visibility import VisibilityRater

        return VisibilityRater.from_pretrained(text, device=device, **kwargs)
    if text.startswith((".", "/", "~")) or os.sep in text:
        raise FileNotFoundError(f"rater path {text!r} is not a folder; give a saved transformers model folder")
    get_spec(text, task="rater")  # raises ValueError naming the close valid names
    raise ValueError(f"unknown rater {text!r}")  # pragma: no cover (get_spec raised)
