"""The embedded default models: small networks trained from scratch by ``vlmir.training``, shipped in ``assets/``.

Registers (each the default of its task, all offline, all CPU-fast):

- ``embedded-encoder`` (encoder): :class:`~vlmir.models.encoder.DegradationAwareEncoder`, DA-CLIP design;
  ``assets/weights/embedded-encoder``.
- ``embedded-classifier`` (classifier): softmax over the degradation names of ``scale * cos(degradation embedding,
  name text embeddings)``, the encoder's weights.
- ``embedded`` (restorer): :class:`~vlmir.models.restorer.ConditionalRestorer` conditioned on the encoder's
  embeddings and, for a network built with ``prior=True`` (the shipped one), refining the classical method's
  output for the type the encoder predicts (or the ``degradation=`` given); ``assets/weights/embedded-restorer``.
  Any size: padded to the network multiple, tiled with overlap and linear blending above ~1 MP (``tile=`` px).
- ``embedded-rater`` (rater): :class:`~vlmir.models.rater.VisibilityHead` on the encoder's features, WResVLM's
  ``r = sum_i i p_i``; ``assets/weights/embedded-rater``.
- ``wresvlm-lite`` (restorer): the embedded restorer's network after WResVLM's semi-supervised training
  (:mod:`vlmir.training.wresvlm`); ``assets/weights/wresvlm-lite``, unavailable (never random) without them.

When a weights file is missing (a fresh checkout before training, or tests), the builders make a random-weight
model of the default config, warn, and set ``random_weights = True`` so the CLI and app can say so.

Example::

    >>> from vlmir.registry import create_model
    >>> clf = create_model("embedded-classifier")
    >>> probs = clf.classify(torch.rand(1, 3, 200, 300))
    >>> abs(sum(probs.values()) - 1) < 1e-4
    True
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmir.constants import DEGRADATIONS
from vlmir.models.encoder import DegradationAwareEncoder
from vlmir.models.rater import LEVELS_ASCENDING, VisibilityHead, rater_outputs, tilt_to_mean
from vlmir.models.restorer import ConditionalRestorer, classical_prior
from vlmir.registry import WEIGHTS_DIR, ModelSpec, register

ENCODER_DIR = WEIGHTS_DIR / "embedded-encoder"
RESTORER_DIR = WEIGHTS_DIR / "embedded-restorer"
RATER_DIR = WEIGHTS_DIR / "embedded-rater"
WRESVLM_DIR = WEIGHTS_DIR / "wresvlm-lite"  # the embedded restorer fine-tuned by WResVLM's method (vlmir.training.wresvlm)
WEIGHTS_FILE = "model.safetensors"

AUTO_TILE_PIXELS = 1024 * 1024  # images above this many pixels are tiled by default
DEFAULT_TILE = 512
BLUR = "motion-blurry"  # the type whose probability weighs the restorer's deblurring stage
TILE_OVERLAP = 32
# flip self-ensembles: each entry is the set of dims a pass flips (H = -2, W = -1); the outputs are averaged
ENSEMBLES: dict[int, tuple[tuple[int, ...], ...]] = {1: ((),), 2: ((), (-1,)), 4: ((), (-1,), (-2,), (-2, -1))}
# the shipped restorer's default: on the held-out protocol two passes gain +0.03 dB over one (+6.16 vs +6.13 dB)
# for one more network forward (0.42 -> 0.61 s at 512 px)
DEFAULT_ENSEMBLE = 2


def _ctor_kwargs(cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """The entries of a saved ``config.json`` that are constructor arguments of ``cls``."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in cfg.items() if k in params and k != "self"}


def _load(cls: type, path: str | Path | None, default_dir: Path, *, allow_random: bool, device: str,
          what: str) -> tuple[Any, bool]:
    """Build ``cls`` from ``path/config.json`` and load ``path/model.safetensors``; ``(module, random_weights)``."""
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else default_dir
    if folder.is_file():
        folder = folder.parent
    weights, config = folder / WEIGHTS_FILE, folder / "config.json"
    if weights.is_file() and config.is_file():
        cfg = json.loads(config.read_text())
        module = cls(**_ctor_kwargs(cls, cfg))
        # float16-stored weights (``export_dtype``) are cast to the module's float32 by load_state_dict
        module.load_state_dict(load_file(str(weights)), strict=True)
        return module.to(device).eval(), False
    if not allow_random:
        raise FileNotFoundError(f"{what} weights not found: expected {weights} and {config} "
                                f"(train them with `python -m vlmir train ...`, see vlmir/training/configs)")
    warnings.warn(f"{what} weights not found in {folder}; using RANDOM weights (outputs are meaningless)",
                  stacklevel=3)
    return None, True


def load_encoder(path: str | Path | None = None, *, allow_random: bool = True,
                 device: str = "cpu") -> tuple[DegradationAwareEncoder, bool]:
    """The degradation-aware encoder from ``path`` (default the embedded weights): ``(encoder, random_weights)``."""
    enc, rnd = _load(DegradationAwareEncoder, path, ENCODER_DIR, allow_random=allow_random, device=device,
                     what="embedded encoder")
    if enc is None:
        torch.manual_seed(0)
        enc = DegradationAwareEncoder().to(device).eval()
    return enc, rnd


def load_restorer(path: str | Path | None = None, *, allow_random: bool = True, device: str = "cpu",
                  cond_dim: int = 256) -> tuple[ConditionalRestorer, bool]:
    """The conditional restorer network from ``path`` (default the embedded weights)."""
    net, rnd = _load(ConditionalRestorer, path, RESTORER_DIR, allow_random=allow_random, device=device,
                     what="embedded restorer")
    if net is None:
        torch.manual_seed(0)
        net = ConditionalRestorer(cond_dim=cond_dim).to(device).eval()
    return net, rnd


def _restorer_config(path: str | Path | None, default_dir: Path) -> tuple[Path, dict[str, Any]]:
    folder = Path(path) if path is not None else default_dir
    if folder.is_file():
        folder = folder.parent
    config = folder / "config.json"
    return config, (json.loads(config.read_text()) if config.is_file() else {})


def load_fallback(path: str | Path | None = None, default_dir: Path = RESTORER_DIR) -> Fallback:
    """The :class:`Fallback` in a restorer folder's ``config.json`` (its ``fallback`` entry; absent: the hard
    choice)."""
    config, cfg = _restorer_config(path, default_dir)
    try:
        return Fallback.from_config(cfg.get("fallback"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad fallback entry in {config}: {e}") from e


# how a restorer folder's config.json may set the inference of a blind restore (its "inference" entry):
# "types": which encoder logits decide the prior's type and the deblurring weight ("view_head": the encoder's
# image-level type logits, i.e. its view head when it has one; "views": the plain mean of the views' cosine
# logits); "ensemble": the default flip passes; "deblur": whether the deblurring stage runs; "chosen_on": a note
INFERENCE_DEFAULTS: dict[str, Any] = {"types": "view_head", "ensemble": DEFAULT_ENSEMBLE, "deblur": True}
TYPE_SOURCES = {"view_head": "type_logits", "views": "logits"}


def load_inference(path: str | Path | None = None, default_dir: Path = RESTORER_DIR) -> dict[str, Any]:
    """The inference options in a restorer folder's ``config.json`` (:data:`INFERENCE_DEFAULTS` updated by its
    ``inference`` entry; absent: the defaults). An unknown key or value is an error naming the valid ones."""
    config, cfg = _restorer_config(path, default_dir)
    block = cfg.get("inference") or {}
    if not isinstance(block, dict):
        raise ValueError(f"bad inference entry in {config}: must be a mapping, got {block!r}")
    unknown = set(block) - set(INFERENCE_DEFAULTS) - {"chosen_on"}
    if unknown:
        raise ValueError(f"bad inference entry in {config}: unknown keys {sorted(unknown)}; valid: "
                         f"{', '.join(INFERENCE_DEFAULTS)}, chosen_on")
    out = {**INFERENCE_DEFAULTS, **{k: v for k, v in block.items() if k != "chosen_on"}}
    if out["types"] not in TYPE_SOURCES:
        raise ValueError(f"bad inference entry in {config}: types must be one of {', '.join(TYPE_SOURCES)}, "
                         f"got {out['types']!r}")
    if not isinstance(out["deblur"], bool):
        raise ValueError(f"bad inference entry in {config}: deblur must be true or false, got {out['deblur']!r}")
    try:
        out["ensemble"] = _check_ensemble(out["ensemble"])
    except ValueError as e:
        raise ValueError(f"bad inference entry in {config}: {e}") from e
    return out


def load_rater_head(path: str | Path | None = None, *, allow_random: bool = True, device: str = "cpu",
                    feature_dim: int | None = None) -> tuple[VisibilityHead, bool]:
    """The visibility head from ``path`` (default the embedded weights)."""
    head, rnd = _load(VisibilityHead, path, RATER_DIR, allow_random=allow_random, device=device,
                      what="embedded rater")
    if head is None:
        torch.manual_seed(0)
        head = VisibilityHead(feature_dim=feature_dim or 2187).to(device).eval()
    return head, rnd


def _check_image(x: Any) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected a float tensor (1, 3, H, W) in [0, 1], got {shape}")
    if x.shape[-1] < 8 or x.shape[-2] < 8:
        raise ValueError(f"image must be at least 8x8 pixels, got {x.shape[-1]}x{x.shape[-2]}")
    return x


class EmbeddedEncoderModel:
    """Task ``encoder``: ``encode(x) -> {"content": (1, D), "degradation": (1, D)}`` (L2-normalised)."""

    def __init__(self, encoder: DegradationAwareEncoder, *, random_weights: bool, name: str = "embedded-encoder") -> None:
        self.encoder = encoder
        self.random_weights = random_weights
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """View-averaged encoder outputs of one image (see :meth:`DegradationAwareEncoder.embed`)."""
        x = _check_image(x).to(self.device, torch.float32).clamp(0, 1)
        return self.encoder.embed(x)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"content": F.normalize(f["content"], dim=-1), "degradation": F.normalize(f["degradation"], dim=-1)}


class EmbeddedClassifier(EmbeddedEncoderModel):
    """Task ``classifier``: ``classify(x) -> {name: p}`` over DA-CLIP's ten names plus ``clear``."""

    def classify(self, x: torch.Tensor) -> dict[str, float]:
        p = self.features(x)["type_logits"].softmax(-1)[0].tolist()
        return dict(zip(self.encoder.degradation_names, p, strict=True))


class EmbeddedRater(EmbeddedEncoderModel):
    """Task ``rater``: ``rate(x) -> {"score": r, "vlm_vis": (r - 1) / 4, "probs": {level: p}}`` (WResVLM)."""

    def __init__(self, encoder: DegradationAwareEncoder, head: VisibilityHead, *, random_weights: bool,
                 name: str = "embedded-rater") -> None:
        super().__init__(encoder, random_weights=random_weights, name=name)
        calibration = getattr(head, "calibration", None)
        if calibration is not None and calibration.a.shape[0] != len(encoder.degradation_names):
            raise ValueError(f"the rater's type calibration covers {calibration.a.shape[0]} names, the encoder has "
                             f"{len(encoder.degradation_names)}")
        self.head = head

    @torch.no_grad()
    def rate(self, x: torch.Tensor) -> dict[str, Any]:
        x = _check_image(x).to(self.device, torch.float32).clamp(0, 1)
        logits, q, s = rater_outputs(self.head, self.encoder, x)
        p = logits.softmax(-1)
        calibration = getattr(self.head, "calibration", None)
        if calibration is not None:  # the per-type calibrated score, and the levels tilted to it
            p = tilt_to_mean(p, calibration(VisibilityHead.score(logits), q, s))
        p = p[0]
        r = float((p * torch.arange(1, 6, dtype=p.dtype, device=p.device)).sum())
        probs = {LEVELS_ASCENDING[i]: float(p[i]) for i in range(4, -1, -1)}  # excellent first
        return {"score": r, "vlm_vis": (r - 1) / 4, "probs": probs}

    def describe(self, x: torch.Tensor) -> str:
        """One sentence from the rating and the classifier's most likely degradation."""
        f = self.features(x)
        names = self.encoder.degradation_names
        k = int(f["type_logits"].argmax(-1))
        rating = self.rate(x)
        level = max(rating["probs"], key=rating["probs"].get)
        what = "looks clear" if names[k] == "clear" else f"looks {names[k]}"
        return f"Visibility {level} (r = {rating['score']:.2f}); the image {what}."


def _check_ensemble(ensemble: Any) -> int:
    if isinstance(ensemble, bool) or ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {sorted(ENSEMBLES)} (flip passes), got {ensemble!r}")
    return int(ensemble)


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights of length ``n``: linear ramps over ``overlap`` px on the sides shared with neighbours."""
    w = torch.ones(n)
    k = min(overlap, n // 2)
    if k > 0:
        ramp = torch.linspace(1.0 / (k + 1), k / (k + 1), k)
        if not at_start:
            w[:k] = ramp
        if not at_end:
            w[n - k :] = ramp.flip(0)
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return sorted({round(i * (size - tile) / (n - 1)) for i in range(n)})


@dataclass(frozen=True)
class Fallback:
    """How a blind restore uses the encoder's type probabilities p (sorted, p_1 >= p_2 >= ...) instead of a hard
    choice of the prior's type, so that an uncertain or wrong type cannot hurt at full strength.

    - ``soft_min``: when p_2 / (p_1 + p_2) >= ``soft_min`` the outputs of the top-2 types' priors are averaged with
      weights p_1, p_2 (renormalised); 1 (default) never blends, so the top-1 type alone gives the prior;
    - ``lo``, ``hi``: the output moves towards the input, y = x + c (y_hat - x) with
      c = clip((p_1 - lo) / (hi - lo), 0, 1): full restoration at p_1 >= ``hi``, the input itself at p_1 <= ``lo``;
      ``hi`` = 0 (default) never shrinks.

    The default is the hard choice of earlier releases. A restore told the true type (``degradation=``) uses no
    fallback.
    """

    soft_min: float = 1.0
    lo: float = 0.0
    hi: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.soft_min <= 1.0:
            raise ValueError(f"soft_min must be in (0, 1], got {self.soft_min!r}")
        if not (0.0 <= self.lo <= self.hi <= 1.0):
            raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={self.lo!r}, hi={self.hi!r}")

    def top2_weights(self, p1: float, p2: float) -> tuple[float, float]:
        """Weights of the top-1 and top-2 types' outputs."""
        share = p2 / (p1 + p2) if p1 + p2 > 0 else 0.0
        if self.soft_min >= 1.0 or share < self.soft_min:
            return 1.0, 0.0
        return 1.0 - share, share

    def shrink(self, p1: float) -> float:
        """c of y = x + c (y_hat - x) for the top probability ``p1``."""
        if self.hi <= 0.0:
            return 1.0
        if self.hi == self.lo:
            return 1.0 if p1 >= self.hi else 0.0
        return float(min(1.0, max(0.0, (p1 - self.lo) / (self.hi - self.lo))))

    def plan(self, probs: dict[str, float]) -> tuple[list[tuple[str, float]], float]:
        """``([(type, weight), ...], c)`` for a restore with type probabilities ``probs``."""
        top = sorted(probs, key=probs.get, reverse=True)[:2]
        p1 = probs[top[0]]
        p2 = probs[top[1]] if len(top) > 1 else 0.0
        w1, w2 = self.top2_weights(p1, p2)
        steps = [(top[0], w1)] + ([(top[1], w2)] if w2 > 0 else [])
        return steps, self.shrink(p1)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Fallback:
        """From a restorer ``config.json``'s ``fallback`` entry (absent: the hard choice)."""
        if not cfg:
            return cls()
        unknown = set(cfg) - {"soft_min", "lo", "hi", "chosen_on"}
        if unknown:
            raise ValueError(f"unknown fallback keys {sorted(unknown)}; valid: soft_min, lo, hi, chosen_on")
        return cls(**{k: float(v) for k, v in cfg.items() if k != "chosen_on"})


class EmbeddedRestorer:
    """Task ``restorer``: feed-forward passes of the conditional restorer (``steps`` and ``seed`` are accepted
    for the contract and unused: the model is deterministic).

    ``ensemble`` (1, 2 or 4) is the flip self-ensemble: the network also restores the horizontally (2) and the
    vertically and doubly (4) flipped image, the outputs are flipped back and averaged. The conditioning and the
    classical prior are computed once. Each pass costs one network forward.

    ``fallback`` (:class:`Fallback`) decides how a blind restore uses the encoder's type probabilities: the prior of
    the top type, a blend of the top-2 types' outputs, and a move towards the input when the top probability is low.

    ``types`` says which of the encoder's logits give those probabilities: ``"view_head"`` (its image-level type
    logits, from its view head when it has one) or ``"views"`` (the plain mean of the views' cosine logits).
    ``deblur`` switches the network's deblurring stage on or off.
    """

    def __init__(self, encoder: DegradationAwareEncoder, net: ConditionalRestorer, *, random_weights: bool,
                 name: str = "embedded", ensemble: int = 1, fallback: Fallback | None = None,
                 types: str = "view_head", deblur: bool = True) -> None:
        if types not in TYPE_SOURCES:
            raise ValueError(f"types must be one of {', '.join(TYPE_SOURCES)}, got {types!r}")
        self.encoder = encoder
        self.net = net
        self.random_weights = random_weights
        self.name = name
        self.ensemble = _check_ensemble(ensemble)
        self.fallback = fallback if fallback is not None else Fallback()
        self.types = types
        self.deblur = bool(deblur)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def condition(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning (1, 2D): normalised view-averaged content and degradation embeddings of the whole image."""
        return self._condition(x)[0]

    def deblur_weight(self, p_blur: float, degradation: str | None) -> float:
        """``w`` of the deblurring stage (:class:`~vlmir.models.restorer.RingFilter`): 0 for a network without
        one or with :attr:`deblur` off, else 1 or 0 when the type is given, else the encoder's probability of
        ``motion-blurry``."""
        if self.net.deblur is None or not self.deblur:
            return 0.0
        if degradation is not None:
            return 1.0 if degradation == BLUR else 0.0
        return p_blur

    @torch.no_grad()
    def _condition(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], float]:
        """Conditioning, the type probabilities by name and the probability of ``motion-blurry`` (0 when the
        encoder has no such name)."""
        f = self.encoder.embed(x)
        cond = torch.cat([F.normalize(f["content"], dim=-1), F.normalize(f["degradation"], dim=-1)], dim=-1)
        names = self.encoder.degradation_names
        p = f[TYPE_SOURCES[self.types]].softmax(-1)[0]
        p_blur = float(p[names.index(BLUR)]) if BLUR in names else 0.0
        return cond, {n: float(v) for n, v in zip(names, p.tolist(), strict=True)}, p_blur

    @torch.no_grad()
    def type_probabilities(self, x: torch.Tensor) -> dict[str, float]:
        """The encoder's type probabilities of ``x`` (1, 3, H, W), by name: what the fallback acts on."""
        x = _check_image(x).to(self.device, torch.float32).clamp(0, 1)
        return self._condition(x)[1]

    @torch.no_grad()
    def _run(self, x: torch.Tensor, cond: torch.Tensor, plan: list[tuple[str | None, float]], ensemble: int,
             deblur: float = 0.0, shrink: float = 1.0) -> torch.Tensor:
        """Restore ``x`` (a whole image or a tile): per ``(prior type, weight)`` of ``plan`` the ``ensemble`` flip
        passes (the outputs weighted), then the deblurring stage with weight ``deblur``, then the move towards the
        input by ``shrink`` (:class:`Fallback`). Each classical prior is computed from the same pixels, so a tiled
        restore never runs the classical method on the whole image."""
        total = None
        for prior_type, weight in plan:
            prior = classical_prior(x, [prior_type]) if prior_type is not None else None
            out = None
            for dims in ENSEMBLES[ensemble]:
                xf = x.flip(dims) if dims else x
                pf = prior.flip(dims) if dims and prior is not None else prior
                y = self._pass(xf, cond, pf)
                y = y.flip(dims) if dims else y
                out = y if out is None else out + y
            out = out * (weight / len(ENSEMBLES[ensemble]))
            total = out if total is None else total + out
        out = total
        if deblur > 0:
            out = (out + deblur * (self.net.deblur(out) - out)).clamp(0, 1)
        if shrink < 1.0:
            out = (x + shrink * (out - x)).clamp(0, 1)
        return out

    def _pass(self, x: torch.Tensor, cond: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """One network forward, padded to the network multiple and cropped back."""
        m = self.net.multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
            prior = None if prior is None else F.pad(prior, (0, pw, 0, ph), mode=mode)
        return self.net(x, cond, prior)[..., :h, :w].clamp(0, 1)

    @torch.no_grad()
    def restore(self, x: torch.Tensor, *, steps: int | None = None, seed: int = 0, tile: int | None = None,
                progress: Callable[[int, int], Any] | None = None, degradation: str | None = None,
                ensemble: int | None = None, fallback: Fallback | None | str = "default",
                prior_type: str | None = None) -> torch.Tensor:
        """Restore ``x`` (1, 3, H, W) in [0, 1]; returns the same shape.

        Args:
            steps, seed: unused (feed-forward model); accepted for the restorer contract.
            tile: tile side in px (>= 64) with 32 px overlap and linear blending; default 512 above ~1 MP, else
                the whole image in one pass.
            progress: optional ``progress(done, total)`` called after each tile.
            degradation: for a restorer with a classical prior, the type whose classical method gives the prior
                (one of the encoder's names); default the encoder's prediction. With a deblurring stage it also
                sets its weight (1 for ``motion-blurry``, else 0; default the encoder's probability of
                ``motion-blurry``). The conditioning is always the encoder's own embedding of the image. Ignored
                by a restorer with neither.
            ensemble: flip self-ensemble passes, 1, 2 or 4 (class docstring); default :attr:`ensemble`.
            fallback: the :class:`Fallback` of a blind restore; ``"default"`` is :attr:`fallback`, ``None`` the
                hard choice. Unused when ``degradation`` is given.
            prior_type: the classical prior's type of a blind restore (the conditioning and the deblurring weight
                stay the encoder's own), with no fallback; used to score fallbacks without re-running the encoder.
        """
        x = _check_image(x)
        ensemble = self.ensemble if ensemble is None else _check_ensemble(ensemble)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 64):
            raise ValueError(f"tile must be an int >= 64 px or None, got {tile!r}")
        src_dtype, src_device = x.dtype, x.device
        x = x.to(self.device, torch.float32).clamp(0, 1)
        if (self.net.prior or self.net.deblur is not None) and degradation is not None \
                and degradation not in self.encoder.degradation_names:
            raise ValueError(f"unknown degradation {degradation!r}; valid: {', '.join(self.encoder.degradation_names)}")
        if prior_type is not None and prior_type not in self.encoder.degradation_names:
            raise ValueError(f"unknown prior_type {prior_type!r}; valid: {', '.join(self.encoder.degradation_names)}")
        cond, probs, p_blur = self._condition(x)
        deblur = self.deblur_weight(p_blur, degradation)
        fb = self.fallback if isinstance(fallback, str) and fallback == "default" else (fallback or Fallback())
        if not isinstance(fb, Fallback):
            raise ValueError(f"fallback must be a Fallback, None or 'default', got {fallback!r}")
        if degradation is not None or prior_type is not None:
            plan, shrink = [(degradation or prior_type, 1.0)], 1.0
        else:
            plan, shrink = fb.plan(probs)
        if not self.net.prior:  # a network without a prior: one pass; the shrink still applies to a blind restore
            plan = [(None, 1.0)]
        h, w = x.shape[-2:]
        if tile is None and h * w > AUTO_TILE_PIXELS:
            tile = DEFAULT_TILE
        if tile is None or (h <= tile and w <= tile):
            out = self._run(x, cond, plan, ensemble, deblur, shrink)
            if progress is not None:
                progress(1, 1)
            return out.to(src_device, src_dtype)
        ys, xs = _starts(h, tile, TILE_OVERLAP), _starts(w, tile, TILE_OVERLAP)
        acc = torch.zeros_like(x)
        wsum = torch.zeros(1, 1, h, w, device=x.device)
        total, done = len(ys) * len(xs), 0
        for y in ys:
            for x0 in xs:
                th, tw = min(tile, h - y), min(tile, w - x0)
                piece = self._run(x[..., y : y + th, x0 : x0 + tw], cond, plan, ensemble, deblur, shrink)
                wy = _ramp(th, TILE_OVERLAP, y == 0, y + th >= h).to(x.device)
                wx = _ramp(tw, TILE_OVERLAP, x0 == 0, x0 + tw >= w).to(x.device)
                wgt = (wy[:, None] * wx[None, :])[None, None]
                acc[..., y : y + th, x0 : x0 + tw] += piece * wgt
                wsum[..., y : y + th, x0 : x0 + tw] += wgt
                done += 1
                if progress is not None:
                    progress(done, total)
        return (acc / wsum).clamp(0, 1).to(src_device, src_dtype)


# -- builders (registry) -------------------------------------------------------------------------------------------

def build_encoder(device: str = "cpu", path: str | Path | None = None, **_: Any) -> EmbeddedEncoderModel:
    enc, rnd = load_encoder(path, device=device)
    return EmbeddedEncoderModel(enc, random_weights=rnd)


def build_classifier(device: str = "cpu", path: str | Path | None = None, **_: Any) -> EmbeddedClassifier:
    enc, rnd = load_encoder(path, device=device)
    return EmbeddedClassifier(enc, random_weights=rnd, name="embedded-classifier")


def build_restorer(device: str = "cpu", path: str | Path | None = None, encoder_path: str | Path | None = None,
                   **_: Any) -> EmbeddedRestorer:
    enc, rnd_e = load_encoder(encoder_path, device=device)
    net, rnd_r = load_restorer(path, device=device, cond_dim=2 * enc.config["embed_dim"])
    if rnd_r:
        return EmbeddedRestorer(enc, net, random_weights=True, ensemble=DEFAULT_ENSEMBLE)
    opts = load_inference(path)
    return EmbeddedRestorer(enc, net, random_weights=rnd_e, ensemble=opts["ensemble"], fallback=load_fallback(path),
                            types=opts["types"], deblur=opts["deblur"])


def build_wresvlm_lite(device: str = "cpu", path: str | Path | None = None, encoder_path: str | Path | None = None,
                       **_: Any) -> EmbeddedRestorer:
    """The ``wresvlm-lite`` restorer: the embedded restorer's network after WResVLM's semi-supervised training
    (its EMA teacher), on the embedded encoder. Its weights are never replaced by random ones."""
    enc, rnd_e = load_encoder(encoder_path, device=device)
    net, _ = load_restorer(path if path is not None else WRESVLM_DIR, allow_random=False, device=device)
    return EmbeddedRestorer(enc, net, random_weights=rnd_e, name="wresvlm-lite", ensemble=DEFAULT_ENSEMBLE)


def _wresvlm_available() -> tuple[bool, str]:
    if (WRESVLM_DIR / WEIGHTS_FILE).is_file() and (WRESVLM_DIR / "config.json").is_file():
        return True, ""
    return False, (f"weights not found in {WRESVLM_DIR} (train them with `python -m vlmir train wresvlm --config "
                   f"vlmir/training/configs/wresvlm.json --export {WRESVLM_DIR}`)")


def build_rater(device: str = "cpu", path: str | Path | None = None, encoder_path: str | Path | None = None,
                **_: Any) -> EmbeddedRater:
    enc, rnd_e = load_encoder(encoder_path, device=device)
    feature_dim = 2 * enc.config["embed_dim"] + len(enc.degradation_names) + enc.pooled_dim
    head, rnd_h = load_rater_head(path, device=device, feature_dim=feature_dim)
    return EmbeddedRater(enc, head, random_weights=rnd_e or rnd_h)


def _available() -> tuple[bool, str]:
    return True, ""  # always buildable; random weights (flagged) when the files are missing


_LICENSE = "Apache-2.0 (trained by vlmir on photos from scikit-image, scikit-learn and matplotlib)"
register(ModelSpec("embedded-encoder", "encoder", build_encoder, default=True, license=_LICENSE,
                   description="tiny DA-CLIP-style degradation-aware encoder, trained from scratch (embedded)",
                   source="assets:weights/embedded-encoder/model.safetensors", available=_available))
register(ModelSpec("embedded-classifier", "classifier", build_classifier, default=True, license=_LICENSE,
                   description="degradation classifier: cosine of the embedded encoder's degradation embedding "
                               "to the names' text embeddings (10 DA-CLIP types + clear)",
                   source="assets:weights/embedded-encoder/model.safetensors", available=_available))
register(ModelSpec("embedded", "restorer", build_restorer, default=True, license=_LICENSE,
                   description="fast embedded restorer: NAFNet-style network conditioned on the embedded encoder, "
                               "refining the classical method of the predicted type (one pass, CPU-fast)",
                   source="assets:weights/embedded-restorer/model.safetensors;assets:weights/embedded-encoder/model.safetensors",
                   available=_available, extra={"diffusion": False, "degradations": DEGRADATIONS}))
register(ModelSpec("wresvlm-lite", "restorer", build_wresvlm_lite, license=_LICENSE,
                   description="the embedded restorer fine-tuned by WResVLM's semi-supervised method on CPU (lite run: "
                               "embedded rater and encoder as VLM and CLIP, engine weather as real data)",
                   source="assets:weights/wresvlm-lite/model.safetensors;assets:weights/embedded-encoder/model.safetensors",
                   available=_wresvlm_available, extra={"diffusion": False, "degradations": DEGRADATIONS}))
register(ModelSpec("embedded-rater", "rater", build_rater, default=True, license=_LICENSE,
                   description="visibility rater (WResVLM levels, r = sum i p_i) on the embedded encoder's features",
                   source="assets:weights/embedded-rater/model.safetensors;assets:weights/embedded-encoder/model.safetensors",
                   available=_available))
