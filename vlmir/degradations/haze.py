"""``hazy``: atmospheric scattering with a synthetic depth map.

Koschmieder's model, as in RESIDE (Li et al., "Benchmarking Single-Image Dehazing and Beyond", TIP 2019) and the
dehazing data DA-CLIP trains on:

    I(x) = J(x) t(x) + A (1 - t(x)),    t(x) = exp(-beta d(x))                                   (1)

with J the clean image, A the airlight and beta the scattering coefficient. RESIDE takes d from a depth
estimator; to stay dependency-free, ``d`` here is a depth proxy built from three cues of outdoor photographs:
a vertical gradient (the top of the frame is usually farther, with a random tilt), a smooth random field (scene
layout) and the blurred luminance (bright, flat regions such as sky tend to be far). ``d`` is rescaled to
[0.25, 1]. The airlight is near white-grey (0.75..0.95 with a slight per-channel tint) and beta rises with
severity so that the mean transmission goes from about 0.8 (severity 1) to about 0.2 (severity 5).
"""

from __future__ import annotations

import numpy as np

from vlmir.degradations._common import by_severity, finish, gaussian_blur, lowfreq_field, min_side

NAME = "hazy"
# scattering coefficient beta of Eq. (1) by severity 1..5 (depth normalised to [0.25, 1])
BETA = (0.35, 0.7, 1.1, 1.6, 2.3)


def depth_proxy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative depth ``(H, W)`` float32 in [0.25, 1] (1 = far), from position, a smooth field and luminance."""
    h, w = img.shape[:2]
    tilt = rng.uniform(-0.3, 0.3)
    w_field = rng.uniform(0.15, 0.35)
    w_lum = rng.uniform(0.1, 0.3)
    field = lowfreq_field(rng, h, w, grid=5)
    yy = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None]  # top = far
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
    lum = gaussian_blur(lum, 0.03 * min_side(img))
    d = yy + tilt * xx + w_field * field + w_lum * lum
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    return np.float32(0.25) + np.float32(0.75) * d


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply Eq. (1) with ``beta = BETA[severity - 1]`` (+-5%).

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    airlight = np.float32(rng.uniform(0.75, 0.95)) + rng.uniform(-0.03, 0.03, size=3).astype(np.float32)
    beta = by_severity(BETA, severity) * rng.uniform(0.95, 1.05)
    t = np.exp(-np.float32(beta) * depth_proxy(img, rng))[..., None]  # (H, W, 1) transmission
    return finish(img * t + airlight * (1.0 - t))
