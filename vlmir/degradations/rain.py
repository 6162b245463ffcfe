"""``rainy``: rain streaks in several depth layers, plus the veiling of distant rain.

Rain streak synthesis in the spirit of Rain100L/H (Yang et al., "Deep Joint Rain Detection and Removal from a
Single Image", CVPR 2017) and the rain-accumulation model of Li et al. ("Heavy Rain Image Restoration", CVPR 2019):

    I = (1 - v) (1 - (1 - J)(1 - S)) + v A

with S the streak layer and v a light veil of airlight A (rain accumulation far away). S is the sum of 3 layers
(near, mid, far); each is sparse impulse noise (drops at random relative positions with random brightness)
motion-blurred by a line kernel of its own length, angle (a shared wind angle plus a small per-layer change) and
width. Near layers have longer, wider, brighter and fewer streaks. Streaks are combined with the image by a
screen blend (light adds, never darkens). Severity scales the number of streaks used (the same drawn drops), their
length and the veil.
"""

from __future__ import annotations

import numpy as np

from vlmir.degradations._common import by_severity, finish, min_side, segment_kernel, splat, veil

NAME = "rainy"
# (max streaks, length, width, brightness) per layer; length/width as fractions of the shorter side
LAYERS = (
    (1400, 0.035, 0.0018, (0.25, 0.55)),  # far
    (700, 0.06, 0.0025, (0.35, 0.7)),  # mid
    (180, 0.10, 0.0040, (0.45, 0.85)),  # near
)
FRACTION = (0.15, 0.3, 0.5, 0.72, 1.0)  # share of the drawn streaks used, by severity 1..5
LENGTH_SCALE = (0.7, 0.8, 0.9, 1.0, 1.1)
VEIL = (0.03, 0.06, 0.1, 0.14, 0.18)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add rain streaks and a veil (see the module docstring).

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    h, w = img.shape[:2]
    s = min_side(img)
    wind = rng.uniform(-25, 25)  # degrees from vertical
    airlight = np.float32(rng.uniform(0.75, 0.92))
    frac = by_severity(FRACTION, severity)
    streaks = np.zeros((h, w), np.float32)
    for n_max, length, width, (lo, hi) in LAYERS:
        xy = rng.random((n_max, 2))
        val = rng.uniform(lo, hi, n_max)
        angle = 90.0 + wind + rng.uniform(-6, 6)
        ln = length * rng.uniform(0.8, 1.2) * by_severity(LENGTH_SCALE, severity) * s
        n = int(round(frac * n_max))
        ker = segment_kernel(max(ln, 2.0), angle, max(width * s, 0.5))
        streaks += splat(h, w, xy[:n], val[:n], ker)
    streaks = np.clip(streaks, 0.0, 0.95)[..., None]
    out = 1.0 - (1.0 - img) * (1.0 - streaks)  # screen blend
    return finish(veil(out, by_severity(VEIL, severity), airlight))
