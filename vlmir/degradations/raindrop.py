"""``raindrop``: water drops on the lens or a window pane, each a small refracting lens.

The physics follows the raindrop models of Roser & Geiger ("Video-based raindrop detection", 2009) and Qian et al.
("Attentive Generative Adversarial Network for Raindrop Removal", CVPR 2018, whose data DA-CLIP trains on): an
adherent drop behaves as a thick lens, so the pixels inside it show an *inverted, shrunk* view of the scene around
it (sampled from a wider neighbourhood, shifted toward the light above it), seen out of focus because the camera
focuses on the scene and not on the glass. The rim where the water surface is steep refracts strongly: it looks
like a dark outline with a bright crescent where light focuses at the bottom, and a small specular highlight.

For each drop (centre, radii, lens power drawn in relative units) the sampling map ``(map_x, map_y)`` is replaced
inside the ellipse by ``centre + shift - k * (p - centre)`` (inversion and shrink, k in 1.6..3.2); the remapped image
is blurred and composited with a soft-edged matte, then the rim and highlight are added. Severity uses more of the
same drawn drops (8 ... 45) and makes them larger.
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmir.degradations._common import by_severity, finish, gaussian_blur, min_side

NAME = "raindrop"
N_DROPS = (8, 14, 22, 32, 45)
RADIUS = (0.025, 0.032, 0.04, 0.048, 0.056)  # mean drop radius, fraction of the shorter side, by severity 1..5
MAX_DROPS = 45
EDGE = 0.18  # width of the matte's soft edge, in units of the radius


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Put ``N_DROPS[severity - 1]`` refracting drops on ``img``.

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    h, w = img.shape[:2]
    s = min_side(img)
    centres = rng.random((MAX_DROPS, 2)) * np.array([w, h])  # (N, 2) pixels
    size = rng.uniform(0.6, 1.4, MAX_DROPS)
    aspect = rng.uniform(0.8, 1.25, MAX_DROPS)  # ry / rx
    power = rng.uniform(1.6, 3.2, MAX_DROPS)  # inversion/shrink factor k
    shift_up = rng.uniform(0.5, 2.0, MAX_DROPS)  # refraction looks at the scene above, in radii
    defocus = rng.uniform(0.12, 0.25)  # blur sigma in radii
    n = by_severity(N_DROPS, severity)
    r_mean = by_severity(RADIUS, severity) * s

    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    alpha = np.zeros((h, w), np.float32)  # drop matte
    rim = np.zeros((h, w), np.float32)  # bright crescent + highlight
    dark = np.zeros((h, w), np.float32)  # dark outline
    for i in range(n):  # a loop over drops, each vectorised over its bounding box
        rx = max(r_mean * size[i], 1.5)
        ry = rx * aspect[i]
        cx, cy = centres[i]
        x0, x1 = int(max(cx - rx - 2, 0)), int(min(cx + rx + 3, w))
        y0, y1 = int(max(cy - ry - 2, 0)), int(min(cy + ry + 3, h))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        rho = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
        inside = rho < 1.0
        k = power[i]
        sx = cx - k * dx
        sy = cy - shift_up[i] * ry - k * dy
        map_x[y0:y1, x0:x1] = np.where(inside, sx, map_x[y0:y1, x0:x1])
        map_y[y0:y1, x0:x1] = np.where(inside, sy, map_y[y0:y1, x0:x1])
        a = np.clip((1.0 - rho) / EDGE, 0.0, 1.0)
        alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], a)
        crescent = np.exp(-(((rho - 0.82) / 0.09) ** 2)) * np.clip(0.3 + 0.7 * dy / ry, 0.0, 1.0)
        spot = np.exp(-((dx + 0.35 * rx) ** 2 + (dy + 0.4 * ry) ** 2) / (2 * (0.12 * rx) ** 2))
        rim[y0:y1, x0:x1] = np.maximum(rim[y0:y1, x0:x1], 0.35 * crescent + 0.6 * spot)
        dark[y0:y1, x0:x1] = np.maximum(dark[y0:y1, x0:x1], np.exp(-(((rho - 0.97) / 0.07) ** 2)))

    refracted = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    refracted = gaussian_blur(refracted, defocus * r_mean)
    a3 = alpha[..., None]
    out = img * (1.0 - a3) + refracted * a3
    out = out * (1.0 - 0.22 * dark[..., None]) + rim[..., None]
    return finish(out)
