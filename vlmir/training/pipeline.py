"""One config, one command: a shipped model's whole recipe as a list of stages run in order.

A config with a ``stages`` list describes every run that makes a model, from random weights to the exported
folder, so that ``python -m vlmir train <kind> --config vlmir/training/configs/<kind>.json`` reproduces it::

    {"kind": "encoder", "seed": 0, "threads": 2, "model": {...}, "data": {...},
     "stages": [
       {"name": "towers", "steps": 2000, "loss": {...}},
       {"name": "stats", "init_from": "@towers", "init_skip": ["stats_proj"], "train_only": ["stats_proj"],
        "model": {"stats_set": "full"}, "steps": 1500},
       {"name": "view_head", "init_from": "@stats", "steps": 0, "view_head": {...}}
     ]}

- Each stage's config is the top level (without ``stages``) updated by the stage: a mapping value (``model``,
  ``data``, ``loss``, ``view_head``, ...) updates the top level's mapping key by key, anything else replaces it.
  ``"model": {"stats_set": "full"}`` changes one model option and keeps the rest.
- A string ``"@name"`` (in ``init_from``, ``encoder`` or any other top-level value) is the ``final/`` folder of the
  earlier stage ``name`` in the same run folder.
- Stage ``name`` runs in ``OUT/name``; ``OUT/final`` receives a copy of the last stage's final weights, and
  ``--export`` the same.
- ``--resume``: a stage whose ``final/`` holds weights trained from this very stage config is skipped; the first
  one that does not is resumed from its checkpoint. Without ``--resume`` every stage runs anew.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_FINAL = ("model.safetensors", "train_config.json")


def is_pipeline(cfg: dict[str, Any]) -> bool:
    """Whether ``cfg`` is a staged config (it has a ``stages`` key)."""
    return "stages" in cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def expand_stages(cfg: dict[str, Any], out_dir: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, stage config)]`` of a staged config, with ``@name`` references resolved under ``out_dir``.

    Raises ``ValueError`` naming the problem: no stages, a stage that is not a mapping or has no valid ``name``,
    a repeated name, a stage that sets ``kind`` or ``stages``, or a reference to a stage that does not come before.
    """
    stages = cfg.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError("stages must be a non-empty list of stage mappings")
    base = {k: v for k, v in cfg.items() if k != "stages"}
    out_dir = Path(out_dir)
    done: list[str] = []
    expanded = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise ValueError(f"stage {i} must be a mapping, got {type(stage).__name__}")
        name = stage.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"stage {i} needs a name of letters, digits, '_' or '-' (starting with a letter), "
                             f"got {name!r}")
        if name in done or name == "final":
            raise ValueError(f"stage name {name!r} is repeated or reserved")
        for key in ("kind", "stages"):
            if key in stage:
                raise ValueError(f"stage {name!r} may not set {key!r}")
        merged = _merge(base, {k: v for k, v in stage.items() if k != "name"})
        for key, value in merged.items():
            if isinstance(value, str) and value.startswith("@"):
                ref = value[1:]
                if ref not in done:
                    raise ValueError(f"stage {name!r}: {key} refers to {value!r}, which is not an earlier stage "
                                     f"(earlier: {done or 'none'})")
                merged[key] = str(out_dir / ref / "final")
        merged["stage"] = name
        expanded.append((name, merged))
        done.append(name)
    return expanded


def _finished(stage_dir: Path, stage_cfg: dict[str, Any]) -> bool:
    final = stage_dir / "final"
    if not all((final / f).is_file() for f in _FINAL):
        return False
    return json.loads((final / "train_config.json").read_text()) == json.loads(json.dumps(stage_cfg))


def run_pipeline(cfg: dict[str, Any], out_dir: str | Path, train: Callable[..., dict[str, Any]], *,
                 resume: bool = False, export: str | Path | None = None, progress: bool = True,
                 steps: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage of a staged config with ``train(stage_cfg, stage_dir, resume=, export=, progress=)``.

    ``steps`` (``--steps``) replaces the steps of every stage that trains (a fitting stage with ``steps: 0``
    stays at 0). ``log`` gets one line per stage (default: ``OUT/train.log`` and stderr). Returns
    ``{stage name: the logs its train returned}`` (``{"skipped": True}`` for a finished stage skipped on resume).
    """
    from vlmir.training.common import copy_export, setup_logger

    out_dir = Path(out_dir)
    log = log or setup_logger(out_dir, "pipeline").info
    stages = expand_stages(cfg, out_dir)
    if steps is not None:
        stages = [(n, dict(c, steps=steps) if int(c.get("steps", 0)) > 0 else c) for n, c in stages]
    results: dict[str, dict[str, Any]] = {}
    for i, (name, stage_cfg) in enumerate(stages):
        stage_dir = out_dir / name
        if resume and _finished(stage_dir, stage_cfg):
            log(f"stage {i + 1}/{len(stages)} {name}: finished already ({stage_dir / 'final'}), skipped")
            results[name] = {"skipped": True}
            continue
        log(f"stage {i + 1}/{len(stages)} {name}: {stage_dir}")
        results[name] = train(stage_cfg, stage_dir, resume=resume, export=None, progress=progress)
    last = out_dir / stages[-1][0] / "final"
    for dst in [out_dir / "final"] + ([Path(export)] if export else []):
        copy_export(last, dst)
    (out_dir / "pipeline.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return results
