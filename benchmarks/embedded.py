"""Latency and peak memory of the embedded default models at 512x512 on this CPU.

``python benchmarks/embedded.py [--size 512] [--runs 5] [--threads 2] [--ensembles 1,2] [--json OUT]`` prints,
per task, the median wall time of ``restore``, ``classify`` and ``rate`` over ``--runs`` runs after one warm-up, the
peak Python heap growth during one call (``tracemalloc``; torch's own buffers are not traced) and the process's peak resident set
size (``resource.getrusage``, which includes the models and the interpreter).

The input is scikit-image's astronaut at ``--size`` px, clean and degraded by each of the ten types (severity 3,
seed 0): the restorer's time depends on the type the encoder predicts, since the classical method of that type
gives its prior (non-local means for noise and low light is the slowest). Per task it prints the median over
all inputs and the slowest input's median. The restorer runs with its default flip self-ensemble and, for
``--ensembles``, with each of those pass counts too (``restorer_ensemble_N``), in the same process, so the cost of
the ensemble reads as a ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _bench(fn, x, runs: int) -> dict:
    fn(x)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs,
            "tracemalloc_peak_mib": peak / 2**20}


def _inputs(size: int) -> dict:
    import cv2
    import torch
    from skimage import data

    from vlmir.degradations import DEGRADATIONS, degrade

    img = cv2.resize(data.astronaut().astype("float32") / 255, (size, size), interpolation=cv2.INTER_AREA)
    arrays = {"clean": img} | {t: degrade(img, t, 3, seed=0)[0] for t in DEGRADATIONS}
    return {k: torch.from_numpy(a.transpose(2, 0, 1).copy()).float()[None].clamp(0, 1) for k, a in arrays.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ensembles", default="", help="comma-separated flip self-ensemble pass counts to time the "
                    "restorer with, besides its default (1, 2, 4)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    import torch

    from vlmir.registry import create_model

    torch.set_num_threads(args.threads)
    inputs = _inputs(args.size)
    results = {"size": args.size, "threads": args.threads, "torch": torch.__version__, "inputs": list(inputs)}
    runs = [("restorer", "embedded", "restore", None)]
    runs += [(f"restorer_ensemble_{int(e)}", "embedded", "restore", int(e)) for e in args.ensembles.split(",") if e]
    runs += [("classifier", "embedded-classifier", "classify", None), ("rater", "embedded-rater", "rate", None)]
    models: dict = {}
    for task, name, method, ensemble in runs:
        if name not in models:  # one load per model, shared by its runs
            models[name] = create_model(name)
        model = models[name]
        fn = getattr(model, method)
        if ensemble is not None:
            fn = lambda x, fn=fn, e=ensemble: fn(x, ensemble=e)  # noqa: E731
        else:
            ensemble = getattr(model, "ensemble", None)
        per = {k: _bench(fn, x, args.runs) for k, x in inputs.items()}
        medians = {k: v["median_s"] for k, v in per.items()}
        slowest = max(medians, key=medians.get)
        r = {"median_s": statistics.median(medians.values()), "slowest_input": slowest,
             "slowest_median_s": medians[slowest], "per_input_median_s": medians,
             "tracemalloc_peak_mib": max(v["tracemalloc_peak_mib"] for v in per.values()),
             "runs": args.runs, "random_weights": bool(model.random_weights)}
        if ensemble is not None:
            r["ensemble"] = ensemble
        results[task] = r
        label = name if task in ("restorer", "classifier", "rater") else f"{name} x{ensemble}"
        print(f"{label:22s} {method:9s} median {r['median_s']:.3f} s  slowest {r['slowest_median_s']:.3f} s "
              f"({slowest})  tracemalloc peak {r['tracemalloc_peak_mib']:.1f} MiB", flush=True)
    results["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {results['max_rss_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
