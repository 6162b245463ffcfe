"""Small numerical helpers shared by the degradation families (numpy/OpenCV only, no torch).

Conventions used by every family module:

- an image is a float32 numpy array ``(H, W, 3)`` RGB in [0, 1];
- a family function is ``apply(img, severity, rng) -> img`` with ``severity`` an int in 1..5 and ``rng`` a
  ``numpy.random.Generator``; it never modifies ``img`` in place and returns float32 in [0, 1], same shape;
- geometric quantities (positions, radii, kernel lengths) are drawn in units relative to the image (fractions of
  the width/height or of the shorter side), so the same seed gives the same effect, scaled, on any image size;
- the random structure (where drops, strokes and polygons are, the blur trajectory, the noise fields) is drawn the
  same way for every severity and severity only scales amplitudes, sizes and how many of the drawn elements are
  used. With one seed, a higher severity is therefore a strictly stronger version of the same degradation.
"""

from __future__ import annotations

import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


def min_side(img: np.ndarray) -> int:
    """Shorter side in pixels of an ``(H, W, C)`` image."""
    return int(min(img.shape[0], img.shape[1]))


def by_severity(table: tuple, severity: int):
    """``table[severity - 1]``: the per-severity parameter tables of the family modules are 5-tuples."""
    return table[severity - 1]


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (reflected borders); identity when ``sigma`` < 0.3."""
    if sigma < 0.3:
        return x
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(x, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def lowfreq_field(rng: np.random.Generator, h: int, w: int, grid: int = 6) -> np.ndarray:
    """A smooth random field ``(h, w)`` float32, roughly zero-mean unit-variance.

    Drawn on a ``grid x grid`` lattice and bicubically upsampled, so it depends on the seed only, not on the image
    size (the same seed gives the same field, resampled).
    """
    coarse = rng.standard_normal((grid, grid)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / max(float(field.std()), 1e-6)


def segment_kernel(length: float, angle_deg: float, width: float) -> np.ndarray:
    """A streak kernel: a line segment of ``length`` pixels at ``angle_deg`` (0 = horizontal, 90 = vertical down),
    with a Gaussian cross-section of std ``width`` pixels. Peak value 1 (not sum-normalised), so a splatted
    impulse of value ``a`` becomes a streak of brightness ``a``.

    Returns:
        float32 ``(k, k)`` with ``k`` odd.
    """
    half = max(length / 2.0, 0.0)
    r = int(np.ceil(half + 3 * width + 1))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    th = np.deg2rad(angle_deg)
    along = xx * np.cos(th) + yy * np.sin(th)
    across = -xx * np.sin(th) + yy * np.cos(th)
    # distance to the segment [-half, half] on the 'along' axis
    d_along = np.maximum(np.abs(along) - half, 0.0)
    d2 = d_along**2 + across**2
    k = np.exp(-d2 / (2.0 * max(width, 0.3) ** 2)).astype(np.float32)
    return k / k.max()


def splat(h: int, w: int, xy_rel: np.ndarray, values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Render sparse particles: impulses of ``values`` at relative positions ``xy_rel`` (``(N, 2)`` in [0, 1),
    x then y) convolved with ``kernel``. Returns float32 ``(h, w)`` (not clipped)."""
    layer = np.zeros((h, w), np.float32)
    if len(values):
        ix = np.clip((xy_rel[:, 0] * w).astype(np.int64), 0, w - 1)
        iy = np.clip((xy_rel[:, 1] * h).astype(np.int64), 0, h - 1)
        np.add.at(layer, (iy, ix), values.astype(np.float32))
    return cv2.filter2D(layer, -1, kernel, borderType=cv2.BORDER_CONSTANT)


def veil(img: np.ndarray, amount: float, airlight: np.ndarray | float) -> np.ndarray:
    """Uniform atmospheric veil (constant transmission ``t = 1 - amount``): ``I = J t + A (1 - t)``."""
    if amount <= 0:
        return img
    a = np.asarray(airlight, np.float32)
    return img * np.float32(1.0 - amount) + a * np.float32(amount)


def finish(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and return float32 (every family returns through this)."""
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
