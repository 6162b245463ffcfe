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

Example::

    >>> head = VisibilityHead(feature_dim=2187)
    >>> p = head(torch.randn(2, 2187)).softmax(-1)   # (2, 5) over LEVELS_ASCENDING = bad..excellent
    >>> r = (p * torch.arange(1, 6)).sum(-1)         # WResVLM's score in [1, 5]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# level words from score 1 to 5 (index i-1 holds level i)
LEVELS_ASCENDING = ("bad", "poor", "fair", "good", "excellent")


N_IMAGE_STATS = 14


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """Classical no-reference statistics (B, :data:`N_IMAGE_STATS`) of images ``x`` (B, 3, H, W) in [0, 1].

    Per image: luminance mean, standard deviation and 1st/50th/99th percentiles; dark channel mean (min over RGB
    and a 7x7 window, high under haze); mean saturation; log mean |Laplacian| and log mean gradient magnitude
    (sharpness); log noise sigma (median absolute deviation of a high-pass, Immerkaer-style); JPEG blockiness
    (largest share of horizontal+vertical differences on one 8-px phase, over the mean of all phases); the shares
    of near-white (> 0.9) and near-black (< 0.05) pixels; the share of flat pixels (3x3 local std < 0.004).
    """
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 16:
        raise ValueError(f"expected images (B, 3, H, W) with sides >= 16, got {tuple(x.shape)}")
    x = x.float().clamp(0, 1)
    b = x.shape[0]
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # (B, 1, H, W)
    flat = lum.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.5, 0.99], device=x.device), dim=1).t()  # (B, 3)
    dark = -F.max_pool2d(-x.amin(1, keepdim=True), 7, stride=1, padding=3)
    mx, mn = x.amax(1), x.amin(1)
    sat = ((mx - mn) / mx.clamp_min(1e-3)).flatten(1).mean(1)
    lap_k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device).view(1, 1, 3, 3)
    lap = F.conv2d(lum, lap_k).abs().flatten(1).mean(1)
    gx, gy = lum[..., :, 1:] - lum[..., :, :-1], lum[..., 1:, :] - lum[..., :-1, :]
    grad = 0.5 * (gx.abs().flatten(1).mean(1) + gy.abs().flatten(1).mean(1))
    hp_k = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=x.device).view(1, 1, 3, 3)
    sigma = F.conv2d(lum, hp_k).abs().flatten(1).median(1).values / (0.6745 * 6.0)
    cols = gx.abs().mean((1, 2))  # (B, W-1): mean |horizontal difference| per column boundary
    rows = gy.abs().mean((1, 3))  # (B, H-1)
    def phase_peak(d: torch.Tensor) -> torch.Tensor:
        n = d.shape[1] // 8 * 8
        ph = d[:, :n].reshape(b, -1, 8).mean(1)  # (B, 8): mean difference on each 8-px phase
        return ph.amax(1) / ph.mean(1).clamp_min(1e-6)
    block = 0.5 * (phase_peak(cols) + phase_peak(rows))
    local_var = F.avg_pool2d(lum * lum, 3, stride=1) - F.avg_pool2d(lum, 3, stride=1).pow(2)
    flat_share = (local_var.clamp_min(0).sqrt() < 0.004).float().flatten(1).mean(1)
    eps = 1e-4
    return torch.stack([
        flat.mean(1), flat.std(1), q[:, 0], q[:, 1], q[:, 2], dark.flatten(1).mean(1), sat,
        torch.log(lap + eps), torch.log(grad + eps), torch.log(sigma + eps), block,
        (flat > 0.9).float().mean(1), (flat < 0.05).float().mean(1), flat_share,
    ], dim=1)


def rater_features(f: dict[str, torch.Tensor], stats: torch.Tensor | None = None) -> torch.Tensor:
    """The head's input (B, F) from encoder outputs ``content``, ``degradation``, ``logits`` (B, K), ``pooled``:
    ``[normalised content, normalised degradation, softmax(logits), pooled]``, then ``stats``
    (:func:`image_statistics`) when given."""
    parts = [F.normalize(f["content"], dim=-1), F.normalize(f["degradation"], dim=-1), f["logits"].softmax(-1),
             f["pooled"]]
    return torch.cat(parts + ([stats] if stats is not None else []), dim=-1)


class VisibilityHead(nn.Module):
    """MLP from encoder features to five visibility-level logits (bad..excellent).

    Args:
        feature_dim: size of :func:`rater_features` (2 x embed_dim + K names + pooled_dim).
        hidden: hidden width. Default 128.
        dropout: dropout before the last layer while training. Default 0.1.
        image_stats: the features end with :func:`image_statistics` (included in ``feature_dim``). Default False.
    """

    def __init__(self, *, feature_dim: int, hidden: int = 128, dropout: float = 0.1, image_stats: bool = False) -> None:
        super().__init__()
        if feature_dim < 1 or hidden < 1:
            raise ValueError(f"feature_dim and hidden must be positive, got {feature_dim}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if image_stats and feature_dim <= N_IMAGE_STATS:
            raise ValueError(f"feature_dim {feature_dim} must include the {N_IMAGE_STATS} image statistics")
        self.config = dict(feature_dim=feature_dim, hidden=hidden, dropout=dropout, image_stats=bool(image_stats))
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
