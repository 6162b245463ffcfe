"""Train the rater's severity network (:class:`vlmir.models.severity.SeverityNet`), a stage of a rater run.

A rater config with ``model.severity`` (the network's constructor arguments) and a ``severity`` block trains it,
before the head's steps and the calibration (:mod:`vlmir.training.train_rater`). The network lives in the head
(``head.severity``) and is exported with it.

Data: a *crop bank* of ``bank`` (degraded, clean) crop pairs drawn by :class:`~vlmir.training.data.PairSampler`
from the config's ``data`` block, in ``bank_workers`` processes (chunk k from seed ``seed + 7000 + k``), kept as
uint8 and saved as ``severity_bank.pt`` in the run folder with a fingerprint of what made it; a resumed run loads
it. The engine costs about 16 ms a sample and a step of the network about 7 ms a sample, so drawing each batch
anew would triple the run.

Each pair keeps the side of the window it was cut from (a network with ``scale`` reads it: the engine sizes the
spatial degradations to the image) and the crop's share of its window's change. The severity c a crop is trained
toward is its window's combined severity, except for crops of the types that cover part of an image (raindrops,
cast shadows, holes: :data:`LOCAL_TYPES`), whose severity is scaled by that share (at most twice, then clamped to 5).
About 28% of the 128 px crops of a shadowed window miss the shadow and 17% of an uncompleted one miss every hole;
trained toward the window's severity they taught the network that clean-looking content is degraded. Averaged over
views that cover the image, the shares average to about 1.

Loss per batch of B pairs (random horizontal and vertical flips): Huber loss of the degraded crops' scores s
against ``r* = 5 - 4 c / 5``, plus ``clean_weight`` times that of the clean crops against 5, plus ``rank_weight``
times the hinge ``relu(rank_margin * c - (s_clean - s))`` over the degraded pairs: the same content must score
higher clean, by more the worse its degradation.

Block (defaults)::

    "severity": {"steps": 4000, "batch_size": 48, "lr": 0.002, "warmup": 100, "weight_decay": 0.01,
                 "bank": 24000, "bank_workers": 2, "clean_weight": 0.5, "rank_weight": 1.0, "rank_margin": 0.3,
                 "checkpoint_every": 500}

Resumable: ``severity_checkpoint.pt`` (network, optimiser, step, batch-draw generator, torch RNG, wall time)
every ``checkpoint_every`` steps; a finished stage is not rerun.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.training.common import Timer, cosine_lr, load_or_build_bank, resume_from, save_checkpoint, stage_options
from vlmir.training.data import DataConfig, PairSampler

DEFAULTS = {"steps": 4000, "batch_size": 48, "lr": 0.002, "warmup": 100, "weight_decay": 0.01, "bank": 24000,
            "bank_workers": 2, "clean_weight": 0.5, "rank_weight": 1.0, "rank_margin": 0.3, "checkpoint_every": 500}
CHUNK = 500  # crop pairs per bank chunk (one sampler seed each)
# types that cover part of an image: a crop's severity is scaled by its share of the window's change
LOCAL_TYPES = ("raindrop", "shadowed", "uncompleted")
MAX_SHARE = 2.0  # a crop counts at most twice its window's severity (then clamped to 5)
BANK_FIELDS = ("lq", "clean", "severity", "window", "share")


def crop_severity(severity: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """The severity c (B,) a crop is trained toward: its window's combined severity times the crop's share of the
    window's change (capped at :data:`MAX_SHARE`), clamped to [0, 5]; ``share`` is 1 except for crops of
    :data:`LOCAL_TYPES` alone, so a crop that missed the shadow, the drops or the holes counts as clean."""
    return (severity.float() * share.float().clamp(0, MAX_SHARE)).clamp(0, 5)


def _bank_chunk(args: tuple[dict, int, int]) -> dict[str, torch.Tensor]:
    data_cfg, seed, n = args
    torch.set_num_threads(1)
    batch = PairSampler(DataConfig(**data_cfg), seed=seed).sample(n)
    local = torch.tensor([bool(t) and all(name in LOCAL_TYPES for name in t) for t in batch["types"]])
    return {"lq": _to_uint8(batch["lq"]), "clean": _to_uint8(batch["clean"]),
            "severity": batch["severity"].to(torch.int8), "window": batch["window"].to(torch.int16),
            "share": torch.where(local, batch["share"], torch.ones_like(batch["share"]))}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def crop_bank(data_cfg: dict[str, Any], n: int, seed: int, workers: int = 1,
              progress: bool = True) -> dict[str, torch.Tensor]:
    """``n`` (degraded, clean) crop pairs as uint8 ``lq`` and ``clean`` (n, 3, S, S) and int8 ``severity`` (n,):
    chunks of :data:`CHUNK` pairs, chunk k drawn from seed ``seed + k``, so the bank is the same for any
    ``workers``."""
    from tqdm.auto import tqdm

    if n < 1 or workers < 1:
        raise ValueError(f"a crop bank needs n >= 1 and workers >= 1, got n={n}, workers={workers}")
    jobs = [(data_cfg, seed + k, min(CHUNK, n - k * CHUNK)) for k in range((n + CHUNK - 1) // CHUNK)]
    if workers == 1:
        parts = [_bank_chunk(j) for j in tqdm(jobs, desc="severity bank", disable=not progress)]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(tqdm(pool.imap(_bank_chunk, jobs), total=len(jobs), desc="severity bank",
                              disable=not progress))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def severity_losses(net: torch.nn.Module, lq: torch.Tensor, clean: torch.Tensor, severity: torch.Tensor, *,
                    clean_weight: float, rank_weight: float, rank_margin: float,
                    side: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of the module docstring on float crops ``lq``, ``clean`` (B, 3, S, S) in [0, 1] with severities
    (B,) (0 clean; :func:`crop_severity`), and for a network with ``scale`` the sides (B,) of their windows."""
    b = lq.shape[0]
    both = torch.cat([lq, clean])
    s = net(both) if side is None else net(both, side=torch.cat([side, side]).float())
    s_lq, s_clean = s[:b], s[b:]
    c = severity.float()
    target = 5.0 - 0.8 * c.clamp(0, 5)
    fit = F.smooth_l1_loss(s_lq, target)
    fit_clean = F.smooth_l1_loss(s_clean, torch.full_like(s_clean, 5.0))
    deg = c > 0
    rank = F.relu(rank_margin * c - (s_clean - s_lq))[deg].mean() if deg.any() else s.sum() * 0.0
    loss = fit + clean_weight * fit_clean + rank_weight * rank
    logs = {"severity_loss": loss.item(), "severity_mae": (s_lq - target).abs().mean().item(),
            "severity_rank": rank.item()}
    return loss, logs


def train_severity(net: torch.nn.Module, cfg: dict[str, Any], out_dir: Path, log: logging.Logger, *,
                   device: torch.device, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """The whole stage (module docstring) on ``net`` in place; returns the values to log."""
    from tqdm.auto import tqdm

    opts = stage_options(cfg, "severity", DEFAULTS)
    steps, bs, n_bank = int(opts["steps"]), int(opts["batch_size"]), int(opts["bank"])
    if steps < 0 or bs < 1 or n_bank < bs:
        raise ValueError(f"severity: needs steps >= 0, batch_size >= 1 and bank >= batch_size, got {opts}")
    seed = int(cfg.get("seed", 0))
    data_cfg = dict(cfg.get("data", {}))
    data_cfg.setdefault("crop", 128)
    fingerprint = {"n": n_bank, "seed": seed + 7000, "chunk": CHUNK, "data": data_cfg, "fields": list(BANK_FIELDS),
                   "local_types": list(LOCAL_TYPES)}
    bank_path = out_dir / "severity_bank.pt"
    bank = load_or_build_bank(
        [bank_path], fingerprint, lambda: crop_bank(data_cfg, n_bank, seed + 7000, int(opts["bank_workers"]), progress),
        bank_path, log, what="severity bank")
    opt = torch.optim.AdamW(net.parameters(), lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]))
    ckpt_path = out_dir / "severity_checkpoint.pt"
    # the batch draws come from their own generator, checkpointed as the "sampler" so a resume continues them
    generator = torch.Generator().manual_seed(seed + 7500)
    start, spent = (resume_from(ckpt_path, model=net, optimizer=opt, sampler=generator, log=log)
                    if resume else (0, 0.0))
    timer = Timer(spent)
    ck_every = int(opts["checkpoint_every"])
    weights = {k: float(opts[k]) for k in ("clean_weight", "rank_weight", "rank_margin")}
    logs: dict[str, float] = {}

    def save(at: int) -> None:
        save_checkpoint(ckpt_path, model=net, optimizer=opt, step=at, sampler_state=generator.get_state(),
                        extra={"wall_s": timer.elapsed()})

    net.to(device).train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="severity", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, float(opts["lr"]), int(opts["warmup"]))
        idx = torch.randint(0, n_bank, (bs,), generator=generator)
        flips = torch.rand(2, generator=generator)
        lq, clean = (bank[k][idx].to(device).float() / 255.0 for k in ("lq", "clean"))
        dims = [d for d, f in ((-1, flips[0]), (-2, flips[1])) if f < 0.5]
        if dims:
            lq, clean = lq.flip(dims), clean.flip(dims)
        c = crop_severity(bank["severity"][idx], bank["share"][idx]).to(device)
        side = bank["window"][idx].to(device) if net.scale else None
        loss, logs = severity_losses(net, lq, clean, c, side=side, **weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{logs['severity_loss']:.3f}")
        if (step + 1) % int(cfg.get("log_every", 50)) == 0 or step == 0:
            log.info(f"severity step {step + 1}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                     + f" wall={timer.elapsed():.0f}s")
        if (step + 1) % ck_every == 0:
            save(step + 1)
    bar.close()
    if start < steps and steps % ck_every:  # the last step was not checkpointed in the loop
        save(steps)
    net.eval()
    return {**{k: round(v, 4) for k, v in logs.items()}, "severity_steps": steps, "severity_bank": n_bank,
            "severity_wall_s": round(timer.elapsed(), 1)}
