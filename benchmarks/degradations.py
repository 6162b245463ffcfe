"""Throughput of the degradation engine on this CPU: images per second per type (and mixtures).

Run: ``python benchmarks/degradations.py [--size 512] [--repeats 7] [--severity 3]``

Each row degrades a real photo (scikit-image's astronaut, resized to SIZE x SIZE) REPEATS times with fixed seeds
0..REPEATS-1 after one warm-up call, and reports the median time per image and its inverse. Single-threaded
OpenCV by default (``--threads``), as a data-loader worker would run it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vlmir.degradations import DEGRADATIONS, degrade  # noqa: E402

MIXTURES = (("hazy", "noisy"), ("rainy", "motion-blurry", "jpeg-compressed"))


def bench(img: np.ndarray, types, severity: int, repeats: int) -> float:
    """Median seconds per call of ``degrade(img, types, severity, seed)`` over seeds 0..repeats-1."""
    degrade(img, types, severity, seed=123)  # warm-up
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        degrade(img, types, severity, seed=seed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="square image side in pixels (default 512)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per row (default 7)")
    ap.add_argument("--severity", type=int, default=3, help="severity 1..5 (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1)")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    img = cv2.resize(data.astronaut().astype(np.float32) / 255.0, (args.size, args.size), interpolation=cv2.INTER_AREA)
    rows = [(t, (t,)) for t in DEGRADATIONS] + [(" + ".join(m), m) for m in MIXTURES]
    print(
        f"degradations at {args.size}x{args.size}, severity {args.severity}, median of {args.repeats}, "
        f"{args.threads} OpenCV thread(s)"
    )
    print(f"| {'type':<42} | {'ms / image':>10} | {'images / s':>10} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 12}|")
    for label, types in rows:
        sec = bench(img, list(types), args.severity, args.repeats)
        print(f"| {label:<42} | {sec * 1e3:>10.1f} | {1.0 / sec:>10.1f} |")


if __name__ == "__main__":
    main()
