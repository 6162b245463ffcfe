"""Throughput of the eval module: images per second for the weight-free metrics (and the embedded VLM-Vis rater).

Run: ``python benchmarks/eval.py [--n 24] [--size 256] [--device cpu] [--batch-size 8]``. Builds a synthetic dataset
D/{gt,noisy}/{rain,snow}/<img> in a temp folder and times ``eval.run`` per metric with an empty cache (model load
excluded: a second, separate timing shows it), so the number is scoring speed, images loaded from disk included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# this file is named eval.py: keep its own folder off sys.path so that `import eval` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WEIGHT_FREE = ("psnr", "ssim", "ms_ssim", "gmsd", "fsim", "vif", "cw_ssim", "nlpd", "vsi", "mad", "piqe", "entropy")


def make_dataset(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cat = ("rain", "snow")[i % 2]
        yy, xx = np.mgrid[0:size, 0:size]
        gt = np.stack([(xx * 255 / size), (yy * 255 / size), ((xx + yy) % 64) * 4], -1)
        gt = np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
        noisy = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
        for method, img in (("gt", gt), ("noisy", noisy)):
            d = root / method / cat
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=24, help="images per method")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--metrics", default=",".join(WEIGHT_FREE))
    args = p.parse_args()

    import torch

    from eval.metrics import create_metric
    from eval.runner import compute_scores
    from vlmir.registry import list_models

    torch.set_num_threads(max(1, torch.get_num_threads()))
    metrics = [m for m in args.metrics.split(",") if m]
    raters = [r for r in list_models(task="rater") if "embedded" in r]
    if raters:
        metrics.append("vlm_vis")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, args.n, args.size)
        print(f"{args.n} images of {args.size}x{args.size} on {args.device}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads")
        print(f"{'metric':<10} {'load s':>8} {'img/s':>8}  {'mean score':>10}")
        for m in metrics:
            rater = raters[0] if m == "vlm_vis" else None
            create_metric(m, device=args.device, rater=rater)  # first build pays the imports
            t0 = time.perf_counter()
            create_metric(m, device=args.device, rater=rater)
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            df, _ = compute_scores(root, [m], "gt", device=args.device, batch_size=args.batch_size,
                                   rater=raters[0] if m == "vlm_vis" else None, verbose=False)
            dt = max(time.perf_counter() - t0 - load, 1e-9)  # compute_scores builds the metric once (warm): subtract it
            name = f"{m}({raters[0]})" if m == "vlm_vis" else m
            print(f"{name:<10} {load:8.2f} {len(df) / max(dt, 1e-9):8.2f}  {df['score'].mean():10.4f}")


if __name__ == "__main__":
    main()
