"""Train the degradation-aware encoder (:class:`vlmir.models.encoder.DegradationAwareEncoder`) from scratch.

Losses as in DA-CLIP (Luo et al., ICLR 2024, Sec. 3.2), both CLIP-style contrastive with the learned temperature:

- degradation: the LQ image's degradation embedding against the text embeddings of the class names
  (cross-entropy over the K names; a mixture's target is uniform over its types, a clean crop's is ``clear``);
- content: the LQ image's content embedding against the clean image's content embedding (stop-gradient target;
  in-batch negatives, symmetric), standing in for DA-CLIP's caption embedding (we have no captions).

``loss = degradation_weight * L_degra + content_weight * L_content``.
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
    cosine_lr,
    export_weights,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    setup_logger,
)
from vlmir.training.data import CLASS_NAMES, DataConfig, PairSampler


def encoder_losses(model: torch.nn.Module, batch: dict, *, content_weight: float = 1.0,
                   degradation_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """DA-CLIP's two contrastive losses on one batch; returns ``(loss, logs)``."""
    f = model(batch["lq"])
    loss_deg = torch.sum(-batch["target"] * F.log_softmax(f["logits"], dim=1), dim=1).mean()
    with torch.no_grad():
        target_content = F.normalize(model(batch["clean"])["content"], dim=-1)
    content = F.normalize(f["content"], dim=-1)
    scale = f["logit_scale"]
    logits = scale * content @ target_content.t()  # (B, B): LQ content vs clean content
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss_con = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    loss = degradation_weight * loss_deg + content_weight * loss_con
    single = batch["target"].max(1).values > 0.99
    acc = (f["logits"].argmax(1) == batch["target"].argmax(1))[single].float().mean().item() if single.any() else 0.0
    return loss, {"loss": loss.item(), "degra": loss_deg.item(), "content": loss_con.item(), "acc": acc,
                  "scale": float(scale.detach())}


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
    steps, bs = int(cfg.get("steps", 1000)), int(cfg.get("batch_size", 32))
    lr, warmup = float(cfg.get("lr", 2e-3)), int(cfg.get("warmup", 50))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(cfg.get("weight_decay", 0.05)))
    sampler = PairSampler(DataConfig(**cfg.get("data", {})), seed=seed + acc.process_index)
    loss_cfg = cfg.get("loss", {})
    step, spent = 0, 0.0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, spent = int(state["step"]), float(state["extra"].get("wall_s", 0.0))
        log.info(f"resumed from {ckpt_path} at step {step}")
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    model, opt = acc.prepare(model, opt)
    timer = Timer(spent)
    logs: dict[str, Any] = {}
    every, ck_every = int(cfg.get("log_every", 10)), int(cfg.get("checkpoint_every", 100))
    model.train()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="encoder", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        batch = sampler.sample(bs)
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, logs = encoder_losses(model, batch, content_weight=float(loss_cfg.get("content_weight", 1.0)),
                                    degradation_weight=float(loss_cfg.get("degradation_weight", 1.0)))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['acc']:.2f}")
        if (step + 1) % every == 0 or step == 0:
            log.info(f"step {step + 1}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                     + f" wall={timer.elapsed():.0f}s")
        if (step + 1) % ck_every == 0 and acc.is_main_process:
            save_checkpoint(ckpt_path, model=acc.unwrap_model(model), optimizer=opt, step=step + 1,
                            sampler_state=sampler.state(), extra={"wall_s": timer.elapsed()})
    bar.close()
    final_step = max(step + 1, int(cfg.get("steps", 0))) if steps > 0 else 0
    logs["steps"] = final_step
    logs["wall_s"] = round(timer.elapsed(), 1)
    if acc.is_main_process:
        net = acc.unwrap_model(model)
        save_checkpoint(ckpt_path, model=net, optimizer=opt, step=final_step, sampler_state=sampler.state(),
                        extra={"wall_s": timer.elapsed()})
        for dst in [out_dir / "final"] + ([Path(export)] if export else []):
            export_weights(dst, model=net, model_config=net.config, train_config=cfg,
                           extra_config={"architecture": "DegradationAwareEncoder"}, metrics={"train": logs})
        log.info(f"done: {logs}")
    return logs
