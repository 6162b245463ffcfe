"""``low-light``: an under-exposed capture simulated through a simple camera model.

Following the unprocessing view of low-light synthesis (Brooks et al., "Unprocessing Images for Learned Raw
Denoising", CVPR 2019; Lv et al., "Attention Guided Low-light Image Enhancement", IJCV 2021):

1. undo the display tone curve, ``L = J ** gamma`` with gamma ~ U(2.0, 2.6) (sRGB is close to 2.2);
2. reduce the exposure, ``L' = g * L`` with a gain g that falls with severity (0.30 ... 0.035);
3. sensor noise in the Poisson-Gaussian model (Foi et al., 2008): photon shot noise
   ``Poisson(L' * P) / P`` with P photo-electrons for a full-scale pixel at normal exposure (sampled exactly below
   12 expected electrons, by its normal limit ``N(lam, lam)`` above), plus Gaussian read noise of std ``sigma_r``
   electrons; fewer photons at lower exposure make the relative noise grow, as in a
   real sensor;
4. re-apply the tone curve, ``I = L'' ** (1 / 2.2)``, which lifts the noise in the shadows as a camera's
   processing does.
"""

from __future__ import annotations

import numpy as np

from vlmir.degradations._common import by_severity, finish

NAME = "low-light"
# exposure gain (linear light) by severity 1..5
GAIN = (0.30, 0.17, 0.10, 0.06, 0.035)
# photo-electrons of a full-scale pixel at normal exposure (sets the shot-noise level)
FULL_WELL = 1500.0
# below this many expected electrons shot noise is sampled exactly from a Poisson law
POISSON_EXACT_BELOW = 12.0
# Gaussian read noise, electrons, by severity (higher analogue gain at lower light)
READ_NOISE = (1.5, 2.0, 2.5, 3.0, 3.5)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Darken ``img`` and add Poisson-Gaussian sensor noise (see the module docstring).

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    gamma = rng.uniform(2.0, 2.6)
    gain = by_severity(GAIN, severity) * rng.uniform(0.9, 1.1)
    linear = np.power(img, np.float32(gamma)) * np.float32(gain)  # (H, W, 3) linear light
    lam = linear * np.float32(FULL_WELL)  # expected photo-electrons per pixel
    # shot noise: exact Poisson where few photons arrive, its normal limit N(lam, lam) above POISSON_EXACT_BELOW
    # (the two agree to a few percent there; sampling Poisson everywhere costs 5x more)
    # and Gaussian read noise: N(lam, lam + sigma_r^2) in one draw where the normal limit holds, Poisson + sigma_r z
    # where it does not (z is unused there otherwise)
    read2 = np.float32(by_severity(READ_NOISE, severity) ** 2)
    z = rng.standard_normal(img.shape, dtype=np.float32)
    electrons = lam + np.sqrt(lam + read2) * z
    few = lam < POISSON_EXACT_BELOW
    electrons[few] = rng.poisson(lam[few]).astype(np.float32) + np.sqrt(read2) * z[few]
    noisy_linear = np.maximum(electrons / np.float32(FULL_WELL), 0.0)
    return finish(np.power(noisy_linear, np.float32(1.0 / 2.2)))
