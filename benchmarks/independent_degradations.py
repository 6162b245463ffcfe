"""A second degradation engine, for validation only: written apart from :mod:`vlmir.degradations` on purpose.

Why: models trained on one engine's images learn that engine's look. Measuring them on images made by the same
engine tells how well they fit it, not how they do on someone else's degradations. This module is that someone
else: its own models and its own parameters for the seven types below, and it is never imported by anything under
``vlmir/`` (training included). It imports numpy, OpenCV and Pillow only.

How it differs from :mod:`vlmir.degradations` (read to make sure the two do not share models or constants):

=================  ==========================================================================================
type               model here
=================  ==========================================================================================
hazy               depth from a random layout of tilted planes and blobs mixed with a "bright and grey is far"
                   cue; the scattering coefficient is solved so that the mean transmission hits a per-severity
                   target; wavelength-dependent scattering (blue more); airlight drawn from a palette of haze and
                   smog colours; far regions slightly defocused.
rainy              anti-aliased line segments drawn one by one (OpenCV ``line``), a global wind angle with
                   per-streak jitter, each streak with its own length, width and brightness; the layer is blurred
                   along the streak direction, blended additively with a per-streak alpha; the scene is dimmed and
                   desaturated (overcast) and mixed toward a grey sky colour.
snowy              flakes as filled ellipses of log-normal size (few large near flakes, defocused with a box blur,
                   many small ones), a share of them stretched by motion along a wind direction; alpha
                   compositing toward a slightly blue white, then a brightening and contrast loss.
noisy              signal-dependent (Poisson-Gaussian) noise ``y = x + sqrt(a x + b) n`` in sRGB values; on half
                   the seeds the noise is spatially correlated (a 3x3 demosaicing-like blur of the noise field,
                   rescaled to keep its level) and partly shared across channels (luma noise).
motion-blurry      camera trajectory from a random sum of low-frequency sinusoids (a smooth path), sampled with
                   a varying speed (points bunch where the camera slows), rasterised with bilinear weights;
                   convolution with replicated borders.
jpeg-compressed    Pillow's encoder (not OpenCV's) at a quality by severity, chroma subsampling 4:4:4, 4:2:2 or
                   4:2:0 drawn from the seed, optionally a first pass at a higher quality (double compression).
low-light          a power curve and a gain applied in display values (no linearisation), a colour cast from a
                   palette of white balances (tungsten, sodium, cool LED), Poisson-Gaussian noise after the gain,
                   and 8-bit quantisation at the dark level, which bands the shadows.
=================  ==========================================================================================

Conventions: an image is float32 ``(H, W, 3)`` RGB in [0, 1]; sizes and counts are drawn relative to the image
(fractions of the shorter side, densities per area), so a seed gives the same kind of effect on any size; the
random structure depends on the seed and the type only, and the severity only scales amplitudes, sizes and counts,
so with one seed a higher severity is a stronger version of the same effect.

Example::

    >>> import numpy as np
    >>> from benchmarks.independent_degradations import degrade
    >>> img = np.full((64, 64, 3), 0.5, np.float32)
    >>> degrade(img, "hazy", 3, seed=0).shape
    (64, 64, 3)
"""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
from PIL import Image

# the type names, as DA-CLIP's (the same strings as vlmir.constants, spelt out here so this module stands alone)
TYPES: tuple[str, ...] = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "rainy", "snowy")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# ----------------------------------------------------------------------------------------------------------------
# per-severity parameters (index severity - 1); chosen for this engine, not copied from vlmir.degradations
# ----------------------------------------------------------------------------------------------------------------
HAZE_MEAN_T = (0.86, 0.7, 0.55, 0.42, 0.3)          # target mean transmission
RAIN_DENSITY = (120, 260, 420, 620, 850)            # streaks per (256 px)^2
RAIN_ALPHA = (0.45, 0.55, 0.62, 0.7, 0.78)          # streak opacity scale
RAIN_OVERCAST = (0.04, 0.08, 0.12, 0.17, 0.22)      # mix toward the sky colour
SNOW_DENSITY = (90, 200, 340, 520, 740)             # flakes per (256 px)^2
SNOW_OPACITY = (0.6, 0.7, 0.78, 0.85, 0.9)
SNOW_BRIGHTEN = (0.03, 0.06, 0.1, 0.14, 0.18)
NOISE_A = (0.002, 0.005, 0.01, 0.018, 0.03)         # signal-dependent (shot) variance per unit signal
NOISE_B = (0.0004, 0.0012, 0.0028, 0.005, 0.008)    # signal-independent (read) variance
BLUR_LENGTH = (0.015, 0.03, 0.047, 0.066, 0.09)     # trajectory extent / shorter side
JPEG_QUALITY = (42, 28, 19, 12, 7)
LOW_GAIN = (0.62, 0.45, 0.32, 0.22, 0.14)
LOW_POWER = (1.1, 1.25, 1.4, 1.55, 1.75)            # out = gain * x ** power
LOW_NOISE = (0.00015, 0.0003, 0.0005, 0.0008, 0.0012)

_AIRLIGHTS = np.array([[0.86, 0.9, 0.95], [0.92, 0.92, 0.92], [0.9, 0.86, 0.76], [0.8, 0.82, 0.86],
                       [0.95, 0.93, 0.88]], np.float32)
_CASTS = np.array([[1.0, 0.78, 0.52], [1.0, 0.86, 0.6], [0.82, 0.92, 1.0], [0.95, 1.0, 0.9],
                   [1.0, 1.0, 1.0]], np.float32)


def _check(img: object, kind: object, severity: object, seed: object) -> np.ndarray:
    if kind not in TYPES:
        raise ValueError(f"unknown degradation type {kind!r}; this engine knows: {', '.join(TYPES)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 8:
        shape = getattr(img, "shape", None)
        raise ValueError(f"img must be a numpy array (H, W, 3) with H, W >= 8, got {type(img).__name__} {shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"img must be floating point in [0, 1], got dtype {img.dtype}")
    a = img.astype(np.float32)
    if not np.isfinite(a).all() or a.min() < -1e-4 or a.max() > 1 + 1e-4:
        raise ValueError(f"img values must lie in [0, 1], got [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]")
    return np.clip(a, 0.0, 1.0)


def _rng(kind: str, seed: int) -> np.random.Generator:
    # the stream depends on (type, seed), never on the severity
    return np.random.Generator(np.random.PCG64([int(seed), zlib.crc32(kind.encode())]))


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.2126, 0.7152, 0.0722], np.float32)


# ----------------------------------------------------------------------------------------------------------------
# hazy
# ----------------------------------------------------------------------------------------------------------------
def _depth_layout(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative depth in [0, 1] (1 far): tilted planes + Gaussian blobs + a "bright, grey is far" cue."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    d = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):  # planes: a ground receding upwards, walls receding sideways
        g = rng.normal(0, 1, 2).astype(np.float32)
        g[1] = -abs(g[1]) - 0.5  # mostly far at the top
        d += g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
    for _ in range(int(rng.integers(2, 6))):  # near or far objects
        c = rng.random(2)
        r = rng.uniform(0.1, 0.35)
        d += rng.normal(0, 0.6) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * r * r))
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    v = img.max(axis=2)
    sat = (v - img.min(axis=2)) / np.maximum(v, 1e-3)
    cue = cv2.blur(v * (1.0 - sat), (max(3, h // 24) | 1, max(3, w // 24) | 1))
    k = rng.uniform(0.15, 0.45)
    d = (1 - k) * d + k * cue
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    return 0.1 + 0.9 * d


def _hazy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    depth = _depth_layout(img, rng)
    a = _AIRLIGHTS[int(rng.integers(0, len(_AIRLIGHTS)))] * np.float32(rng.uniform(0.82, 1.0))
    spectral = np.array([1.0 - rng.uniform(0.0, 0.12), 1.0, 1.0 + rng.uniform(0.0, 0.15)], np.float32)
    target = HAZE_MEAN_T[severity - 1] * rng.uniform(0.95, 1.05)
    lo, hi = 0.0, 20.0  # bisection for beta: mean(exp(-beta d)) = target
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(np.exp(-mid * depth).mean()) > target else (lo, mid)
    beta = (lo + hi) / 2
    t = np.exp(-beta * depth[..., None] * spectral)  # (H, W, 3)
    sigma = 0.004 * min(img.shape[:2]) * (1 + severity)
    far = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.4 else img
    wfar = np.clip(depth - 0.6, 0, 1)[..., None] * 1.5
    scene = img * (1 - wfar) + far * wfar
    return scene * t + a * (1 - t)


# ----------------------------------------------------------------------------------------------------------------
# rainy
# ----------------------------------------------------------------------------------------------------------------
def _directional_blur(layer: np.ndarray, angle: float, length: float) -> np.ndarray:
    n = max(3, int(round(length)) | 1)
    k = np.zeros((n, n), np.float32)
    c = n // 2
    dx, dy = np.cos(angle) * c, np.sin(angle) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1, cv2.LINE_AA)
    return cv2.filter2D(layer, -1, k / k.sum(), borderType=cv2.BORDER_REPLICATE)


def _rainy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    scale = 4  # draw at 4x sub-pixel precision (cv2.line shift)
    wind = np.deg2rad(90 + rng.uniform(-35, 35))
    n_max = int(RAIN_DENSITY[-1] * h * w / 256**2)
    n = int(RAIN_DENSITY[severity - 1] * h * w / 256**2)
    xy = rng.random((n_max, 2)) * [w, h]
    ln = s * np.exp(rng.normal(np.log(0.06), 0.45, n_max))
    ang = wind + rng.normal(0, np.deg2rad(4), n_max)
    bright = rng.uniform(0.35, 1.0, n_max)
    thick = np.where(rng.random(n_max) < 0.15, 2, 1)
    layer = np.zeros((h, w), np.float32)
    for i in range(n):
        dx, dy = np.cos(ang[i]) * ln[i] / 2, np.sin(ang[i]) * ln[i] / 2
        p0 = (int((xy[i, 0] - dx) * scale), int((xy[i, 1] - dy) * scale))
        p1 = (int((xy[i, 0] + dx) * scale), int((xy[i, 1] + dy) * scale))
        cv2.line(layer, p0, p1, float(bright[i]), int(thick[i]), cv2.LINE_AA, shift=2)
    layer = _directional_blur(layer, float(wind), 0.02 * s)
    layer = np.clip(layer * 2.2, 0, 1) * RAIN_ALPHA[severity - 1]
    sky = np.float32(rng.uniform(0.6, 0.85)) * np.array([0.97, 0.99, 1.03], np.float32)
    grey = _luma(img)[..., None]
    dull = 0.85 * img + 0.15 * grey  # overcast: desaturated, dimmer
    dull = dull * (1 - 0.6 * RAIN_OVERCAST[severity - 1])
    o = RAIN_OVERCAST[severity - 1]
    base = dull * (1 - o) + sky * o
    streak_colour = np.float32(rng.uniform(0.82, 0.97))
    return base + layer[..., None] * (streak_colour - base * 0.6)


# ----------------------------------------------------------------------------------------------------------------
# snowy
# ----------------------------------------------------------------------------------------------------------------
def _snowy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    n_max = int(SNOW_DENSITY[-1] * h * w / 256**2)
    n = int(SNOW_DENSITY[severity - 1] * h * w / 256**2)
    xy = rng.random((n_max, 2)) * [w, h]
    size = s * np.clip(np.exp(rng.normal(np.log(0.005), 0.6, n_max)), 0.002, 0.035)  # radius, log-normal
    wind = rng.uniform(0, 180)
    moving = rng.random(n_max) < rng.uniform(0.2, 0.6)
    stretch = np.where(moving, rng.uniform(1.5, 4.0, n_max), 1.0)
    alpha = rng.uniform(0.5, 1.0, n_max)
    tilt = wind + rng.normal(0, 10, n_max)
    white = np.array([0.95, 0.97, 1.0], np.float32) * np.float32(rng.uniform(0.92, 1.0))
    small = np.zeros((h, w), np.float32)
    big = np.zeros((h, w), np.float32)
    for i in range(n):
        axes = (max(1, int(round(size[i] * stretch[i] * 4))), max(1, int(round(size[i] * 4))))
        centre = (int(xy[i, 0] * 4), int(xy[i, 1] * 4))
        target = big if size[i] > 0.012 * s else small
        cv2.ellipse(target, centre, axes, float(tilt[i]), 0, 360, float(alpha[i]), -1, cv2.LINE_AA, shift=2)
    kb = max(3, int(0.012 * s) | 1)
    flakes = np.maximum(cv2.GaussianBlur(small, (3, 3), 0.6), cv2.blur(big, (kb, kb)))
    a = (np.clip(flakes, 0, 1) * SNOW_OPACITY[severity - 1])[..., None]
    b = SNOW_BRIGHTEN[severity - 1]
    base = img * (1 - b) + np.float32(0.85) * b
    return base * (1 - a) + white * a


# ----------------------------------------------------------------------------------------------------------------
# noisy
# ----------------------------------------------------------------------------------------------------------------
def _noise_field(shape: tuple[int, ...], rng: np.random.Generator, correlated: bool, luma_share: float) -> np.ndarray:
    z = rng.standard_normal(shape).astype(np.float32)
    zl = rng.standard_normal(shape[:2]).astype(np.float32)[..., None]
    z = np.sqrt(1 - luma_share) * z + np.sqrt(luma_share) * zl
    if correlated:
        k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16
        z = cv2.filter2D(z, -1, k, borderType=cv2.BORDER_REFLECT)
        z /= max(float(z.std()), 1e-6)
    return z


def _noisy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    correlated = bool(rng.random() < 0.5)
    z = _noise_field(img.shape, rng, correlated, rng.uniform(0.0, 0.5))
    j = rng.uniform(0.85, 1.15)
    var = NOISE_A[severity - 1] * j * img + NOISE_B[severity - 1] * j
    return img + np.sqrt(var) * z


# ----------------------------------------------------------------------------------------------------------------
# motion-blurry
# ----------------------------------------------------------------------------------------------------------------
def shake_kernel(rng: np.random.Generator, extent_px: float) -> np.ndarray:
    """A camera-shake kernel (k, k) summing to 1: a smooth path from a random sum of sinusoids, sampled with a
    varying speed, rasterised with bilinear weights; its larger extent is ``extent_px`` pixels."""
    u = np.linspace(0, 1, 400)
    path = np.zeros((len(u), 2))
    for f in range(1, 4):
        amp = rng.normal(0, 1.0 / f, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        path += amp * np.sin(np.pi * f * u[:, None] + ph)
    path += np.outer(u, rng.normal(0, 1.5, 2))  # a drift: the dominant direction
    speed = 0.3 + rng.random(len(u)) ** 2  # the camera slows and speeds up: dwell where it is slow
    t = np.cumsum(1.0 / speed)
    t = (t - t[0]) / (t[-1] - t[0])
    pts = np.stack([np.interp(u, t, path[:, 0]), np.interp(u, t, path[:, 1])], 1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    span = float(np.abs(pts).max()) * 2
    pts *= extent_px / max(span, 1e-9)
    k = int(np.ceil(extent_px)) + 3
    k += 1 - k % 2
    xy = pts + (k - 1) / 2
    ker = np.zeros((k, k), np.float64)
    x0, y0 = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(ker, (np.clip(y0 + dy, 0, k - 1), np.clip(x0 + dx, 0, k - 1)), wgt)
    return (ker / ker.sum()).astype(np.float32)


def _motion_blurry(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    extent = max(BLUR_LENGTH[severity - 1] * min(img.shape[:2]) * rng.uniform(0.9, 1.1), 1.5)
    ker = shake_kernel(rng, extent)
    return cv2.filter2D(img, -1, ker, borderType=cv2.BORDER_REPLICATE)


# ----------------------------------------------------------------------------------------------------------------
# jpeg-compressed
# ----------------------------------------------------------------------------------------------------------------
def _pil_jpeg(u8: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=int(subsampling))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg_compressed(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    subsampling = int(rng.choice([0, 1, 2], p=[0.2, 0.3, 0.5]))  # 4:4:4, 4:2:2, 4:2:0
    double = bool(rng.random() < 0.4)
    first_q = int(rng.integers(88, 96))  # a camera's high quality; lower ones realign badly
    jitter = int(rng.integers(-2, 3))
    q = int(np.clip(JPEG_QUALITY[severity - 1] + jitter, 3, 95))
    u8 = np.clip(np.floor(img * 255 + 0.5), 0, 255).astype(np.uint8)
    if double:
        u8 = _pil_jpeg(u8, first_q, subsampling)
    return _pil_jpeg(u8, q, subsampling).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# low-light
# ----------------------------------------------------------------------------------------------------------------
def _low_light(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    cast = _CASTS[int(rng.integers(0, len(_CASTS)))]
    cast = cast / cast.max()
    mix = rng.uniform(0.3, 0.8)  # how strong the cast is
    cast = (1 - mix) + mix * cast
    z = rng.standard_normal(img.shape).astype(np.float32)
    gain = LOW_GAIN[severity - 1] * rng.uniform(0.9, 1.1)
    dark = gain * np.power(img, np.float32(LOW_POWER[severity - 1])) * cast
    var = LOW_NOISE[severity - 1] * (0.2 + 4.0 * dark)
    noisy = dark + np.sqrt(var) * z
    return np.floor(np.clip(noisy, 0, 1) * 255 + 0.5) / 255.0  # 8-bit quantisation: banding in the shadows


_APPLY = {"motion-blurry": _motion_blurry, "hazy": _hazy, "jpeg-compressed": _jpeg_compressed,
          "low-light": _low_light, "noisy": _noisy, "rainy": _rainy, "snowy": _snowy}


def degrade(img: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """``img`` degraded by ``kind`` at ``severity``, reproducibly from ``seed``.

    Args:
        img: float ``(H, W, 3)`` RGB in [0, 1], H and W >= 8 (not modified).
        kind: one of :data:`TYPES` (DA-CLIP's names).
        severity: int in 1..5; with one seed, a higher severity is a stronger version of the same effect.
        seed: non-negative int; the same ``(kind, severity, seed)`` gives the same pixels.

    Returns:
        float32 ``(H, W, 3)`` in [0, 1].

    Raises:
        ValueError: an unknown ``kind``, a severity outside 1..5, a negative seed, or a malformed image.
    """
    x = _check(img, kind, severity, seed)
    out = _APPLY[kind](x, int(severity), _rng(kind, int(seed)))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
