"""WResVLM training: semi-supervised real-world weather restoration guided by VLM ratings and descriptions.

Paper: Xu et al., "Towards Real-World Adverse Weather Image Restoration: Enhancing Clearness and Semantics with
Vision-Language Models", ECCV 2024 (``shared/seeds/001_*``). A restoration model (the *student*) learns from
labelled synthetic pairs and from unlabelled real weather photos; on the real ones a VLM supplies the signal:

- **Image assessment** (Sec. Image Assessment): ``r^vlm = sum_i i p_i`` over the five level words (any rater of
  :func:`vlmir.vlm.rater.load_rater`: a transformers VLM, or the embedded rater offline).
- **Pseudo-labels** (Sec. Pseudo-Labeling): per unlabelled image, the best of several restorers' outputs by
  r^vlm (and votes of the IQA metrics MUSIQ, CLIP-IQA, Q-Align when their weights are present); replaced between
  rounds whenever the EMA teacher's output rates higher (:class:`~vlmir.training.pseudo_labels.PseudoLabelStore`).
  ``L_ps = L1(y_hat, y^ps)``.
- **Weather prompt learning**: stage (a) learns prompt embeddings ``t_c, t_r, t_h, t_s`` (clear, rain, haze, snow)
  with a frozen CLIP by cross-entropy on labelled images; stage (b)
  ``L_wpl = -log softmax_t(s cos(E_I(y_hat), t))_{t_c}``.
- **Description-assisted semantic enhancement**: the VLM's description with weather ``d_neg`` and its weather-free
  rewrite ``d_pos`` (:func:`vlmir.vlm.weather.remove_weather`);
  ``L_sem = -log softmax_d(s cos(E_I(y_hat), E_T(d)))_{d_pos}``, d in {d_pos, d_neg}.
- **Feature similarity**: ``L_feat = 1/HW sum_i (1 - cos(g_hat_i, g*_i))`` between encoder features of the
  prediction and of the pseudo-label and of the input (the mean of the two), with Depth Anything's encoder
  (transformers) or, offline, the frozen embedded encoder's content tower.
- **Total loss**: ``L = L_sup + w1 L_ps + w2 L_wpl + w3 L_sem + w4 L_feat`` with (0.5, 0.2, 0.05, 0.2) by default
  (``weights`` in the config), an EMA teacher, rounds with re-rating and pseudo-label refresh between them.

The slides write the two softmaxes over plain cosines (no temperature); ``scale`` (config ``clip_scale``) is the
temperature ``s``: ``1.0`` gives the slides' formula literally, ``"clip"`` (the default) the frozen CLIP's own
learned logit scale, as CLIP computes its softmax.

Deviations (documented in the report of the lite run too):

- The student is the embedded restorer's network (:class:`~vlmir.models.restorer.ConditionalRestorer`,
  conditioned on the frozen embedded encoder and refining the classical prior of the type the encoder predicts),
  initialised from a registry restorer folder, not the paper's backbones (Restormer, ...).
- The prompt embeddings live in the joint embedding space (one learnable vector per class, initialised from the
  text tower's embedding of ``"a clear photo"`` ...), not as context tokens in front of the text tower.
- Offline, the frozen CLIP is the embedded encoder (our own small DA-CLIP-style model, trained on 11 degradation
  names only; its text tower reads 16 tokens, so a long description is cut there) and descriptions come from its
  classifier (``"A photo that looks rainy."``); with a transformers VLM rater, descriptions are the VLM's answers
  to the paper's question.
- Pseudo-labels are chosen among whole-image restorations; ``L_ps`` and ``L_feat`` use aligned crops of the image
  and its pseudo-label. The refresh compares the teacher's rating with the stored label's (strictly higher wins).

Data layout (``unlabelled.folder``: any folder of weather photos, searched recursively; labelled pairs come from the
degradation engine (rain, haze, snow and their mixtures) or from ``labelled.folder`` with ``input/`` and
``target/`` images of the same names). Run folder::

    OUT/train.log, train_config.json, checkpoint.pt, rounds.jsonl, prompts.safetensors
    OUT/unlabelled/<category>/<image>.png   # engine images with their labels withheld (offline runs only)
    OUT/pseudo_labels/                      # the PseudoLabelStore
    OUT/final/                              # model.safetensors, config.json, train_config.json, metrics.json

Command: ``python -m vlmir train wresvlm --config vlmir/training/configs/wresvlm.json --out runs/wresvlm``.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmir.constants import DEGRADATIONS
from vlmir.training.pseudo_labels import PseudoLabelStore

WEATHER_TYPES: tuple[str, ...] = ("rainy", "hazy", "snowy")
# the four weather prompts of L_wpl: t_c, t_r, t_h, t_s; index 0 is "clear"
PROMPT_CLASSES: tuple[str, ...] = ("clear", "rainy", "hazy", "snowy")
PROMPT_TEXTS: tuple[str, ...] = ("a clear photo", "a rainy photo", "a hazy photo", "a snowy photo")
CATEGORY_OF = {"rainy": "Rain", "hazy": "Haze", "snowy": "Snow"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# L = L_sup + w1 L_ps + w2 L_wpl + w3 L_sem + w4 L_feat (the paper's defaults)
DEFAULT_WEIGHTS = {"sup": 1.0, "ps": 0.5, "wpl": 0.2, "sem": 0.05, "feat": 0.2}
IQA_VOTERS = ("musiq", "clipiqa", "qalign")


def weather_type_weights() -> dict[str, float]:
    """Sampling weights of :class:`~vlmir.training.data.DataConfig` that draw rain, haze and snow only."""
    return {t: (1.0 if t in WEATHER_TYPES else 0.0) for t in DEGRADATIONS}


# -- losses (each a plain function of tensors; the tests compute them by hand) -----------------------------------

def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L_sup`` / ``L_ps``: mean absolute error."""
    return (pred - target).abs().mean()


def cosine_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``s * cos(image, text)``: (B, K) from image embeddings (B, D) and text embeddings (K, D) or (B, K, D)."""
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    if txt.ndim == 2:
        return scale * img @ txt.t()
    return scale * torch.einsum("bd,bkd->bk", img, txt)


def wpl_loss(image_emb: torch.Tensor, prompts: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``L_wpl = -mean_b log softmax_t(s cos(E_I(y_hat_b), t))_{clear}``; ``prompts`` (4, D), row 0 ``t_c``."""
    return -cosine_logits(image_emb, prompts, scale).log_softmax(-1)[:, 0].mean()


def prompt_ce_loss(image_emb: torch.Tensor, prompts: torch.Tensor, target: torch.Tensor,
                   scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Stage (a) of weather prompt learning: cross-entropy of ``softmax(s cos(E_I(x), t))`` to soft targets (B, 4)."""
    return -(target * cosine_logits(image_emb, prompts, scale).log_softmax(-1)).sum(-1).mean()


def sem_loss(image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
             scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``L_sem = -mean_b log softmax(s cos(E_I(y_hat_b), E_T(d_pos_b)), s cos(E_I(y_hat_b), E_T(d_neg_b)))_0``;
    ``pos_emb``, ``neg_emb`` (B, D): each image's own descriptions."""
    return -cosine_logits(image_emb, torch.stack([pos_emb, neg_emb], dim=1), scale).log_softmax(-1)[:, 0].mean()


def feat_loss(pred_feat: torch.Tensor, ref_feat: torch.Tensor) -> torch.Tensor:
    """``L_feat = 1/HW sum_i (1 - cos(g_hat_i, g*_i))`` (and the mean over the batch): features (B, C, H, W)
    compared along C, or tokens (B, N, C) compared along C."""
    dim = 1 if pred_feat.ndim == 4 else -1
    return (1 - F.cosine_similarity(pred_feat, ref_feat, dim=dim, eps=1e-8)).mean()


def weather_target(types: Sequence[str]) -> torch.Tensor:
    """Soft target (4,) over :data:`PROMPT_CLASSES`: uniform over an image's weather types, ``clear`` if none."""
    t = torch.zeros(len(PROMPT_CLASSES))
    names = [n for n in types if n in PROMPT_CLASSES]
    for n in names or ["clear"]:
        t[PROMPT_CLASSES.index(n)] = 1.0 / max(1, len(names))
    return t


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_s`` for every floating parameter and buffer (others copied)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema momentum must be in [0, 1], got {momentum}")
    s_state = student.state_dict()
    for name, t in teacher.state_dict().items():
        s = s_state[name]
        if t.is_floating_point():
            t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
        else:
            t.copy_(s)


# -- the frozen CLIP (E_I, E_T) ------------------------------------------------------------------------------------

class EmbeddedCLIP(nn.Module):
    """E_I / E_T from the embedded encoder's towers (:class:`~vlmir.models.encoder.DegradationAwareEncoder`).

    ``embedding``: which image embedding is E_I, ``"degradation"`` (the controller's, the one trained against the
    text tower: the default) or ``"content"``. Images are resized (bilinear) to the encoder's crop side.
    """

    def __init__(self, encoder: nn.Module, embedding: str = "degradation", random_weights: bool = False) -> None:
        super().__init__()
        if embedding not in ("degradation", "content"):
            raise ValueError(f"clip.embedding must be 'degradation' or 'content', got {embedding!r}")
        self.encoder = encoder
        self.embedding = embedding
        self.random_weights = random_weights
        self.name = f"embedded-encoder ({embedding} embedding)"

    def logit_scale(self) -> torch.Tensor:
        return self.encoder.logit_scale().detach()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        s = self.encoder.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.encoder.forward_features(x)[self.embedding]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.encoder.tokenize(list(texts)).to(next(self.encoder.parameters()).device)
        return self.encoder.encode_text(tokens)


class OpenCLIP(nn.Module):
    """E_I / E_T from an open_clip model (the paper's CLIP): ``open_clip.create_model(name, pretrained=FILE)``."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model: nn.Module, tokenizer: Any, *, random_weights: bool = False, name: str = "open_clip") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.random_weights = random_weights
        self.name = name
        size = getattr(model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, opts: dict[str, Any]) -> OpenCLIP:
        """``{"model": "ViT-B-32", "pretrained": "/path/open_clip_pytorch_model.bin"}``; with no ``pretrained`` the
        weights are random (say so with ``allow_random: true``); ``{"config": {...}}`` builds an open_clip ``CLIP``
        from a config dict (tests)."""
        import open_clip

        if "config" in opts:
            from open_clip.model import CLIP

            model = CLIP(**opts["config"])
            ctx = opts["config"]["text_cfg"].get("context_length", 77)
            return cls(model.eval(), open_clip.tokenizer.SimpleTokenizer(context_length=ctx), random_weights=True,
                       name="open_clip (random config)")
        name, pretrained = opts.get("model", "ViT-B-32"), opts.get("pretrained")
        if pretrained is None and not opts.get("allow_random", False):
            raise ValueError("clip.pretrained must name a local open_clip checkpoint file (or set allow_random: true)")
        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(f"clip.pretrained: {pretrained} does not exist (open_clip weights for {name})")
        model = open_clip.create_model(name, pretrained=pretrained)
        return cls(model.eval(), open_clip.get_tokenizer(name), random_weights=pretrained is None,
                   name=f"open_clip {name}")

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=100.0).detach()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        return self.model.encode_image((x - self.mean) / self.std)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.mean.device))


# -- feature models for L_feat --------------------------------------------------------------------------------------

class EncoderFeatures(nn.Module):
    """Spatial features (B, C, H/16, W/16) of the frozen embedded encoder's content tower (stem, layers 1-3)."""

    name = "embedded-encoder content tower (layer3)"

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.encoder.clip.visual
        h = v.stem((x - self.encoder.mean) / self.encoder.std)
        return v.layer3(v.layer2(v.layer1(h)))


class DepthFeatures(nn.Module):
    """Patch-token features (B, N, C) of Depth Anything's encoder (its DINOv2 backbone, last output stage).

    Images are resized (bilinear) to a multiple of the patch size (``size`` px on the short side, default the
    input's, rounded) and normalised with ImageNet statistics, as Depth Anything's image processor does.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, model: nn.Module, *, size: int | None = None, random_weights: bool = False,
                 name: str = "depth-anything") -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.random_weights = random_weights
        self.name = name
        self.patch = int(model.config.backbone_config.patch_size)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, size: int | None = None) -> DepthFeatures:
        """From a local folder or a hub id (``LiheYoung/depth-anything-small-hf``,
        ``depth-anything/Depth-Anything-V2-Small-hf``); offline, a hub id must be in the local cache."""
        from transformers import DepthAnythingForDepthEstimation

        from vlmir.registry import hub_offline

        local = Path(name_or_path).expanduser()
        if str(name_or_path).startswith((".", "/", "~")) and not local.is_dir():
            raise FileNotFoundError(f"features.model: {name_or_path} is not a folder with a Depth Anything model")
        try:
            model = DepthAnythingForDepthEstimation.from_pretrained(str(name_or_path),
                                                                    local_files_only=hub_offline() or local.is_dir())
        except OSError as e:
            raise FileNotFoundError(f"Depth Anything model {name_or_path!r} is not available offline ({e}); download "
                                    f"it on a machine with network (huggingface-cli download {name_or_path}) or give "
                                    f"a local folder") from e
        return cls(model.eval(), size=size, name=f"depth-anything {name_or_path}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        short = self.size or min(h, w)
        f = short / min(h, w)
        th = max(self.patch, round(h * f / self.patch) * self.patch)
        tw = max(self.patch, round(w * f / self.patch) * self.patch)
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
        out = self.model.backbone.forward_with_filtered_kwargs((x - self.mean) / self.std)
        tokens = out.feature_maps[-1]
        if tokens.ndim == 3:  # (B, 1 + N, C): drop the class token
            tokens = tokens[:, 1:]
        return tokens


def build_feature_model(opts: dict[str, Any], encoder: nn.Module) -> nn.Module | None:
    """``features``: ``{"model": "encoder"}`` (default), ``"none"`` (L_feat off), or a Depth Anything folder/hub id."""
    name = opts.get("model", "encoder")
    if name in (None, "none"):
        return None
    if name == "encoder":
        return EncoderFeatures(encoder)
    return DepthFeatures.from_pretrained(name, size=opts.get("size"))


def build_clip(opts: dict[str, Any], encoder: nn.Module, encoder_random: bool) -> nn.Module:
    """``clip``: ``{"model": "embedded", "embedding": "degradation"}`` (default) or open_clip options
    (:meth:`OpenCLIP.from_config`)."""
    if opts.get("model", "embedded") == "embedded" and "config" not in opts:
        return EmbeddedCLIP(encoder, opts.get("embedding", "degradation"), random_weights=encoder_random)
    return OpenCLIP.from_config(opts)


class WeatherPrompts(nn.Module):
    """Learnable prompt embeddings ``t_c, t_r, t_h, t_s`` (4, D), initialised from E_T of :data:`PROMPT_TEXTS`."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        if init.ndim != 2 or init.shape[0] != len(PROMPT_CLASSES):
            raise ValueError(f"prompt init must be ({len(PROMPT_CLASSES)}, D), got {tuple(init.shape)}")
        self.embeddings = nn.Parameter(init.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.embeddings


# -- the student ----------------------------------------------------------------------------------------------------

def student_restore(net: nn.Module, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The student on training crops ``x`` (B, 3, S, S), S the encoder's crop side: conditioned on the frozen
    encoder's embeddings of the crops and, for a network with a prior, on the classical restoration of the type
    the encoder predicts (as :mod:`vlmir.training.train_restorer` trains it)."""
    from vlmir.models.restorer import classical_prior
    from vlmir.training.common import unwrap
    from vlmir.training.train_restorer import condition

    if unwrap(net).prior:
        cond, pred = condition(encoder, x, return_pred=True)
        return net(x, cond, classical_prior(x, pred))
    return net(x, condition(encoder, x))


def teacher_restorer(encoder: nn.Module, net: nn.Module, random_weights: bool) -> Any:
    """A registry-contract restorer (``restore(x)``) over a (teacher) network: the embedded restorer's inference."""
    from vlmir.models.embedded import EmbeddedRestorer

    return EmbeddedRestorer(encoder, net, random_weights=random_weights, name="wresvlm-teacher", ensemble=1)


# -- data -----------------------------------------------------------------------------------------------------------

def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); a missing or empty folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def fit_image(x: torch.Tensor, short_side: int | None, multiple: int) -> torch.Tensor:
    """``x`` (1, 3, H, W) resized (area) so its short side is at most ``short_side``, then centre-cropped to
    multiples of ``multiple``."""
    h, w = x.shape[-2:]
    if short_side and min(h, w) > short_side:
        f = short_side / min(h, w)
        x = F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    h, w = x.shape[-2:]
    th, tw = h - h % multiple, w - w % multiple
    y0, x0 = (h - th) // 2, (w - tw) // 2
    return x[..., y0 : y0 + th, x0 : x0 + tw].clamp(0, 1).contiguous()


def load_unlabelled(folder: str | Path, *, short_side: int | None, multiple: int, min_side: int) -> dict[str, dict]:
    """The unlabelled set: ``{key: {"path", "image" (1, 3, H, W)}}``, key the path relative to ``folder``."""
    from vlmir.io import load_image

    folder = Path(folder)
    out = {}
    for p in list_images(folder):
        x = fit_image(load_image(p), short_side, multiple)
        if min(x.shape[-2:]) < min_side:
            raise ValueError(f"unlabelled image {p} is {x.shape[-1]}x{x.shape[-2]} px after resizing; the training "
                             f"crop needs at least {min_side} px a side (raise unlabelled.short_side)")
        out[p.relative_to(folder).as_posix()] = {"path": str(p), "image": x}
    return out


def write_engine_split(out: str | Path, *, photos: Sequence[str], per_photo: int, seed: int, short_side: int,
                       severities: Sequence[int] = (2, 3, 4), clean_out: str | Path | None = None,
                       p_mixture: float = 0.0) -> list[Path]:
    """Engine weather images laid out as ``out/<Rain|Haze|Snow|Mixed>/<photo>_<i>.png`` (labels withheld; the
    clean images go to ``clean_out`` with the same layout when given). Per photo, ``per_photo`` images cycle
    through rain, haze and snow; with ``p_mixture`` some are mixtures (haze + rain, haze + snow)."""
    from vlmir.degradations import degrade
    from vlmir.io import save_image
    from vlmir.training.data import load_photo

    out = Path(out)
    rng = np.random.default_rng(seed)
    written = []
    for name in photos:
        img = torch.from_numpy(load_photo(name)).permute(2, 0, 1)[None].float()
        img = fit_image(img, short_side, 8)
        arr = img[0].permute(1, 2, 0).numpy()
        for i in range(per_photo):
            t = WEATHER_TYPES[i % len(WEATHER_TYPES)]
            types = [t]
            if rng.random() < p_mixture and t != "hazy":
                types = [t, "hazy"]
            sev = [int(rng.choice(list(severities))) for _ in types]
            lq, _ = degrade(arr, types, sev, seed=int(rng.integers(0, 2**31 - 1)))
            cat = "Mixed" if len(types) > 1 else CATEGORY_OF[t]
            path = out / cat / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1)[None], path)
            written.append(path)
            if clean_out is not None:
                cpath = Path(clean_out) / cat / f"{name}_{i}.png"
                cpath.parent.mkdir(parents=True, exist_ok=True)
                save_image(img, cpath)
    return written


class FolderPairs:
    """Labelled pairs from ``folder/input/<name>`` and ``folder/target/<name>`` (same relative names): random
    aligned crops, the :class:`~vlmir.training.data.PairSampler` interface (``sample``, ``state``,
    ``set_state``)."""

    def __init__(self, folder: str | Path, crop: int, seed: int = 0) -> None:
        from vlmir.io import load_image

        folder = Path(folder)
        inputs = list_images(folder / "input")
        self.pairs = []
        for p in inputs:
            rel = p.relative_to(folder / "input")
            t = folder / "target" / rel
            if not t.is_file():
                raise FileNotFoundError(f"labelled pair {p} has no target {t}")
            x, y = load_image(p), load_image(t)
            if x.shape != y.shape:
                raise ValueError(f"labelled pair {p} and {t} differ in size: {tuple(x.shape)} vs {tuple(y.shape)}")
            if min(x.shape[-2:]) < crop:
                raise ValueError(f"labelled image {p} is smaller than the crop ({crop} px)")
            self.pairs.append((x, y))
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, n: int) -> dict:
        lq, clean = [], []
        for _ in range(n):
            x, y = self.pairs[int(self.rng.integers(0, len(self.pairs)))]
            h, w = x.shape[-2:]
            i, j = int(self.rng.integers(0, h - self.crop + 1)), int(self.rng.integers(0, w - self.crop + 1))
            lq.append(x[0, :, i : i + self.crop, j : j + self.crop])
            clean.append(y[0, :, i : i + self.crop, j : j + self.crop])
        return {"lq": torch.stack(lq), "clean": torch.stack(clean), "types": [[] for _ in range(n)]}


class UnlabelledSampler:
    """Aligned random crops of unlabelled images and their pseudo-labels (with the images' text embeddings)."""

    def __init__(self, keys: Sequence[str], crop: int, seed: int = 0) -> None:
        self.keys = list(keys)
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, n: int, images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> tuple:
        xs, ys, keys = [], [], []
        for _ in range(n):
            k = self.keys[int(self.rng.integers(0, len(self.keys)))]
            x, y = images[k], labels[k]
            h, w = x.shape[-2:]
            i, j = int(self.rng.integers(0, h - self.crop + 1)), int(self.rng.integers(0, w - self.crop + 1))
            cx, cy = x[0, :, i : i + self.crop, j : j + self.crop], y[:, i : i + self.crop, j : j + self.crop]
            if self.rng.random() < 0.5:
                cx, cy = cx.flip(-1), cy.flip(-1)
            xs.append(cx)
            ys.append(cy)
            keys.append(k)
        return torch.stack(xs), torch.stack(ys), keys


class _Samplers:
    """Both samplers' RNG states as one (for :func:`vlmir.training.common.save_checkpoint`)."""

    def __init__(self, labelled: Any, unlabelled: UnlabelledSampler) -> None:
        self.labelled, self.unlabelled = labelled, unlabelled

    def state(self) -> dict:
        return {"labelled": self.labelled.state(), "unlabelled": self.unlabelled.state()}

    def set_state(self, state: dict) -> None:
        self.labelled.set_state(state["labelled"])
        self.unlabelled.set_state(state["unlabelled"])


# -- assessment, descriptions and pseudo-label initialisation -------------------------------------------------------

def rate_images(rater: Any, images: Sequence[torch.Tensor]) -> list[float]:
    """r^vlm of each image (1, 3, H, W) with any rater (``rate_batch`` when it has one)."""
    if hasattr(rater, "rate_batch"):
        return [float(r["score"]) for r in rater.rate_batch(list(images))]
    return [float(rater.rate(x)["score"]) for x in images]


def describe_image(x: torch.Tensor, *, rater: Any, encoder: nn.Module) -> str:
    """``d_neg``: a VLM rater's scene description with weather (the paper's Q2), or offline the embedded
    classifier's most likely type: ``"A photo that looks rainy."``."""
    from vlmir.vlm.visibility import VisibilityRater

    if isinstance(rater, VisibilityRater):
        return rater.describe(x)
    with torch.no_grad():
        f = encoder.embed(x.to(next(encoder.parameters()).device))
    name = encoder.degradation_names[int(f["type_logits"].argmax(-1))]
    return f"A photo that looks {name}."


class IQAVoters:
    """The IQA metrics whose weights are present (MUSIQ, CLIP-IQA, Q-Align in the paper), built through ``eval``."""

    def __init__(self, names: Sequence[str], log: Any, device: str = "cpu") -> None:
        self.metrics: dict[str, Any] = {}
        if not names:
            return
        from eval.metrics import create_metric, metric_info
        from eval.weights import MetricUnavailable, missing_weights

        for name in names:
            missing = missing_weights(name)
            if missing:
                log.info(f"IQA vote {name}: skipped, weights missing ({missing[0]})")
                continue
            try:
                self.metrics[name] = (create_metric(name, device=device), metric_info(name).lower_better)
            except MetricUnavailable as e:
                log.info(f"IQA vote {name}: skipped ({e})")

    def scores(self, x: torch.Tensor) -> dict[str, float]:
        return {n: float(m(x)[0]) for n, (m, _) in self.metrics.items()}

    def lower_better(self, name: str) -> bool:
        return self.metrics[name][1]


def choose_pseudo_label(candidates: dict[str, torch.Tensor], ratings: dict[str, float],
                        iqa: dict[str, dict[str, float]] | None = None,
                        lower_better: dict[str, bool] | None = None) -> str:
    """The candidate (restorer name) with the most votes: r^vlm and each IQA metric vote for their best candidate;
    ties go to the higher r^vlm. Without IQA scores this is the best r^vlm."""
    votes = dict.fromkeys(candidates, 0)
    votes[max(candidates, key=lambda k: ratings[k])] += 1
    for metric in sorted({m for s in (iqa or {}).values() for m in s}):
        sign = -1.0 if (lower_better or {}).get(metric, False) else 1.0
        votes[max(candidates, key=lambda k: sign * iqa[k][metric])] += 1
    return max(candidates, key=lambda k: (votes[k], ratings[k]))


def init_pseudo_labels(store: PseudoLabelStore, data: dict[str, dict], restorers: dict[str, Any], rater: Any,
                       encoder: nn.Module, *, iqa: IQAVoters | None = None, describe: bool = True,
                       progress: bool = False, llm: Any = None) -> int:
    """Give every unlabelled image without an entry its initial pseudo-label (resumable: existing entries stay).

    Returns the number of entries added."""
    from tqdm.auto import tqdm

    from vlmir.vlm.weather import remove_weather

    todo = [k for k in sorted(data) if k not in store]
    for key in tqdm(todo, desc="pseudo-labels", disable=not progress):
        x = data[key]["image"]
        cands = {name: r.restore(x).clamp(0, 1) for name, r in restorers.items()}
        ratings = dict(zip(cands, rate_images(rater, list(cands.values())), strict=True))
        iqa_scores = {n: iqa.scores(y) for n, y in cands.items()} if iqa is not None and iqa.metrics else {}
        lb = {m: iqa.lower_better(m) for m in iqa.metrics} if iqa_scores else {}
        best = choose_pseudo_label(cands, ratings, iqa_scores, lb)
        fields = {}
        if describe:
            d_neg = describe_image(x, rater=rater, encoder=encoder)
            fields = {"d_neg": d_neg, "d_pos": remove_weather(d_neg, llm)}
        store.add(key, source=data[key]["path"], image=cands[best], score=ratings[best], origin=best,
                  scores={"r_vlm": ratings[best], **{f"r_vlm[{n}]": v for n, v in ratings.items()},
                          **iqa_scores.get(best, {})}, round=0, **fields)
    return len(todo)


def refresh_pseudo_labels(store: PseudoLabelStore, data: dict[str, dict], teacher: Any, rater: Any, *, round: int,
                          replace: bool = True, progress: bool = False) -> dict[str, float]:
    """Re-rate the EMA teacher's outputs on the unlabelled set and (``replace``) put each in the store when it rates
    higher than the stored pseudo-label. Returns ``mean_r_vlm_teacher``, ``mean_r_vlm_pseudo``, ``replaced``."""
    from tqdm.auto import tqdm

    scores, replaced = [], 0
    for key in tqdm(sorted(data), desc=f"refresh round {round}", disable=not progress):
        y = teacher.restore(data[key]["image"]).clamp(0, 1)
        r = rate_images(rater, [y])[0]
        scores.append(r)
        if replace and store.replace_if_better(key, image=y, score=r, origin=f"teacher@round{round}",
                                               scores={"r_vlm": r}, round=round):
            replaced += 1
    pseudo = list(store.scores().values())
    return {"mean_r_vlm_teacher": float(np.mean(scores)), "mean_r_vlm_pseudo": float(np.mean(pseudo)),
            "replaced": replaced}


# -- the loop -------------------------------------------------------------------------------------------------------

OPTION_KEYS = {
    "kind", "seed", "encoder", "allow_random_encoder", "student", "rater", "init_restorers", "iqa_votes", "describe",
    "llm", "clip", "clip_scale", "features", "weights", "rounds", "steps_per_round", "steps", "batch_size",
    "unlabelled_batch_size", "lr", "warmup", "weight_decay", "ema", "refresh", "prompt_steps", "prompt_lr",
    "prompt_batch_size", "threads", "cpu", "log_every", "checkpoint_every", "data", "labelled", "unlabelled",
    "export_dtype", "pseudo_labels_from", "name",
}


def _check_options(cfg: dict[str, Any]) -> None:
    unknown = sorted(set(cfg) - OPTION_KEYS)
    if unknown:
        raise ValueError(f"wresvlm config: unknown keys {unknown}; known: {sorted(OPTION_KEYS)}")
    weights = {**DEFAULT_WEIGHTS, **cfg.get("weights", {})}
    bad = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if bad:
        raise ValueError(f"weights: unknown terms {bad}; known: {sorted(DEFAULT_WEIGHTS)}")
    for k, v in weights.items():
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"weights.{k} must be a number >= 0, got {v!r}")
    for k in ("rounds", "steps_per_round"):
        if k in cfg and (not isinstance(cfg[k], int) or cfg[k] < 0):
            raise ValueError(f"{k} must be an int >= 0, got {cfg[k]!r}")


def _load_student(cfg: dict[str, Any], encoder: nn.Module, log: Any) -> tuple[nn.Module, bool]:
    """The student network: ``student.path`` (a registry restorer's weights folder, default the embedded
    restorer's) or, with ``student.model``, a fresh network of that config (random weights)."""
    from vlmir.models.embedded import RESTORER_DIR, load_restorer
    from vlmir.models.restorer import ConditionalRestorer

    opts = cfg.get("student", {})
    if "model" in opts:
        torch.manual_seed(int(cfg.get("seed", 0)))
        net = ConditionalRestorer(**{"cond_dim": 2 * encoder.config["embed_dim"], **opts["model"]})
        log.info("WARNING: the student starts from RANDOM weights (student.model given)")
        return net, True
    path = opts.get("path", str(RESTORER_DIR))
    net, rnd = load_restorer(path, allow_random=False)
    log.info(f"student initialised from {path}")
    return net, rnd


def _load_rater(cfg: dict[str, Any], device: str) -> Any:
    from vlmir.vlm.rater import load_rater

    return load_rater(cfg.get("rater", "embedded-rater"), device=device)


def _init_restorers(cfg: dict[str, Any], device: str) -> dict[str, Any]:
    from vlmir.registry import create_model

    names = cfg.get("init_restorers", ["embedded", "classical"])
    if not names:
        raise ValueError("init_restorers must name at least one registry restorer")
    return {n: create_model(n, task="restorer", device=device) for n in names}


def _append_round(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_rounds(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fit_prompts(prompts: WeatherPrompts, clip: nn.Module, sampler: Any, *, steps: int, batch_size: int, lr: float,
                scale: float | torch.Tensor, device: Any, log: Any, progress: bool = False) -> float:
    """Stage (a): learn the prompt embeddings on labelled images (clean -> clear, degraded -> their weather types,
    uniform over a mixture's) by cross-entropy, the CLIP frozen. Returns the last loss."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(prompts.parameters(), lr=lr)
    loss = torch.zeros(())
    for i in tqdm(range(steps), desc="weather prompts", disable=not progress):
        b = sampler.sample(batch_size)
        x = torch.cat([b["clean"], b["lq"]]).to(device)
        target = torch.stack([weather_target([])] * len(b["clean"]) + [weather_target(t) for t in b["types"]]).to(device)
        with torch.no_grad():
            emb = clip.encode_image(x)
        loss = prompt_ce_loss(emb, prompts(), target, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % 10 == 0 or i == 0:
            log.info(f"prompt step {i + 1}/{steps} ce={loss.item():.4f}")
    return float(loss.item())


def _clip_scale(cfg: dict[str, Any], clip: nn.Module) -> float:
    s = cfg.get("clip_scale", "clip")
    if s == "clip":
        return float(clip.logit_scale())
    if not isinstance(s, (int, float)) or s <= 0:
        raise ValueError(f"clip_scale must be 'clip' or a number > 0, got {s!r}")
    return float(s)


def train(cfg: dict[str, Any], out_dir: str | Path, *, resume: bool = False, export: str | Path | None = None,
          progress: bool = True, rater: Any = None, restorers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) WResVLM training (module docstring). ``rater`` overrides ``cfg["rater"]`` with an object
    that has ``rate(x)``, ``restorers`` ``cfg["init_restorers"]`` with ``{name: object with restore(x)}`` (tests).
    Returns the final logs (also in ``OUT/final/metrics.json``)."""
    from tqdm.auto import tqdm

    from vlmir.models.embedded import load_encoder
    from vlmir.training.common import (
        Timer,
        cosine_lr,
        export_weights,
        load_checkpoint,
        make_accelerator,
        save_checkpoint,
        setup_logger,
    )
    from vlmir.training.data import DataConfig, PairSampler

    _check_options(cfg)
    out_dir = Path(out_dir)
    log = setup_logger(out_dir, "wresvlm")
    acc = make_accelerator(cfg)
    dev = acc.device
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    weights = {**DEFAULT_WEIGHTS, **cfg.get("weights", {})}
    rounds, per_round = int(cfg.get("rounds", 2)), int(cfg.get("steps_per_round", 100))
    if "steps" in cfg:  # ``--steps N``: N steps in all, spread over the rounds
        per_round = int(cfg["steps"]) // max(1, rounds)
    steps = rounds * per_round
    bs, ubs = int(cfg.get("batch_size", 4)), int(cfg.get("unlabelled_batch_size", cfg.get("batch_size", 4)))
    lr, warmup = float(cfg.get("lr", 1e-4)), int(cfg.get("warmup", 10))
    momentum = float(cfg.get("ema", 0.99))
    refresh = bool(cfg.get("refresh", True))

    encoder, enc_random = load_encoder(cfg.get("encoder"), allow_random=bool(cfg.get("allow_random_encoder", False)))
    if enc_random:
        log.info("WARNING: the embedded encoder (conditioning, CLIP, features) has RANDOM weights (test run)")
    encoder = encoder.to(dev).eval().requires_grad_(False)
    student, student_random = _load_student(cfg, encoder, log)
    if student.deblur is not None:  # the fitted deblurring stage is kept as it is (applied at inference only)
        student.deblur.requires_grad_(False)
    teacher = copy.deepcopy(student).to(dev).eval().requires_grad_(False)
    crop = encoder.image_size

    # labelled data: engine pairs of rain / haze / snow (and mixtures), or a folder of pairs
    if "labelled" in cfg and cfg["labelled"].get("folder"):
        labelled = FolderPairs(cfg["labelled"]["folder"], crop, seed=seed + 1000 + acc.process_index)
    else:
        data_cfg = {"crop": crop, "type_weights": weather_type_weights(), "p_procedural": 0.0, **cfg.get("data", {})}
        labelled = PairSampler(DataConfig(**data_cfg), seed=seed + 1000 + acc.process_index)

    # unlabelled data: a folder, or engine images written to OUT/unlabelled with their labels withheld
    u_opts = dict(cfg.get("unlabelled", {}))
    u_folder = u_opts.get("folder")
    if not u_folder:
        u_folder = out_dir / "unlabelled"
        if acc.is_main_process and not u_folder.is_dir():
            from vlmir.training.data import TRAIN_PHOTOS

            write_engine_split(u_folder, photos=u_opts.get("photos", TRAIN_PHOTOS[:6]),
                               per_photo=int(u_opts.get("per_photo", 3)), seed=int(u_opts.get("seed", seed + 7)),
                               short_side=int(u_opts.get("short_side", 160)), p_mixture=float(u_opts.get("p_mixture", 0.2)))
            log.info(f"unlabelled set: engine images written to {u_folder} (labels withheld)")
        acc.wait_for_everyone()
    data = load_unlabelled(u_folder, short_side=u_opts.get("short_side", 160), multiple=student.multiple, min_side=crop)
    for d in data.values():
        d["image"] = d["image"].to(dev)
    log.info(f"unlabelled set: {len(data)} images from {u_folder}")

    rater = rater if rater is not None else _load_rater(cfg, str(dev))
    if getattr(rater, "random_weights", False):
        log.info("WARNING: the rater has RANDOM weights; r^vlm is meaningless (test run)")
    clip = build_clip(cfg.get("clip", {}), encoder, enc_random).to(dev).eval().requires_grad_(False)
    scale = _clip_scale(cfg, clip)
    log.info(f"frozen CLIP: {clip.name}{' (RANDOM weights)' if getattr(clip, 'random_weights', False) else ''}, "
             f"softmax scale s = {scale:.3g}")
    feat_model = None
    if weights["feat"] > 0:
        feat_model = build_feature_model(cfg.get("features", {}), encoder)
        if feat_model is None:
            log.info("L_feat is off: features.model is 'none'")
            weights["feat"] = 0.0
        else:
            feat_model = feat_model.to(dev).eval().requires_grad_(False)
            log.info(f"L_feat features: {feat_model.name}")

    # the pseudo-label store: initialised once (resumable), shared by the processes through the disk
    store_dir = out_dir / "pseudo_labels"
    if not resume and (store_dir / "index.json").is_file():
        raise ValueError(f"{store_dir} already holds pseudo-labels of an earlier run; continue it with --resume "
                         f"(resume=True) or give a new --out")
    if acc.is_main_process:
        if cfg.get("pseudo_labels_from") and not (store_dir / "index.json").is_file():
            shutil.copytree(cfg["pseudo_labels_from"], store_dir, dirs_exist_ok=True)
            log.info(f"pseudo-labels copied from {cfg['pseudo_labels_from']}")
        store = PseudoLabelStore(store_dir)
        iqa = IQAVoters(cfg.get("iqa_votes", list(IQA_VOTERS)), log, str(dev))
        added = init_pseudo_labels(store, data, restorers or _init_restorers(cfg, str(dev)), rater, encoder, iqa=iqa,
                                   describe=bool(cfg.get("describe", True)), progress=progress, llm=cfg.get("llm"))
        if added:
            log.info(f"pseudo-labels: {added} initialised, mean r^vlm {np.mean(list(store.scores().values())):.3f}")
    acc.wait_for_everyone()
    store = PseudoLabelStore(store_dir, clean=acc.is_main_process)
    missing = sorted(set(data) - set(store.entries))
    if missing:
        raise ValueError(f"pseudo-label store {store_dir} lacks entries for {missing[:5]}")
    labels = {k: store.image(k).to(dev) for k in data}
    texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if weights["sem"] > 0:
        for k in data:
            e = store.entry(k)
            if "d_pos" not in e:
                raise ValueError(f"pseudo-label {k!r} has no descriptions (describe was off when it was made)")
            pos, neg = clip.encode_text([e["d_pos"], e["d_neg"]])
            texts[k] = (pos, neg)

    u_sampler = UnlabelledSampler(sorted(data), crop, seed=seed + 2000 + acc.process_index)
    samplers = _Samplers(labelled, u_sampler)
    prompts = WeatherPrompts(clip.encode_text(PROMPT_TEXTS)).to(dev)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg.get("weight_decay", 0.0)), betas=(0.9, 0.99))

    ckpt_path = out_dir / "checkpoint.pt"
    rounds_path = out_dir / "rounds.jsonl"
    step, spent, pending, prompts_done = 0, 0.0, None, False
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        samplers.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        teacher.load_state_dict(state["extra"]["teacher"])
        prompts.load_state_dict(state["extra"]["prompts"])
        step, spent = int(state["step"]), float(state["extra"]["wall_s"])
        pending = state["extra"].get("pending_refresh")
        prompts_done = True
        log.info(f"resumed from {ckpt_path} at step {step}")
    elif resume:
        log.info(f"no checkpoint at {ckpt_path}; starting afresh")
    if not resume:
        rounds_path.unlink(missing_ok=True)
    (out_dir / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    timer = Timer(spent)

    def checkpoint(at: int, pending_refresh: int | None) -> None:
        if acc.is_main_process:
            save_checkpoint(ckpt_path, model=acc.unwrap_model(student), optimizer=opt, step=at,
                            sampler_state=samplers.state(),
                            extra={"wall_s": timer.elapsed(), "teacher": teacher.state_dict(),
                                   "prompts": prompts.state_dict(), "pending_refresh": pending_refresh})

    # stage (a): weather prompt learning, once, before the restoration rounds
    prompt_steps = int(cfg.get("prompt_steps", 50)) if weights["wpl"] > 0 else 0
    if not prompts_done and prompt_steps:
        ce = fit_prompts(prompts, clip, labelled, steps=prompt_steps, batch_size=int(cfg.get("prompt_batch_size", 8)),
                         lr=float(cfg.get("prompt_lr", 1e-2)), scale=scale, device=dev, log=log, progress=progress)
        log.info(f"weather prompts learned: {prompt_steps} steps, last ce={ce:.4f}")
    prompts.requires_grad_(False)
    if acc.is_main_process:
        from safetensors.torch import save_file

        save_file({"prompts": prompts.embeddings.detach().cpu().contiguous()}, str(out_dir / "prompts.safetensors"))

    def end_of_round(r: int) -> None:
        """Re-rate the teacher's outputs; refresh the pseudo-labels (main process); log the round."""
        nonlocal labels, store
        if acc.is_main_process:
            restorer = teacher_restorer(encoder, teacher, student_random or enc_random)
            rec = refresh_pseudo_labels(store, data, restorer, rater, round=r, replace=refresh and r > 0,
                                        progress=progress)
            rec = {"round": r, "step": r * per_round, **rec, "wall_s": round(timer.elapsed(), 1)}
            if r not in {x["round"] for x in _read_rounds(rounds_path)}:
                _append_round(rounds_path, rec)
            log.info(f"round {r}: mean r^vlm teacher {rec['mean_r_vlm_teacher']:.4f}, pseudo-labels "
                     f"{rec['mean_r_vlm_pseudo']:.4f}, replaced {rec['replaced']}")
        acc.wait_for_everyone()
        store = PseudoLabelStore(store_dir, clean=acc.is_main_process)
        labels = {k: store.image(k).to(dev) for k in data}

    if step == 0 and pending is None and 0 not in {x["round"] for x in _read_rounds(rounds_path)}:
        end_of_round(0)  # the starting point: the initial teacher (= student) on the unlabelled set
    if pending is not None:  # a kill during a refresh: redo it (the teacher is deterministic)
        end_of_round(int(pending))
        checkpoint(step, None)

    student, opt = acc.prepare(student, opt)
    net = acc.unwrap_model(student)
    net.train()
    if net.deblur is not None:
        net.deblur.eval()
    every = int(cfg.get("log_every", 10))
    logs: dict[str, float] = {}
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="wresvlm", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        b = labelled.sample(bs)
        lq, clean = b["lq"].to(dev), b["clean"].to(dev)
        terms: dict[str, torch.Tensor] = {"sup": l1_loss(student_restore(student, encoder, lq), clean)}
        if any(weights[k] > 0 for k in ("ps", "wpl", "sem", "feat")):
            xu, yps, keys = u_sampler.sample(ubs, {k: d["image"] for k, d in data.items()}, labels)
            pred = student_restore(student, encoder, xu)
            if weights["ps"] > 0:
                terms["ps"] = l1_loss(pred, yps)
            pc = pred.clamp(0, 1)
            if weights["wpl"] > 0 or weights["sem"] > 0:
                emb = clip.encode_image(pc)
                if weights["wpl"] > 0:
                    terms["wpl"] = wpl_loss(emb, prompts(), scale)
                if weights["sem"] > 0:
                    pos = torch.stack([texts[k][0] for k in keys])
                    neg = torch.stack([texts[k][1] for k in keys])
                    terms["sem"] = sem_loss(emb, pos, neg, scale)
            if weights["feat"] > 0:
                g_hat = feat_model(pc)
                with torch.no_grad():
                    g_ps, g_in = feat_model(yps), feat_model(xu)
                terms["feat"] = 0.5 * (feat_loss(g_hat, g_ps) + feat_loss(g_hat, g_in))
        loss = sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(teacher, acc.unwrap_model(student), momentum)
        logs = {"loss": float(loss.item()), **{f"L_{k}": float(v.item()) for k, v in terms.items()}}
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if (step + 1) % every == 0 or step == 0:
            log.info(f"step {step + 1}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                     + f" wall={timer.elapsed():.0f}s")
        if per_round and (step + 1) % per_round == 0:
            r = (step + 1) // per_round
            checkpoint(step + 1, r)
            end_of_round(r)
            checkpoint(step + 1, None)
        elif (step + 1) % int(cfg.get("checkpoint_every", 50)) == 0:
            checkpoint(step + 1, None)
    bar.close()

    history = _read_rounds(rounds_path)
    result = {"steps": steps, "rounds": history, "wall_s": round(timer.elapsed(), 1), "last": logs,
              "random_weights": bool(student_random or enc_random or getattr(rater, "random_weights", False)),
              "clip": clip.name, "features": getattr(feat_model, "name", "none"), "weights": weights,
              "refresh": refresh}
    if acc.is_main_process:
        checkpoint(steps, None)
        for dst in [out_dir / "final"] + ([Path(export)] if export else []):
            # the EMA teacher is the model WResVLM ships (it makes the pseudo-labels)
            export_weights(dst, model=teacher, model_config=teacher.config, train_config=cfg,
                           extra_config={"architecture": "ConditionalRestorer", "training": "wresvlm"},
                           metrics={"train": result}, dtype=str(cfg.get("export_dtype", "float32")))
        log.info(f"done: {json.dumps(history)}")
    return result
