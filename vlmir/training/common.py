"""What every training run shares: config files, the Accelerator, checkpoints (resume), logs, export.

A run is described by one JSON or YAML file (see ``vlmir/training/configs/``); it is copied to the run folder as
``train_config.json`` and to the exported weights. Checkpoints hold only tensors and plain Python values and load
with ``torch.load(weights_only=True)``. Training goes through ``accelerate.Accelerator``: single process on CPU
here, multi-GPU with ``accelerate launch -m vlmir train ...``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

KINDS = ("encoder", "restorer", "rater", "wresvlm", "vlmir-align", "vlmir-restorer")


def load_config(path: str | Path) -> dict[str, Any]:
    """A training config from a ``.json`` or ``.yaml``/``.yml`` file; its ``kind`` must be one of :data:`KINDS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text)
    elif path.suffix.lower() == ".json":
        cfg = json.loads(text)
    else:
        raise ValueError(f"config {path} must be .json, .yaml or .yml, got {path.suffix!r}")
    if not isinstance(cfg, dict) or cfg.get("kind") not in KINDS:
        raise ValueError(f"config {path} must be a mapping with kind one of {KINDS}, got {cfg.get('kind') if isinstance(cfg, dict) else cfg!r}")
    return cfg


def setup_logger(out_dir: Path, name: str) -> logging.Logger:
    """A logger writing to ``out_dir/train.log`` and stderr."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"vlmir.training.{name}.{out_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in (logging.FileHandler(out_dir / "train.log"), logging.StreamHandler()):
            h.setFormatter(fmt)
            log.addHandler(h)
    return log


def stage_options(cfg: dict[str, Any], block: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The options of a config's post-training stage block (``view_head``, ``deblur``, ``calibration``): its
    ``defaults`` updated by ``cfg[block]``; an unknown key is an error naming the known ones."""
    opts = {**defaults, **cfg.get(block, {})}
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise ValueError(f"{block}: unknown keys {unknown}; known: {sorted(defaults)}")
    return opts


def load_or_build_bank(paths: list[Path], fingerprint: dict[str, Any], build: Any, save_to: Path,
                       log: Any, what: str = "feature bank") -> dict[str, torch.Tensor]:
    """The first bank among ``paths`` whose fingerprint matches, else ``build()``, saved (with its fingerprint) to
    ``save_to``; a bank file that does not match is left as it is. ``what`` names the bank in the log."""
    for path in paths:
        if not path.is_file():
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fingerprint:
            log.info(f"{what} loaded from {path}")
            return saved["bank"]
        log.info(f"{what} at {path} was made differently (fingerprint); rebuilding it")
    t0 = time.perf_counter()
    bank = build()
    log.info(f"{what}: {fingerprint['n']} samples in {time.perf_counter() - t0:.0f} s")
    save_to.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": fingerprint, "bank": {k: v.cpu() for k, v in bank.items()}}, save_to)
    return bank


def make_accelerator(cfg: dict[str, Any]):
    """An ``accelerate.Accelerator`` (CPU unless a GPU is there and ``cpu`` is false) with torch threads set."""
    from accelerate import Accelerator

    threads = int(cfg.get("threads", 2))
    if threads > 0:
        torch.set_num_threads(threads)
    return Accelerator(cpu=bool(cfg.get("cpu", not torch.cuda.is_available())))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module itself from a distributed wrapper (``DistributedDataParallel`` keeps it as ``.module``)."""
    return model.module if hasattr(model, "module") else model


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    sampler_state: dict, extra: dict | None = None) -> None:
    """Write a resumable checkpoint atomically (tensors and plain values only)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "sampler": sampler_state,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no arbitrary unpickling)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def init_from(model: torch.nn.Module, cfg: dict[str, Any], log: logging.Logger) -> None:
    """Start ``model`` from earlier weights: ``cfg["init_from"]`` (a folder with ``model.safetensors``, or the file).

    Parameters whose names start with one of ``cfg["init_skip"]`` keep their fresh initialisation (a branch whose
    shape changed, or one to learn anew); every other tensor must be in the file with the same shape.
    Nothing happens without ``init_from``. Used to fine-tune a shipped model, e.g. a new statistics branch on a
    trained encoder, or a restorer on a changed encoder.
    """
    src = cfg.get("init_from")
    if not src:
        return
    from safetensors.torch import load_file

    path = Path(src)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    skip = tuple(cfg.get("init_skip", ()))
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(skip)}
    own = model.state_dict()
    bad = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if bad:
        raise ValueError(f"init_from {path}: shapes differ for {bad[:5]}; list their prefixes in init_skip")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise ValueError(f"init_from {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info(f"initialised from {path} ({len(state)} tensors; fresh: {', '.join(skip) or 'none'})")


def freeze_except(model: torch.nn.Module, prefixes: Any, log: logging.Logger) -> None:
    """Train only the parameters whose names start with one of ``prefixes`` (all when empty or None)."""
    if not prefixes:
        return
    prefixes = tuple(prefixes)
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"train_only {list(prefixes)} matches no parameter")
    log.info(f"training only {', '.join(prefixes)} ({n} parameters)")


def train_mode(model: torch.nn.Module, prefixes: Any = None) -> None:
    """``model.train()``, except that with ``prefixes`` (``train_only``) only those submodules train: frozen parts
    stay in eval mode so their batch-norm running statistics do not drift."""
    if not prefixes:
        model.train()
        return
    model.eval()
    prefixes = tuple(prefixes)
    for name, module in model.named_modules():
        if name and name.startswith(prefixes):
            module.train()


def resume_from(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: Any,
                log: logging.Logger) -> tuple[int, float]:
    """Restore model, optimiser, data sampler and torch RNG from ``path`` when it exists (an exact resume).

    Returns ``(step, wall seconds already spent)``; ``(0, 0.0)`` when there is no checkpoint yet.
    """
    if not path.is_file():
        return 0, 0.0
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    step = int(state["step"])
    log.info(f"resumed from {path} at step {step}")
    return step, float(state["extra"].get("wall_s", 0.0))


_EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_weights(out_dir: Path, *, model: torch.nn.Module, model_config: dict, train_config: dict,
                   metrics: dict | None = None, extra_config: dict | None = None,
                   dtype: str = "float32") -> Path:
    """Write ``model.safetensors`` + ``config.json`` (constructor args) + ``train_config.json`` (+ ``metrics.json``).

    ``dtype`` is the storage type of floating-point tensors (``float16`` halves the file; loaders cast back to
    the module's float32); integer buffers keep their type.
    """
    from safetensors.torch import save_file

    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(_EXPORT_DTYPES)}, got {dtype!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", _EXPORT_DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    cfg = dict(model_config)
    if extra_config:
        cfg.update(extra_config)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    if metrics is not None:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out_dir


def copy_export(src: Path, dst: Path) -> Path:
    """Copy an exported weights folder (``--export``) to ``dst``, keeping an existing ``MODEL_CARD.md``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "train_config.json", "metrics.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


class Timer:
    """Wall time since construction, resumable (``offset`` seconds already spent before a resume)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.start = time.time() - offset

    def elapsed(self) -> float:
        return time.time() - self.start


def after_step(step: int, steps: int, logs: dict[str, float], *, every: int, ck_every: int, log: logging.Logger,
               timer: Any, acc: Any, ckpt_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               sampler: Any) -> None:
    """The bookkeeping of every training loop after optimiser step ``step`` (0-based): a log line every ``every``
    steps (and the first), a checkpoint every ``ck_every`` steps on the main process."""
    if (step + 1) % every == 0 or step == 0:
        log.info(f"step {step + 1}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                 + f" wall={timer.elapsed():.0f}s")
    if (step + 1) % ck_every == 0 and acc.is_main_process:
        save_checkpoint(ckpt_path, model=acc.unwrap_model(model), optimizer=optimizer, step=step + 1,
                        sampler_state=sampler.state(), extra={"wall_s": timer.elapsed()})


def finish_run(final_step: int, logs: dict[str, Any], *, architecture: str, cfg: dict[str, Any], out_dir: Path,
               export: str | Path | None, log: logging.Logger, timer: Any, acc: Any, ckpt_path: Path,
               model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: Any) -> dict[str, Any]:
    """End a run: record steps and wall time in ``logs``, write the last checkpoint, and export the weights to
    ``out_dir/final`` (and ``export`` when given) on the main process. Returns ``logs``."""
    logs["steps"] = final_step
    logs["wall_s"] = round(timer.elapsed(), 1)
    if acc.is_main_process:
        net = acc.unwrap_model(model)
        save_checkpoint(ckpt_path, model=net, optimizer=optimizer, step=final_step, sampler_state=sampler.state(),
                        extra={"wall_s": timer.elapsed()})
        for dst in [out_dir / "final"] + ([Path(export)] if export else []):
            export_weights(dst, model=net, model_config=net.config, train_config=cfg,
                           extra_config={"architecture": architecture}, metrics={"train": logs},
                           dtype=str(cfg.get("export_dtype", "float32")))
        log.info(f"done: {logs}")
    return logs
