"""Classical no-reference image statistics: cheap, content-robust measurements of how degraded an image looks.

They feed the degradation-aware encoder's degradation embedding (``image_stats=True`` in
:class:`vlmir.models.encoder.DegradationAwareEncoder`) and the visibility head (:mod:`vlmir.models.rater`): a
from-scratch CNN trained for minutes learns the big cues (darkness, haze, noise) first and subtle ones such as
JPEG blocking late; a blockiness ratio or a noise estimate gives those at once and carries over to new photos.

The second group (:func:`structure_statistics`) describes small bright and dark structures (flakes, drops' rims
and highlights, streaks), their orientation coherence (streaks share a direction), the
tails of the fine high-pass (skew, kurtosis), large darker regions (cast shadows), the softness of the strongest
edges (penumbrae, defocus), local patches without detail (the defocused insides of drops, filled holes), the
coupling of blue/red chromaticity with brightness at a coarse scale (shadows are lit by bluish skylight), and
white flat areas (inpainting holes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

N_BASIC_STATS = 14
N_STRUCTURE_STATS = 13
N_IMAGE_STATS = N_BASIC_STATS + N_STRUCTURE_STATS


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """Classical no-reference statistics (B, :data:`N_IMAGE_STATS`) of images ``x`` (B, 3, H, W) in [0, 1]:
    :func:`basic_statistics` then :func:`structure_statistics`."""
    return torch.cat([basic_statistics(x), structure_statistics(x)], dim=1)


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 16:
        raise ValueError(f"expected images (B, 3, H, W) with sides >= 16, got {tuple(x.shape)}")


def _laplacian_kernel(device: torch.device) -> torch.Tensor:
    return torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=device).view(1, 1, 3, 3)


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # (B, 1, H, W)


def basic_statistics(x: torch.Tensor) -> torch.Tensor:
    """The first :data:`N_BASIC_STATS` statistics of images ``x`` (B, 3, H, W) in [0, 1].

    Per image: luminance mean, standard deviation and 1st/50th/99th percentiles; dark channel mean (min over RGB
    and a 7x7 window, high under haze); mean saturation; log mean |Laplacian| and log mean gradient magnitude
    (sharpness); log noise sigma (median absolute deviation of a high-pass, Immerkaer-style); JPEG blockiness
    (largest share of horizontal+vertical differences on one 8-px phase, over the mean of all phases); the shares
    of near-white (> 0.9) and near-black (< 0.05) pixels; the share of flat pixels (3x3 local std < 0.004).
    """
    _check(x)
    x = x.float().clamp(0, 1)
    b = x.shape[0]
    lum = _luminance(x)
    flat = lum.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.5, 0.99], device=x.device), dim=1).t()  # (B, 3)
    dark = _erode(x.amin(1, keepdim=True), 7)
    mx, mn = x.amax(1), x.amin(1)
    sat = ((mx - mn) / mx.clamp_min(1e-3)).flatten(1).mean(1)
    lap = F.conv2d(lum, _laplacian_kernel(x.device)).abs().flatten(1).mean(1)
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


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def _grad(lum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, zero-padded to the input size."""
    return F.pad(lum[..., :, 1:] - lum[..., :, :-1], (0, 1)), F.pad(lum[..., 1:, :] - lum[..., :-1, :], (0, 0, 0, 1))


def structure_statistics(x: torch.Tensor) -> torch.Tensor:
    """The last :data:`N_STRUCTURE_STATS` statistics of images ``x`` (B, 3, H, W) in [0, 1].

    Per image: log mean white top-hat (luminance minus its 5x5 opening: small bright structures) and the share
    above 0.1; the same for the black top-hat (closing minus luminance: small dark structures); the orientation
    coherence of the structure tensor weighted by the white top-hat (1 for parallel streaks, 0 for round
    dots); skewness and log kurtosis of the 3x3 high-pass; on 8x8 block means, the share of blocks darker than
    0.6 times the median and log(10th percentile / median); edge softness (gradient of a 5x5 box-filtered image
    over the gradient itself, on the strongest 5% of edges); the share of 8x8 blocks whose mean |Laplacian| is
    below a quarter of the image's median block; the correlation of log(B/R) with log luminance on 8x8 blocks;
    the share of white (> 0.98) flat (3x3 std < 0.004) pixels.
    """
    _check(x)
    x = x.float().clamp(0, 1)
    eps = 1e-4
    lum = _luminance(x)
    top = (lum - _dilate(_erode(lum, 5), 5)).clamp_min(0).flatten(1)
    black = (_erode(_dilate(lum, 5), 5) - lum).clamp_min(0).flatten(1)
    gx, gy = _grad(lum)
    w = top.view_as(lum)
    jxx, jyy, jxy = ((w * a * c).flatten(1).sum(1) for a, c in ((gx, gx), (gy, gy), (gx, gy)))
    coherence = ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt() / (jxx + jyy + 1e-8)
    hp = (lum - F.avg_pool2d(lum, 3, 1, 1, count_include_pad=False)).flatten(1)
    z = (hp - hp.mean(1, keepdim=True)) / (hp.std(1, keepdim=True) + 1e-6)
    skew, kurt = (z**3).mean(1), torch.log((z**4).mean(1) + 1e-3)
    coarse = F.avg_pool2d(lum, 8).flatten(1)
    med = coarse.median(1, keepdim=True).values
    dark_share = (coarse < 0.6 * med).float().mean(1)
    low_tail = torch.log((torch.quantile(coarse, 0.1, dim=1) + 0.02) / (med[:, 0] + 0.02))
    g = gx.abs() + gy.abs()
    sgx, sgy = _grad(F.avg_pool2d(lum, 5, 1, 2, count_include_pad=False))
    strong = (g >= torch.quantile(g.flatten(1), 0.95, dim=1).view(-1, 1, 1, 1)).float()
    softness = ((sgx.abs() + sgy.abs()) * strong).flatten(1).sum(1) / ((g * strong).flatten(1).sum(1) + 1e-6)
    blocks = F.avg_pool2d(F.conv2d(lum, _laplacian_kernel(x.device), padding=1).abs(), 8).flatten(1)
    smooth_share = (blocks < 0.25 * blocks.median(1, keepdim=True).values).float().mean(1)
    c8 = F.avg_pool2d(x, 8).clamp_min(1e-3)
    lb = torch.log(c8[:, 2] / c8[:, 0]).flatten(1)
    ll = torch.log(F.avg_pool2d(lum, 8).clamp_min(1e-3)).flatten(1)
    lb, ll = lb - lb.mean(1, keepdim=True), ll - ll.mean(1, keepdim=True)
    chroma_corr = (lb * ll).mean(1) / (lb.std(1) * ll.std(1) + 1e-6)
    mu = F.avg_pool2d(lum, 3, 1, 1, count_include_pad=False)
    local_sd = (F.avg_pool2d(lum * lum, 3, 1, 1, count_include_pad=False) - mu * mu).clamp_min(0).sqrt()
    white_flat = ((lum > 0.98) & (local_sd < 0.004)).float().flatten(1).mean(1)
    return torch.stack([
        torch.log(top.mean(1) + eps), (top > 0.1).float().mean(1), torch.log(black.mean(1) + eps),
        (black > 0.1).float().mean(1), coherence, skew, kurt, dark_share, low_tail, softness, smooth_share,
        chroma_corr, white_flat,
    ], dim=1)


N_HOLE_STATS = 3
HOLE_WHITE = 0.998  # the engine fills holes with exactly 1.0 (vlmir.degradations.inpaint.FILL), after the codec


def hole_statistics(x: torch.Tensor) -> torch.Tensor:
    """Evidence of filled holes (B, :data:`N_HOLE_STATS`) in images ``x`` (B, 3, H, W) in [0, 1].

    A hole is a region of constant white in every channel with a hard edge: the content next to it is whatever
    the scene was. A clipped highlight (a sunlit wall, an over-exposed shirt) is white as well, but it fades into
    bright surroundings. Per image: log share of white pixels (min over RGB >= :data:`HOLE_WHITE`); log share of
    hard-edge pixels (non-white 8-neighbours of white pixels whose luminance is below 0.8); the mean luminance drop
    ``1 - lum`` over all non-white 8-neighbours of white pixels (0 without white).
    """
    _check(x)
    x = x.float().clamp(0, 1)
    white = (x.amin(1, keepdim=True) >= HOLE_WHITE).float()
    ring = (_dilate(white, 3) - white).clamp_min(0)
    drop = (1 - _luminance(x)) * ring
    eps = 1e-4
    n_ring = ring.flatten(1).sum(1)
    return torch.stack([
        torch.log(white.flatten(1).mean(1) + eps),
        torch.log((drop > 0.2).float().flatten(1).mean(1) + eps),
        drop.flatten(1).sum(1) / n_ring.clamp_min(1),
    ], dim=1)
