"""``noisy``: additive white Gaussian noise, the DA-CLIP denoising setting.

DA-CLIP (Luo et al., 2023, "Controlling Vision-Language Models for Universal Image Restoration",
https://github.com/Algolzw/daclip-uir) trains its denoising task on Gaussian noise with sigma up to 50/255, as the
classic CBSD68 benchmarks do (sigma 15/25/50). Here the standard deviation rises linearly with severity,
10/255 ... 50/255, with a small seeded jitter of +-1.5/255 that keeps the levels disjoint, noise i.i.d. per pixel and
per RGB channel, clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np

from vlmir.degradations._common import by_severity, finish

NAME = "noisy"
# sigma in 8-bit units by severity 1..5
SIGMA_255 = (10.0, 20.0, 30.0, 40.0, 50.0)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma^2) noise, sigma = ``SIGMA_255[severity - 1] / 255`` (+-1.5/255 jitter).

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    sigma = (by_severity(SIGMA_255, severity) + rng.uniform(-1.5, 1.5)) / 255.0
    z = rng.standard_normal(img.shape, dtype=np.float32)
    return finish(img + np.float32(sigma) * z)
