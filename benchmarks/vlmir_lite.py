"""Benchmark of the lite VLMIR restorer on CPU: seconds per sampling step and per image, and per training step.

For each size (default 256 and 512 px): the stage-1 context (caption from the predicted type, LoRA-merged towers
on the image's views, the multi-token context) once, then ``--steps`` IR-SDE steps; reported are the context time,
the median seconds per step over the run and the whole ``restore`` call, best of ``--repeats`` (the least disturbed
by other load). The same UNet with DA-CLIP's one-token context (``context_mode="single"``) is timed beside it, so
the cost of the multi-token cross-attention is a ratio measured in one run. ``--train`` also times a stage-2
training step (batch and crop of the shipped config).

Run::

    python benchmarks/vlmir_lite.py                         # the shipped assets/weights/vlmir-lite
    python benchmarks/vlmir_lite.py --weights runs/vlmir_restorer/final --sizes 256 --repeats 2 --train
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def _time_restore(pipe, x: torch.Tensor, steps: int) -> dict[str, float]:
    per_step: list[float] = []
    last = [time.perf_counter()]

    def tick(i: int, total: int) -> None:
        now = time.perf_counter()
        per_step.append(now - last[0])
        last[0] = now

    t0 = time.perf_counter()
    with torch.inference_mode():
        ctx = pipe.encode(x)
        pipe.prepare(ctx)
    t_ctx = time.perf_counter() - t0
    t0 = time.perf_counter()
    last[0] = t0
    pipe.restore(x, steps=steps, seed=0, progress=tick)
    total = time.perf_counter() - t0
    return {"context_s": t_ctx, "step_s": statistics.median(per_step[1:] or per_step), "image_s": total}


def main(argv: list[str] | None = None) -> int:
    from vlmir.pipelines.vlmir import VLMIR_DIR, load_vlmir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(VLMIR_DIR), help="a VLMIR folder (pipeline.json, aligner/, unet/)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="also time a stage-2 training step")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipes = {mode: load_vlmir(args.weights, context_mode=mode) for mode in ("multi", "single")}
    steps = args.steps or pipes["multi"].default_steps or 20
    print(f"VLMIR {args.weights}: {steps} steps, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'size':>5} {'context':>8} {'context s':>10} {'s/step':>8} {'s/image':>8}")
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        for mode, pipe in pipes.items():
            runs = [_time_restore(pipe, x, steps) for _ in range(args.repeats)]
            best = {k: min(r[k] for r in runs) for k in runs[0]}
            results.append({"size": size, "context": mode, "steps": steps, **best})
            print(f"{size:>5} {mode:>8} {best['context_s']:>10.3f} {best['step_s']:>8.3f} {best['image_s']:>8.2f}")
    for size in sorted({r["size"] for r in results}):
        m, s = ([r for r in results if r["size"] == size and r["context"] == c][0] for c in ("multi", "single"))
        print(f"{size} px: multi-token / single-token time per step {m['step_s'] / s['step_s']:.2f}x")
    if args.train:
        results.append({"train_step_s": _train_step(Path(args.weights), args.repeats)})
        print(f"stage-2 training step: {results[-1]['train_step_s']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _train_step(folder: Path, repeats: int) -> float:
    """Seconds of one stage-2 optimisation step at the batch and crop of the run's config (best of ``repeats``)."""
    from vlmir.models.irsde_unet import ConditionalUNet
    from vlmir.models.vlmir import VLMIRAligner
    from vlmir.schedulers.irsde import IRSDEScheduler
    from vlmir.training.data import DataConfig, PairSampler
    from vlmir.training.train_vlmir import pair_captions, restorer_loss

    cfg = json.loads((folder / "train_config.json").read_text())
    aligner = VLMIRAligner.from_pretrained(folder / "aligner").eval()
    unet = ConditionalUNet.from_pretrained(folder / "unet").train()
    sched = IRSDEScheduler(**json.loads((folder / "pipeline.json").read_text())["scheduler"])
    sampler = PairSampler(DataConfig(**{"crop": aligner.image_size, **cfg.get("data", {})}), seed=0)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    times = []
    for _ in range(repeats):
        batch = sampler.sample(int(cfg.get("batch_size", 8)))
        caps = pair_captions(batch)[0]
        t0 = time.perf_counter()
        loss, _ = restorer_loss(unet, aligner, sched, batch, caps, context_mode=cfg.get("context_mode", "multi"),
                                use_captions=bool(cfg.get("use_captions", True)), crop=cfg.get("restore_crop"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times)


if __name__ == "__main__":
    raise SystemExit(main())
