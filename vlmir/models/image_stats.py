"""Classical no-reference image statistics: cheap, content-robust measurements of how degraded an image looks.

They feed the degradation-aware encoder's degradation embedding (``image_stats=True`` in
:class:`vlmir.models.encoder.DegradationAwareEncoder`) and the visibility head (:mod:`vlmir.models.rater`): a
from-scratch CNN trained for minutes learns the big cues (darkness, haze, noise) first and subtle ones such as
JPEG blocking late; a blockiness ratio or a noise estimate gives those at once and carries over to new photos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
