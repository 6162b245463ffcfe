"""``python -m vlmir train <kind> --config FILE [--out DIR] [--resume] [--export DIR]``.

Trains one of the embedded default models (``encoder``, ``restorer``, ``rater``), a restorer by WResVLM's
semi-supervised method (``wresvlm``, :mod:`vlmir.training.wresvlm`), or a stage of VLMIR (``vlmir-align``: LoRA
caption alignment and the degradation predictor; ``vlmir-restorer``: the cross-attention IR-SDE restorer on a
trained stage 1) from a JSON/YAML config (``vlmir/training/configs/*.json`` are the configs of the shipped
weights). ``--out`` holds the log, ``checkpoint.pt`` (resumable with ``--resume``) and the
final weights in ``final/``; ``--export`` also writes the final weights (``model.safetensors``, ``config.json``,
``train_config.json``, ``metrics.json``) to a folder such as ``assets/weights/embedded-encoder``.

A config with ``stages`` (:mod:`vlmir.training.pipeline`) runs a whole recipe: every stage in ``OUT/<stage>``, the
last one's weights copied to ``OUT/final`` (and ``--export``); ``--resume`` skips the finished stages; ``--steps``
sets the steps of every stage that trains.
"""

from __future__ import annotations

import argparse

from vlmir.training.common import KINDS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an embedded default model, a WResVLM restorer or a VLMIR stage",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, help="which model to train")
    p.add_argument("--config", required=True, help="training config (.json/.yaml)")
    p.add_argument("--out", default=None, help="run folder (default runs/<kind>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--export", default=None, help="also write the final weights to this folder")
    p.add_argument("--steps", type=int, default=None, help="override the config's number of steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.set_defaults(func=_run)


def trainer(kind: str):
    """The ``train(cfg, out_dir, *, resume, export, progress)`` function of a model kind."""
    if kind == "encoder":
        from vlmir.training.train_encoder import train
    elif kind == "restorer":
        from vlmir.training.train_restorer import train
    elif kind == "wresvlm":
        from vlmir.training.wresvlm import train
    elif kind == "vlmir-align":
        from vlmir.training.train_vlmir import train_align as train
    elif kind == "vlmir-restorer":
        from vlmir.training.train_vlmir import train_restorer as train
    elif kind == "rater":
        from vlmir.training.train_rater import train
    else:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    return train


def _run(args: argparse.Namespace) -> int:
    from vlmir.training.common import load_config
    from vlmir.training.pipeline import is_pipeline, run_pipeline

    cfg = load_config(args.config)
    if cfg["kind"] != args.kind:
        raise ValueError(f"config {args.config} is for {cfg['kind']!r}, not {args.kind!r}")
    if args.steps is not None and args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    out = args.out or f"runs/{args.kind}"
    train = trainer(args.kind)
    if is_pipeline(cfg):
        run_pipeline(cfg, out, train, resume=args.resume, export=args.export, progress=not args.no_progress,
                     steps=args.steps)
        return 0
    if args.steps is not None:
        cfg["steps"] = args.steps
    train(cfg, out, resume=args.resume, export=args.export, progress=not args.no_progress)
    return 0
