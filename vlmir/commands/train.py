"""``python -m vlmir train <kind> --config FILE [--out DIR] [--resume] [--export DIR]``.

Trains one of the embedded default models (``encoder``, ``restorer``, ``rater``), a restorer by WResVLM's
semi-supervised method (``wresvlm``, :mod:`vlmir.training.wresvlm`), or a stage of VLMIR (``vlmir-align``: LoRA
caption alignment and the degradation predictor; ``vlmir-restorer``: the cross-attention IR-SDE restorer on a
trained stage 1) from a JSON/YAML config (``vlmir/training/configs/*.json`` are the configs of the shipped
weights). ``--out`` holds the log, ``checkpoint.pt`` (resumable with ``--resume``) and the
final weights in ``final/``; ``--export`` also writes the final weights (``model.safetensors``, ``config.json``,
``train_config.json``, ``metrics.json``) to a folder such as ``assets/weights/embedded-encoder``.
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


def _run(args: argparse.Namespace) -> int:
    from vlmir.training.common import load_config

    cfg = load_config(args.config)
    if cfg["kind"] != args.kind:
        raise ValueError(f"config {args.config} is for {cfg['kind']!r}, not {args.kind!r}")
    if args.steps is not None:
        if args.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {args.steps}")
        cfg["steps"] = args.steps
    out = args.out or f"runs/{args.kind}"
    if args.kind == "encoder":
        from vlmir.training.train_encoder import train
    elif args.kind == "restorer":
        from vlmir.training.train_restorer import train
    elif args.kind == "wresvlm":
        from vlmir.training.wresvlm import train
    elif args.kind == "vlmir-align":
        from vlmir.training.train_vlmir import train_align as train
    elif args.kind == "vlmir-restorer":
        from vlmir.training.train_vlmir import train_restorer as train
    else:
        from vlmir.training.train_rater import train
    train(cfg, out, resume=args.resume, export=args.export, progress=not args.no_progress)
    return 0
