"""DA-CLIP universal image restoration: DA-CLIP embeddings -> IR-SDE reverse sampling with a ConditionalUNet.

Paper: Luo et al., "Controlling Vision-Language Models for Multi-Task Image Restoration", ICLR 2024 (Sec. 3.3:
the degradation embedding e_d and content embedding e_c of DA-CLIP condition an IR-SDE restorer).
Original code: github.com/Algolzw/daclip-uir, ``universal-image-restoration/config/daclip-sde/{app,test}.py`` and
``utils/sde_utils.py``. This is our own explicit loop (diffusers ``pipeline_ddim`` style):

    contexts = daclip.encode_image(clip_transform(lq), control=True)      # once per image
    x_T = lq + lambda * n
    for t in progress(scheduler.timesteps):
        eps = unet(x_t, lq, t, text_context=degra, image_context=image)    # tile by tile for big images
        x_t = scheduler.step(eps, t, x_t, mu=lq, mode=mode).prev_sample

Additions to the original (documented, optional): tiled noise prediction for large images (the whole state advances
each step; only the UNet runs on overlapping tiles whose outputs are blended with raised-cosine weights, and the
noise is drawn for the whole image so each pixel gets the same draws whatever the tiling); the fast UNet path with a
per-image context cache; fewer sampling steps by striding the schedule (``steps=``).

Registered models (this module is a provider of :mod:`vlmir.registry`):
    ``daclip``: ``weblzw/daclip-uir-ViT-B-32-irsde`` ``daclip_ViT-B-32.pt`` + ``universal-ir.pth``.
    ``daclip-mix``: the same repo's ``daclip_ViT-B-32_mix.pt`` + ``universal-ir-mix.pth``.
    ``daclip-classifier``: DA-CLIP's degradation classification from ``daclip_ViT-B-32.pt``.

Example (tiny local models)::

    >>> pipe = DaCLIPRestorationPipeline(daclip, unet, IRSDEScheduler())        # doctest: +SKIP
    >>> y = pipe.restore(x, steps=20, seed=0, tile=256)                          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from vlmir.registry import WEIGHTS_DIR, ModelSpec, hub_available, hub_file, register

HUB_REPO = "weblzw/daclip-uir-ViT-B-32-irsde"
# variant -> (DA-CLIP checkpoint, UNet state dict), names as in the original README's model table.
HUB_FILES: dict[str, tuple[str, str]] = {
    "daclip": ("daclip_ViT-B-32.pt", "universal-ir.pth"),
    "daclip-mix": ("daclip_ViT-B-32_mix.pt", "universal-ir-mix.pth"),
}
# The original's clip_transform normalisation (OpenAI CLIP mean/std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("posterior", "sde")
PREPROCESS = ("original", "tensor")
# Images above this many pixels are tiled by default (tile=None) with DEFAULT_TILE px tiles.
AUTO_TILE_PIXELS = 1024 * 1024
DEFAULT_TILE = 512


def clip_transform(x: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """The original demo's CLIP input, exactly: ``uint8(x * 255)`` (truncating, as ``np.astype``), PIL bicubic
    resize of the shorter side to ``image_size``, centre crop, ``ToTensor``, OpenAI mean/std.

    Args:
        x: float (1, 3, H, W) RGB in [0, 1] (any device).
        image_size: the DA-CLIP input side (224 for ViT-B-32).
    Returns:
        float32 (1, 3, image_size, image_size) on ``x``'s device.
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"x must be (1, 3, H, W), got {tuple(x.shape)}")
    arr = x[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    pil = Image.fromarray((arr * 255).astype(np.uint8))
    pil = TF.resize(pil, image_size, interpolation=InterpolationMode.BICUBIC)
    pil = TF.center_crop(pil, image_size)
    t = TF.normalize(TF.to_tensor(pil), CLIP_MEAN, CLIP_STD)
    return t.unsqueeze(0).to(x.device)


def _tile_starts(n: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``size`` covering ``[0, n)`` with at least ``overlap`` px shared; the last tile is
    aligned to the end."""
    if size >= n:
        return [0]
    stride = size - overlap
    starts = list(range(0, n - size, stride))
    starts.append(n - size)
    return starts


def _ramp(size: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """1-D blending weight of a tile: raised-cosine ramps over ``overlap`` px on its inner sides, 1 elsewhere.

    On a regular grid the rising ramp of a tile and the falling ramp of its neighbour sum to exactly 1
    (sin^2 + cos^2), so blending is a partition of unity; elsewhere the weights are normalised by their sum.
    """
    w = torch.ones(size, dtype=torch.float64)
    ov = min(overlap, size)
    if ov > 0:
        up = torch.sin(0.5 * math.pi * (torch.arange(ov, dtype=torch.float64) + 0.5) / ov) ** 2
        if left:
            w[:ov] *= up
        if right:
            w[size - ov :] *= up.flip(0)
    return w


def _progress_iter(progress: Any, timesteps: torch.Tensor) -> Iterable:
    """``progress`` may wrap the iterable (``tqdm``-like, one argument) or be a ``progress(step, total)`` callback
    (the app's contract, two positional arguments); ``True`` uses tqdm."""
    if progress is None or progress is False:
        return timesteps
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(timesteps, desc="IR-SDE")
    try:
        params = [
            p
            for p in inspect.signature(progress).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):  # builtins without a signature: treat as a wrapper
        params = []
    if len(params) >= 2:
        total = len(timesteps)

        def gen():
            for i, t in enumerate(timesteps):
                yield t
                progress(i + 1, total)

        return gen()
    return progress(timesteps)


class DaCLIPRestorationPipeline:
    """DA-CLIP + IR-SDE restoration, following the registry ``restorer`` contract.

    Args:
        daclip: a :class:`vlmir.models.daclip.DaCLIP` (``encode_image(x, control=True)``, ``image_size``,
            ``preprocess``).
        unet: a :class:`vlmir.models.irsde_unet.ConditionalUNet`.
        scheduler: an :class:`vlmir.schedulers.irsde.IRSDEScheduler` (default: the original's max_sigma=50, T=100,
            cosine, eps=0.005).
        name: registry name shown to users.
        random_weights: True when the weights are random (user-visible output must say so).
        mode: default sampling mode, ``"posterior"`` (the original's test.yml) or ``"sde"``.
        fast: use the UNet's optimised path and per-image context cache (same outputs within 1e-4).
        preprocess: ``"original"`` (exact PIL ``clip_transform`` of the original demo) or ``"tensor"``
            (``daclip.preprocess``: float bicubic resize on the device, no 8-bit rounding).
        channels_last: put the UNet (in place) and its inputs in channels-last memory format (default; with
            ``fast`` about 1.3x less CPU time per step than contiguous tensors, see ``benchmarks/irsde.py``).
    """

    def __init__(
        self,
        daclip: Any,
        unet: torch.nn.Module,
        scheduler: Any = None,
        *,
        name: str = "daclip",
        random_weights: bool = False,
        mode: str = "posterior",
        fast: bool = True,
        preprocess: str = "original",
        channels_last: bool = True,
    ):
        from vlmir.schedulers.irsde import IRSDEScheduler

        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess {preprocess!r} is not one of {PREPROCESS}")
        self.daclip = daclip.eval()
        self.unet = unet.eval()
        self.scheduler = scheduler if scheduler is not None else IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005)
        self.name = name
        self.random_weights = bool(random_weights)
        self.mode = mode
        self.preprocess = preprocess
        self.fast = bool(fast)
        self.channels_last = bool(channels_last)
        self.unet.set_fast(self.fast)
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DaCLIPRestorationPipeline:
        """Move both networks to ``device``."""
        self.daclip.to(device)
        self.unet.to(device)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DA-CLIP embeddings of the degraded image: ``(image_context, degra_context)``, each (1, context_dim)."""
        dev = next(self.daclip.parameters()).device
        size = int(getattr(self.daclip, "image_size", 224))
        if self.preprocess == "original":
            clip_in = clip_transform(x, size).to(dev)
        else:
            clip_in = self.daclip.preprocess(x.to(dev, torch.float32))
        image_context, degra_context = self.daclip.encode_image(clip_in, control=True)
        return image_context.float(), degra_context.float()

    def prepare(self, contexts: Any) -> Any:
        """The UNet's per-image context cache for :meth:`encode`'s output (None on the unoptimised path, which
        passes the embeddings at every step as the original)."""
        return self.unet.prepare_context(contexts[1], contexts[0]) if self.fast else None

    # ----------------------------------------------------------------------------------------------------------
    def predict_noise(
        self,
        x_t: torch.Tensor,
        lq: torch.Tensor,
        t: int,
        contexts: tuple[torch.Tensor, torch.Tensor],
        cache: Any = None,
        *,
        tile: int | None = None,
        tile_overlap: int = 32,
    ) -> torch.Tensor:
        """The UNet's noise prediction for the whole state, tile by tile when ``tile`` is smaller than the image.

        Each tile (``tile`` x ``tile`` px, neighbours sharing ``tile_overlap`` px) sees ``x_t`` and ``lq`` of its
        window; outputs are blended with raised-cosine weights. Memory for the UNet is bounded by the tile size;
        the full-size buffers are the state, ``lq``, the blended output and the weight map.
        """

        def run(xs: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                xs = xs.contiguous(memory_format=torch.channels_last)
                ls = ls.contiguous(memory_format=torch.channels_last)
            if cache is not None:
                return self.unet(xs, ls, int(t), context=cache)
            image_context, degra_context = contexts
            return self.unet(xs, ls, int(t), text_context=degra_context, image_context=image_context)

        _, _, h, w = x_t.shape
        if tile is None or (tile >= h and tile >= w):
            return run(x_t, lq)
        th, tw = min(tile, h), min(tile, w)
        ys, xs = _tile_starts(h, th, tile_overlap), _tile_starts(w, tw, tile_overlap)
        out = torch.zeros_like(x_t)
        wsum = torch.zeros((1, 1, h, w), dtype=x_t.dtype, device=x_t.device)
        for y in ys:
            wy = _ramp(th, tile_overlap, left=y > 0, right=y + th < h)
            for x in xs:
                wx = _ramp(tw, tile_overlap, left=x > 0, right=x + tw < w)
                weight = (wy[:, None] * wx[None, :]).to(x_t)[None, None]  # (1, 1, th, tw)
                eps = run(x_t[..., y : y + th, x : x + tw], lq[..., y : y + th, x : x + tw])
                out[..., y : y + th, x : x + tw] += eps * weight
                wsum[..., y : y + th, x : x + tw] += weight
        return out / wsum

    def _check(self, x: torch.Tensor, steps: int | None, mode: str, tile: int | None, tile_overlap: int) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"x must be a float tensor (1, 3, H, W) in [0, 1], got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor in [0, 1], got dtype {x.dtype}")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= self.scheduler.T):
            raise ValueError(f"steps must be an int in [1, {self.scheduler.T}] or None, got {steps!r}")
        if not isinstance(tile_overlap, int) or tile_overlap < 0:
            raise ValueError(f"tile_overlap must be an int >= 0, got {tile_overlap!r}")
        if tile is not None and (not isinstance(tile, int) or tile < 16 or tile <= tile_overlap):
            raise ValueError(f"tile must be None or an int >= 16 larger than tile_overlap={tile_overlap}, got {tile!r}")

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,
        *,
        steps: int | None = None,
        seed: int = 0,
        mode: str | None = None,
        tile: int | None = None,
        tile_overlap: int = 32,
        progress: Callable[..., Any] | bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: degraded image, float (1, 3, H, W) RGB in [0, 1].
            steps: reverse steps; None = all T (100, the original); fewer stride the schedule (faster, some loss).
            seed: seed of the CPU generator that draws x_T's noise and every step's noise (device independent).
            mode: ``"posterior"`` or ``"sde"``; None = the pipeline's default.
            tile: UNet tile side in px; None = whole image up to ``AUTO_TILE_PIXELS`` px, else ``DEFAULT_TILE``.
            tile_overlap: px shared by neighbouring tiles (blended).
            progress: ``tqdm``-like wrapper of the timesteps, a ``progress(step, total)`` callback, or True (tqdm).
            generator: a torch generator to use instead of ``seed`` (CPU generators keep results device
                independent).
        Returns:
            restored image, float32 (1, 3, H, W) in [0, 1] on ``x``'s device.
        """
        mode = self.mode if mode is None else mode
        self._check(x, steps, mode, tile, tile_overlap)
        _, _, h, w = x.shape
        if tile is None and h * w > AUTO_TILE_PIXELS:
            tile = DEFAULT_TILE
        dev = self.device
        lq = x.to(dev, torch.float32)
        contexts = self.encode(lq)
        cache = self.prepare(contexts)
        gen = generator if generator is not None else torch.Generator("cpu").manual_seed(int(seed))

        def draw() -> torch.Tensor:
            return torch.randn(lq.shape, generator=gen, device=gen.device, dtype=torch.float32).to(dev)

        sched = self.scheduler
        sched.set_timesteps(steps)
        x_t = sched.noise_state(lq, draw())  # x_T = mu + lambda * n
        for t in _progress_iter(progress, sched.timesteps):
            eps = self.predict_noise(x_t, lq, int(t), contexts, cache, tile=tile, tile_overlap=tile_overlap)
            x_t = sched.step(eps, t, x_t, mu=lq, mode=mode, variance_noise=draw()).prev_sample
        return x_t.clamp(0, 1).to(x.device)

    def restore(
        self,
        x: torch.Tensor,
        *,
        steps: int | None = None,
        seed: int = 0,
        tile: int | None = None,
        progress: Callable[..., Any] | bool | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The registry restorer contract; see :meth:`__call__` (``mode``, ``tile_overlap``, ``generator`` may be
        passed as keywords)."""
        return self(x, steps=steps, seed=seed, tile=tile, progress=progress, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    """Local folder searched for the official files before the hub: ``$VLMIR_DACLIP_DIR``, else
    ``assets/weights/daclip`` (files keep their hub names, e.g. ``daclip_ViT-B-32.pt``, ``universal-ir.pth``)."""
    env = os.environ.get("VLMIR_DACLIP_DIR", "").strip()
    return Path(env) if env else WEIGHTS_DIR / "daclip"


def _weights(variant: str, weights_dir: str | Path | None, daclip_path: Any, unet_path: Any) -> tuple[Path, Path]:
    """Paths of the DA-CLIP checkpoint and UNet state dict: explicit paths, else ``weights_dir`` (default
    :func:`default_weights_dir`), the HF cache, or the hub (fails fast offline, naming repo and file)."""
    clip_file, unet_file = HUB_FILES[variant]
    weights_dir = default_weights_dir() if weights_dir is None else weights_dir
    dpath = Path(daclip_path) if daclip_path is not None else hub_file(HUB_REPO, clip_file, local_dir=weights_dir)
    upath = Path(unet_path) if unet_path is not None else hub_file(HUB_REPO, unet_file, local_dir=weights_dir)
    for p in (dpath, upath):
        if not p.exists():
            raise FileNotFoundError(f"weights file not found: {p}")
    return dpath, upath


def _sidecar_config(weights: Path) -> dict[str, Any] | None:
    """The model config stored beside a weight file as ``<file name>.json`` (e.g. ``universal-ir.pth.json``), if any.

    The official files carry no config: the official sizes are the defaults. A sidecar lets retrained or resized
    DA-CLIP / UNet files load from the command line (``--weights-dir``) without Python."""
    side = weights.with_name(weights.name + ".json")
    if not side.is_file():
        return None
    try:
        cfg = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {side} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model config {side} must hold a JSON object of constructor arguments")
    return cfg


def build_restorer(
    device: str = "cpu",
    *,
    variant: str = "daclip",
    weights_dir: str | Path | None = None,
    daclip_path: str | Path | None = None,
    unet_path: str | Path | None = None,
    clip_config: dict[str, Any] | None = None,
    unet_config: dict[str, Any] | None = None,
    mode: str = "posterior",
    fast: bool = True,
    preprocess: str = "original",
) -> DaCLIPRestorationPipeline:
    """Build the DA-CLIP restorer from the official files (loaded lazily; offline they must be cached or given).

    Args:
        device: where to run.
        variant: ``"daclip"`` or ``"daclip-mix"`` (which hub files).
        weights_dir: a folder holding the official file names (``daclip_ViT-B-32.pt``, ``universal-ir.pth``, ...).
        daclip_path, unet_path: explicit files (override ``weights_dir`` and the hub).
        clip_config: open_clip config of the DA-CLIP checkpoint (default: a ``<file>.json`` beside the checkpoint,
            else inferred from its tensor shapes).
        unet_config: ConditionalUNet arguments (default: a ``<file>.json`` beside the state dict, else the official
            nf=64, ch_mult=[1, 2, 4, 8], context 512).
        mode, fast, preprocess: see :class:`DaCLIPRestorationPipeline`.
    """
    from vlmir.models.daclip import DaCLIP
    from vlmir.models.irsde_unet import OFFICIAL_CONFIG, ConditionalUNet
    from vlmir.schedulers.irsde import IRSDEScheduler

    if variant not in HUB_FILES:
        raise ValueError(f"variant {variant!r} is not one of {sorted(HUB_FILES)}")
    dpath, upath = _weights(variant, weights_dir, daclip_path, unet_path)
    daclip = DaCLIP.from_pretrained(dpath, clip_config=clip_config or _sidecar_config(dpath))
    unet = ConditionalUNet.from_pretrained(upath, **(unet_config or _sidecar_config(upath) or OFFICIAL_CONFIG))
    pipe = DaCLIPRestorationPipeline(
        daclip, unet, IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005),
        name=variant, random_weights=False, mode=mode, fast=fast, preprocess=preprocess,
    )
    return pipe.to(device)


def build_classifier(
    device: str = "cpu",
    *,
    weights_dir: str | Path | None = None,
    daclip_path: str | Path | None = None,
    clip_config: dict[str, Any] | None = None,
) -> Any:
    """DA-CLIP degradation classifier (``classify(x) -> {degradation: p}``) from ``daclip_ViT-B-32.pt``."""
    from vlmir.models.daclip import DaCLIP, DaCLIPClassifier

    local = default_weights_dir() if weights_dir is None else weights_dir
    path = Path(daclip_path) if daclip_path is not None else hub_file(HUB_REPO, HUB_FILES["daclip"][0], local_dir=local)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    daclip = DaCLIP.from_pretrained(path, clip_config=clip_config or _sidecar_config(path))
    return DaCLIPClassifier(daclip, name="daclip-classifier", device=device)


def _available(*files: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        notes = []
        local = default_weights_dir()
        for f in files:
            if (local / f).is_file():
                continue
            ok, reason = hub_available(HUB_REPO, f)
            if not ok:
                return False, (
                    f"{reason}; put {f} in {local} (or set VLMIR_DACLIP_DIR), or point to its folder "
                    "(command line: --weights-dir DIR; Python: weights_dir= / daclip_path= / unet_path=)"
                )
            if reason:
                notes.append(reason)
        return True, "; ".join(notes)

    return check


def _register() -> None:
    for variant, (clip_file, unet_file) in HUB_FILES.items():

        def build(device: str = "cpu", _variant: str = variant, **kwargs: Any) -> DaCLIPRestorationPipeline:
            return build_restorer(device, variant=_variant, **kwargs)

        register(
            ModelSpec(
                name=variant,
                task="restorer",
                build=build,
                description=(
                    "DA-CLIP + IR-SDE universal restoration (ICLR 2024)"
                    + (", mixed-degradation training" if variant == "daclip-mix" else "")
                    + "; 100-step diffusion, slow on CPU"
                ),
                source=f"hf:{HUB_REPO}/{clip_file};hf:{HUB_REPO}/{unet_file}",
                license="MIT (original code); weights per the model card",
                extra={"diffusion": True, "default_steps": 100, "max_steps": 100, "modes": MODES},
                available=_available(clip_file, unet_file),
            ),
            overwrite=True,
        )
    register(
        ModelSpec(
            name="daclip-classifier",
            task="classifier",
            build=build_classifier,
            description="DA-CLIP degradation type: softmax(100 cos(e_d, text)) over the ten degradation names",
            source=f"hf:{HUB_REPO}/{HUB_FILES['daclip'][0]}",
            license="MIT (original code); weights per the model card",
            available=_available(HUB_FILES["daclip"][0]),
        ),
        overwrite=True,
    )


_register()
