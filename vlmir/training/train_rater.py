"""Train the visibility head (:class:`vlmir.models.rater.VisibilityHead`) on the frozen encoder's features.

Targets (``target``):

- ``"engine"`` (default): the degradation engine's WResVLM-style visibility scores r in 1..5 (clean 5; combined
  severity c gives r = 5 - min(c, 4)), as a label-smoothed distribution centred on r (mass ``1 - smoothing`` on r,
  the rest on its neighbours);
- ``"severity"``: the continuous r* = 5 - 4 c / 5 (clean 5, then 4.2, 3.4, 2.6, 1.8, 1.0), as the two-hot
  distribution over the neighbouring levels whose mean is r*, mixed with ``smoothing`` of the engine-style
  neighbour spread. The engine's levels merge severities 4 and 5 (both "bad"); here every severity step moves the
  target, so the score keeps ordering images all the way down.

Loss: cross-entropy against that distribution plus ``score_weight * (sum_i i p_i - r)^2`` so the expected score
itself tracks the target r.

With ``rank_weight > 0`` the head also scores each sample's clean crop (target 5, the same window undegraded) and
a pairwise hinge ``rank_weight * relu(margin * (5 - r) - (score_clean - score_lq))`` asks the clean crop to score
above its degraded version by a margin that grows with the severity: WResVLM's use of the rating is to compare
versions of one scene, and this is that comparison.

With ``feature_bank: N`` the frozen encoder's features of N samples (degraded and clean crops) are computed once
(from their own sampler, seed + 3000) and every step draws its batch from them. The encoder and the degradation
engine dominate a step's cost, so the head then sees many more updates in the same time; the bank is a fixed
sample of the same distribution (N distinct crops). The bank is saved as ``feature_bank.pt`` in the run folder
with a fingerprint of what made it (N, seed, data config, a digest of the encoder's weights); a resumed run, or
a new run given ``feature_bank_file`` with a matching fingerprint, loads it instead of recomputing it (a file
that does not match is left alone and the bank is rebuilt into the run folder).

With ``bank_images: "photos"`` the bank holds whole photos instead (``PairSampler.sample_photos`` at the short
sides ``bank_short_sides``), each embedded over its views as the rater sees an image at inference, with its clean
version for the rank term: the single-crop features of the default ``"crops"`` bank are not what the head is
given at inference, the view-averaged features of a whole image are. Measured on the shipped recipe with 3000
photos (10.4 min to build): held-out Spearman -0.588 against -0.720 for the 16000-crop bank; 18 photos are too
few distinct scenes for a 3174-feature head, so the shipped rater keeps the crop bank.

With ``model.type_calibration`` and a ``calibration`` block, the per-type calibration of the score is fitted after
the steps (:mod:`vlmir.training.rater_calibration`; ``steps: 0`` with ``init_from`` fits it alone on a trained
head).

With ``model.severity`` (a :class:`~vlmir.models.severity.SeverityNet`'s arguments) and a ``severity`` block, the
head's severity network is trained first (:mod:`vlmir.training.train_severity`); its score then enters the
calibration. The head's own steps never update it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.io import from_numpy
from vlmir.models.rater import N_IMAGE_STATS, VisibilityHead, image_rater_features, image_statistics, rater_features
from vlmir.training.common import (
    Timer,
    after_step,
    cosine_lr,
    finish_run,
    init_from,
    load_or_build_bank,
    make_accelerator,
    resume_from,
    setup_logger,
    unwrap,
)
from vlmir.training.data import WHOLE_PHOTO_SIDES, DataConfig, PairSampler
from vlmir.training.rater_calibration import fit_rater_calibration
from vlmir.training.train_severity import train_severity

TARGETS = ("engine", "severity")


def severity_score(severity: torch.Tensor) -> torch.Tensor:
    """The continuous target r* = 5 - 4 c / 5 (B,) for combined severities c in 0..5 (0 clean)."""
    return 5.0 - 0.8 * severity.float().clamp(0, 5)


def two_hot_levels(r: torch.Tensor, smoothing: float = 0.2) -> torch.Tensor:
    """(B, 5) distributions over levels 1..5 whose mean is ``r`` in [1, 5] (two-hot on the neighbouring levels),
    mixed with ``smoothing`` of :func:`soft_levels`' neighbour spread around the nearest level."""
    r = r.float().clamp(1, 5)
    lo = r.floor().clamp(max=4)
    w = r - lo  # weight of level lo + 1
    t = torch.zeros(r.shape[0], 5, device=r.device)
    rows = torch.arange(r.shape[0], device=r.device)
    t[rows, (lo - 1).long()] += 1 - w
    t[rows, lo.long()] += w
    if smoothing > 0:
        t = (1 - smoothing) * t + smoothing * soft_levels(r.round(), 1.0)
    return t


def check_target(target: str) -> str:
    """``target`` when it is one of :data:`TARGETS`, else a ``ValueError`` naming them."""
    if target not in TARGETS:
        raise ValueError(f"unknown rater target {target!r}; valid: {', '.join(TARGETS)}")
    return target


def level_targets(batch: dict, target: str, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distribution (B, 5), score (B,))`` the head is trained towards, for ``target`` in :data:`TARGETS`."""
    if check_target(target) == "engine":
        r = batch["visibility"]
        return soft_levels(r, smoothing), r
    r = severity_score(batch["severity"]).to(batch["visibility"].device)
    return two_hot_levels(r, smoothing), r


def soft_levels(r: torch.Tensor, smoothing: float = 0.2) -> torch.Tensor:
    """(B, 5) target distributions over levels 1..5: ``1 - smoothing`` on r, ``smoothing`` split over neighbours."""
    idx = (r.long() - 1).clamp(0, 4)
    t = torch.zeros(r.shape[0], 5, device=r.device)
    for d in (-1, 1):
        nb = idx + d
        ok = (nb >= 0) & (nb <= 4)
        t[ok, nb[ok]] += 1.0
    t = t / t.sum(1, keepdim=True).clamp_min(1) * smoothing
    t[torch.arange(r.shape[0]), idx] = 1 - smoothing
    return t / t.sum(1, keepdim=True)


def _features(net: torch.nn.Module, encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        f = encoder(x)
        stats = (f["stats"] if "stats" in f else image_statistics(x)) if net.image_stats else None
        return rater_features(f, stats)


def feature_bank(head: VisibilityHead, encoder: torch.nn.Module, sampler: PairSampler, n: int, batch_size: int,
                 device: Any, progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of ``n`` samples: ``features`` and ``features_clean`` (n, F), ``visibility`` and ``severity`` (n,)."""
    from tqdm.auto import tqdm

    feats, clean, vis, sev = [], [], [], []
    for start in tqdm(range(0, n, batch_size), desc="feature bank", disable=not progress):
        b = sampler.sample(min(batch_size, n - start))
        feats.append(_features(head, encoder, b["lq"].to(device)))
        clean.append(_features(head, encoder, b["clean"].to(device)))
        vis.append(b["visibility"].to(device))
        sev.append(b["severity"].to(device))
    return {"features": torch.cat(feats), "features_clean": torch.cat(clean), "visibility": torch.cat(vis),
            "severity": torch.cat(sev)}


@torch.no_grad()
def photo_feature_bank(head: VisibilityHead, encoder: torch.nn.Module, sampler: PairSampler, n: int,
                       short_sides: Any, device: Any, progress: bool = True) -> dict[str, torch.Tensor]:
    """As :func:`feature_bank`, from ``n`` whole photos (``PairSampler.sample_photos``) embedded over their views
    exactly as :meth:`vlmir.models.embedded.EmbeddedRater.rate` does at inference (view-averaged features and
    statistics), instead of single training crops."""
    from tqdm.auto import tqdm

    def one(img: Any) -> torch.Tensor:
        x = from_numpy(img).to(device)
        return image_rater_features(encoder, x, head.image_stats)[0]

    feats, clean, vis, sev = [], [], [], []
    for _ in tqdm(range(n), desc="feature bank (photos)", disable=not progress):
        item = sampler.sample_photos(1, short_sides)[0]
        feats.append(one(item["lq"]))
        clean.append(one(item["clean"]))
        vis.append(float(item["visibility"]))
        sev.append(int(item["severity"]))
    return {"features": torch.stack(feats), "features_clean": torch.stack(clean),
            "visibility": torch.tensor(vis, device=device), "severity": torch.tensor(sev, device=device)}


def bank_fingerprint(encoder: torch.nn.Module, n: int, seed: int, data_cfg: dict[str, Any],
                     image_stats: bool) -> dict[str, Any]:
    """What a feature bank depends on: N, the sampler seed, the data config, the statistics flag and a SHA-1 of
    the encoder's weights (so a bank is never reused with another encoder). The view head's tensors are left out:
    neither the rater's features nor the view summaries go through it, so fitting a view head does not
    invalidate a bank of the same towers."""
    h = hashlib.sha1()
    for k, v in sorted(encoder.state_dict().items()):
        if k.startswith("view_head."):
            continue
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"n": int(n), "seed": int(seed), "data": json.loads(json.dumps(data_cfg, sort_keys=True)),
            "image_stats": bool(image_stats), "encoder_sha1": h.hexdigest()}


def rater_losses(head: torch.nn.Module, encoder: torch.nn.Module, batch: dict, *, smoothing: float = 0.2,
                 score_weight: float = 0.1, rank_weight: float = 0.0,
                 rank_margin: float = 0.25, target: str = "engine") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss on one batch: images (``lq``, ``clean``) or, from a :func:`feature_bank`, their ``features``;
    ``target`` in :data:`TARGETS` (module docstring)."""
    net = unwrap(head)

    def features(key: str) -> torch.Tensor:  # key: "lq" or "clean"
        if "features" in batch:  # a feature-bank batch
            return batch["features" if key == "lq" else "features_clean"]
        return _features(net, encoder, batch[key])

    logits = head(features("lq"))
    dist, r = level_targets(batch, target, smoothing)
    ce = torch.sum(-dist * F.log_softmax(logits, -1), dim=1).mean()
    score = VisibilityHead.score(logits)
    mse = (score - r).pow(2).mean()
    loss = ce + score_weight * mse
    logs = {"score_mae": (score - r).abs().mean().item()}
    if rank_weight > 0:
        score_clean = VisibilityHead.score(head(features("clean")))
        deg = r < 5  # the degraded samples (clean ones score 5 under both targets)
        hinge = F.relu(rank_margin * (5 - r) - (score_clean - score))[deg]
        rank = hinge.mean() if deg.any() else score.sum() * 0.0
        loss = loss + rank_weight * rank
        logs["rank"] = rank.item()
    return loss, {"loss": loss.item(), "ce": ce.item(), **logs}


def train(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False, export: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a rater training run; same outputs as :func:`vlmir.training.train_encoder.train`."""
    from tqdm.auto import tqdm

    from vlmir.models.embedded import load_encoder

    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "rater")
    acc = make_accelerator(cfg)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    encoder, enc_random = load_encoder(cfg.get("encoder"), allow_random=bool(cfg.get("allow_random_encoder", False)))
    if enc_random:
        log.info("WARNING: the encoder has random weights (test run)")
    encoder = encoder.to(acc.device).eval().requires_grad_(False)
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.setdefault("feature_dim", 2 * encoder.config["embed_dim"] + len(encoder.degradation_names)
                         + encoder.pooled_dim
                         + ((encoder.n_stats or N_IMAGE_STATS) if model_cfg.get("image_stats") else 0))
    head = VisibilityHead(**model_cfg)
    init_from(head, cfg, log)  # e.g. fit only the type calibration of a trained head
    steps, bs = int(cfg.get("steps", 400)), int(cfg.get("batch_size", 32))
    lr, warmup = float(cfg.get("lr", 2e-3)), int(cfg.get("warmup", 20))
    own_params = [p for name, p in head.named_parameters() if not name.startswith("severity.")]
    opt = torch.optim.AdamW(own_params, lr=lr, weight_decay=float(cfg.get("weight_decay", 0.01)))
    data_cfg = dict(cfg.get("data", {}))
    data_cfg.setdefault("crop", encoder.image_size)
    severity_logs: dict[str, Any] = {}
    if "severity" in cfg:
        if head.severity is None:
            raise ValueError("a severity block needs a rater head built with model.severity")
        severity_logs = train_severity(head.severity, {**cfg, "data": data_cfg}, out_dir, log, device=acc.device,
                                       resume=resume, progress=progress)
    sampler = PairSampler(DataConfig(**data_cfg), seed=seed + 2000 + acc.process_index)
    smoothing, score_weight = float(cfg.get("smoothing", 0.2)), float(cfg.get("score_weight", 0.1))
    rank_weight, rank_margin = float(cfg.get("rank_weight", 0.0)), float(cfg.get("rank_margin", 0.25))
    target = check_target(str(cfg.get("target", "engine")))  # before the (long) feature bank
    bank = None
    if int(cfg.get("feature_bank", 0)) > 0:
        n_bank, bank_seed = int(cfg["feature_bank"]), seed + 3000 + acc.process_index
        bank_sampler = PairSampler(DataConfig(**data_cfg), seed=bank_seed)
        own = out_dir / "feature_bank.pt"
        paths = ([Path(cfg["feature_bank_file"])] if cfg.get("feature_bank_file") else []) + [own]
        bank_images = str(cfg.get("bank_images", "crops"))
        if bank_images not in ("crops", "photos"):
            raise ValueError(f"bank_images must be 'crops' or 'photos', got {bank_images!r}")
        sides = [int(v) for v in cfg.get("bank_short_sides", WHOLE_PHOTO_SIDES)]
        made_of = data_cfg if bank_images == "crops" else {**data_cfg, "bank_images": bank_images,
                                                           "bank_short_sides": sides}
        fingerprint = bank_fingerprint(encoder, n_bank, bank_seed, made_of, head.image_stats)

        def build() -> dict[str, torch.Tensor]:
            if bank_images == "crops":
                return feature_bank(head, encoder, bank_sampler, n_bank, 64, acc.device, progress)
            return photo_feature_bank(head, encoder, bank_sampler, n_bank, sides, acc.device, progress)

        bank = load_or_build_bank(paths, fingerprint, build, own, log)
        bank = {k: v.to(acc.device) for k, v in bank.items()}
    ckpt_path = out_dir / "checkpoint.pt"
    step, spent = (resume_from(ckpt_path, model=head, optimizer=opt, sampler=sampler, log=log)
                   if resume else (0, 0.0))
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    head, opt = acc.prepare(head, opt)
    timer = Timer(spent)
    logs: dict[str, Any] = {}
    every, ck_every = int(cfg.get("log_every", 10)), int(cfg.get("checkpoint_every", 100))
    head.train()
    if head.severity is not None:  # trained in its own stage; its batch norms keep their statistics
        head.severity.eval()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="rater", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        if bank is not None:
            idx = torch.randint(0, bank["visibility"].shape[0], (bs,))
            batch = {k: v[idx.to(v.device)] for k, v in bank.items()}
        else:
            batch = sampler.sample(bs)
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, logs = rater_losses(head, encoder, batch, smoothing=smoothing, score_weight=score_weight,
                                  rank_weight=rank_weight, rank_margin=rank_margin, target=target)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        bar.set_postfix(loss=f"{logs['loss']:.3f}", mae=f"{logs['score_mae']:.2f}")
        after_step(step, steps, logs, every=every, ck_every=ck_every, log=log, timer=timer, acc=acc,
                   ckpt_path=ckpt_path, model=head, optimizer=opt, sampler=sampler)
    bar.close()
    logs.update(severity_logs)
    if "calibration" in cfg:  # after the steps: the per-type score calibration (vlmir.training.rater_calibration)
        logs.update(fit_rater_calibration(acc.unwrap_model(head), encoder, cfg, log, progress,
                                          save_to=out_dir / "calibration_data.pt"))
    return finish_run(steps, logs, architecture="VisibilityHead", cfg=cfg, out_dir=out_dir,
                      export=export, log=log, timer=timer, acc=acc, ckpt_path=ckpt_path,
                      model=head, optimizer=opt, sampler=sampler)
