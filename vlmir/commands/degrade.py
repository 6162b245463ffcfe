"""``degrade`` and ``make-dataset``: synthesise degraded images and paired, captioned training sets.

::

    python -m vlmir degrade photo.jpg --type hazy --severity 3 --seed 0 --out hazy.png
    python -m vlmir degrade photo.jpg --type rainy,motion-blurry --severity 2,1 --seed 7 --out mix.png
    python -m vlmir make-dataset --src photos/ --out data/ --per-image 4 --severities 1-5 --mixtures 0.2 \\
        --seed 0 --size 256 [--caption-model PATH_OR_HUB_ID]

``degrade`` prints the degradation metadata as one JSON object (types, severity, seed, visibility,
visibility_score, plus path and out). ``make-dataset`` writes ``OUT/LQ``, ``OUT/GT``, ``OUT/meta.jsonl`` and
``OUT/daclip_train.csv`` (see :mod:`vlmir.degradations.dataset`).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("degrade", help="apply a synthetic degradation (or a mixture) to an image")
    p.add_argument("image", metavar="IMG", help="input image file")
    p.add_argument("--type", dest="types", required=True, help="degradation type, or several joined by commas")
    p.add_argument("--severity", default="3", help="1..5, or one per type joined by commas (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--max-pixels", type=int, default=None, help="largest accepted W*H (default: 40 MP)")
    p.set_defaults(func=run_degrade)

    p = sub.add_parser("make-dataset", help="build a paired LQ/GT dataset with DA-CLIP caption CSV")
    p.add_argument("--src", required=True, help="folder of clean images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--types", default=None, help="comma-separated degradation types to draw from (default: all ten)")
    p.add_argument("--per-image", type=int, default=1, help="degraded versions per source image (default: 1)")
    p.add_argument("--severities", default="1-5", help="severities to draw from: a range 1-5 or a list 1,3,5")
    p.add_argument("--mixtures", type=float, default=0.0, help="probability of a mixture of 2-3 types (default: 0)")
    p.add_argument("--clean", type=float, default=0.0, help="probability of an undegraded sample (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="root random seed (default: 0)")
    p.add_argument("--size", type=int, default=None, help="resize + centre-crop sources to SIZE x SIZE first")
    p.add_argument("--caption-model", default=None, help="local captioning model folder or hub id (default: none)")
    p.add_argument("--caption-vlm", default=None,
                   help="caption with a VLM's scene description instead (vlmir.vlm VisibilityRater.describe): a "
                        "registry rater name such as llava-1.5-7b, a local folder or a cached hub id")
    p.add_argument("--device", default="cpu", help="torch device for the captioning model (default: cpu)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest accepted source W*H (default: 40 MP)")
    p.set_defaults(func=run_make_dataset)


def _severity_arg(text: str) -> int | list[int]:
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--severity must be an integer 1..5 or a comma-separated list, got {text!r}")
    values = [int(p) for p in parts]
    return values[0] if len(values) == 1 else values


def run_degrade(args: argparse.Namespace) -> int:
    from vlmir.degradations import degrade, parse_types
    from vlmir.io import load_image, save_image, to_numpy

    if not str(args.out).lower().endswith(".png"):
        raise ValueError(f"--out must be a .png file (lossless), got {args.out!r}")
    types = parse_types(args.types)
    if not types:
        raise ValueError("--type must name at least one degradation type")
    severity = _severity_arg(args.severity)
    image = to_numpy(load_image(args.image, max_pixels=args.max_pixels))
    out, meta = degrade(image, types, severity, args.seed)
    save_image(out, args.out)
    print(json.dumps({**meta, "path": str(args.image), "out": str(args.out)}))
    return 0


class VLMCaptioner:
    """Captions from a VLM's scene description (:meth:`vlmir.vlm.VisibilityRater.describe`, greedy), for
    ``make-dataset``: ``captioner(hwc_image) -> str``; ``name`` is the model, as the caption cache records it."""

    def __init__(self, name_or_path: str, *, device: str = "cpu") -> None:
        from vlmir.vlm.rater import load_rater

        self.rater = load_rater(name_or_path, device=device)
        if not callable(getattr(self.rater, "describe", None)):
            raise ValueError(f"rater {name_or_path!r} cannot describe images; give a VLM")
        self.name = str(name_or_path)

    def __call__(self, image) -> str:
        from vlmir.degradations.dataset import clean_caption
        from vlmir.io import from_numpy

        return clean_caption(self.rater.describe(from_numpy(image)))


def run_make_dataset(args: argparse.Namespace) -> int:
    from vlmir.degradations import DEGRADATIONS
    from vlmir.degradations.dataset import Captioner, make_dataset, parse_severities

    severities = parse_severities(args.severities)
    captioner = None
    if args.caption_model and args.caption_vlm:
        raise ValueError("give --caption-model or --caption-vlm, not both")
    if args.caption_vlm:
        captioner = VLMCaptioner(args.caption_vlm, device=args.device)
        print(f"captions from the VLM {captioner.name!r}", file=sys.stderr)
    elif args.caption_model:
        captioner = Captioner(args.caption_model, device=args.device)
        print(f"captions from {args.caption_model!r}", file=sys.stderr)
    else:
        print(
            "notice: no --caption-model given, so no captioner is used; titles are the degradation names alone "
            "(e.g. 'hazy') instead of '<caption>: <degradation>'",
            file=sys.stderr,
        )
    summary = make_dataset(
        args.src,
        args.out,
        types=args.types if args.types else DEGRADATIONS,
        per_image=args.per_image,
        severities=severities,
        p_mixture=args.mixtures,
        p_clean=args.clean,
        seed=args.seed,
        size=args.size,
        captioner=captioner,
        max_pixels=args.max_pixels,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(json.dumps(summary))
    return 0
