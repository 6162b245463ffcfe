"""``motion-blurry``: camera-shake blur with random trajectory kernels.

The kernel is the image of a random camera trajectory, as in Boracchi & Foi, "Modeling the Performance of Image
Restoration From Motion Blur" (TIP 2012) and the DeblurGAN generator (Kupyn et al., CVPR 2018): a 2-D random walk
whose velocity has inertia (each step keeps most of the previous velocity, adds a Gaussian perturbation and, with
a small probability, an abrupt jerk), sampled at sub-pixel resolution and splatted bilinearly onto the kernel grid.
The trajectory is drawn in relative units and scaled so that its extent is a fraction of the image's shorter side
that grows with severity; the same seed gives the same shake, scaled, on any image size, and a higher severity is
the same shake over a longer exposure. The kernel sums to 1 (brightness preserved); the image is convolved with
reflected borders.
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmir.degradations._common import by_severity, finish, min_side

NAME = "motion-blurry"
# trajectory extent as a fraction of the shorter image side, by severity 1..5 (about 4 ... 20 px at 256 px)
EXTENT = (0.016, 0.03, 0.045, 0.06, 0.08)
N_STEPS = 96  # samples along the trajectory
INERTIA = 0.85  # velocity kept from step to step
P_JERK = 0.04  # probability of an abrupt change of direction at a step


def trajectory(rng: np.random.Generator, n_steps: int = N_STEPS) -> np.ndarray:
    """A camera-shake path: ``(n_steps, 2)`` float64 points, centred, with max extent 1 (relative units)."""
    angle = rng.uniform(0, 2 * np.pi)
    v = np.array([np.cos(angle), np.sin(angle)])
    perturb = rng.standard_normal((n_steps, 2)) * 0.35
    jerks = (rng.random(n_steps) < P_JERK)[:, None] * rng.standard_normal((n_steps, 2)) * 1.5
    pts = np.zeros((n_steps, 2))
    p = np.zeros(2)
    for i in range(n_steps):  # 96 steps of a 2-vector: negligible cost
        v = INERTIA * v + (1 - INERTIA) * perturb[i] * 3.0 + jerks[i]
        p = p + v
        pts[i] = p
    pts -= (pts.max(0) + pts.min(0)) / 2
    ext = float(np.abs(pts).max()) * 2
    return pts / max(ext, 1e-9)


def kernel_from_trajectory(pts: np.ndarray, extent_px: float) -> np.ndarray:
    """Rasterise a relative trajectory (``(N, 2)``, extent 1) at ``extent_px`` pixels.

    Returns:
        float32 ``(k, k)`` kernel, k odd, summing to 1.
    """
    k = int(np.ceil(extent_px)) + 3
    k += 1 - k % 2
    c = (k - 1) / 2
    xy = pts * extent_px + c  # (N, 2) pixel coordinates
    x0 = np.floor(xy[:, 0]).astype(int)
    y0 = np.floor(xy[:, 1]).astype(int)
    fx = xy[:, 0] - x0
    fy = xy[:, 1] - y0
    ker = np.zeros((k, k), np.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(ker, (np.clip(y0 + dy, 0, k - 1), np.clip(x0 + dx, 0, k - 1)), wgt)
    return (ker / ker.sum()).astype(np.float32)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolve ``img`` with a random shake kernel of extent ``EXTENT[severity - 1] * min(H, W)``.

    Args:
        img: float32 ``(H, W, 3)`` in [0, 1].
        severity: 1..5.
        rng: the seeded generator.
    Returns:
        float32 ``(H, W, 3)`` in [0, 1].
    """
    pts = trajectory(rng)
    extent = max(by_severity(EXTENT, severity) * min_side(img) * rng.uniform(0.9, 1.1), 2.0)
    ker = kernel_from_trajectory(pts, extent)
    # filter2D correlates; flip the kernel to convolve (matters for asymmetric kernels)
    out = cv2.filter2D(img, -1, ker[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT)
    return finish(out)
