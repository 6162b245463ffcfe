"""VLMIR stage 2: IR-SDE restoration whose UNet cross-attends to stage 1's multi-token context.

Paper: VLMIR (``shared/seeds/000_*``): "These complementary visual and textual embeddings are then integrated into
a diffusion-based model via cross-attention mechanisms." Stage 1 is :class:`vlmir.models.vlmir.VLMIRAligner`; the
restorer is the IR-SDE :class:`~vlmir.models.irsde_unet.ConditionalUNet` sampled by
:class:`~vlmir.schedulers.irsde.IRSDEScheduler`, as DA-CLIP, with the loop, tiling and seeds of
:class:`~vlmir.pipelines.restoration.DaCLIPRestorationPipeline`. Per image, once::

    caption = captioner(lq)                      # a VLM, or the template from the predicted degradation
    ctx = aligner.context(lq, [caption])         # e_d (prompt) + [e_c, e_d, caption tokens] with a padding mask
    for t in scheduler.timesteps: eps = unet(x_t, lq, t, context=ctx); x_t = scheduler.step(eps, t, x_t, mu=lq)

The settings of the comparison (the ablation table) are a config switch: ``context_mode="single"`` is DA-CLIP's
one-token context, ``use_captions=False`` drops the caption tokens.

Without a captioning model the caption is the metadata template of the predicted degradation
(:func:`vlmir.captions.metadata_caption` with no scene), labelled ``metadata-template``: it carries no more than the
degradation predictor already knows.

Registered models (this module is a provider of :mod:`vlmir.registry`):
    ``vlmir``: the lite VLMIR trained by our code (``assets/weights/vlmir-lite``).
    ``vlmir-classifier``: the degradation type from stage 1's degradation predictor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlmir.captions import METADATA_CAPTIONER, metadata_caption
from vlmir.pipelines.restoration import DaCLIPRestorationPipeline
from vlmir.registry import WEIGHTS_DIR, ModelSpec, register

VLMIR_DIR = WEIGHTS_DIR / "vlmir-lite"
PREDICTIONS = ("epsilon", "sample")
PIPELINE_FILE = "pipeline.json"
ALIGNER_DIR, UNET_DIR = "aligner", "unet"


class VLMIRRestorationPipeline(DaCLIPRestorationPipeline):
    """VLMIR restoration, following the registry ``restorer`` contract (module docstring).

    Args:
        aligner: a stage-1 :class:`~vlmir.models.vlmir.VLMIRAligner` (adapters merged for speed).
        unet: a :class:`~vlmir.models.irsde_unet.ConditionalUNet` with ``context_dim`` = the aligner's width.
        scheduler: an :class:`~vlmir.schedulers.irsde.IRSDEScheduler`.
        context_mode: ``"multi"`` (content, degradation and caption tokens) or ``"single"`` (DA-CLIP's one token).
        use_captions: put the caption's tokens in the context (``"multi"`` only).
        captioner: ``captioner(x (1, 3, H, W)) -> str``; None uses the template of the predicted degradation.
        default_steps: sampling steps when ``restore`` gets ``steps=None`` (None: all T).
        prediction: what the UNet predicts: ``"epsilon"`` (the noise, IR-SDE's and DA-CLIP's) or ``"sample"`` (the
            clean image as a residual on the LQ image, ``x0 = mu + unet(...)``; the scheduler gets the noise that
            gives it, :meth:`IRSDEScheduler.noise_from_sample`).
        name, random_weights, mode, fast, channels_last: as :class:`DaCLIPRestorationPipeline`.
    """

    def __init__(self, aligner: Any, unet: torch.nn.Module, scheduler: Any = None, *, name: str = "vlmir",
                 random_weights: bool = False, context_mode: str = "multi", use_captions: bool = True,
                 captioner: Callable[[torch.Tensor], str] | None = None, default_steps: int | None = None,
                 prediction: str = "epsilon", mode: str = "posterior", fast: bool = True,
                 channels_last: bool = True) -> None:
        from vlmir.models.vlmir import CONTEXT_MODES

        if context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        # the base class keeps its image encoder as ``daclip`` (moved by ``to``, put in eval mode)
        super().__init__(aligner, unet, scheduler, name=name, random_weights=random_weights, mode=mode, fast=fast,
                         preprocess="tensor", channels_last=channels_last)
        self.aligner = self.daclip
        self.context_mode = context_mode
        self.use_captions = bool(use_captions) and context_mode == "multi"
        self.captioner = captioner
        self.default_steps = default_steps
        self.last_caption: str | None = None

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1's embeddings of one image (``VLMIRAligner.forward``), on the aligner's device."""
        dev = next(self.aligner.parameters()).device
        return self.aligner(x.to(dev, torch.float32))

    @torch.no_grad()
    def predicted_type(self, x: torch.Tensor, features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Degradation probabilities from the predictor: softmax of ``s cos(e_d, names)``."""
        if self.aligner.predictor is None:
            raise ValueError("this VLMIR model has no degradation predictor, so it cannot classify")
        e_d = (self.features(x) if features is None else features)["degradation"]
        p = self.aligner.degradation_logits(e_d).softmax(-1)[0].tolist()
        return dict(zip(self.aligner.degradation_names, p, strict=True))

    def caption(self, x: torch.Tensor, features: dict[str, torch.Tensor] | None = None) -> tuple[str, str]:
        """``(caption, captioner name)`` of the LQ image."""
        if self.captioner is not None:
            return str(self.captioner(x)), str(getattr(self.captioner, "name", type(self.captioner).__name__))
        if self.aligner.predictor is None:
            return metadata_caption(None), METADATA_CAPTIONER
        probs = self.predicted_type(x, features)
        label = max(probs, key=probs.get)
        return metadata_caption(None, [] if label == "clear" else [label]), METADATA_CAPTIONER

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, Any]:
        """Stage 1's context of one LQ image (see :meth:`VLMIRAligner.context`); the towers run once."""
        dev = next(self.aligner.parameters()).device
        x = x.to(dev, torch.float32)
        feats = self.features(x)
        captions = None
        if self.use_captions:
            caption, _ = self.caption(x, feats)
            self.last_caption = caption
            captions = [caption]
        return self.aligner.context(x, captions, mode=self.context_mode, use_captions=self.use_captions,
                                    features=feats)

    def prepare(self, contexts: dict[str, Any]) -> Any:
        """The UNet's context: always precomputed (it carries the padding mask)."""
        return self.unet.prepare_context(contexts["text_context"], contexts["image_context"], contexts["context_mask"])

    def predict_noise(self, x_t: torch.Tensor, lq: torch.Tensor, t: int, contexts: Any, cache: Any = None, *,
                      tile: int | None = None, tile_overlap: int = 32) -> torch.Tensor:
        """The noise for the scheduler; with ``prediction="sample"`` converted from the predicted clean image
        (tiles blend the network's outputs, then the whole state is converted)."""
        out = super().predict_noise(x_t, lq, t, contexts, cache, tile=tile, tile_overlap=tile_overlap)
        if self.prediction == "epsilon":
            return out
        return self.scheduler.noise_from_sample(lq + out, t, x_t, lq)

    def __call__(self, x: torch.Tensor, *, steps: int | None = None, **kwargs: Any) -> torch.Tensor:
        return super().__call__(x, steps=self.default_steps if steps is None else steps, **kwargs)


class VLMIRClassifier:
    """Task ``classifier``: the degradation type from VLMIR's degradation predictor."""

    def __init__(self, pipeline: VLMIRRestorationPipeline) -> None:
        self.pipeline = pipeline
        self.random_weights = pipeline.random_weights
        self.name = "vlmir-classifier"

    def classify(self, x: torch.Tensor) -> dict[str, float]:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            raise ValueError(f"expected a float tensor (1, 3, H, W) in [0, 1], got {getattr(x, 'shape', type(x))}")
        return self.pipeline.predicted_type(x.clamp(0, 1))


class ModelCaptioner:
    """A transformers captioning model (:class:`vlmir.degradations.dataset.Captioner`: a local folder or a cached
    hub id) as a VLMIR captioner of tensors ``(1, 3, H, W)``."""

    def __init__(self, name_or_path: str, device: str = "cpu") -> None:
        from vlmir.degradations.dataset import Captioner

        self.model = Captioner(name_or_path, device=device)
        self.name = self.model.name

    def __call__(self, x: torch.Tensor) -> str:
        from vlmir.io import to_numpy

        return self.model(to_numpy(x))


def load_vlmir(path: str | Path | None = None, *, device: str = "cpu", **overrides: Any) -> VLMIRRestorationPipeline:
    """A VLMIR pipeline from a folder with ``pipeline.json`` (context mode, captions, scheduler, default steps),
    ``aligner/`` (:meth:`VLMIRAligner.save_pretrained`) and ``unet/`` (:meth:`ConditionalUNet.save_pretrained`).
    ``overrides`` replace pipeline settings (``context_mode``, ``use_captions``, ``default_steps``, ``mode``, and
    ``captioner``: a callable, or a captioning model's folder / cached hub id)."""
    from vlmir.models.irsde_unet import ConditionalUNet
    from vlmir.models.vlmir import VLMIRAligner
    from vlmir.schedulers.irsde import IRSDEScheduler

    folder = Path(path) if path is not None else VLMIR_DIR
    cfg_file = folder / PIPELINE_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no VLMIR model in {folder}: {cfg_file} is missing (train one with "
                                "`python -m vlmir train vlmir-align` then `vlmir-restorer`, or pass its folder)")
    cfg = json.loads(cfg_file.read_text())
    aligner = VLMIRAligner.from_pretrained(folder / ALIGNER_DIR, device=device)
    unet = ConditionalUNet.from_pretrained(folder / UNET_DIR).to(device)
    scheduler = IRSDEScheduler(**cfg.get("scheduler", {}))
    settings = {k: cfg[k] for k in ("context_mode", "use_captions", "default_steps", "mode", "prediction") if k in cfg}
    settings.update(overrides)
    if isinstance(settings.get("captioner"), (str, Path)):
        settings["captioner"] = ModelCaptioner(str(settings["captioner"]), device=device)
    # a base CLIP with random weights (tests) makes every output meaningless: say so wherever it is shown
    random_weights = aligner.config.get("base", "random") == "random"
    return VLMIRRestorationPipeline(aligner, unet, scheduler, name=cfg.get("name", "vlmir"),
                                    random_weights=random_weights, **settings)


def build_restorer(device: str = "cpu", path: str | Path | None = None, weights_dir: str | Path | None = None,
                   **kwargs: Any) -> VLMIRRestorationPipeline:
    return load_vlmir(path or weights_dir, device=device, **kwargs)


def build_classifier(device: str = "cpu", path: str | Path | None = None, weights_dir: str | Path | None = None,
                     **_: Any) -> VLMIRClassifier:
    return VLMIRClassifier(load_vlmir(path or weights_dir, device=device))


def _available() -> tuple[bool, str]:
    if (VLMIR_DIR / PIPELINE_FILE).is_file():
        return True, ""
    return False, (f"no weights in {VLMIR_DIR}: train them with `python -m vlmir train vlmir-align` and "
                   "`python -m vlmir train vlmir-restorer` (see vlmir/training/configs/vlmir_*.json)")


def _default_steps() -> int:
    try:
        return int(json.loads((VLMIR_DIR / PIPELINE_FILE).read_text()).get("default_steps") or 0)
    except (OSError, ValueError):
        return 0


def _register() -> None:
    steps = _default_steps()
    register(
        ModelSpec(
            name="vlmir",
            task="restorer",
            build=build_restorer,
            description="VLMIR (lite CPU run, our training): LoRA-aligned CLIP + degradation predictor, "
                        "cross-attention IR-SDE; on unseen photos it makes most images worse (-2.7 dB, see its card)",
            source="assets:weights/vlmir-lite",
            license="Apache-2.0 (our weights)",
            extra={"diffusion": True, "default_steps": steps, "max_steps": 100},
            available=_available,
        ),
        overwrite=True,
    )
    register(
        ModelSpec(
            name="vlmir-classifier",
            task="classifier",
            build=build_classifier,
            description="VLMIR's degradation predictor (lite CPU run): softmax(s cos(e_d, text)) over the "
                        "degradation names; 58% top-1 on unseen photos (see its card)",
            source="assets:weights/vlmir-lite",
            license="Apache-2.0 (our weights)",
            available=_available,
        ),
        overwrite=True,
    )


_register()
