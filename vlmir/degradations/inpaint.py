"""``uncompleted``: missing regions, as in image-inpainting benchmarks.

Holes are the union of free-form brush strokes, drawn with the random-stroke algorithm of DeepFill v2 (Yu et al.,
"Free-Form Image Inpainting with Gated Convolution", ICCV 2019: each stroke is a polyline of several random
segments with a random brush width) and of axis-aligned boxes (the rectangular masks of earlier work). Hole pixels
are replaced by a constant, **white (1.0)** by default (``FILL``): the "masked image" that inpainting data sets and
DA-CLIP's inpainting task present to the model. Sizes are relative to the image; severity uses more of the same
drawn strokes (1, 2, 4, 6, 8), widens them, and adds boxes (0, 0, 1, 1, 2).
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmir.degradations._common import by_severity

NAME = "uncompleted"
FILL = 1.0  # constant put in the holes (white)
N_STROKES = (1, 2, 4, 6, 8)
N_BOXES = (0, 0, 1, 1, 2)
WIDTH_SCALE = (0.7, 0.85, 1.0, 1.15, 1.3)
MAX_STROKES, MAX_BOXES = 8, 2


RENDER_MIN_SIDE = 512  # masks of smaller images are drawn at this size and reduced, so widths stay relative


def hole_mask(h: int, w: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean hole mask ``(h, w)`` (True = missing) for ``severity`` 1..5.

    Small images get their mask drawn on a canvas whose shorter side is ``RENDER_MIN_SIDE`` and area-reduced
    (threshold 0.5), so that brush widths are not rounded to whole pixels of the small image.
    """
    full_h, full_w = h, w
    f = max(1.0, RENDER_MIN_SIDE / min(h, w))
    h, w = int(round(h * f)), int(round(w * f))
    s = min(h, w)
    m = np.zeros((h, w), np.uint8)
    n_strokes, n_boxes = by_severity(N_STROKES, severity), by_severity(N_BOXES, severity)
    wscale = by_severity(WIDTH_SCALE, severity)
    for i in range(MAX_STROKES):  # always draw the same random numbers, use the first n_strokes
        n_vert = int(rng.integers(4, 10))
        start = rng.uniform(0.05, 0.95, size=2)
        angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-1.2, 1.2, n_vert))
        lengths = rng.uniform(0.04, 0.12, n_vert)
        width = rng.uniform(0.015, 0.04) * wscale * s
        steps = np.stack([np.cos(angles), np.sin(angles)], 1) * lengths[:, None]
        pts = np.clip(np.vstack([start, start + np.cumsum(steps, 0)]), 0.0, 1.0)
        pix = np.round(pts * np.array([w - 1, h - 1])).astype(np.int32)
        if i < n_strokes:
            cv2.polylines(m, [pix], False, 255, thickness=max(int(round(width)), 1), lineType=cv2.LINE_8)
            for p in pix:  # round brush joints
                cv2.circle(m, (int(p[0]), int(p[1])), max(int(round(width / 2)), 1), 255, -1)
    for i in range(MAX_BOXES):
        bw, bh = rng.uniform(0.12, 0.3, size=2)
        x0, y0 = rng.uniform(0.0, 1.0 - bw), rng.uniform(0.0, 1.0 - bh)
        if i < n_boxes:
            p0 = (int(round(x0 * w)), int(round(y0 * h)))
            p1 = (int(round((x0 + bw) * w)), int(round((y0 + bh) * h)))
            cv2.rectangle(m, p0, p1, 255, -1)
    if (h, w) != (full_h, full_w):
        return cv2.resize(m, (full_w, full_h), interpolation=cv2.INTER_AREA) >= 128
    return m > 0


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blank out strokes and boxes of ``img`` with ``FILL``.

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    mask = hole_mask(img.shape[0], img.shape[1], severity, rng)
    out = img.copy()
    out[mask] = FILL
    return out
