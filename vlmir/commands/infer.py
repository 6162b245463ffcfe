"""``restore``, ``classify`` and ``rate``: the three inference commands, over the registry's task contracts.

Each command loads its model once and runs it over every path given. An image that cannot be read is reported on
stderr and skipped (the others still run); the exit code is then 1. JSON output is one object per line, as
``../shared/DESIGN.md`` fixes it::

    python -m vlmir restore a.jpg b.png --out-dir out/          # out/a.png, out/b.png, same sizes as the inputs
    python -m vlmir classify a.jpg --json                      # {"path": ..., "label": ..., "probs": {...}}
    python -m vlmir rate a.jpg --json                          # {"path": ..., "score": r, "vlm_vis": ..., "probs": {...}}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("images", nargs="+", metavar="IMG", help="input image files")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    common.add_argument("--max-pixels", type=int, default=None, help="largest accepted W*H (default: 40 MP)")

    p = sub.add_parser("restore", parents=[common], help="restore degraded images")
    p.add_argument("--out-dir", required=True, help="folder for the restored PNGs (<stem>.png)")
    p.add_argument("--model", default=None, help="restorer name (default: the embedded model); see list-models")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for diffusion restorers")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels for large images")
    p.add_argument("--type", dest="degradation", default=None, help="degradation type, for restorers that take one")
    p.add_argument("--weights-dir", default=None, help="folder holding the model's weight files (e.g. the official "
                   "DA-CLIP daclip_ViT-B-32.pt and universal-ir.pth)")
    p.set_defaults(func=run_restore)

    p = sub.add_parser("classify", parents=[common], help="predict the degradation type")
    p.add_argument("--model", default=None, help="classifier name (default: the embedded model)")
    p.add_argument("--weights-dir", default=None, help="folder holding the model's weight files")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run_classify)

    p = sub.add_parser("rate", parents=[common], help="rate visibility (WResVLM r and VLM-Vis)")
    p.add_argument("--rater", default=None, help="rater name or a local VLM folder (default: the embedded rater)")
    p.add_argument("--prompt", default=None,
                   help="VLM raters: visibility (WResVLM, default), quality (Q-Align style) or a custom question")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run_rate)

    p = sub.add_parser("describe", parents=[common], help="describe the scene with weather information (VLM raters)")
    p.add_argument("--rater", required=True, help="a VLM rater name or local model folder (e.g. llava-1.5-7b)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per line, with the weather-free rewrite")
    p.set_defaults(func=run_describe)

    p = sub.add_parser("list-models", help="list the registered models and whether they are available")
    p.add_argument("--task", default=None, help="restorer, classifier, rater or encoder")
    p.set_defaults(func=run_list)


def _warn_random(model) -> None:
    if getattr(model, "random_weights", False):
        print(f"warning: model {getattr(model, 'name', '?')!r} has RANDOM weights; its output means nothing",
              file=sys.stderr)


def _weights(args) -> dict:
    return {"weights_dir": args.weights_dir} if getattr(args, "weights_dir", None) else {}


def _images(args):
    """Yield ``(path, tensor)`` for each readable input; report and count the unreadable ones."""
    from vlmir.io import load_image

    args._failed = 0
    for path in args.images:
        try:
            yield path, load_image(path, max_pixels=args.max_pixels)
        except ValueError as e:
            args._failed += 1
            print(f"error: {e}; skipped", file=sys.stderr)


def run_restore(args) -> int:
    import torch

    from vlmir.io import save_image
    from vlmir.registry import create_model

    out_dir = Path(args.out_dir)
    stems: dict[str, str] = {}
    for path in args.images:
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{path!r} and {stems[stem]!r} would both be written to {out_dir / (stem + '.png')}; "
                             "restore them in separate runs or rename one")
        stems[stem] = path
    model = create_model(args.model, task="restorer", device=args.device, **_weights(args))
    _warn_random(model)
    kwargs = {"steps": args.steps, "seed": args.seed, "tile": args.tile}
    if args.degradation is not None:
        kwargs["degradation"] = args.degradation
    for path, x in _images(args):
        with torch.inference_mode():
            y = model.restore(x.to(args.device), **kwargs)
        if tuple(y.shape) != tuple(x.shape):
            raise RuntimeError(f"restorer {args.model!r} returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
        out = save_image(y.cpu(), out_dir / f"{Path(path).stem}.png")
        print(out)
    return 1 if args._failed else 0


def run_classify(args) -> int:
    import torch

    from vlmir.registry import create_model

    model = create_model(args.model, task="classifier", device=args.device, **_weights(args))
    _warn_random(model)
    for path, x in _images(args):
        with torch.inference_mode():
            probs = {k: float(v) for k, v in model.classify(x.to(args.device)).items()}
        label = max(probs, key=probs.get)
        if args.json:
            row = {"path": path, "label": label, "probs": probs}
            if getattr(model, "random_weights", False):
                row["random_weights"] = True
            print(json.dumps(row), flush=True)
        else:
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
            print(f"{path}: {label}  (" + ", ".join(f"{k} {v:.3f}" for k, v in top) + ")", flush=True)
    return 1 if args._failed else 0


def run_rate(args) -> int:
    import torch

    from vlmir.vlm.rater import load_rater

    kwargs = {"prompt": args.prompt} if args.prompt else {}
    model = load_rater(args.rater, device=args.device, **kwargs)
    _warn_random(model)
    for path, x in _images(args):
        with torch.inference_mode():
            res = model.rate(x.to(args.device))
        probs = {k: float(res["probs"][k]) for k in ("excellent", "good", "fair", "poor", "bad")}
        score = float(res["score"])
        if args.json:
            row = {"path": path, "score": score, "vlm_vis": (score - 1.0) / 4.0, "probs": probs}
            if getattr(model, "random_weights", False):
                row["random_weights"] = True
            print(json.dumps(row), flush=True)
        else:
            print(f"{path}: r = {score:.3f}, VLM-Vis = {(score - 1) / 4:.3f}", flush=True)
    return 1 if args._failed else 0


def run_list(args) -> int:
    from vlmir.registry import get_spec, list_models

    for name in list_models(task=args.task):
        spec = get_spec(name)
        ok, reason = spec.availability()
        flag = "default" if spec.default else ""
        state = "available" if ok else f"unavailable: {reason}"
        print(f"{name:24s} {spec.task:10s} {flag:7s} {state}  {spec.description}")
    return 0


def run_describe(args) -> int:
    import torch

    from vlmir.vlm import remove_weather
    from vlmir.vlm.rater import load_rater

    model = load_rater(args.rater, device=args.device)
    if not hasattr(model, "describe"):
        raise ValueError(f"rater {args.rater!r} cannot describe scenes; use a VLM rater (list-models --task rater)")
    _warn_random(model)
    for path, x in _images(args):
        with torch.inference_mode():
            text = model.describe(x.to(args.device), max_new_tokens=args.max_new_tokens, seed=args.seed)
        if args.json:
            print(json.dumps({"path": path, "description": text, "weather_free": remove_weather(text)}), flush=True)
        else:
            print(f"{path}: {text}", flush=True)
    return 1 if args._failed else 0
