"""Train the degradation-aware encoder (:class:`vlmir.models.encoder.DegradationAwareEncoder`) from scratch.

Losses as in DA-CLIP (Luo et al., ICLR 2024, Sec. 3.2), both CLIP-style contrastive with the learned temperature:

- degradation: the LQ image's degradation embedding against the text embeddings of the class names
  (cross-entropy over the K names; a mixture's target is uniform over its types, a clean crop's is ``clear``);
- content: the LQ image's content embedding against the clean image's content embedding (stop-gradient target;
  in-batch negatives, symmetric), standing in for DA-CLIP's caption embedding (we have no captions).

Deviation: DA-CLIP starts from a pretrained CLIP whose text embeddings of the names are already distinct; a text
tower trained from scratch starts with nearly identical name embeddings (cosine ~0.95), which stalls the
degradation loss. A separation term ``L_sep = mean_{i != j} cos(t_i, t_j)^2`` over the K name embeddings and a
larger learning rate for the text tower (``text_lr_mult``) fix that.

``loss = degradation_weight * L_degra + content_weight * L_content + text_sep_weight * L_sep``.

Fine-tuning (``init_from``, ``init_skip``, ``train_only``: :func:`vlmir.training.common.init_from`): the shipped
encoder's statistics branch is trained on top of frozen towers with ``train_only: ["stats_proj"]`` and
``content_weight: 0``. The towers, and so the content embedding, stay exactly as they were; only the degradation
embedding changes.

A ``view_head`` block fits the image-level :class:`~vlmir.models.encoder.ViewHead` after the steps (``steps: 0``
with ``init_from`` fits it alone on a trained encoder): :mod:`vlmir.training.view_head`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.models.encoder import DegradationAwareEncoder
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
)
from vlmir.training.data import CLASS_NAMES, DataConfig, PairSampler
from vlmir.training.view_head import fit_view_head


def encoder_losses(model: torch.nn.Module, batch: dict, *, content_weight: float = 1.0,
                   degradation_weight: float = 1.0, text_sep_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """DA-CLIP's two contrastive losses (+ the name separation term) on one batch; returns ``(loss, logs)``."""
    f = model(batch["lq"])
    names = f["name_embeddings"]  # (K, D), normalised
    k = names.shape[0]
    sim = names @ names.t()
    loss_sep = (sim - torch.eye(k, device=sim.device)).pow(2).sum() / (k * (k - 1))
    loss_deg = torch.sum(-batch["target"] * F.log_softmax(f["logits"], dim=1), dim=1).mean()
    scale = f["logit_scale"]
    if content_weight > 0:
        with torch.no_grad():
            target_content = F.normalize(model(batch["clean"])["content"], dim=-1)
        content = F.normalize(f["content"], dim=-1)
        logits = scale * content @ target_content.t()  # (B, B): LQ content vs clean content
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss_con = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    else:  # frozen towers (fine-tuning the statistics branch): the content loss is constant, skip its forward
        loss_con = torch.zeros((), device=scale.device)
    loss = degradation_weight * loss_deg + content_weight * loss_con + text_sep_weight * loss_sep
    single = batch["target"].max(1).values > 0.99
    acc = (f["logits"].argmax(1) == batch["target"].argmax(1))[single].float().mean().item() if single.any() else 0.0
    return loss, {"loss": loss.item(), "degra": loss_deg.item(), "content": loss_con.item(), "sep": loss_sep.item(), "acc": acc,
                  "scale": float(scale.detach())}


_TEXT_PREFIXES = ("clip.token_embedding", "clip.positional_embedding", "clip.transformer", "clip.ln_final",
                  "clip.text_projection")


def param_groups(model: torch.nn.Module, weight_decay: float, text_lr_mult: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels only; the text tower's learning rate times
    ``text_lr_mult``."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        text = name.startswith(_TEXT_PREFIXES)
        decay = p.ndim >= 2 and "embedding" not in name
        groups.setdefault((text, decay), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_mult": text_lr_mult if text else 1.0}
            for (text, decay), ps in groups.items()]


def train(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False, export: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) an encoder training run described by ``cfg``; returns the last logged values.

    Writes ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end, and the final weights to
    ``out_dir/final`` (and to ``export`` when given).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "encoder")
    acc = make_accelerator(cfg)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.setdefault("degradation_names", list(CLASS_NAMES))
    if tuple(model_cfg["degradation_names"]) != CLASS_NAMES:
        raise ValueError(f"model.degradation_names must be the training classes {list(CLASS_NAMES)}")
    model = DegradationAwareEncoder(**model_cfg)
    init_from(model, cfg, log)
    freeze_except(model, cfg.get("train_only"), log)
    if model.view_head is not None and any(p.requires_grad for n, p in model.named_parameters()
                                           if not n.startswith("view_head.")):
        model.view_head.requires_grad_(False)  # fitted after the steps (view_head stage), never by their gradients
    steps, bs = int(cfg.get("steps", 1000)), int(cfg.get("batch_size", 32))
    lr, warmup = float(cfg.get("lr", 2e-3)), int(cfg.get("warmup", 50))
    opt = torch.optim.AdamW(param_groups(model, float(cfg.get("weight_decay", 0.05)),
                                         float(cfg.get("text_lr_mult", 1.0))), lr=lr)
    sampler = PairSampler(DataConfig(**cfg.get("data", {})), seed=seed + acc.process_index)
    loss_cfg = cfg.get("loss", {})
    ckpt_path = out_dir / "checkpoint.pt"
    step, spent = (resume_from(ckpt_path, model=model, optimizer=opt, sampler=sampler, log=log)
                   if resume else (0, 0.0))
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    model, opt = acc.prepare(model, opt)
    timer = Timer(spent)
    logs: dict[str, Any] = {}
    every, ck_every = int(cfg.get("log_every", 10)), int(cfg.get("checkpoint_every", 100))
    train_mode(acc.unwrap_model(model), cfg.get("train_only"))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="encoder", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup) * g.get("lr_mult", 1.0)
        batch = sampler.sample(bs)
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, logs = encoder_losses(model, batch, content_weight=float(loss_cfg.get("content_weight", 1.0)),
                                    degradation_weight=float(loss_cfg.get("degradation_weight", 1.0)),
                                    text_sep_weight=float(loss_cfg.get("text_sep_weight", 0.0)))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['acc']:.2f}")
        after_step(step, steps, logs, every=every, ck_every=ck_every, log=log, timer=timer, acc=acc,
                   ckpt_path=ckpt_path, model=model, optimizer=opt, sampler=sampler)
    bar.close()
    if "view_head" in cfg:  # after the towers: the image-level head (vlmir.training.view_head)
        logs.update(fit_view_head(acc.unwrap_model(model), cfg, log, progress, out_dir=out_dir))
    final_step = max(step + 1, int(cfg.get("steps", 0))) if steps > 0 else 0
    return finish_run(final_step, logs, architecture="DegradationAwareEncoder", cfg=cfg, out_dir=out_dir,
                      export=export, log=log, timer=timer, acc=acc, ckpt_path=ckpt_path,
                      model=model, optimizer=opt, sampler=sampler)
