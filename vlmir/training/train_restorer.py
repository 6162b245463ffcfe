"""Train the embedding-conditioned restorer (:class:`vlmir.models.restorer.ConditionalRestorer`) on engine pairs.

The degradation-aware encoder is frozen (``encoder`` in the config: an exported weights folder); its normalised
content and degradation embeddings of the degraded crop condition the restorer (DA-CLIP's design: the restorer
sees what the encoder thinks the degradation is). Pairs cover the ten types, mixtures and clean crops (identity
target, the ``clear`` case). Loss: ``L1(restored, clean) + gate_weight * BCE(gate, target)``. With
``gate_target: "degraded"`` (default) the target is 0 for clean inputs (they come back unchanged) and 1 otherwise;
with ``"optimal"`` it is the per-image least-squares scale of the predicted residual,
``clip(<R, clean - lq> / |R|^2, 0, 1)`` (detached): 0 for clean inputs and wherever the residual does not help, so
the gate learns to fall back to identity on degradations the network cannot yet undo.

With ``model.prior: true`` the restorer also takes the classical baseline's restoration of the crop
(:func:`vlmir.models.restorer.classical_prior`) for one type per sample: with probability ``prior_true_p`` a true
type of the sample (so the network learns what a right prior is worth), otherwise the type the frozen encoder
predicts from the crop (so it learns to ignore a wrong one, as happens at inference). Clean crops get the
encoder's prediction too: a wrong prior on a clean crop must be gated off. On its training crops the encoder is
mostly right, so the predicted type teaches little about wrong priors; ``prior_wrong_p`` (default 0) gives that
share of the samples, clean ones included, the prior of a type they do not have, so that the trust mask learns to
fall back to the network alone (y = x + R) when the prior is wrong.

``pixel_loss``: ``"l1"`` (default) or ``"psnr"``, NAFNet's PSNR loss ``(10 / ln 10) * mean_i log(MSE_i)``. The
PSNR loss weights each crop by the inverse of its error, so the crops that are already nearly right (clean ones,
mild degradations, blur the network cannot undo) count as much as the badly damaged ones, and it optimises the
measure the validation reports; L1's optimum is a median, which can sharpen where the mean would not.

With ``model.deblur_radius`` and a ``deblur`` block, the deblurring stage is fitted after the steps
(:mod:`vlmir.training.deblur`; ``steps: 0`` with ``init_from`` fits it alone on a trained restorer).

``init_from`` starts from earlier weights and ``train_only`` (name prefixes) trains only those parameters, the
rest frozen in eval mode (:func:`vlmir.training.common.freeze_except`): e.g. ``["gate"]`` with a larger
``gate_weight`` recalibrates only the gate g(e) of a trained restorer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.constants import CLEAR
from vlmir.models.restorer import ConditionalRestorer, classical_prior
from vlmir.training.common import (
    Timer,
    after_step,
    cosine_lr,
    finish_run,
    freeze_except,
    init_from,
    make_accelerator,
    resume_from,
    setup_logger,
    train_mode,
    unwrap,
)
from vlmir.training.data import DataConfig, PairSampler
from vlmir.training.deblur import fit_deblur


def condition(encoder: torch.nn.Module, lq: torch.Tensor, return_pred: bool = False):
    """Restorer conditioning (B, 2D) from the frozen encoder on crops ``lq`` (B, 3, S, S): normalised
    ``[content, degradation]`` embeddings (and, with ``return_pred``, the predicted class names)."""
    with torch.no_grad():
        f = encoder.forward_features(lq)
        cond = torch.cat([F.normalize(f["content"], dim=-1), F.normalize(f["degradation"], dim=-1)], dim=-1)
        if not return_pred:
            return cond
        pred = encoder.degradation_logits(f["degradation"]).argmax(-1).tolist()
    return cond, [encoder.degradation_names[i] for i in pred]


def prior_types(true_types: list[list[str]], predicted: list[str], p_true: float,
                generator: torch.Generator | None = None, *, p_wrong: float = 0.0,
                names: Sequence[str] = ()) -> list[str]:
    """One prior type per sample. With probability ``p_wrong`` a type drawn uniformly from ``names`` (the prior
    types, ``clear`` excluded) that is none of the sample's true types: a wrong prior at full strength, which the
    trust mask must learn to reject (clean samples included). Else, with probability ``p_true``, a random true type
    (``clear`` for clean samples keeps the prediction); else the encoder's prediction."""
    if not 0.0 <= p_wrong <= 1.0 or not 0.0 <= p_true <= 1.0 or p_wrong + p_true > 1.0 + 1e-9:
        raise ValueError(f"need p_wrong, p_true in [0, 1] with p_wrong + p_true <= 1, got {p_wrong!r}, {p_true!r}")
    pool = [n for n in names if n != CLEAR]
    if p_wrong > 0 and not pool:
        raise ValueError("p_wrong > 0 needs the prior type names")
    out = []
    for t, pred in zip(true_types, predicted, strict=True):
        u = torch.rand((), generator=generator).item()
        wrong = [n for n in pool if n not in t] if u < p_wrong else []
        if wrong:
            out.append(wrong[int(torch.randint(len(wrong), (), generator=generator))])
        elif t and u < p_wrong + p_true:
            out.append(t[int(torch.randint(len(t), (), generator=generator))])
        else:
            out.append(pred)
    return out


PIXEL_LOSSES = ("l1", "psnr")


def restorer_losses(model: torch.nn.Module, encoder: torch.nn.Module, batch: dict, *, gate_weight: float = 0.1,
                    crop: int | None = None, gate_target: str = "degraded", prior_true_p: float = 0.5,
                    pixel_loss: str = "l1", prior_wrong_p: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss: the encoder sees the whole crop, the restorer a centred ``crop`` of it (or all);
    ``gate_target`` is ``"degraded"`` or ``"optimal"``; ``prior_true_p`` and ``prior_wrong_p`` as in the module
    docstring (only for a restorer built with ``prior=True``); ``pixel_loss`` in :data:`PIXEL_LOSSES` (module docstring)."""
    if gate_target not in ("degraded", "optimal"):
        raise ValueError(f"gate_target must be 'degraded' or 'optimal', got {gate_target!r}")
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {', '.join(PIXEL_LOSSES)}, got {pixel_loss!r}")
    lq, clean = batch["lq"], batch["clean"]
    net = unwrap(model)
    prior = None
    if net.prior:  # the predicted types pick the classical prior (the text tower runs only then)
        cond, pred = condition(encoder, lq, return_pred=True)
        prior = classical_prior(lq, prior_types(batch["types"], pred, prior_true_p, p_wrong=prior_wrong_p,
                                                names=encoder.degradation_names))
    else:
        cond = condition(encoder, lq)
    if crop is not None and crop < lq.shape[-1]:
        o = (lq.shape[-1] - crop) // 2
        lq, clean = lq[..., o : o + crop, o : o + crop], clean[..., o : o + crop, o : o + crop]
        if prior is not None:
            prior = prior[..., o : o + crop, o : o + crop]
    out, gate = model(lq, cond, prior, return_gate=True)
    l1 = F.l1_loss(out, clean)
    if pixel_loss == "psnr":  # NAFNet's PSNR loss: (10 / ln 10) * mean_i log(MSE_i + 1e-8), i.e. -mean PSNR
        pix = 10.0 / math.log(10.0) * torch.log((out - clean).pow(2).flatten(1).mean(1) + 1e-8).mean()
    else:
        pix = l1
    if gate_target == "optimal":
        with torch.no_grad():
            r = (out - lq) / gate.clamp_min(1e-6)[:, None, None, None]  # the ungated residual R(x, e)
            num = (r * (clean - lq)).flatten(1).sum(1)
            target = (num / r.pow(2).flatten(1).sum(1).clamp_min(1e-8)).clamp(0, 1)
    else:
        target = (batch["severity"] > 0).float().to(gate.device)
    if net.gate is not None:
        lg = F.binary_cross_entropy(gate.clamp(1e-6, 1 - 1e-6), target)
    else:  # no gate (g = 1): nothing to calibrate
        lg = l1.new_zeros(())
    loss = pix + gate_weight * lg
    with torch.no_grad():
        mse_in = (lq - clean).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        mse_out = (out.clamp(0, 1) - clean).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        deg = batch["severity"].to(lq.device) > 0  # PSNR gain over degraded crops only (clean ones have mse_in 0)
        gain = (10 * torch.log10(mse_in / mse_out))[deg].mean().item() if deg.any() else 0.0
    logs = {"loss": loss.item(), "l1": l1.item(), "gate_bce": lg.item(), "psnr_gain": gain}
    if prior is not None:
        with torch.no_grad():
            mse_p = (prior - clean).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            logs["prior_gain"] = (10 * torch.log10(mse_in / mse_p))[deg].mean().item() if deg.any() else 0.0
    return loss, logs


def train(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False, export: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a restorer training run; same outputs as :func:`vlmir.training.train_encoder.train`."""
    from tqdm.auto import tqdm

    from vlmir.models.embedded import load_encoder

    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "restorer")
    acc = make_accelerator(cfg)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    encoder, enc_random = load_encoder(cfg.get("encoder"), allow_random=bool(cfg.get("allow_random_encoder", False)))
    if enc_random:
        log.info("WARNING: the conditioning encoder has random weights (test run)")
    encoder.eval().requires_grad_(False)
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.setdefault("cond_dim", 2 * encoder.config["embed_dim"])
    model = ConditionalRestorer(**model_cfg)
    init_from(model, cfg, log)  # e.g. fine-tune the shipped restorer on a changed encoder
    freeze_except(model, cfg.get("train_only"), log)  # e.g. recalibrate only the gate
    steps, bs = int(cfg.get("steps", 1000)), int(cfg.get("batch_size", 16))
    lr, warmup = float(cfg.get("lr", 1e-3)), int(cfg.get("warmup", 50))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr,
                            weight_decay=float(cfg.get("weight_decay", 0.0)),
                            betas=(0.9, 0.99))
    data_cfg = dict(cfg.get("data", {}))
    data_cfg.setdefault("crop", encoder.image_size)
    if data_cfg["crop"] != encoder.image_size:
        raise ValueError(f"data.crop must equal the encoder's image_size {encoder.image_size}, got {data_cfg['crop']}")
    sampler = PairSampler(DataConfig(**data_cfg), seed=seed + 1000 + acc.process_index)
    restore_crop = cfg.get("restore_crop")
    gate_weight = float(cfg.get("gate_weight", 0.1))
    gate_target = str(cfg.get("gate_target", "degraded"))
    prior_true_p = float(cfg.get("prior_true_p", 0.5))
    prior_wrong_p = float(cfg.get("prior_wrong_p", 0.0))
    pixel_loss = str(cfg.get("pixel_loss", "l1"))
    ckpt_path = out_dir / "checkpoint.pt"
    step, spent = (resume_from(ckpt_path, model=model, optimizer=opt, sampler=sampler, log=log)
                   if resume else (0, 0.0))
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    model, opt = acc.prepare(model, opt)
    encoder = encoder.to(acc.device)
    timer = Timer(spent)
    logs: dict[str, Any] = {}
    every, ck_every = int(cfg.get("log_every", 10)), int(cfg.get("checkpoint_every", 100))
    train_mode(acc.unwrap_model(model), cfg.get("train_only"))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="restorer", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        batch = sampler.sample(bs)
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, logs = restorer_losses(model, encoder, batch, gate_weight=gate_weight, crop=restore_crop,
                                       gate_target=gate_target, prior_true_p=prior_true_p,
                                       pixel_loss=pixel_loss, prior_wrong_p=prior_wrong_p)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{logs['loss']:.4f}", gain=f"{logs['psnr_gain']:.2f}")
        after_step(step, steps, logs, every=every, ck_every=ck_every, log=log, timer=timer, acc=acc,
                   ckpt_path=ckpt_path, model=model, optimizer=opt, sampler=sampler)
    bar.close()
    final_step = steps
    if "deblur" in cfg:  # after the steps: the fitted deblurring stage (vlmir.training.deblur)
        logs.update(fit_deblur(acc.unwrap_model(model), encoder, cfg, log, progress))
    return finish_run(final_step, logs, architecture="ConditionalRestorer", cfg=cfg, out_dir=out_dir,
                      export=export, log=log, timer=timer, acc=acc, ckpt_path=ckpt_path,
                      model=model, optimizer=opt, sampler=sampler)
