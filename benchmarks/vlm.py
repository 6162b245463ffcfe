"""Benchmark of the VLM rater (WResVLM's r^vlm): seconds per image at batch 1 and batch 8.

Always runs two tiny random LLaVAs built here (``tiny``: 16 image tokens; ``tiny-576``: LLaVA-1.5's 576 image tokens
at 336 px with narrow towers), then a real VLM when a CUDA device is present and its weights are in the local
Hugging Face cache (or given as a folder); otherwise that part is skipped with a message.

Usage::

    python benchmarks/vlm.py                          # tiny models on CPU (+ llava-1.5-7b on CUDA when cached)
    python benchmarks/vlm.py --real smolvlm-256m --real-device cpu
    python benchmarks/vlm.py --real /models/llava-1.5-7b-hf --dtype float16 --quantization 4bit

Prints one JSON object a line: ``{"model", "device", "dtype", "batch_size", "images", "s_per_image", "score_mean"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmir.vlm.rater import load_rater  # noqa: E402
from vlmir.vlm.tiny import save_tiny_llava  # noqa: E402

TINY = {"tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32},
        "tiny-576": {"image_size": 336, "patch_size": 14, "hidden_size": 64}}


def _images(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, size, size + 32, generator=g) for _ in range(n)]


def bench(rater, images: list[torch.Tensor], batch_size: int, repeats: int) -> dict:
    rater.rate_batch(images[:batch_size], batch_size=batch_size)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = rater.rate_batch(images, batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    param = next(rater.model.parameters())
    return {
        "model": rater.name, "device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
        "batch_size": batch_size, "images": len(images), "s_per_image": best / len(images),
        "score_mean": sum(o["score"] for o in out) / len(out), "random_weights": rater.random_weights,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="images per timing run (default 16)")
    ap.add_argument("--image-size", type=int, default=256, help="input image height in pixels (default 256)")
    ap.add_argument("--repeats", type=int, default=2, help="timing runs; the best is reported (default 2)")
    ap.add_argument("--real", default="llava-1.5-7b", help="real rater: registry name, folder or hub id")
    ap.add_argument("--real-device", default=None, help="device of the real rater (default cuda when present)")
    ap.add_argument("--dtype", default=None, help="dtype of the real rater (default float16 on CUDA)")
    ap.add_argument("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes (CUDA only)")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args(argv)
    images = _images(args.images, args.image_size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load:.1f}; "
          f"images {args.image_size}x{args.image_size + 32}", flush=True)
    if not args.skip_tiny:
        with tempfile.TemporaryDirectory() as tmp:
            for name, cfg in TINY.items():
                folder = save_tiny_llava(Path(tmp) / name, **cfg)
                rater = load_rater(str(folder), random_weights=True)
                rater.name = name
                for bs in (1, 8):
                    print(json.dumps(bench(rater, images, bs, args.repeats)), flush=True)
    device = args.real_device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print(f"# skipped the real rater {args.real!r}: no CUDA device (pass --real-device cpu to run it on CPU)")
        return 0
    try:
        rater = load_rater(args.real, device=device, dtype=args.dtype, quantization=args.quantization)
    except (FileNotFoundError, RuntimeError, ValueError, ImportError) as e:
        print(f"# skipped the real rater {args.real!r}: {e}")
        return 0
    for bs in (1, 8):
        print(json.dumps(bench(rater, images, bs, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
