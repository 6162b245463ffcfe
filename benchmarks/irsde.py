"""Benchmark of the IR-SDE restorer: seconds per UNet step (port vs optimised) and the cost of fewer steps.

1. Speed. The full-size official ConditionalUNet (nf=64, ch_mult=[1, 2, 4, 8], context_dim=512, both contexts;
   random weights: timing does not depend on them) runs one noise prediction at each size, in three variants:

   - ``port``: the straightforward port (``set_fast(False)``): explicit attention matrices, contexts projected at
     every step, contiguous (NCHW) tensors;
   - ``fast``: ``set_fast(True)`` with the per-image :meth:`ConditionalUNet.prepare_context` cache (prompt
     embedding and the one-token cross-attentions computed once), ``scaled_dot_product_attention``, fused
     elementwise ops, in ``inference_mode``;
   - ``fast+cl``: ``fast`` in channels-last memory format.

   Rounds are interleaved and the best of ``--repeats`` is reported (the least disturbed by other load); the
   outputs of every variant are compared with the port's (max abs difference).

2. Fewer steps. ``IRSDEScheduler.set_timesteps(n)`` strides the schedule. With a denoiser of fixed quality (an
   oracle: the true noise of the current state plus N(0, 0.05^2) error, the error level of the reference fixture's
   recorded estimates) on the fixture's 32x32 gt/lq pair, the output of n steps is compared (PSNR) with the
   100-step output and with gt, in both modes, averaged over seeds; then the tiny random-weight fixture pipeline's
   n-step output is compared with its 100-step output (same seed).

Run::

    python benchmarks/irsde.py                            # 256 and 512 px, 3 repeats, then the step study
    python benchmarks/irsde.py --sizes 256 --repeats 5 --skip-steps
    python benchmarks/irsde.py --threads 1 --cpu-time --skip-steps     # robust numbers on a shared machine
    python benchmarks/irsde.py --skip-timing --real photo.png           # steps vs quality of the official model

Measured (2-core shared VM, torch 2.14 CPU, one thread, process CPU time, best of 3; outputs within 7e-7 of the port):

    size  port s/step  fast s/step  fast+channels-last s/step  speed-up
     256        2.435        2.024                      1.531     1.59x
     512       16.158       10.438                      7.288     2.22x

Fewer steps (oracle denoiser at the fixture's error level): posterior PSNR vs gt 74.74 / 74.70 / 74.69 / 74.76 dB at
100 / 50 / 20 / 10 steps; sde 48.65 / 48.73 / 48.69 / 48.72 dB, i.e. no loss from the sampler itself. The tiny
random-weight UNet moves far (PSNR vs its 100-step output 15.3 / 10.8 / 8.4 dB at 50 / 20 / 10 steps): a
trained model is needed for a quality figure (``--real``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from vlmir.models.irsde_unet import OFFICIAL_CONFIG, ConditionalUNet
from vlmir.schedulers.irsde import IRSDEScheduler

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "daclip_reference"
VARIANTS = ("port", "fast", "fast+cl")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_unet(size: int, device: torch.device, repeats: int, cpu_time: bool = False) -> dict[str, dict[str, float]]:
    """Seconds per UNet step for each variant at ``size`` x ``size``; and the max abs difference to the port."""
    torch.manual_seed(0)
    unet = ConditionalUNet(**OFFICIAL_CONFIG).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g).to(device)
    lq = torch.rand(1, 3, size, size, generator=g).to(device)
    image_ctx = torch.randn(1, 512, generator=g).to(device)
    degra_ctx = torch.randn(1, 512, generator=g).to(device)
    t = 50
    clock = time.process_time if cpu_time else time.perf_counter

    def run(variant: str) -> tuple[float, torch.Tensor]:
        cl = variant == "fast+cl"
        unet.set_fast(variant != "port")
        unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        xs = x.contiguous(memory_format=torch.channels_last) if cl else x
        ls = lq.contiguous(memory_format=torch.channels_last) if cl else lq
        with torch.inference_mode():
            # the per-image work is done once per image, outside the per-step timing
            ctx = unet.prepare_context(degra_ctx, image_ctx) if variant != "port" else None
            _sync(device)
            t0 = clock()
            if ctx is None:
                out = unet(xs, ls, t, text_context=degra_ctx, image_context=image_ctx)
            else:
                out = unet(xs, ls, t, context=ctx)
            _sync(device)
        return clock() - t0, out.float().contiguous()

    for v in VARIANTS:  # warm-up (allocator, oneDNN/cuDNN kernel selection)
        run(v)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    diffs: dict[str, float] = {v: 0.0 for v in VARIANTS}
    for _ in range(repeats):
        ref = None
        for v in VARIANTS:
            sec, out = run(v)
            times[v].append(sec)
            if v == "port":
                ref = out
            else:
                diffs[v] = max(diffs[v], (out - ref).abs().max().item())
    return {v: {"best": min(times[v]), "median": statistics.median(times[v]), "max_diff": diffs[v]} for v in VARIANTS}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def step_study(steps_list: list[int], seeds: int, err: float = 0.05) -> list[tuple[str, int, float, float]]:
    """(mode, steps, PSNR vs the 100-step output, PSNR vs gt) for an oracle denoiser with ``err`` noise error."""
    from safetensors.torch import load_file

    io = load_file(str(FIXTURE / "tiny_a_io.safetensors"))
    rows = []
    for mode in ("posterior", "sde"):
        gt, lq = io[f"{mode}.gt"], io[f"{mode}.lq"]
        outs: dict[int, list[torch.Tensor]] = {}
        for n in sorted(set(steps_list) | {100}, reverse=True):
            outs[n] = []
            for seed in range(seeds):
                s = IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005)
                s.set_timesteps(n)
                g = torch.Generator().manual_seed(seed)
                x = s.noise_state(lq, torch.randn(lq.shape, generator=g))
                for t in s.timesteps:
                    true = (x - s.mu_bar(gt, int(t), lq)) / s.sigma_bars[int(t)]
                    eps = true + err * torch.randn(lq.shape, generator=g)
                    x = s.step(eps, t, x, mu=lq, mode=mode, generator=g).prev_sample
                outs[n].append(x)
        for n in sorted(outs, reverse=True):
            vs100 = statistics.mean(_psnr(o, r) for o, r in zip(outs[n], outs[100], strict=True)) if n != 100 else float("inf")
            vsgt = statistics.mean(_psnr(o, gt) for o in outs[n])
            rows.append((mode, n, vs100, vsgt))
    return rows


def tiny_model_study(steps_list: list[int], seeds: int) -> list[tuple[str, int, float]]:
    """(mode, steps, PSNR vs the 100-step output) of the tiny reference pipeline (random-weight DA-CLIP and UNet of
    the fixture) restoring the fixture's 32x32 lq with the same seed: how far strided sampling moves the result of
    a network that has not been trained (an upper bound on the change, not a quality figure)."""
    import json

    from safetensors.torch import load_file

    from vlmir.models.daclip import DaCLIP
    from vlmir.pipelines.restoration import DaCLIPRestorationPipeline

    meta = json.loads((FIXTURE / "tiny_a_meta.json").read_text())
    io = load_file(str(FIXTURE / "tiny_a_io.safetensors"))
    daclip = DaCLIP.from_pretrained(FIXTURE / "tiny_a_daclip_trainckpt.pt", clip_config=meta["clip_cfg"])
    unet = ConditionalUNet.from_pretrained(FIXTURE / "tiny_a_unet.safetensors", **meta["unet_cfg"])
    pipe = DaCLIPRestorationPipeline(daclip, unet, random_weights=True)
    rows = []
    for mode in ("posterior", "sde"):
        lq = io[f"{mode}.lq"]
        ref = [pipe(lq, steps=100, seed=s, mode=mode) for s in range(seeds)]
        for n in sorted(steps_list, reverse=True):
            rows.append((mode, n, statistics.mean(_psnr(pipe(lq, steps=n, seed=s, mode=mode), r)
                                                  for s, r in enumerate(ref))))
    return rows


def real_model_study(image: str, steps_list: list[int], model: str = "daclip") -> list[tuple[int, float, float]]:
    """(steps, seconds, PSNR vs the 100-step output) of the registry model ``model`` (official weights: cached,
    in ``$VLMIR_DACLIP_DIR`` or downloadable) on ``image``, posterior mode, seed 0."""
    from vlmir.io import load_image
    from vlmir.registry import create_model

    pipe = create_model(model, task="restorer")
    x = load_image(image)
    t0 = time.perf_counter()
    ref = pipe.restore(x, steps=100, seed=0)
    rows = [(100, time.perf_counter() - t0, float("inf"))]
    for n in sorted(steps_list, reverse=True):
        t0 = time.perf_counter()
        y = pipe.restore(x, steps=n, seed=0)
        rows.append((n, time.perf_counter() - t0, _psnr(y, ref)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="measure process CPU time instead of wall time (robust on a shared machine with --threads 1)")
    ap.add_argument("--skip-timing", action="store_true", help="only the fewer-steps study")
    ap.add_argument("--skip-steps", action="store_true", help="skip the fewer-steps quality study")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 20, 10])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--real", metavar="IMG", default=None,
                    help="also time the official 'daclip' model on IMG at 100 and --steps steps (needs its weights)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, {clock} (CPU rows)")
    print("device  size  variant   best s/step  median s/step  speed-up (best)  max|diff| vs port")
    for dev in [] if args.skip_timing else devices:
        device = torch.device(dev)
        for size in args.sizes:
            res = time_unet(size, device, args.repeats, cpu_time=args.cpu_time and dev == "cpu")
            base = res["port"]["best"]
            for v in VARIANTS:
                r = res[v]
                print(f"{dev:6s}  {size:4d}  {v:8s}  {r['best']:11.3f}  {r['median']:13.3f}  "
                      f"{base / r['best']:14.2f}x  {r['max_diff']:.2e}", flush=True)
    if not args.skip_steps:
        if not (FIXTURE / "tiny_a_io.safetensors").is_file():
            print(f"step study skipped: fixture not found at {FIXTURE}")
            return 0
        print("\nfewer steps (oracle denoiser, eps error 0.05, fixture 32x32 gt/lq, mean over seeds)")
        print("mode       steps  PSNR vs 100 steps  PSNR vs gt")
        for mode, n, vs100, vsgt in step_study(args.steps, args.seeds):
            print(f"{mode:9s}  {n:5d}  {vs100:17.2f}  {vsgt:10.2f}")
        print("\nfewer steps, tiny random-weight fixture pipeline on the 32x32 lq (same seed as the 100-step run)")
        print("mode       steps  PSNR vs 100 steps")
        for mode, n, vs100 in tiny_model_study(args.steps, min(args.seeds, 2)):
            print(f"{mode:9s}  {n:5d}  {vs100:17.2f}")
    if args.real:
        print(f"\nofficial daclip on {args.real} (posterior, seed 0)")
        print("steps  seconds  PSNR vs 100 steps")
        for n, sec, vs100 in real_model_study(args.real, args.steps):
            print(f"{n:5d}  {sec:7.1f}  {vs100:17.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
