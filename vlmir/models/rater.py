"""Visibility rating head with WResVLM's interface, on the degradation-aware encoder's features.

Paper: Xu et al., "Towards Real-World Adverse Weather Image Restoration: Enhancing Clearness and Semantics with
Vision-Language Models" (WResVLM, ECCV 2024). WResVLM asks a VLM to rate an image's visibility on five levels
(excellent, good, fair, poor, bad = 5..1) and scores it ``r = sum_i i * p_i`` from the level probabilities.

Here the level probabilities come from a small MLP over the frozen encoder's features instead of a VLM (no VLM
weights can be loaded on our machines): the L2-normalised content and degradation embeddings, the softmax over
the degradation names, and the globally pooled controller statistics (which keep the severity that the contrastive
degradation embedding is trained to ignore). Trained against the degradation engine's visibility labels.

Optionally (``image_stats=True``) the head also sees :func:`image_statistics`, a few classical no-reference
measurements of each crop (brightness and contrast percentiles, dark channel, saturation, sharpness, a noise
estimate, JPEG blockiness, clipped and flat areas). They describe *how much* of a degradation there is in a way
that carries over to photos the encoder never saw, where the encoder's features describe *which* one.

Optionally (``type_calibration=K``) the head carries a per-type calibration of its score,
``r' = sum_t q_t (a_t + b_t r)`` with ``q`` the encoder's type probabilities over its K names
(:class:`TypeCalibration`, fitted on whole training photos by :mod:`vlmir.training.rater_calibration`). Each
degradation moves the features by its own amount per severity step: the head, trained on crops, scores mild blur
as poor and mild raindrops as clear, and a score that orders severities within each type still mixes types up.
The level probabilities are then tilted to the calibrated mean (:func:`tilt_to_mean`), so ``r = sum_i i p_i``
holds for what the rater reports.

Optionally (``severity={...}``) the head carries a :class:`~vlmir.models.severity.SeverityNet` as
:attr:`severity`, a small CNN trained for severity alone on the engine's crops; its score ``s``, averaged over
the image's views (:func:`image_severity`), enters the calibration as a second term,
``r' = sum_t q_t (a_t + b_t r + c_t s)``. The encoder's towers were trained to tell types apart and carry little
of how strong a blur, a raindrop layer or a shadow is on unseen photos; ``s`` was trained for exactly that.

Example::

    >>> head = VisibilityHead(feature_dim=2187)
    >>> p = head(torch.randn(2, 2187)).softmax(-1)   # (2, 5) over LEVELS_ASCENDING = bad..excellent
    >>> r = (p * torch.arange(1, 6)).sum(-1)         # WResVLM's score in [1, 5]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmir.models.image_stats import N_IMAGE_STATS, image_statistics
from vlmir.models.severity import SeverityNet

__all__ = ["LEVELS_ASCENDING", "N_IMAGE_STATS", "TypeCalibration", "VisibilityHead", "calibrated_score",
           "image_severity", "image_statistics", "rater_features", "rater_outputs", "tilt_to_mean"]

# level words from score 1 to 5 (index i-1 holds level i)
LEVELS_ASCENDING = ("bad", "poor", "fair", "good", "excellent")


def rater_features(f: dict[str, torch.Tensor], stats: torch.Tensor | None = None) -> torch.Tensor:
    """The head's input (B, F) from encoder outputs ``content``, ``degradation``, ``logits`` (B, K), ``pooled``:
    ``[normalised content, normalised degradation, softmax(logits), pooled]``, then ``stats``
    (:func:`image_statistics`) when given."""
    parts = [F.normalize(f["content"], dim=-1), F.normalize(f["degradation"], dim=-1), f["logits"].softmax(-1),
             f["pooled"]]
    return torch.cat(parts + ([stats] if stats is not None else []), dim=-1)


def image_rater_inputs(encoder: nn.Module, x: torch.Tensor, image_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input (1, F) for one whole image ``x`` (1, 3, H, W) in [0, 1], as the rater sees it (the
    encoder's view-averaged outputs, ``DegradationAwareEncoder.embed``, and with ``image_stats`` the statistics
    averaged over the same views), and the encoder's type probabilities (1, K) of the image (its ``type_logits``)
    for :class:`TypeCalibration`."""
    f = encoder.embed(x)
    stats = None
    if image_stats:
        stats = f["stats"] if "stats" in f else image_statistics(encoder.views(x)).mean(0, keepdim=True)
    return rater_features(f, stats), f["type_logits"].softmax(-1)


def image_rater_features(encoder: nn.Module, x: torch.Tensor, image_stats: bool) -> torch.Tensor:
    """The head's input (1, F) of :func:`image_rater_inputs`."""
    return image_rater_inputs(encoder, x, image_stats)[0]


def image_severity(severity: nn.Module, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The severity score (1,) of one image ``x`` (1, 3, H, W): ``severity`` (a :class:`SeverityNet`) averaged over
    the encoder's views of it (the crops the rater's features come from); a network with ``scale`` also reads the
    short side the views were cut at."""
    views = encoder.views(x)
    if not severity.scale:
        return severity(views).mean(0, keepdim=True)
    return severity(views, side=float(encoder.view_side(*x.shape[-2:]))).mean(0, keepdim=True)


def rater_outputs(head: nn.Module, encoder: nn.Module,
                  x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the rater computes for one image ``x`` (1, 3, H, W) in [0, 1]: the head's level logits (1, 5), the
    encoder's type probabilities q (1, K) and, when the head has a :attr:`VisibilityHead.severity` network, the
    severity score (1,) (else None)."""
    features, q = image_rater_inputs(encoder, x, head.image_stats)
    severity = getattr(head, "severity", None)
    s = image_severity(severity, encoder, x) if severity is not None else None
    return head(features), q, s


def calibrated_score(r: torch.Tensor, q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None,
                     s: torch.Tensor | None = None) -> torch.Tensor:
    """``r' = sum_t q_t (a_t + b_t r [+ c_t s])`` (B,) clamped to [1, 5], for scores ``r`` (B,), type probabilities
    ``q`` (B, K), per-type weights ``a``, ``b`` (and ``c``) (K,) and severity scores ``s`` (B,)."""
    mapped = a + b * r[:, None]
    if c is not None:
        mapped = mapped + c * s.reshape(-1, 1)
    return (q * mapped).sum(-1).clamp(1.0, 5.0)


class TypeCalibration(nn.Module):
    """``r' = sum_t q_t (a_t + b_t r [+ c_t s])``: a linear map of the score per type (and of the severity
    network's score ``s`` with ``severity=True``), mixed by the type probabilities q.

    Starts as the identity (a = 0, b = 1, c = 0). ``a``, ``b`` (and ``c``) are buffers, set by least squares
    (:mod:`vlmir.training.rater_calibration`).

    Args:
        n_names: K, the encoder's class names (the order of q).
        severity: also map a severity score ``s`` (buffer ``c``). Default False.
    """

    def __init__(self, n_names: int, severity: bool = False) -> None:
        super().__init__()
        if n_names < 1:
            raise ValueError(f"n_names must be >= 1, got {n_names}")
        self.register_buffer("a", torch.zeros(n_names))
        self.register_buffer("b", torch.ones(n_names))
        self.register_buffer("c", torch.zeros(n_names) if severity else None)

    def forward(self, r: torch.Tensor, q: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated scores (B,) in [1, 5] of scores ``r`` (B,) with type probabilities ``q`` (B, K) and, for a
        calibration with ``severity``, the severity scores ``s`` (B,)."""
        if q.shape != (r.shape[0], self.a.shape[0]):
            raise ValueError(f"expected type probabilities ({r.shape[0]}, {self.a.shape[0]}), got {tuple(q.shape)}")
        if (s is None) != (self.c is None):
            raise ValueError("severity scores s are needed exactly when the calibration has a severity term")
        return calibrated_score(r, q, self.a, self.b, self.c, s)


def tilt_to_mean(p: torch.Tensor, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The distribution closest to ``p`` (B, 5) over levels 1..5 (in KL divergence) whose mean is ``target`` (B,):
    ``p_i exp(beta i)`` normalised, with beta found by bisection (targets are kept 1e-4 inside [1, 5])."""
    levels = torch.arange(1, 6, dtype=p.dtype, device=p.device)
    target = target.to(p.dtype).clamp(1.0 + 1e-4, 5.0 - 1e-4)
    logp = p.clamp_min(1e-12).log()
    lo = torch.full_like(target, -60.0)
    hi = torch.full_like(target, 60.0)
    for _ in range(iterations):  # the tilted mean rises with beta
        mid = (lo + hi) / 2
        mean = ((logp + mid[:, None] * levels).softmax(-1) * levels).sum(-1)
        lo, hi = torch.where(mean < target, mid, lo), torch.where(mean < target, hi, mid)
    return (logp + ((lo + hi) / 2)[:, None] * levels).softmax(-1)


class VisibilityHead(nn.Module):
    """MLP from encoder features to five visibility-level logits (bad..excellent).

    Args:
        feature_dim: size of :func:`rater_features` (2 x embed_dim + K names + pooled_dim).
        hidden: hidden width. Default 128.
        dropout: dropout before the last layer while training. Default 0.1.
        image_stats: the features end with :func:`image_statistics` (included in ``feature_dim``). Default False.
        type_calibration: K > 0 adds a :class:`TypeCalibration` over the encoder's K names as :attr:`calibration`
            (module docstring; applied by the embedded rater, not by :meth:`forward`). Default 0: none.
        severity: constructor arguments of a :class:`SeverityNet` to carry as :attr:`severity` (``{}`` for its
            defaults); its score enters the calibration, so it needs ``type_calibration``. Default None: none.
    """

    def __init__(self, *, feature_dim: int, hidden: int = 128, dropout: float = 0.1, image_stats: bool = False,
                 type_calibration: int = 0, severity: dict | None = None) -> None:
        super().__init__()
        if feature_dim < 1 or hidden < 1:
            raise ValueError(f"feature_dim and hidden must be positive, got {feature_dim}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if image_stats and feature_dim <= N_IMAGE_STATS:
            raise ValueError(f"feature_dim {feature_dim} must include the {N_IMAGE_STATS} image statistics")
        if severity is not None and not type_calibration:
            raise ValueError("a severity network enters the type calibration: set type_calibration as well")
        self.config = dict(feature_dim=feature_dim, hidden=hidden, dropout=dropout, image_stats=bool(image_stats),
                           type_calibration=int(type_calibration))
        self.severity = None
        if severity is not None:
            self.severity = SeverityNet(**severity)
            self.config["severity"] = dict(self.severity.config)
        self.calibration = (TypeCalibration(int(type_calibration), severity=severity is not None)
                            if type_calibration else None)
        self.image_stats = bool(image_stats)
        self.norm = nn.LayerNorm(feature_dim)
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, 5) over :data:`LEVELS_ASCENDING` for features (B, feature_dim)."""
        return self.net(self.norm(features))

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        """WResVLM's ``r = sum_i i * p_i`` (B,) in [1, 5] from logits (B, 5)."""
        p = logits.softmax(-1)
        return (p * torch.arange(1, 6, dtype=p.dtype, device=p.device)).sum(-1)
