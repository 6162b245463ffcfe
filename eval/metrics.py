"""Metrics by name: pyiqa's IQA metrics, FID (folder level) and VLM-Vis from vlmir's rater.

Every metric follows pyiqa's contract (``pyiqa.models.inference_model.InferenceModel``): input float ``(B, 3, H, W)``
RGB in [0, 1]; it is either no-reference (``"NR"``), full-reference (``"FR"``, needs the ground truth) or folder level
(``"folder"``: FID compares the distribution of a folder of images with the reference folder). Each declares
``lower_better`` and ``score_range`` (read from ``pyiqa.default_model_configs.DEFAULT_CONFIGS``).

VLM-Vis is WResVLM's visibility rating: a VLM answers "how is the visibility of this image?" with a distribution over
excellent/good/fair/poor/bad, r = sum_i i * p_i in [1, 5] (excellent = 5) and VLM-Vis = (r - 1) / 4 in [0, 1]
(WResVLM, Sec. 3.2 and Tables 1-2). It is computed by any vlmir model of task ``rater``
(``vlmir.registry.create_model(name, task="rater")``, the embedded rater by default).

Example::

    >>> m = create_metric("psnr")
    >>> m.info.mode, m.info.lower_better
    ('FR', False)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from eval.weights import METRIC_WEIGHTS, check_weights, clear_import_errors, offline_pyiqa, weight_path

VLM_METRICS = ("vlm_vis",)
FOLDER_METRICS = ("fid",)


@dataclass(frozen=True)
class MetricInfo:
    """What the tables need to know of a metric.

    Args:
        name: metric name (pyiqa's, or ``"vlm_vis"``).
        mode: ``"NR"``, ``"FR"`` or ``"folder"``.
        lower_better: True when a lower score is better (LPIPS, NIQE, FID, ...).
        score_range: pyiqa's range string, e.g. ``"~0, ~100"`` (``~``: approximate bound).
    """

    name: str
    mode: str
    lower_better: bool
    score_range: str

    @property
    def decimals(self) -> int:
        """Digits shown in tables: 2 for wide ranges (MUSIQ, PSNR, FID: upper bound > 20 or open), else 3 (as the papers)."""
        parts = [p.strip().lstrip("~") for p in self.score_range.split(",")]
        try:
            upper = float(parts[-1])
        except (ValueError, IndexError):
            return 2
        return 2 if upper > 20 else 3


def _pyiqa_configs() -> dict[str, Any]:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return DEFAULT_CONFIGS


def available_metrics() -> list[str]:
    """Every metric name ``eval`` accepts (pyiqa's list plus ``vlm_vis``)."""
    return sorted(set(_pyiqa_configs()) | set(VLM_METRICS))


def metric_info(name: str) -> MetricInfo:
    """:class:`MetricInfo` of ``name`` without building the metric; unknown names raise ``ValueError`` with close matches."""
    if name in VLM_METRICS:
        return MetricInfo(name=name, mode="NR", lower_better=False, score_range="0, 1")
    configs = _pyiqa_configs()
    if name not in configs:
        import difflib

        close = difflib.get_close_matches(name, available_metrics(), n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown metric {name!r}.{hint} Metrics are pyiqa names (pyiqa.list_models()) or vlm_vis.")
    cfg = configs[name]
    mode = "folder" if name in FOLDER_METRICS or "fid" in name else cfg.get("metric_mode", "NR")
    return MetricInfo(name=name, mode=mode, lower_better=bool(cfg.get("lower_better", False)),
                      score_range=str(cfg.get("score_range", "")))


def _weights_signature(name: str, weights_dir: str | os.PathLike | None, options: dict | None = None) -> str:
    """File name and size of each weight file: part of the cache version, so swapping weights recomputes."""
    parts = []
    explicit = (options or {}).get("pretrained_model_path")
    if explicit and Path(explicit).is_file():
        parts.append(f"{Path(explicit).name}:{Path(explicit).stat().st_size}")
    for wf in METRIC_WEIGHTS.get(name, ()):
        p = weight_path(wf, weights_dir)
        parts.append(f"{wf.filename}:{p.stat().st_size if p.is_file() else 'absent'}")
    return ",".join(parts)


class PyiqaMetric:
    """One pyiqa metric, built once per run (offline: see :func:`eval.weights.offline_pyiqa`).

    Args:
        name: pyiqa metric name, e.g. ``"psnr"``, ``"musiq"``.
        device: torch device string, default ``"cpu"``.
        weights_dir: torch-hub style directory (``<dir>/pyiqa``, ``<dir>/checkpoints``, ``<dir>/clip``); default
            ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``).
        writable_cache: where LIQE may write its text-feature cache when ``weights_dir`` is read-only.
        options: extra pyiqa metric options (override its default config; part of the cache version).
    """

    def __init__(self, name: str, *, device: str = "cpu", weights_dir: str | os.PathLike | None = None,
                 writable_cache: str | os.PathLike | None = None, options: dict[str, Any] | None = None):
        import pyiqa
        import torch

        self.info = metric_info(name)
        self.name = name
        self.random_weights = False
        self.options = dict(options or {})
        check_weights(name, weights_dir, self.options)
        with clear_import_errors(name), offline_pyiqa(weights_dir, writable_cache=writable_cache, metric=name):
            self._metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False, **self.options)
        self.device = device
        self.version = (f"pyiqa={pyiqa.__version__};{name};{json.dumps(self.options, sort_keys=True)};"
                        f"weights={_weights_signature(name, weights_dir, self.options)}")

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> list[float]:
        """Scores of a batch ``x`` (B, 3, H, W) in [0, 1] (and ``ref`` of the same shape for FR metrics): B floats."""
        import torch

        if self.info.mode == "FR" and ref is None:
            raise ValueError(f"metric {self.name!r} is full-reference: give the reference images")
        with torch.no_grad():
            out = self._metric(x, ref) if self.info.mode == "FR" else self._metric(x)
        scores = torch.as_tensor(out).detach().float().cpu().reshape(-1).tolist()
        if len(scores) != x.shape[0]:
            raise RuntimeError(f"metric {self.name!r} returned {len(scores)} scores for a batch of {x.shape[0]}")
        return scores


class FolderMetric:
    """A folder-level pyiqa metric (FID): one score per (method, category) folder against the reference folder."""

    def __init__(self, name: str, *, device: str = "cpu", weights_dir: str | os.PathLike | None = None,
                 writable_cache: str | os.PathLike | None = None, options: dict[str, Any] | None = None):
        import pyiqa
        import torch

        self.info = metric_info(name)
        self.name = name
        self.random_weights = False
        self.options = dict(options or {})
        self._weights_dir = weights_dir
        check_weights(name, weights_dir, self.options)
        with clear_import_errors(name), offline_pyiqa(weights_dir, writable_cache=writable_cache, metric=name):
            self._metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False, **self.options)
        self.version = (f"pyiqa={pyiqa.__version__};{name};{json.dumps(self.options, sort_keys=True)};"
                        f"weights={_weights_signature(name, weights_dir, self.options)}")

    def score_folders(self, folder: str | os.PathLike, reference: str | os.PathLike) -> float:
        """Score of the images in ``folder`` against those in ``reference`` (both directories of images)."""
        # the Inception network is built lazily on the first call: keep the offline guard around it as well
        import torch

        with offline_pyiqa(self._weights_dir, metric=self.name), torch.no_grad():
            out = self._metric(str(folder), str(reference), num_workers=0, verbose=False)
        return float(torch.as_tensor(out).reshape(-1)[0])


class VlmVisMetric:
    """VLM-Vis = (r - 1) / 4 from a vlmir rater (WResVLM); ``rater``: registry name, default the task's default."""

    def __init__(self, name: str = "vlm_vis", *, device: str = "cpu", rater: str | None = None, **_: Any):
        from vlmir.registry import create_model, default_model, list_models

        self.info = metric_info(name)
        self.name = name
        rater_name = rater or default_model("rater")
        if rater_name in list_models(task="rater"):
            self._rater = create_model(rater_name, task="rater", device=device)
        else:
            # a local transformers folder or a hub id: vlmir.vlm.rater.load_rater knows how to load those
            from vlmir.vlm.rater import load_rater

            self._rater = load_rater(rater_name, device=device)
        self.rater_name = rater_name
        self.random_weights = bool(getattr(self._rater, "random_weights", False))

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> list[float]:
        """VLM-Vis of each image of ``x`` (B, 3, H, W): batched through ``rate_batch`` where the rater has it (VLMs,
        several times faster per image), else one (1, 3, H, W) image at a time."""
        import torch

        images = [x[i : i + 1] for i in range(x.shape[0])]
        with torch.no_grad():
            if hasattr(self._rater, "rate_batch"):
                results = self._rater.rate_batch(images, batch_size=min(8, len(images)))
            else:
                results = [self._rater.rate(im) for im in images]
        return [float(r["vlm_vis"]) for r in results]


def create_metric(name: str, *, device: str = "cpu", weights_dir: str | os.PathLike | None = None,
                  writable_cache: str | os.PathLike | None = None, rater: str | None = None,
                  options: dict[str, Any] | None = None):
    """Build the metric ``name`` (see module docstring); raises ``MetricUnavailable`` (``WeightsUnavailable`` when its files are missing)."""
    info = metric_info(name)
    if name in VLM_METRICS:
        return VlmVisMetric(name, device=device, rater=rater)
    cls = FolderMetric if info.mode == "folder" else PyiqaMetric
    return cls(name, device=device, weights_dir=weights_dir, writable_cache=writable_cache, options=options)


def parse_metrics(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"psnr,ssim"`` or a list -> validated list of metric names (order kept, duplicates dropped)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        raise ValueError("give at least one metric, e.g. --metrics psnr,ssim,musiq")
    for n in names:
        metric_info(n)
    return names


def weight_files_of(name: str, weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where each weight file of ``name`` must be (for documentation and error messages)."""
    return [weight_path(wf, weights_dir) for wf in METRIC_WEIGHTS.get(name, ())]
