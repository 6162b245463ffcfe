"""Train VLMIR's two stages on engine pairs: ``vlmir-align`` (stage 1) and ``vlmir-restorer`` (stage 2).

Stage 1 (:func:`train_align`): :func:`vlmir.models.vlmir.build_aligner` from the config's ``model`` block (the frozen
base CLIP named by ``model.base``), then :meth:`VLMIRAligner.losses` on batches of (LQ, HQ) crops from
:class:`~vlmir.training.data.PairSampler` with their captions. Only the LoRA adapters, the degradation predictor and
its temperature train (the base's weights stay bit-identical). The run folder's ``final/`` holds the adapters (peft
``save_pretrained``), ``predictor.safetensors`` and ``config.json``.

Captions (``captions`` in the config): ``"metadata"``, the default and the only choice offline, builds both from the
pair's metadata (:func:`vlmir.captions.metadata_caption`): the HQ caption names the source photo, the LQ caption adds
the degradation and its severity. With probability ``caption_drop_scene`` the LQ caption omits the scene, as at
inference on a user's photo, where no captioning model names it.

Stage 2 (:func:`train_restorer`): the stage-1 folder (``aligner``) is loaded, its adapters merged and frozen; a
:class:`~vlmir.models.irsde_unet.ConditionalUNet` with ``context_dim`` = the aligner's width learns the IR-SDE noise
of ``x_t = mu + (x_0 - mu) e^{-theta_bar_t} + sigma_bar_t n`` (``mu`` the LQ crop, ``x_0`` the HQ crop, t uniform in
1..T): ``L = |eps_hat - n|_1`` (IR-SDE's matching of x_{t-1} is this loss weighted per t), or with
``prediction: "sample"`` the UNet predicts the clean image as a residual on the LQ crop, ``L = |mu + u - x_0|_1``
(its last layer zero-initialised, so the sampler starts as the identity: the lite run's choice on a CPU budget,
where a noise predictor trained for minutes returns noise), with the conditioning of
:meth:`VLMIRAligner.context` (``context_mode``, ``use_captions`` in the config). The aligner sees the whole crop, the
UNet a centred ``restore_crop`` of it. ``final/`` holds ``pipeline.json``, ``aligner/`` and ``unet/``: the folder
:func:`vlmir.pipelines.vlmir.load_vlmir` reads.

Both stages resume exactly (``--resume``: model, optimiser, sampler and torch RNG from ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.captions import metadata_caption
from vlmir.training.common import (
    Timer,
    after_step,
    cosine_lr,
    make_accelerator,
    resume_from,
    save_checkpoint,
    setup_logger,
)
from vlmir.training.data import DataConfig, PairSampler

CAPTION_SOURCES = ("metadata",)


def pair_captions(batch: dict, *, drop_scene: float = 0.0, rng: random.Random | None = None) -> tuple[list[str], list[str]]:
    """Metadata captions ``(lq_captions, hq_captions)`` of a :meth:`PairSampler.sample` batch.

    The HQ caption names the photo; the LQ caption adds its degradations and combined severity, and with
    probability ``drop_scene`` leaves the scene out (as at inference without a captioning model).
    """
    rng = rng or random.Random(0)
    lq, hq = [], []
    for photo, types, sev in zip(batch["photo"], batch["types"], batch["severity"].tolist(), strict=True):
        hq.append(metadata_caption(photo))
        scene = None if rng.random() < drop_scene else photo
        lq.append(metadata_caption(scene, types, severity=int(sev) if types else None))
    return lq, hq


def _sampler(cfg: dict[str, Any], crop: int, seed: int) -> PairSampler:
    data_cfg = dict(cfg.get("data", {}))
    data_cfg.setdefault("crop", crop)
    if data_cfg["crop"] != crop:
        raise ValueError(f"data.crop must equal the CLIP tower's input side {crop}, got {data_cfg['crop']}")
    return PairSampler(DataConfig(**data_cfg), seed=seed)


def _check_captions(cfg: dict[str, Any]) -> None:
    src = cfg.get("captions", "metadata")
    if src not in CAPTION_SOURCES:
        raise ValueError(f"captions must be one of {CAPTION_SOURCES} for on-the-fly engine pairs, got {src!r}")


def _batch(sampler: PairSampler, n: int, device: torch.device) -> dict:
    b = sampler.sample(n)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}


class _Stage(torch.nn.Module):
    """What a stage trains, with the loss as its ``forward(batch, step) -> (loss, logs)``, so that distributed
    wrappers (accelerate / DDP) see the forward pass and synchronise the gradients. The trained module is
    ``self.<name>`` (``unet`` for stage 2, ``aligner`` for stage 1), which fixes the checkpoints' key prefix."""

    def __init__(self, name: str, module: torch.nn.Module, loss_fn: Any) -> None:
        super().__init__()
        self.add_module(name, module)
        self._name = name
        self._loss_fn = loss_fn

    @property
    def inner(self) -> torch.nn.Module:
        return getattr(self, self._name)

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss_fn(self.inner, batch, step)


def _loop(name: str, cfg: dict[str, Any], out_dir: Path, model: _Stage, groups: list[dict], make_sampler: Any, *,
          resume: bool, progress: bool, log: Any) -> tuple[dict[str, Any], Any, Timer]:
    """The shared optimisation loop: AdamW over parameter ``groups`` (``{"params", "lr"}``; each group's LR
    follows the cosine schedule from its own base), gradients clipped to norm 1 per group (a large gradient of
    one part must not stall another), logs, checkpoints, exact resume. ``make_sampler(process_index)`` gives each
    process its own data stream."""
    from tqdm.auto import tqdm

    acc = make_accelerator(cfg)
    sampler = make_sampler(acc.process_index)
    steps, bs = int(cfg.get("steps", 1000)), int(cfg.get("batch_size", 8))
    warmup = int(cfg.get("warmup", 50))
    groups = [g for g in groups if g["params"]]
    base_lrs = [float(g["lr"]) for g in groups]
    opt = torch.optim.AdamW(groups, weight_decay=float(cfg.get("weight_decay", 0.0)), betas=(0.9, 0.99))
    ckpt_path = out_dir / "checkpoint.pt"
    step, spent = resume_from(ckpt_path, model=model, optimizer=opt, sampler=sampler, log=log) if resume else (0, 0.0)
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    model, opt = acc.prepare(model, opt)
    timer = Timer(spent)
    logs: dict[str, Any] = {}
    every, ck_every = int(cfg.get("log_every", 10)), int(cfg.get("checkpoint_every", 100))
    acc.unwrap_model(model).train()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=name, disable=not progress)
    for step in bar:
        for g, base in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = cosine_lr(step, steps, base, warmup)
        batch = _batch(sampler, bs, acc.device)
        loss, logs = model(batch, step)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        for g in opt.param_groups:
            acc.clip_grad_norm_(g["params"], 1.0)
        opt.step()
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        after_step(step, steps, logs, every=every, ck_every=ck_every, log=log, timer=timer, acc=acc,
                   ckpt_path=ckpt_path, model=model, optimizer=opt, sampler=sampler)
    bar.close()
    logs["steps"] = steps
    logs["wall_s"] = round(timer.elapsed(), 1)
    if acc.is_main_process:
        save_checkpoint(ckpt_path, model=acc.unwrap_model(model), optimizer=opt, step=steps,
                        sampler_state=sampler.state(), extra={"wall_s": timer.elapsed()})
    return logs, acc, timer


def _step_rng(seed: int, step: int) -> random.Random:
    """The caption draws of one step: a function of the step, so a resumed run draws the same."""
    return random.Random(seed * 1_000_003 + step)


# ---------------------------------------------------------------------------------------------------------------
def train_align(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False, export: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Run (or resume) stage 1; writes ``out_dir/final`` (and ``export``) as :meth:`VLMIRAligner.save_pretrained`."""
    from vlmir.models.vlmir import build_aligner

    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "vlmir-align")
    _check_captions(cfg)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    model = build_aligner(dict(cfg.get("model", {})))
    if model.config["base"] == "random":
        log.info("WARNING: the base CLIP has random weights (test run)")
    lr = float(cfg.get("lr", 1e-3))
    head = [p for n, p in model.named_parameters() if p.requires_grad and (n.startswith("predictor.") or n == "logit_scale")]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    groups = [{"params": lora, "lr": lr}, {"params": head, "lr": float(cfg.get("predictor_lr", lr))}]
    log.info(f"trainable {sum(p.numel() for p in lora + head)} of {sum(p.numel() for p in model.parameters())} "
             f"parameters (LoRA rank {model.config['lora_rank']}, predictor {model.config['predictor']})")
    weights = {k: float(cfg.get(k, d)) for k, d in (("w_deg", 1.0), ("w_content", 1.0), ("w_image", 1.0),
                                                      ("w_caption", 1.0))}
    drop = float(cfg.get("caption_drop_scene", 0.5))

    def loss_fn(m: Any, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        lq_caps, hq_caps = pair_captions(batch, drop_scene=drop, rng=_step_rng(seed, step))
        dev = batch["lq"].device
        out = m.losses(batch["lq"], batch["clean"], batch["target"].to(dev), m.tokenize(lq_caps).to(dev),
                       m.tokenize(hq_caps).to(dev), **weights)
        return out["loss"], {k: float(v.detach()) for k, v in out.items()}

    stage = _Stage("aligner", model, loss_fn)
    logs, acc, _ = _loop("vlmir-align", cfg, out_dir, stage, groups,
                         lambda rank: _sampler(cfg, model.image_size, seed + 1000 + rank), resume=resume,
                         progress=progress, log=log)
    if acc.is_main_process:
        net = acc.unwrap_model(stage).inner
        for dst in [out_dir / "final"] + ([Path(export)] if export else []):
            net.save_pretrained(dst)
            (dst / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (dst / "metrics.json").write_text(json.dumps({"train": logs}, indent=2) + "\n")
        log.info(f"done: {logs}")
    return logs


# ---------------------------------------------------------------------------------------------------------------
def restorer_loss(unet: torch.nn.Module, aligner: Any, scheduler: Any, batch: dict, captions: list[str] | None, *,
                  context_mode: str = "multi", use_captions: bool = True, crop: int | None = None,
                  prediction: str = "epsilon",
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's IR-SDE loss (module docstring); the aligner is frozen and sees the whole crop.
    ``prediction="epsilon"``: ``|eps_hat - n|_1``; ``"sample"``: ``|mu + unet(...) - x_0|_1``."""
    lq, hq = batch["lq"], batch["clean"]
    with torch.no_grad():
        ctx = aligner.context(lq, captions, mode=context_mode, use_captions=use_captions)
    if crop is not None and crop < lq.shape[-1]:
        o = (lq.shape[-1] - crop) // 2
        lq, hq = lq[..., o : o + crop, o : o + crop], hq[..., o : o + crop, o : o + crop]
    b = lq.shape[0]
    t = torch.randint(1, scheduler.T + 1, (b,), generator=generator)
    noise = torch.randn(lq.shape, generator=generator).to(lq)
    x_t = scheduler.add_noise(hq, noise, t, mu=lq)
    eps = unet(x_t, lq, t.to(lq.device), context=unet.prepare_context(ctx["text_context"], ctx["image_context"],
                                                                        ctx["context_mask"]))
    if prediction == "sample":
        loss = F.l1_loss(lq + eps, hq)
    else:
        loss = F.l1_loss(eps, noise)
    logs = {"loss": loss.item()}
    return loss, logs


def train_restorer(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False,
                   export: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) stage 2; writes ``out_dir/final`` (and ``export``): ``pipeline.json``, ``aligner/``,
    ``unet/``."""
    from vlmir.models.irsde_unet import ConditionalUNet
    from vlmir.models.vlmir import CONTEXT_MODES, VLMIRAligner
    from vlmir.pipelines.vlmir import ALIGNER_DIR, PIPELINE_FILE, UNET_DIR
    from vlmir.schedulers.irsde import IRSDEScheduler

    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "vlmir-restorer")
    _check_captions(cfg)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    if not cfg.get("aligner"):
        raise ValueError("a vlmir-restorer config needs 'aligner': the stage-1 folder (python -m vlmir train "
                         "vlmir-align ... writes it to <out>/final)")
    aligner_dir = Path(cfg["aligner"])
    aligner = VLMIRAligner.from_pretrained(aligner_dir).requires_grad_(False).eval()
    context_mode = str(cfg.get("context_mode", "multi"))
    if context_mode not in CONTEXT_MODES:
        raise ValueError(f"context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
    use_captions = bool(cfg.get("use_captions", True)) and context_mode == "multi"
    unet_cfg = dict(cfg.get("unet", {}))
    unet_cfg.setdefault("context_dim", aligner.embed_dim)
    if unet_cfg["context_dim"] != aligner.embed_dim:
        raise ValueError(f"unet.context_dim must be the aligner's width {aligner.embed_dim}, got {unet_cfg['context_dim']}")
    unet_cfg.setdefault("use_image_context", True)
    unet_cfg.setdefault("use_degra_context", aligner.predictor is not None)
    unet = ConditionalUNet(**unet_cfg)
    scheduler_cfg = {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005, **cfg.get("scheduler", {})}
    scheduler = IRSDEScheduler(**scheduler_cfg)
    crop = cfg.get("restore_crop")
    from vlmir.pipelines.vlmir import PREDICTIONS

    prediction = str(cfg.get("prediction", "epsilon"))
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "sample":  # start at the identity: x0_hat = mu (a resume then loads its checkpoint)
        torch.nn.init.zeros_(unet.final_conv.weight)
        torch.nn.init.zeros_(unet.final_conv.bias)
    drop = float(cfg.get("caption_drop_scene", 0.5))
    log.info(f"stage 2: context {context_mode}, captions {use_captions}, unet {unet_cfg}, "
             f"{sum(p.numel() for p in unet.parameters())} parameters")

    def loss_fn(m: Any, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        lq_caps = pair_captions(batch, drop_scene=drop, rng=_step_rng(seed, step))[0] if use_captions else None
        return restorer_loss(m, aligner, scheduler, batch, lq_caps, context_mode=context_mode,
                             use_captions=use_captions, crop=crop, prediction=prediction)

    stage = _Stage("unet", unet, loss_fn)
    groups = [{"params": list(unet.parameters()), "lr": float(cfg.get("lr", 1e-3))}]
    logs, acc, _ = _loop("vlmir-restorer", cfg, out_dir, stage, groups,
                         lambda rank: _sampler(cfg, aligner.image_size, seed + 2000 + rank), resume=resume,
                         progress=progress, log=log)
    if acc.is_main_process:
        unet = acc.unwrap_model(stage).inner.eval()
        pipeline = {"name": str(cfg.get("name", "vlmir")), "context_mode": context_mode, "use_captions": use_captions,
                    "scheduler": scheduler_cfg, "default_steps": cfg.get("default_steps"),
                    "mode": str(cfg.get("mode", "posterior")), "captions": cfg.get("captions", "metadata"),
                    "prediction": prediction}
        for dst in [out_dir / "final"] + ([Path(export)] if export else []):
            dst.mkdir(parents=True, exist_ok=True)
            if (dst / ALIGNER_DIR).exists():
                shutil.rmtree(dst / ALIGNER_DIR)
            shutil.copytree(aligner_dir, dst / ALIGNER_DIR)
            unet.save_pretrained(dst / UNET_DIR)
            (dst / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=1) + "\n")
            (dst / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (dst / "metrics.json").write_text(json.dumps({"train": logs}, indent=2) + "\n")
        log.info(f"done: {logs}")
    return logs
