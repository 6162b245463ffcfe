"""Fit the rater's :class:`~vlmir.models.rater.TypeCalibration`: one linear map of the score per degradation type.

The visibility head is trained on crops against the engine's severities, and within each type its score orders
severities well (held-out Spearman -0.8 to -0.98 on most types). Across types it does not: each degradation moves
the features by its own amount per severity step, so on whole photos mild blur scores as poor and mild raindrops
as clear, and the pooled ranking suffers. This stage maps the score per type, ``r' = sum_t q_t (a_t + b_t r)``,
with ``q`` the encoder's type probabilities (its view head), at the inference geometry (with a severity network in
the head, ``r' = sum_t q_t (a_t + b_t r + c_t s)``, s its view-averaged score):

1. draw ``samples`` whole training photos (``PairSampler.sample_photos`` at ``short_sides``), degraded as the
   config's ``data`` block says;
2. rate each as the embedded rater does (view-averaged features, the frozen head) and read ``q`` (and ``s``);
3. for each ridge weight in ``ridge``, fit ``a, b`` (and ``c``) by least squares against ``r* = 5 - 4 c / 5`` (c the
   combined severity, 0 clean), with ``ridge * n`` pulling toward the identity (a = 0, b = 1, c = 0), by
   ``folds``-fold cross-validation grouped by photo; keep the weight with the best out-of-fold Spearman
   correlation between severity and r' (the validation's measure);
4. refit with it on all images.

A rater config with ``model.type_calibration: K`` (the encoder's number of names) and a ``calibration`` block runs
it after the steps; ``steps: 0`` with ``init_from`` (``init_skip: ["calibration"]``) fits it alone on a trained
head::

    "calibration": {"samples": 2000, "folds": 6, "ridge": [0.01, 0.1, 1.0, 10.0],
                    "short_sides": [192, 224, 256, 256, 320, 384]}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmir.io import from_numpy
from vlmir.models.rater import calibrated_score, rater_outputs
from vlmir.training.common import stage_options
from vlmir.training.data import WHOLE_PHOTO_SIDES, DataConfig, PairSampler

DEFAULTS = {"samples": 2000, "folds": 6, "ridge": [0.01, 0.1, 1.0, 10.0], "short_sides": list(WHOLE_PHOTO_SIDES)}


def calibration_design(r: torch.Tensor, q: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares design of ``r' = sum_t q_t a_t + sum_t q_t r b_t [+ sum_t q_t s c_t]``: ``[q, q * r]`` (n, 2K),
    or ``[q, q * r, q * s]`` (n, 3K) with severity scores ``s``."""
    cols = [q, q * r[:, None]] + ([q * s[:, None]] if s is not None else [])
    return torch.cat(cols, dim=1)


def fit_ab(r: torch.Tensor, q: torch.Tensor, target: torch.Tensor, ridge: float,
           s: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``a, b`` (K,) minimising ``|design (a, b) - target|^2 + ridge * n * |(a, b) - (0, 1)|^2``; with severity
    scores ``s``, ``a, b, c`` with ``c`` pulled toward 0."""
    x = calibration_design(r.double(), q.double(), None if s is None else s.double())
    k = q.shape[1]
    prior = torch.cat([torch.zeros(k), torch.ones(k)] + ([torch.zeros(k)] if s is not None else [])).double()
    n, m = x.shape
    w = torch.linalg.solve(x.t() @ x + ridge * n * torch.eye(m, dtype=torch.float64),
                           x.t() @ target.double() + ridge * n * prior)
    return tuple(part.float() for part in w.split(k))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@torch.no_grad()
def fit_rater_calibration(head: torch.nn.Module, encoder: torch.nn.Module, cfg: dict[str, Any],
                          log: logging.Logger, progress: bool = True,
                          save_to: Path | None = None) -> dict[str, float]:
    """The whole stage (module docstring) on ``head`` (a :class:`VisibilityHead` with ``type_calibration``) in
    place, with the frozen ``encoder``; returns the values to log. ``save_to`` keeps what the fit was made from
    (``r``, ``q``, ``s``, ``severity``, ``photos``, ``folds``), for analysis and refits without a redraw."""
    from tqdm.auto import tqdm

    from vlmir.training.view_head import photo_folds  # (view_head imports train_rater, which imports this)

    cal = getattr(head, "calibration", None)
    if cal is None:
        raise ValueError("a calibration block needs a rater head built with model.type_calibration = K")
    if cal.a.shape[0] != len(encoder.degradation_names):
        raise ValueError(f"model.type_calibration is {cal.a.shape[0]}, the encoder has "
                         f"{len(encoder.degradation_names)} names")
    opts = stage_options(cfg, "calibration", DEFAULTS)
    ridges = [float(v) for v in opts["ridge"]]
    n, folds = int(opts["samples"]), int(opts["folds"])
    if not ridges or min(ridges) < 0 or n < 2 or folds < 2:
        raise ValueError(f"calibration: needs ridge weights >= 0, samples >= 2 and folds >= 2, got {opts}")
    seed = int(cfg.get("seed", 0))
    dev = next(head.parameters()).device
    sampler = PairSampler(DataConfig(**cfg.get("data", {})), seed=seed + 6000)
    head.eval()
    cal.a.zero_()
    cal.b.fill_(1.0)
    with_s = cal.c is not None
    if with_s:
        cal.c.zero_()
    rs, qs, ss, sev, photos = [], [], [], [], []
    for _ in tqdm(range(n), desc="calibration", disable=not progress):
        item = sampler.sample_photos(1, [int(v) for v in opts["short_sides"]])[0]
        logits, q, s_img = rater_outputs(head, encoder, from_numpy(item["lq"]).to(dev))
        rs.append(float(head.score(logits)[0]))
        qs.append(q[0].cpu())
        ss.append(float(s_img[0]) if with_s else 0.0)
        sev.append(float(item["severity"]))
        photos.append(item["photo"])
    r, q, c = torch.tensor(rs), torch.stack(qs), np.array(sev)
    s = torch.tensor(ss) if with_s else None

    def sub(mask: torch.Tensor) -> torch.Tensor | None:  # the severity scores of a fold, when there are any
        return None if s is None else s[mask]

    target = 5.0 - 0.8 * torch.from_numpy(c).float()
    fold = photo_folds(photos, folds, seed)
    if save_to is not None:
        torch.save({"r": r, "q": q, "s": s, "severity": torch.from_numpy(c), "photos": photos,
                    "folds": torch.as_tensor(fold)}, save_to)
    before = _spearman(c, r.numpy())
    scores = {}
    for ridge in ridges:
        pred = torch.empty_like(r)
        for k in range(folds):
            w = fit_ab(r[fold != k], q[fold != k], target[fold != k], ridge, sub(fold != k))
            pred[fold == k] = calibrated_score(r[fold == k], q[fold == k], *w, s=sub(fold == k))
        scores[ridge] = _spearman(c, pred.numpy())
        log.info(f"rater calibration ridge={ridge:g}: cross-validated Spearman {scores[ridge]:.3f} "
                 f"(uncalibrated {before:.3f})")
    best = min(ridges, key=lambda v: (scores[v], -v))  # most negative; ties: the stronger ridge
    w = fit_ab(r, q, target, best, s)
    cal.a.copy_(w[0].to(dev))
    cal.b.copy_(w[1].to(dev))
    if with_s:
        cal.c.copy_(w[2].to(dev))
    fitted = _spearman(c, cal(r.to(dev), q.to(dev), None if s is None else s.to(dev)).cpu().numpy())
    log.info(f"rater calibration: ridge {best:g} chosen, refitted on {n} images; Spearman on them "
             f"{before:.3f} -> {fitted:.3f}")
    return {"calibration_ridge": best, "calibration_images": n, "calibration_cv_spearman": scores[best],
            "calibration_spearman_before": before, "calibration_spearman_after": fitted}
