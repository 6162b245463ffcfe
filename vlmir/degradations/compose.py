"""Mixtures of degradations: the physical order they are applied in, per-type seeding and the visibility rule.

Order. A capture is degraded along the light path, so a mixture is applied in this fixed order whatever order
the caller lists it in (``APPLY_ORDER``), unless ``degrade(..., order="given")`` asks for the caller's order:

1. the scene and the atmosphere: ``shadowed`` (illumination), ``hazy`` (scattering), ``rainy`` and ``snowy``
   (particles in the air);
2. the optics: ``raindrop`` (water on the lens or window);
3. the exposure: ``motion-blurry`` (camera shake while the shutter is open);
4. the sensor: ``low-light`` (exposure, shot and read noise), then ``noisy``;
5. the output: ``jpeg-compressed`` (the codec), then ``uncompleted`` (holes cut in the stored image).

Seeding. One ``numpy.random.Generator(PCG64(seed))`` draws a child seed for each of the ten types (always all ten,
in ``DEGRADATIONS`` order); a type's effect uses only its child generator. A type therefore gives the same pixels
alone or in a mixture with the same seed (up to its input image), and adding a type changes no other's draws.

Visibility. WResVLM rates visibility on five levels (excellent, good, fair, poor, bad = 5..1). A synthetic image's
level comes from its *combined severity* ``c = min(sum(severities), 5)`` (0 for a clean image): c = 0 excellent,
1 good, 2 fair, 3 poor, 4 and 5 bad; the score r = 5 - min(c, 4). So a mixture of two severity-1 degradations is
rated "fair", like a single severity-2 one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vlmir.constants import DEGRADATIONS, LEVELS  # DA-CLIP's ten types; WResVLM's level words
from vlmir.degradations import blur, haze, inpaint, jpeg, lowlight, noise, rain, raindrop, shadow, snow

FAMILIES: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    m.NAME: m.apply for m in (blur, haze, jpeg, lowlight, noise, raindrop, rain, shadow, snow, inpaint)
}
APPLY_ORDER: tuple[str, ...] = (
    "shadowed",
    "hazy",
    "rainy",
    "snowy",
    "raindrop",
    "motion-blurry",
    "low-light",
    "noisy",
    "jpeg-compressed",
    "uncompleted",
)
# pairs not sampled together by sample_degradation (rain and snow at once is not a weather DA-CLIP models)
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"rainy", "snowy"}),)


def combined_severity(severities: Sequence[int]) -> int:
    """``min(sum(severities), 5)``; 0 for a clean image."""
    return int(min(sum(int(s) for s in severities), 5))


def visibility(severities: Sequence[int]) -> tuple[str, int]:
    """The WResVLM visibility level and score ``(word, r)`` of an image with these severities (module docstring)."""
    c = combined_severity(severities)
    r = 5 - min(c, 4)
    return LEVELS[5 - r], r


def type_generators(seed: int) -> dict[str, np.random.Generator]:
    """One child generator per degradation type, all derived from ``Generator(PCG64(seed))``."""
    root = np.random.Generator(np.random.PCG64(seed))
    child_seeds = root.integers(0, 2**63 - 1, size=len(DEGRADATIONS), dtype=np.int64)
    return {t: np.random.Generator(np.random.PCG64(int(cs))) for t, cs in zip(DEGRADATIONS, child_seeds, strict=True)}


def apply_chain(img: np.ndarray, types: Sequence[str], severities: Sequence[int], seed: int,
                randomise: bool = False) -> np.ndarray:
    """Apply already validated ``types`` (in the order given, normally ``APPLY_ORDER``) with their ``severities``
    to ``img`` (HWC float32); with ``randomise`` the types that have one use their domain-randomised family
    (:mod:`vlmir.degradations.randomised`), from the same per-type generators."""
    from vlmir.degradations import randomised

    rngs = type_generators(seed)
    out = img
    for t, s in zip(types, severities, strict=True):
        family = randomised.FAMILIES.get(t, FAMILIES[t]) if randomise else FAMILIES[t]
        out = family(out, int(s), rngs[t])
    return out


def sort_physical(types: Sequence[str], severities: Sequence[int]) -> tuple[list[str], list[int]]:
    """Reorder ``(types, severities)`` pairs into ``APPLY_ORDER``."""
    pairs = sorted(zip(types, severities, strict=True), key=lambda p: APPLY_ORDER.index(p[0]))
    return [p[0] for p in pairs], [int(p[1]) for p in pairs]
