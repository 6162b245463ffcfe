"""Domain-randomised versions of seven degradation types: several physical models per type, wide parameter ranges.

The default family of each type (one model, narrow ranges) teaches a network what *our* haze or rain looks like,
and a model trained on it misreads another implementation of the same type (snow from another engine read as
haze, for instance). Here each call first draws *which* model and its shape parameters, then sets the strength from
the severity. Any sensible implementation of a type should then fall inside what training saw:

=================  =========================================================================================
type               models drawn from
=================  =========================================================================================
hazy               I = J t + A (1 - t) with four depth layouts (top-far gradient, horizon band, radial,
                   flat with a random field), airlight grey / warm / bluish / dim, optional forward-scatter blur
rainy              1-4 layers of streaks (angle +-35 deg, length, width, density and brightness drawn),
                   screen, additive or lighten blending, optional veil and overcast darkening
snowy              1-4 layers of flakes (radius 0.4-6 px, soft or hard edged, optional motion streak),
                   alpha blended in white or blue-white, optional veil and brightening
noisy              Gaussian, Poisson (photon count by severity), signal-dependent (a x + b), luma-only or
                   per-channel, optionally spatially correlated (a slight blur of the noise field)
motion-blurry      random camera trajectory (inertial walk), straight linear motion, or defocus (disk);
                   extent by severity
jpeg-compressed    libjpeg at a quality range by severity, chroma subsampling 4:4:4 / 4:2:2 / 4:2:0,
                   sometimes compressed twice
low-light          inverse gamma, exposure gain, Poisson-Gaussian sensor noise, colour cast, black offset
=================  =========================================================================================

The same contract as the default families: ``apply(img, severity, rng)`` on float32 ``(H, W, 3)`` in [0, 1]; the
same generator gives the same pixels; effects are in units relative to the image size; with the same generator a
higher severity is a stronger version of the same effect (the model and its shape are drawn before the strength).
Used when ``degrade(..., randomise=True)`` or a training config's ``data.p_randomised`` asks for it; the other
three types (raindrop, shadowed, uncompleted) keep their default family.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from vlmir.degradations._common import (
    by_severity,
    finish,
    gaussian_blur,
    lowfreq_field,
    min_side,
    segment_kernel,
    splat,
)
from vlmir.degradations.blur import kernel_from_trajectory, trajectory

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _strength(table: tuple, severity: int, rng: np.random.Generator, spread: tuple[float, float]) -> float:
    """``table[severity - 1]`` times a factor drawn in ``spread`` (drawn whatever the severity, so the same
    generator scales every severity alike)."""
    return float(by_severity(table, severity)) * float(rng.uniform(*spread))


# hazy ----------------------------------------------------------------------------------------------------------

HAZE_BETA = (0.3, 0.65, 1.05, 1.55, 2.2)
AIRLIGHTS = ((0.86, 0.86, 0.86), (0.92, 0.86, 0.74), (0.74, 0.82, 0.92), (0.62, 0.63, 0.65))


def _depth(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)  # 0 = top
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :] * np.ones((h, 1), np.float32)
    layout = int(rng.integers(0, 4))
    if layout == 0:  # far at the top, tilted
        d = 1.0 - yy + rng.uniform(-0.4, 0.4) * (xx - 0.5)
    elif layout == 1:  # a horizon band is farthest, the foreground near
        y0 = rng.uniform(0.2, 0.6)
        d = np.exp(-((yy - y0) / rng.uniform(0.15, 0.4)) ** 2) + 0.3 * (yy < y0)
    elif layout == 2:  # the centre is far (a road or corridor)
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)
        d = 1.0 - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    else:  # flat, only the field
        d = np.zeros((h, w), np.float32)
    d = d + rng.uniform(0.1, 0.6) * lowfreq_field(rng, h, w, grid=int(rng.integers(3, 8)))
    lum = gaussian_blur(img @ _LUMA, 0.03 * min_side(img))
    d = d + rng.uniform(0.0, 0.4) * lum
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    lo = rng.uniform(0.0, 0.5)
    return (lo + (1.0 - lo) * d).astype(np.float32)


def hazy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(AIRLIGHTS[int(rng.integers(0, len(AIRLIGHTS)))], np.float32)
    airlight = np.clip(base * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04, 3), 0.3, 1.0).astype(np.float32)
    d = _depth(img, rng)
    scatter = rng.uniform(0.0, 0.006) if rng.random() < 0.5 else 0.0
    beta = _strength(HAZE_BETA, severity, rng, (0.75, 1.35))
    t = np.exp(-np.float32(beta) * d)[..., None]
    scene = gaussian_blur(img, scatter * min_side(img) * severity) if scatter else img
    return finish(scene * t + airlight * (1.0 - t))


# rainy ---------------------------------------------------------------------------------------------------------

RAIN_DENSITY = (0.15, 0.3, 0.5, 0.75, 1.0)  # share of the drawn streaks used
RAIN_VEIL = (0.02, 0.05, 0.08, 0.12, 0.16)


def rainy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    s = min_side(img)
    angle = 90.0 + rng.uniform(-35, 35)
    mode = int(rng.integers(0, 3))  # screen, additive, lighten
    rain = np.zeros((h, w), np.float32)
    share = by_severity(RAIN_DENSITY, severity)
    for _ in range(int(rng.integers(1, 5))):
        count = int(rng.uniform(80, 900) * (h * w) / (256 * 256))
        xy = rng.random((count, 2))
        bright = rng.uniform(0.2, 0.8) * rng.uniform(0.5, 1.0, count)
        keep = rng.random(count) < share
        length = rng.uniform(0.02, 0.15) * s * (0.7 + 0.1 * severity)
        width = rng.uniform(0.4, 2.0)
        kern = cv2.GaussianBlur(segment_kernel(length, angle + rng.uniform(-5, 5), width), (0, 0), rng.uniform(0.3, 1.5))
        rain = rain + splat(h, w, xy[keep], bright[keep], kern / max(float(kern.max()), 1e-6))
    rain = np.clip(rain, 0.0, 1.0)[..., None] * np.float32(rng.uniform(0.5, 1.0))
    dark = np.float32(1.0 - rng.uniform(0.0, 0.2)) if rng.random() < 0.5 else np.float32(1.0)
    base = img * dark
    if mode == 0:
        out = 1.0 - (1.0 - base) * (1.0 - rain)
    elif mode == 1:
        out = base + rain
    else:
        out = np.maximum(base, rain)
    v = _strength(RAIN_VEIL, severity, rng, (0.0, 1.5))
    return finish(out * (1.0 - v) + np.float32(rng.uniform(0.6, 0.9)) * v)


# snowy ---------------------------------------------------------------------------------------------------------

SNOW_DENSITY = (0.15, 0.3, 0.5, 0.75, 1.0)
SNOW_VEIL = (0.03, 0.06, 0.1, 0.14, 0.18)


def _flake(radius: float, soft: bool, streak: float, angle: float) -> np.ndarray:
    r = int(np.ceil(radius * 2 + streak + 2))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    dist = np.sqrt(xx**2 + yy**2)
    k = np.exp(-(dist**2) / (2 * max(radius, 0.3) ** 2)) if soft else np.clip(radius + 0.5 - dist, 0.0, 1.0)
    k = k.astype(np.float32)
    if streak > 1.0:
        line = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
        th = np.deg2rad(angle)
        for u in np.linspace(-streak / 2, streak / 2, max(int(streak * 2), 2)):
            line[int(round(r + u * np.sin(th))), int(round(r + u * np.cos(th)))] = 1.0
        k = cv2.filter2D(k, -1, line / line.sum())
    return k / max(float(k.max()), 1e-6)


def snowy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    s = min_side(img) / 256.0
    share = by_severity(SNOW_DENSITY, severity)
    fall = 90.0 + rng.uniform(-40, 40)
    snow = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        radius = float(np.exp(rng.uniform(np.log(0.4), np.log(6.0)))) * s
        count = int(rng.uniform(80, 1500) / max(radius, 0.5) * (h * w) / (256 * 256) / max(s, 1e-3) ** 2)
        count = min(count, 40000)
        xy = rng.random((count, 2))
        keep = rng.random(count) < share
        streak = rng.uniform(0.0, 8.0) * s if rng.random() < 0.4 else 0.0
        kern = _flake(radius, bool(rng.random() < 0.6), streak, fall)
        snow = snow + splat(h, w, xy[keep], rng.uniform(0.5, 1.0, int(keep.sum())), kern)
    colour = np.array((1.0, 1.0, 1.0) if rng.random() < 0.6 else (0.92, 0.96, 1.0), np.float32)
    alpha = (np.clip(snow, 0.0, 1.0) * np.float32(rng.uniform(0.6, 1.0)))[..., None]
    out = img * (1.0 - alpha) + colour * alpha
    if rng.random() < 0.4:  # bright overcast snow light
        out = out * np.float32(rng.uniform(1.0, 1.15))
    v = _strength(SNOW_VEIL, severity, rng, (0.0, 1.5))
    return finish(out * (1.0 - v) + np.float32(rng.uniform(0.75, 0.95)) * v)


# noisy ---------------------------------------------------------------------------------------------------------

NOISE_SIGMA = (0.035, 0.07, 0.11, 0.15, 0.2)  # target standard deviation in [0, 1] units


def noisy(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    model = int(rng.integers(0, 3))  # gaussian, poisson, signal-dependent
    luma_only = rng.random() < 0.25
    corr = rng.uniform(0.5, 1.2) if rng.random() < 0.3 else 0.0
    sigma = _strength(NOISE_SIGMA, severity, rng, (0.6, 1.4))
    field = rng.standard_normal((h, w, 1) if luma_only else (h, w, 3)).astype(np.float32)
    if corr:
        field = gaussian_blur(field, corr)
        field = field / max(float(field.std()), 1e-6)
        if field.ndim == 2:
            field = field[..., None]
    if model == 0:
        n = sigma * field
    elif model == 1:  # Poisson: std sqrt(x / peak) with sigma at mid grey
        n = np.sqrt(np.maximum(img, 1e-4) / 0.5) * sigma * field
    else:  # signal-dependent a x + b
        frac = rng.uniform(0.2, 0.8)
        n = np.sqrt(frac * img / 0.5 + (1.0 - frac)) * sigma * field
    return finish(img + n)


# motion-blurry -------------------------------------------------------------------------------------------------

BLUR_EXTENT = (0.016, 0.03, 0.045, 0.062, 0.085)


def motion_blurry(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    model = int(rng.integers(0, 3))  # trajectory, linear, defocus
    angle = rng.uniform(0, 180)
    pts = trajectory(rng)
    extent = max(_strength(BLUR_EXTENT, severity, rng, (0.7, 1.4)) * min_side(img), 2.0)
    if model == 0:
        ker = kernel_from_trajectory(pts, extent)
    elif model == 1:
        ker = segment_kernel(extent, angle, 0.5)
        ker = ker / ker.sum()
    else:
        r = max(extent / 2.5, 1.0)
        k = int(np.ceil(r)) * 2 + 3
        yy, xx = np.mgrid[:k, :k].astype(np.float32) - (k - 1) / 2
        ker = np.clip(r + 0.5 - np.sqrt(xx**2 + yy**2), 0.0, 1.0)
        ker = ker / ker.sum()
    out = cv2.filter2D(img, -1, np.ascontiguousarray(ker[::-1, ::-1], np.float32), borderType=cv2.BORDER_REFLECT)
    return finish(out)


# jpeg-compressed -----------------------------------------------------------------------------------------------

JPEG_QUALITY = ((35, 70), (22, 45), (12, 30), (7, 18), (3, 10))
_SAMPLING = ("444", "422", "420")


def _jpeg(img: np.ndarray, quality: int, sampling: str) -> np.ndarray:
    u8 = cv2.cvtColor((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
    factor = {"444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
              "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}[sampling]
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
    if not ok:  # pragma: no cover - libjpeg does not fail on a valid uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def jpeg_compressed(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sampling = _SAMPLING[int(rng.integers(0, 3))]
    u = rng.random()  # the quality's place in its severity's range, shared by every severity
    twice = rng.random() < 0.25
    lo, hi = by_severity(JPEG_QUALITY, severity)
    q = int(round(hi - u * (hi - lo)))
    out = _jpeg(img, q, sampling)
    if twice:
        out = _jpeg(out, min(95, q + int(rng.integers(5, 30))), sampling)
    return finish(out)


# low-light -----------------------------------------------------------------------------------------------------

LOW_GAIN = (0.5, 0.3, 0.18, 0.1, 0.06)


def low_light(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(1.0, 2.4)
    cast = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    black = rng.uniform(0.0, 0.03) if rng.random() < 0.4 else 0.0
    photons = rng.uniform(300, 3000)  # full-well photons at gain 1
    read = rng.uniform(0.002, 0.012)
    gain = _strength(LOW_GAIN, severity, rng, (0.7, 1.4))
    dark = np.power(np.clip(img, 0, 1), np.float32(gamma)) * np.float32(gain) * cast
    shot = rng.poisson(np.clip(dark, 0, 1) * photons).astype(np.float32) / np.float32(photons)
    noise = rng.standard_normal(img.shape).astype(np.float32) * np.float32(read)
    return finish(shot + noise + np.float32(black))


FAMILIES: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "hazy": hazy,
    "rainy": rainy,
    "snowy": snowy,
    "noisy": noisy,
    "motion-blurry": motion_blurry,
    "jpeg-compressed": jpeg_compressed,
    "low-light": low_light,
}
