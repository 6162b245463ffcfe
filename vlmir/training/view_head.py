"""Fit the encoder's :class:`~vlmir.models.encoder.ViewHead`: image-level type logits from an image's views.

The towers are trained on 128 px crops, one crop per sample; at inference an image is classified from up to nine
native-resolution views, and the view-averaged cosine logits dilute a degradation that only some views show (a few
raindrops, the edge of one cast shadow). This stage, run by ``python -m vlmir train encoder`` when the config has a
``view_head`` block, learns a linear correction of the averaged logits from the views' summary (their mean, max and
min), on whole images at the inference geometry:

1. draw whole degraded images from the training photos: with ``images: "photos"`` (the default) whole photos
   resized to a short side from ``short_sides`` (``PairSampler.sample_photos``), with ``"windows"`` the square
   training windows (``PairSampler.sample_images``); both degraded as the config's ``data`` block says
   (mixtures, severities, clean share). Whole photos are what the held-out protocol and the app classify; fitted
   on windows the head gained less than a point on the held-out photos (79.2% against 78.3%; on whole photos 83.3%);
2. run the frozen encoder over each image's views (:meth:`DegradationAwareEncoder.views`) and pool them
   (:meth:`ViewHead.pool`);
3. for each L2 weight in ``l2``, score the balanced top-1 (the mean of the eleven classes' recalls: ``clear``
   weighs as much as each type) by ``folds``-fold cross-validation grouped by photo (the head is fitted by
   full-batch L-BFGS on the soft-label cross-entropy, on the images of the other folds' photos) and keep the best
   weight. The real held-out photos are never looked at. The summaries are saved to ``view_summaries.pt`` in the
   run folder with a fingerprint (encoder weights, draw, data) and reused by a rerun that changes only the fit;
4. refit with that weight on all images.

The block (all keys optional)::

    "view_head": {"samples": 4200, "folds": 6, "l2": [1.0, 5.0, 20.0, 50.0, 200.0], "iterations": 300,
                  "images": "photos", "short_sides": [192, 224, 256, 256, 320, 384]}

``l2`` multiplies ``sum(W ** 2) / n``: with n samples it is the usual logistic-regression penalty 1 / (2 C).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmir.io import from_numpy
from vlmir.models.encoder import DegradationAwareEncoder, ViewHead
from vlmir.training.common import load_or_build_bank, stage_options
from vlmir.training.data import WHOLE_PHOTO_SIDES, DataConfig, PairSampler
from vlmir.training.train_rater import bank_fingerprint

DEFAULTS = {"samples": 4200, "folds": 6, "l2": [1.0, 5.0, 20.0, 50.0, 200.0], "iterations": 300, "images": "photos",
            "short_sides": list(WHOLE_PHOTO_SIDES)}


@torch.no_grad()
def view_summaries(encoder: DegradationAwareEncoder, images: Iterable[dict], progress: bool = True,
                   desc: str = "view summaries", total: int | None = None) -> dict[str, torch.Tensor]:
    """``z`` (n, in_dim) view summaries, ``base`` (n, K) view-averaged cosine logits and ``target`` (n, K) of
    whole images (dicts with ``lq`` (H, W, 3) and ``target``, as from ``PairSampler.sample_images``; an iterator
    is consumed one image at a time)."""
    from tqdm.auto import tqdm

    head = encoder.view_head
    if head is None:
        raise ValueError("the encoder has no view head: build it with view_head=True")
    dev = next(encoder.parameters()).device
    zs, base, target = [], [], []
    for item in tqdm(images, desc=desc, total=total, disable=not progress):
        x = from_numpy(item["lq"]).to(dev)
        views = encoder.views(x)
        f = encoder.forward_features(views)
        logits = encoder.degradation_logits(f["degradation"])
        zs.append(head.pool(logits, f["degradation"], f.get("stats"), encoder.view_holes(views)))
        base.append(logits.mean(0))
        target.append(torch.as_tensor(item["target"]))
    return {"z": torch.stack(zs), "base": torch.stack(base), "target": torch.stack(target).to(dev)}


def fit(head: ViewHead, data: dict[str, torch.Tensor], l2: float, iterations: int = 300) -> float:
    """Fit ``head`` on ``data`` (from :func:`view_summaries`): sets ``shift``/``scale`` to the summaries' mean and
    standard deviation, then minimises ``CE(base + W z + b, target) + l2 * sum(W ** 2) / n`` by L-BFGS from zero.
    Returns the loss at the end of the fit."""
    z, base, target = data["z"], data["base"], data["target"]
    if z.shape[0] < 2:
        raise ValueError(f"fitting a view head needs at least 2 images, got {z.shape[0]}")
    head.shift.copy_(z.mean(0))
    head.scale.copy_(z.std(0).clamp_min(1e-6))
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
    params = list(head.linear.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")
    n = z.shape[0]

    def objective() -> torch.Tensor:
        logits = base + head.correction(z)
        return torch.sum(-target * F.log_softmax(logits, -1), 1).mean() + l2 * head.linear.weight.pow(2).sum() / n

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)  # returns the loss at the start; the end's is evaluated below
    with torch.no_grad():
        return float(objective())


@torch.no_grad()
def accuracy(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """On single-label images (mixtures left out): ``top1`` and ``balanced`` top-1 (the mean over the classes
    present of each class's recall, so ``clear`` weighs as much as each type)."""
    single = target.max(1).values > 0.99
    label = target.argmax(1)[single]
    if not len(label):
        return {"top1": 0.0, "balanced": 0.0}
    hit = (logits.argmax(1)[single] == label).float()
    recall = torch.stack([hit[label == c].mean() for c in label.unique()])
    return {"top1": float(hit.mean()), "balanced": float(recall.mean())}


@torch.no_grad()
def top1(head: ViewHead, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """:func:`accuracy` of the fitted head and (``*_plain``) of the plain averaged logits on ``data``."""
    fitted = accuracy(data["base"] + head.correction(data["z"]), data["target"])
    plain = accuracy(data["base"], data["target"])
    return {**fitted, **{f"{k}_plain": v for k, v in plain.items()}}


def photo_folds(photos: list[str], folds: int, seed: int) -> torch.Tensor:
    """Fold index (n,) of each image: all images of one photo in one fold (photos dealt to the folds in a seeded
    random order); procedural images dealt in turn."""
    names = sorted(set(photos) - {"procedural"})
    if len(names) < folds:
        raise ValueError(f"view_head.folds {folds} needs at least as many photos, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {name: int(order[j]) % folds for j, name in enumerate(names)}
    return torch.tensor([fold_of[p] if p in fold_of else i % folds for i, p in enumerate(photos)])


def fit_view_head(encoder: DegradationAwareEncoder, cfg: dict[str, Any], log: logging.Logger,
                  progress: bool = True, out_dir: str | Path | None = None) -> dict[str, float]:
    """The whole stage (module docstring) on ``encoder`` in place; returns the values to log."""
    opts = stage_options(cfg, "view_head", DEFAULTS)
    l2s = [float(v) for v in opts["l2"]]
    if not l2s or min(l2s) < 0:
        raise ValueError(f"view_head.l2 must list weights >= 0, got {opts['l2']}")
    if opts["images"] not in ("photos", "windows"):
        raise ValueError(f"view_head.images must be 'photos' or 'windows', got {opts['images']!r}")
    folds, n = int(opts["folds"]), int(opts["samples"])
    if folds < 2:
        raise ValueError(f"view_head.folds must be >= 2, got {folds}")
    sides = [int(v) for v in opts["short_sides"]]
    seed = int(cfg.get("seed", 0))
    encoder.eval()
    data_cfg = dict(cfg.get("data", {}))
    sampler = PairSampler(DataConfig(**data_cfg), seed=seed + 5000)

    def build() -> dict[str, torch.Tensor]:
        photos: list[str] = []

        def images() -> Iterator[dict]:  # drawn as they are summarised
            for _ in range(n):
                item = (sampler.sample_photos(1, sides)[0] if opts["images"] == "photos"
                        else sampler.sample_images(1)[0])
                photos.append(item["photo"])
                yield item

        summaries = view_summaries(encoder, images(), progress, desc="view head", total=n)
        return {**summaries, "fold": photo_folds(photos, folds, seed)}

    # the summaries depend on the frozen encoder and the draw only: saved, and reused by a rerun that only
    # changes the L2 weights or the fit (the rater's feature-bank mechanism)
    head_holes = encoder.view_head.n_holes if encoder.view_head is not None else 0
    fingerprint = bank_fingerprint(encoder, n, seed + 5000, {**data_cfg, "images": opts["images"],
                                   "short_sides": sides, "folds": folds,
                                   **({"holes": head_holes} if head_holes else {})}, encoder.image_stats)
    saved = Path(out_dir) / "view_summaries.pt" if out_dir is not None else None
    if saved is None:
        data = build()
    else:
        data = load_or_build_bank([saved], fingerprint, build, saved, log)
    fold = data.pop("fold")
    head = encoder.view_head
    scores = {}
    for l2 in l2s:  # photo-grouped cross-validation: scored on photos the fit did not see
        pred = torch.empty_like(data["base"])
        for k in range(folds):
            fit(head, {key: v[fold != k] for key, v in data.items()}, l2, int(opts["iterations"]))
            with torch.no_grad():
                pred[fold == k] = data["base"][fold == k] + head.correction(data["z"][fold == k])
        scores[l2] = {**accuracy(pred, data["target"]),
                      **{f"{k}_plain": v for k, v in accuracy(data["base"], data["target"]).items()}}
        log.info(f"view head l2={l2:g}: cross-validated balanced top-1 {scores[l2]['balanced']:.3f}, top-1 "
                 f"{scores[l2]['top1']:.3f} (plain mean of views {scores[l2]['balanced_plain']:.3f}, "
                 f"{scores[l2]['top1_plain']:.3f})")
    best = max(l2s, key=lambda v: (scores[v]["balanced"], v))  # ties: the stronger penalty
    loss = fit(head, data, best, int(opts["iterations"]))
    for p in head.parameters():
        p.requires_grad_(False)
    out = {"view_head_l2": best, "view_head_images": n, "view_head_loss": loss,
           **{f"view_head_cv_{k}": v for k, v in scores[best].items()}}
    log.info(f"view head: l2 {best:g} chosen, refitted on {n} images (loss {loss:.3f})")
    return out
