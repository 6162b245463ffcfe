"""``snowy``: falling snow in several depth layers plus a slight veil.

Following the layered snow models of Snow100K (Liu et al., "DesnowNet", TIP 2018) and CSD (Chen et al., "ALL Snow
Removed", ICCV 2021): snow is a set of semi-transparent flake layers at different depths,

    I = (1 - v) (J (1 - a S) + a S c) + v A,

where S is a layer of flakes (impulses at random relative positions, rendered with a kernel that is a Gaussian
disc of the layer's flake size smeared along the fall direction by the exposure: motion blur), c the flake
colour (near white), a the opacity and v a veil of airlight A. Far layers have many small sharp flakes; near
layers few large, blurred (out of focus) and longer-streaked flakes. Severity scales how many of the drawn flakes
are used, their opacity and the veil.
"""

from __future__ import annotations

import numpy as np

from vlmir.degradations._common import by_severity, finish, min_side, segment_kernel, splat, veil

NAME = "snowy"
# (max flakes, flake radius, streak length) per layer, as fractions of the shorter side
LAYERS = (
    (2400, 0.0015, 0.004),  # far: tiny and sharp
    (700, 0.0035, 0.010),  # mid
    (140, 0.0080, 0.022),  # near: large, defocused
)
FRACTION = (0.15, 0.3, 0.5, 0.72, 1.0)  # share of the drawn flakes used, by severity 1..5
OPACITY = (0.7, 0.78, 0.85, 0.9, 0.95)
VEIL = (0.04, 0.07, 0.11, 0.15, 0.2)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add layered snow and a veil (see the module docstring).

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    h, w = img.shape[:2]
    s = min_side(img)
    fall = 90.0 + rng.uniform(-30, 30)  # fall direction, degrees (90 = straight down)
    colour = np.float32(rng.uniform(0.9, 1.0))
    airlight = np.float32(rng.uniform(0.8, 0.95))
    frac = by_severity(FRACTION, severity)
    snow = np.zeros((h, w), np.float32)
    for n_max, radius, length in LAYERS:
        xy = rng.random((n_max, 2))
        val = rng.uniform(0.5, 1.0, n_max)
        r = radius * rng.uniform(0.8, 1.25) * s
        ln = length * rng.uniform(0.7, 1.3) * s
        n = int(round(frac * n_max))
        ker = segment_kernel(ln, fall + rng.uniform(-8, 8), max(r, 0.5))
        snow = np.maximum(snow, splat(h, w, xy[:n], val[:n], ker))
    alpha = (np.clip(snow, 0.0, 1.0) * np.float32(by_severity(OPACITY, severity)))[..., None]
    out = img * (1.0 - alpha) + colour * alpha
    return finish(veil(out, by_severity(VEIL, severity), airlight))
