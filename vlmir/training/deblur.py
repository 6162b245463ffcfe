"""Fit the restorer's deblurring stage (:class:`~vlmir.models.restorer.RingFilter`) on motion-blurred photos.

The feed-forward restorer returns camera-shake blur nearly unchanged: the engine's kernels are random
trajectories of random direction, and a few-block network trained for minutes does not learn to invert them (it
learns that changing a blurred image costs more than it gains). The least-squares *isotropic* linear filter for
that family of kernels is not the identity, though: averaged over directions, what a blurred image lost is a
radially symmetric share of its mid frequencies. This stage finds that filter, the one thing a linear method can
do without knowing the kernel:

1. draw ``images`` whole training photos (``PairSampler.sample_photos`` at ``short_sides``), each blurred by the
   engine's ``motion-blurry`` alone at a severity from ``severities``;
2. restore each with the trained network as it runs at inference (encoder conditioning, predicted type's prior),
   the stage itself still the identity;
3. sample ``pixels`` pixels per image away from the borders and solve for the R + 1 ring weights ``w`` minimising
   ``sum_i |sum_j w_j ring_j(y_i) - clean_i|^2 / MSE_i + ridge * n * |w - e_0|^2`` over all colour channels: each
   image's squared error is divided by its error before the stage (the first-order form of the mean PSNR over
   images), and the ridge pulls toward the identity e_0 (n: the weighted row count).

The embedded restorer then applies ``y + p * (ring(y) - y)`` with ``p`` the encoder's probability of
``motion-blurry`` (:meth:`vlmir.models.embedded.EmbeddedRestorer.deblur_weight`). A restorer config with
``model.deblur_radius: R`` and a ``deblur`` block runs it after the steps; with ``steps: 0`` and ``init_from``
(``init_skip: ["deblur"]``) it fits the stage alone on a trained network::

    "deblur": {"images": 480, "severities": [1, 2, 3, 4, 5], "short_sides": [192, 224, 256, 256, 320, 384],
               "pixels": 6000, "ridge": 0.0001}
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vlmir.constants import DEGRADATIONS
from vlmir.io import from_numpy
from vlmir.training.common import stage_options
from vlmir.training.data import WHOLE_PHOTO_SIDES, DataConfig, PairSampler

DEFAULTS = {"images": 480, "severities": [1, 2, 3, 4, 5], "short_sides": list(WHOLE_PHOTO_SIDES), "pixels": 6000,
            "ridge": 1e-4}


@torch.no_grad()
def fit_deblur(net: torch.nn.Module, encoder: torch.nn.Module, cfg: dict[str, Any], log: logging.Logger,
               progress: bool = True) -> dict[str, float]:
    """The whole stage (module docstring) on ``net`` (a :class:`ConditionalRestorer` with ``deblur_radius``) in
    place, conditioned by the frozen ``encoder``; returns the values to log."""
    from tqdm.auto import tqdm

    from vlmir.models.embedded import BLUR, EmbeddedRestorer  # BLUR: the type the restorer weighs the stage by

    ring = getattr(net, "deblur", None)
    if ring is None:
        raise ValueError("a deblur block needs a restorer built with model.deblur_radius >= 1")
    opts = stage_options(cfg, "deblur", DEFAULTS)
    n, n_px, ridge = int(opts["images"]), int(opts["pixels"]), float(opts["ridge"])
    if n < 1 or n_px < 1 or ridge < 0:
        raise ValueError(f"deblur: images and pixels must be >= 1 and ridge >= 0, got {n}, {n_px}, {ridge}")
    seed = int(cfg.get("seed", 0))
    data_cfg = {k: v for k, v in cfg.get("data", {}).items() if k in ("photos", "p_highlights")}
    sampler = PairSampler(DataConfig(**data_cfg, p_clean=0.0, p_mixture=0.0, p_procedural=0.0,
                                     severities=tuple(opts["severities"]),
                                     type_weights={t: float(t == BLUR) for t in DEGRADATIONS}), seed=seed + 7000)
    ring.weights.zero_()
    ring.weights[0] = 1.0  # the identity while the network's outputs are collected
    net.eval()
    restorer = EmbeddedRestorer(encoder, net, random_weights=False)
    rng = np.random.default_rng(seed + 7000)
    r, k = ring.radius, ring.radius + 1
    ata = torch.zeros(k, k, dtype=torch.float64)
    atb = torch.zeros(k, dtype=torch.float64)
    forms, rows = [], 0.0
    for _ in tqdm(range(n), desc="deblur", disable=not progress):
        item = sampler.sample_photos(1, [int(s) for s in opts["short_sides"]])[0]
        lq, clean = from_numpy(item["lq"]), from_numpy(item["clean"])
        y = restorer.restore(lq)
        resp = ring.ring_responses(y)[0][..., r:-r, r:-r]  # (3, K, h, w)
        a = resp.permute(0, 2, 3, 1).reshape(-1, k).double()
        b = clean[0][..., r:-r, r:-r].reshape(-1).double()
        # the image's squared error as a quadratic form in w, over all its interior pixels: reported before/after
        forms.append((a.t() @ a, a.t() @ b, float(b @ b), a.shape[0]))
        idx = torch.from_numpy(rng.choice(a.shape[0], min(n_px, a.shape[0]), replace=False))
        # rows weighted by 1 / MSE of the image: the first-order form of the mean PSNR over images (NAFNet's PSNR
        # loss), so a badly blurred image does not outweigh the mild ones
        wgt = 1.0 / max(float((y - clean).pow(2).mean()), 1e-8)
        ata += wgt * (a[idx].t() @ a[idx])
        atb += wgt * (a[idx].t() @ b[idx])
        rows += wgt * len(idx)
    e0 = torch.zeros(k, dtype=torch.float64)
    e0[0] = 1.0
    w = torch.linalg.solve(ata + ridge * rows * torch.eye(k, dtype=torch.float64), atb + ridge * rows * e0)
    ring.weights.copy_(w.float())

    def mean_psnr(v: torch.Tensor) -> float:
        mse = [max(float(v @ g @ v - 2 * v @ h + c) / m, 1e-10) for g, h, c, m in forms]
        return float(np.mean(10 * np.log10(1.0 / np.array(mse))))

    before, after = mean_psnr(e0), mean_psnr(w)
    log.info(f"deblur: ring weights {[round(float(v), 4) for v in w]} fitted on {n} blurred photos; "
             f"PSNR on them (away from the borders) {before:.2f} -> {after:.2f} dB")
    return {"deblur_images": n, "deblur_psnr_before": before, "deblur_psnr_after": after,
            "deblur_gain": after - before}
