"""Seeded synthesis of DA-CLIP's ten degradation types, alone or mixed, with WResVLM-style visibility labels.

DA-CLIP (Luo et al., 2023, https://github.com/Algolzw/daclip-uir) trains a degradation-aware CLIP and a universal
restorer on ten degradations; this package synthesises them from clean photographs with physically motivated
models, one family per module (see each module's docstring for the model and its references):

=================  ================  ==========================================================================
type               module            model
=================  ================  ==========================================================================
motion-blurry      ``blur``          camera-shake kernel from a random walk with inertia
hazy               ``haze``          I = J t + A (1 - t), t = exp(-beta d), depth proxy d
jpeg-compressed    ``jpeg``          real libjpeg encode/decode, quality by severity
low-light          ``lowlight``      inverse gamma, exposure gain, Poisson-Gaussian sensor noise
noisy              ``noise``         additive Gaussian, sigma 10..50 / 255
raindrop           ``raindrop``      refracting drops (inverted, defocused view), dark outline, bright rim
rainy              ``rain``          3 layers of motion-blurred streaks, screen-blended, plus a veil
shadowed           ``shadow``        soft-edged polygon shadows, bluish ambient
snowy              ``snow``          3 depth layers of flakes (size, defocus, motion streak), plus a veil
uncompleted        ``inpaint``       free-form brush strokes and boxes filled with white (1.0)
=================  ================  ==========================================================================

Mixtures are applied in a physical order (scene and weather, then optics, blur, sensor noise, codec, holes); see
:mod:`vlmir.degradations.compose` for the order, the per-type seeding and the visibility rule.

Guarantees: the same ``(types, severity, seed)`` gives the same pixels; effects are drawn in units relative to
the image size, so a seed gives the same effect, scaled, on any size; output is float32 in [0, 1] of the input's
shape; a higher severity with the same seed is a stronger version of the same effect. This module imports only
numpy and OpenCV (no torch), so data loaders can use it cheaply.

Example::

    >>> import numpy as np
    >>> from vlmir.degradations import degrade
    >>> img = np.full((64, 64, 3), 0.5, np.float32)
    >>> out, meta = degrade(img, "hazy", 3, seed=0)
    >>> out.shape, out.dtype, meta["visibility"]
    ((64, 64, 3), dtype('float32'), 'poor')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlmir.degradations.compose import (
    APPLY_ORDER,
    DEGRADATIONS,
    EXCLUSIVE,
    LEVELS,
    apply_chain,
    combined_severity,
    sort_physical,
    visibility,
)

__all__ = [
    "APPLY_ORDER",
    "DEGRADATIONS",
    "LEVELS",
    "ORDERS",
    "combined_severity",
    "degrade",
    "parse_types",
    "sample_degradation",
    "visibility",
]

MIN_SIZE = 8  # smallest accepted height/width in pixels
ORDERS: tuple[str, ...] = ("physical", "given")  # how degrade() orders a mixture


def _unknown_type(name: object) -> ValueError:
    close = difflib.get_close_matches(str(name), DEGRADATIONS, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown degradation type {name!r}.{hint} Valid types: {', '.join(DEGRADATIONS)}.")


def parse_types(types: str | Sequence[str] | None) -> list[str]:
    """Normalise ``types`` to a list of valid names.

    Accepts one name, a comma-separated string (``"hazy,noisy"``), a sequence of names, or ``None``/``[]``/``""``
    for a clean image. Raises ``ValueError`` for an unknown or repeated name (listing the valid ones).
    """
    if types is None:
        return []
    if isinstance(types, str):
        items = [t.strip() for t in types.split(",") if t.strip()]
    elif isinstance(types, Sequence):
        items = list(types)
    else:
        raise ValueError(
            f"types must be a name, a comma-separated string or a list of names, got {type(types).__name__}"
        )
    for t in items:
        if not isinstance(t, str) or t not in DEGRADATIONS:
            raise _unknown_type(t)
    if len(set(items)) != len(items):
        raise ValueError(f"degradation types repeat in {items}; give each type once")
    return items


def _check_severity(s: object) -> int:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= int(s) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {s!r}")
    return int(s)


def _parse_severity(severity: int | Sequence[int], n: int) -> list[int]:
    if isinstance(severity, Sequence) and not isinstance(severity, str):
        sev = [_check_severity(s) for s in severity]
        if len(sev) != n:
            raise ValueError(f"got {len(sev)} severities {sev} for {n} degradation types; give one per type or one int")
        return sev
    return [_check_severity(severity)] * n


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _to_hwc(image: Any) -> tuple[np.ndarray, Any]:
    """``(float32 HWC array, how to convert back)``; a torch tensor (1, 3, H, W) is converted to numpy."""
    if type(image).__module__.startswith("torch"):
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"a tensor image must be (1, 3, H, W), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"a tensor image must be float in [0, 1], got dtype {image.dtype}")
        arr = image.detach()[0].permute(1, 2, 0).to("cpu").float().numpy()
        return np.ascontiguousarray(arr, dtype=np.float32), image
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image must be a float32 (H, W, 3) numpy array or a (1, 3, H, W) tensor, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1], got dtype {image.dtype} (for uint8 divide by 255)")
    return np.ascontiguousarray(image, dtype=np.float32), None


def _from_hwc(out: np.ndarray, like: Any) -> Any:
    if like is None:
        return out
    import torch  # only when the caller passed a tensor

    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None].to(device=like.device, dtype=like.dtype)


def degrade(
    image: Any,
    types: str | Sequence[str] | None,
    severity: int | Sequence[int] = 3,
    seed: int = 0,
    randomise: bool = False,
    order: str = "physical",
) -> tuple[Any, dict[str, Any]]:
    """Degrade ``image`` with one type or a mixture, reproducibly.

    Args:
        image: float32 numpy ``(H, W, 3)`` RGB in [0, 1], or a float torch tensor ``(1, 3, H, W)`` in [0, 1]
            (the result is then a tensor of the same device and dtype). H and W at least 8.
        types: a name from :data:`DEGRADATIONS`, a comma-separated string or a list of names (a mixture); ``None``
            or ``[]`` returns a copy of the clean image.
        severity: 1..5, one int for all types or a list with one per type (in the order of ``types``).
        seed: non-negative int; the same seed gives the same pixels.
        randomise: draw each type's model and parameters from its domain-randomised family
            (:mod:`vlmir.degradations.randomised`: several physical models, wide ranges) where it has one.
        order: ``"physical"`` (default) applies a mixture in :data:`APPLY_ORDER` (scene and weather, optics, blur,
            sensor noise, codec, holes); ``"given"`` applies it in the order of ``types``, as Real-ESRGAN-style
            pipelines shuffle their steps (noise before blur, a codec before rain), so a model also sees orders
            that a physical camera would not produce.

    Returns:
        ``(out, meta)``: ``out`` like ``image``; ``meta`` = ``{"types": [...], "severity": [...], "seed": n,
        "visibility": word, "visibility_score": r}`` with the types in the order they were applied
        (:data:`APPLY_ORDER`, or as given with ``order="given"``) and the visibility from :func:`visibility`.

    Raises:
        ValueError: unknown type (with close matches), severity outside 1..5, bad seed, unknown order, or an image
        that is not float (H, W, 3) / (1, 3, H, W) in [0, 1].
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    names = parse_types(types)
    sev = _parse_severity(severity, len(names)) if names else []
    seed = _check_seed(seed)
    arr, like = _to_hwc(image)
    if arr.shape[0] < MIN_SIZE or arr.shape[1] < MIN_SIZE:
        raise ValueError(f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {arr.shape[1]}x{arr.shape[0]}")
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also rejects NaN
        raise ValueError(f"image values must lie in [0, 1], got min {lo:.4g} max {hi:.4g}")
    arr = np.clip(arr, 0.0, 1.0)
    if order == "physical":
        names, sev = sort_physical(names, sev)
    out = apply_chain(arr, names, sev, seed, randomise=bool(randomise)) if names else arr.copy()
    word, r = visibility(sev)
    meta = {"types": names, "severity": sev, "seed": seed, "visibility": word, "visibility_score": r}
    if randomise:
        meta["randomised"] = True
    if order != "physical":
        meta["order"] = order
    return _from_hwc(out, like), meta


def _type_probabilities(pool: list[str], weights: Mapping[str, float] | None) -> np.ndarray | None:
    """Normalised sampling probabilities over ``pool`` from per-name ``weights`` (``None``: uniform)."""
    if weights is None:
        return None
    parse_types(list(weights))  # unknown names: the usual error, with the valid ones
    w = np.array([float(weights.get(t, 1.0)) for t in pool])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0 over the pool, got {dict(weights)}")
    return w / w.sum()


def sample_degradation(
    rng: np.random.Generator,
    *,
    allow_mixtures: bool = True,
    p_clean: float = 0.0,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    p_mixture: float = 0.3,
    max_types: int = 3,
    types: Sequence[str] = DEGRADATIONS,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Draw a random degradation spec for on-the-fly training data: ``degrade(image, **spec)``.

    Args:
        rng: a ``numpy.random.Generator``; the spec (and, through its seed, the pixels) follow from it.
        allow_mixtures: whether mixtures of 2..``max_types`` types may be drawn.
        p_clean: probability of a clean sample (``types=[]``, visibility excellent).
        severities: the severities to draw from, uniformly, independently per type.
        p_mixture: probability of a mixture when ``allow_mixtures`` (otherwise one type).
        max_types: most types in a mixture (2..10).
        types: the pool of types to draw from (default all ten).
        weights: relative sampling weight per type name (types left out weigh 1); the types of a draw are then
            picked one after another with probability proportional to their weight (``None``: uniformly, the
            same draws as before weights existed). Use it to show a hard type more often in training.

    Returns:
        ``{"types": [...], "severity": [...], "seed": int}``. Mixtures never contain a pair of
        :data:`~vlmir.degradations.compose.EXCLUSIVE` (rain and snow together).
    """
    for name, p in (("p_clean", p_clean), ("p_mixture", p_mixture)):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    sev_pool = [_check_severity(s) for s in severities]
    if not sev_pool:
        raise ValueError("severities must name at least one severity in 1..5")
    pool = parse_types(list(types))
    if not pool:
        raise ValueError("types must name at least one degradation type")
    if not 2 <= int(max_types) <= len(DEGRADATIONS):
        raise ValueError(f"max_types must be in 2..{len(DEGRADATIONS)}, got {max_types!r}")
    order_p = _type_probabilities(pool, weights)
    seed = int(rng.integers(0, 2**31 - 1))
    if rng.random() < p_clean:
        return {"types": [], "severity": [], "seed": seed}
    n = 1
    if allow_mixtures and len(pool) > 1 and rng.random() < p_mixture:
        n = int(rng.integers(2, min(max_types, len(pool)) + 1))
    chosen: list[str] = []
    if order_p is None:
        order = list(rng.permutation(pool))
    else:  # a weighted permutation of the types that can be drawn (weight > 0)
        order = [pool[i] for i in rng.choice(len(pool), int(np.count_nonzero(order_p)), replace=False, p=order_p)]
    for t in order:
        t = str(t)
        if any(pair <= set(chosen) | {t} for pair in EXCLUSIVE):
            continue
        chosen.append(t)
        if len(chosen) == n:
            break
    sev = [int(sev_pool[int(rng.integers(0, len(sev_pool)))]) for _ in chosen]
    return {"types": chosen, "severity": sev, "seed": seed}
