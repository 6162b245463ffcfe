"""``python -m vlmir convert SRC --out DIR [--kind daclip|unet] [--config CFG]``: official checkpoints -> safetensors.

Turns an official DA-CLIP training checkpoint (``daclip_ViT-B-32.pt``: an open_clip training checkpoint whose keys
carry ``module.`` and a duplicated ``visual.*`` alias) or the official IR-SDE ``ConditionalUNet`` state dict
(``universal-ir.pth``) into ``DIR/model.safetensors`` + ``DIR/config.json``, the format vlmir loads without pickle.
The written weights are re-read and compared tensor by tensor before the command reports success.

Examples::

    python -m vlmir convert daclip_ViT-B-32.pt --out weights/daclip            # config inferred from the shapes
    python -m vlmir convert universal-ir.pth --out weights/universal-ir --kind unet
    python -m vlmir convert tiny.pt --out w/tiny --config '{"embed_dim": 32, "vision_cfg": {...}, "text_cfg": {...}}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("daclip", "unet")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert official DA-CLIP / IR-SDE checkpoints to model.safetensors + config.json",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("src", help="checkpoint file (.pt/.pth/.safetensors), a folder, or a registry name such as 'daclip'")
    p.add_argument("--out", required=True, help="output folder (created) for model.safetensors and config.json")
    p.add_argument("--kind", choices=KINDS, default="daclip", help="what SRC holds (default: daclip)")
    p.add_argument(
        "--config",
        default=None,
        help="model config as a JSON file or inline JSON: for daclip an open_clip config (embed_dim, vision_cfg, "
        "text_cfg) or an open_clip model name such as ViT-B-32 (default: inferred from the weights); for unet the "
        "ConditionalUNet arguments (default: the official universal-ir configuration)",
    )
    p.set_defaults(func=run)


def _read_config(spec: str | None, kind: str) -> dict[str, Any] | None:
    """Config from a JSON file, inline JSON, or (daclip) an open_clip model name."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        text = path.read_text()
    elif spec.lstrip().startswith("{"):
        text = spec
    elif kind == "daclip":
        import open_clip

        cfg = open_clip.get_model_config(spec)
        if cfg is None:
            raise ValueError(f"--config {spec!r} is neither a JSON file, inline JSON, nor an open_clip model name")
        return cfg
    else:
        raise ValueError(f"--config {spec!r} is neither a JSON file nor inline JSON")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--config must be a JSON object, got {type(cfg).__name__}")
    return cfg


def convert(src: str | Path, out: str | Path, *, kind: str = "daclip", config: dict[str, Any] | None = None) -> Path:
    """Convert ``src`` to ``out/model.safetensors`` + ``out/config.json`` and verify the round trip.

    Args:
        src: official checkpoint, state dict, safetensors file/folder, or (daclip) a registry name.
        out: output folder.
        kind: ``"daclip"`` or ``"unet"``.
        config: model config (see ``--config``); None to infer (daclip) or use the official one (unet).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: unknown ``kind``, bad config, or weights that do not fit (from the model loaders).
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(out)
    if kind == "daclip":
        from vlmir.models.daclip import DaCLIP

        model = DaCLIP.from_pretrained(src, clip_config=config)
        model.save_pretrained(out)
        again = DaCLIP.from_pretrained(out)
    else:
        from vlmir.models.irsde_unet import ConditionalUNet  # written alongside; imported only for unet

        model = ConditionalUNet.from_pretrained(src, **(config or {}))
        model.save_pretrained(out)
        again = ConditionalUNet.from_pretrained(out)
    a, b = model.state_dict(), again.state_dict()
    bad = [k for k in a if k not in b or not torch.equal(a[k].cpu(), b[k].cpu())]
    if bad or set(a) != set(b):
        raise RuntimeError(f"conversion round trip differs on {len(bad)} tensors, e.g. {bad[:5]}")
    return out


def run(args: argparse.Namespace) -> int:
    config = _read_config(args.config, args.kind)
    out = convert(args.src, args.out, kind=args.kind, config=config)
    n_files = sorted(p.name for p in out.iterdir())
    print(f"wrote {args.kind} weights to {out} ({', '.join(n_files)}); round trip verified")
    return 0
