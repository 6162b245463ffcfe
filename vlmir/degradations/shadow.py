"""``shadowed``: soft cast shadows from random polygonal occluders.

As in the shadow-synthesis of SRD/ISTD-style data generators (e.g. Inoue & Yamasaki, "Learning from Synthetic
Shadows", TCSVT 2020): an occluder's shadow is a polygon whose edge is blurred (the penumbra of an extended light
source) and inside which direct light is removed, leaving the ambient skylight. The pixel is attenuated as

    I = J (1 - k m c),

with m in [0, 1] the soft shadow matte, k the darkening factor (rises with severity, 0.25 ... 0.78) and c a
per-channel factor that keeps slightly more blue inside the shadow (ambient sky light is bluish). Polygons
(3..8 vertices around a random centre) are drawn in relative coordinates; severity also adds occluders: 1, 1, 2,
2, 3 of the same drawn ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmir.degradations._common import by_severity, finish, gaussian_blur

NAME = "shadowed"
DARKEN = (0.25, 0.4, 0.53, 0.66, 0.78)  # k by severity 1..5
N_POLYGONS = (1, 1, 2, 2, 3)
CHANNEL = np.array([1.0, 0.96, 0.86], np.float32)  # R, G, B attenuation weights (bluish ambient)


def matte(h: int, w: int, rng: np.random.Generator, n_used: int, n_max: int = 3) -> np.ndarray:
    """Soft shadow matte ``(h, w)`` float32 in [0, 1] from the first ``n_used`` of ``n_max`` drawn polygons."""
    s = min(h, w)
    m = np.zeros((h, w), np.uint8)
    for i in range(n_max):
        n_vert = int(rng.integers(3, 9))
        centre = rng.uniform(0.15, 0.85, size=2)
        radius = rng.uniform(0.15, 0.4)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n_vert))
        rad = radius * rng.uniform(0.5, 1.3, n_vert)
        pts = centre + np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None]
        pix = np.round(pts * np.array([w, h])).astype(np.int32)
        if i < n_used:
            cv2.fillPoly(m, [pix], 255, lineType=cv2.LINE_AA)
    softness = rng.uniform(0.008, 0.03) * s  # penumbra width
    return gaussian_blur(m.astype(np.float32) / 255.0, softness)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Cast ``N_POLYGONS[severity - 1]`` soft shadows of strength ``DARKEN[severity - 1]``.

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    h, w = img.shape[:2]
    k = np.float32(by_severity(DARKEN, severity) * rng.uniform(0.95, 1.05))
    m = matte(h, w, rng, by_severity(N_POLYGONS, severity))[..., None]  # (H, W, 1)
    return finish(img * (1.0 - k * m * CHANNEL))
