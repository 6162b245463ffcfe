"""Benchmark of the classical restorer: seconds per degradation type and PSNR gain per type.

For each of DA-CLIP's ten types, every photo (``skimage.data``, no download) is degraded by
:func:`vlmir.degradations.degrade` at each severity with a fixed seed, restored by the matching classical method,
and the PSNR against the clean photo is compared before and after. Timing runs the method on the 512 x 512
astronaut degraded at severity 3 (best of ``--repeat`` runs, single process; OpenCV may use several threads).

Run::

    python benchmarks/classical.py                       # 4 photos, severities 2 and 3, 512 px timing
    python benchmarks/classical.py --photos astronaut --severities 3 --repeat 1
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from vlmir.degradations import degrade
from vlmir.models.classical import METHODS

TYPES = [t for t in METHODS if t != "clear"]


def _photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.float32) / 255.0


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="astronaut,coffee,chelsea,rocket", help="skimage.data photo names")
    parser.add_argument("--severities", default="2,3", help="comma-separated severities 1..5")
    parser.add_argument("--size", type=int, default=512, help="side of the square timing image")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per type (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    photos = {n: _photo(n) for n in args.photos.split(",") if n}
    severities = [int(s) for s in args.severities.split(",") if s]
    timing_img = cv2.resize(_photo("astronaut"), (args.size, args.size), interpolation=cv2.INTER_AREA)

    print(f"photos: {', '.join(f'{n} {p.shape[1]}x{p.shape[0]}' for n, p in photos.items())}; severities {severities}")
    print(f"| type | s/image at {args.size}x{args.size} | PSNR in (dB) | PSNR out (dB) | gain (dB) | min gain (dB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in TYPES:
        fn = METHODS[kind]
        lq, _ = degrade(timing_img, kind, 3, seed=args.seed)
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            fn(lq)
            best = min(best, time.perf_counter() - t0)
        before, after = [], []
        for i, img in enumerate(photos.values()):
            for s in severities:
                lq, _ = degrade(img, kind, s, seed=args.seed + i)
                before.append(_psnr(img, lq))
                after.append(_psnr(img, fn(lq)))
        gains = np.array(after) - np.array(before)
        print(
            f"| {kind} | {best:.3f} | {np.mean(before):.2f} | {np.mean(after):.2f} | {gains.mean():+.2f} | "
            f"{gains.min():+.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
