"""A small degradation-aware CLIP encoder in the DA-CLIP design, trained from scratch by ``vlmir.training``.

Paper: Luo et al., "Controlling Vision-Language Models for Multi-Task Image Restoration" (DA-CLIP, ICLR 2024),
https://github.com/Algolzw/daclip-uir. DA-CLIP keeps a frozen CLIP image encoder and adds a *controller*, a
trainable copy of the image encoder whose hidden states are added to the encoder's through zero-initialised layers
and whose output is the *degradation embedding*; the encoder's own output is the *content embedding*. Training
matches the degradation embedding to the text embedding of the degradation name and the content embedding of the
low-quality (LQ) image to the caption embedding of the clean image (two CLIP contrastive losses, Sec. 3.2).

Deviations, all forced by "no pretrained weights, two CPU cores":

- The towers are an open_clip ``ModifiedResNet`` at a tiny width (16) and 128 px instead of ViT-B/32 at 224 px,
  and the text tower is a 2-layer open_clip text transformer (width 64, context 16). Everything is trained from
  scratch, jointly; nothing is frozen.
- The controller is a second ``ModifiedResNet`` of the same config; its stage outputs are added to the content
  tower's stage outputs through zero-initialised 1x1 convolutions (the convolutional analogue of DA-CLIP's
  zero-initialised linear layers after each transformer block).
- With no captions, the content target is the content embedding of the clean image (same encoder), as the task
  allows ("caption/clean-image embedding").
- Optional (``image_stats=True``): the degradation embedding also receives an MLP projection of
  :func:`vlmir.models.image_stats.image_statistics` (zero-initialised last layer, so training starts from the
  plain controller). A from-scratch controller trained for minutes on a CPU learns large cues first and never
  finds JPEG blocking; classical statistics give it those cues from the first step. The embedding is still
  matched to the names' text embeddings by cosine, as in DA-CLIP.
- Images of any size are embedded by averaging the embeddings of up to ``max_views`` 128 px crops taken at native
  resolution (degradation cues such as noise and JPEG blocks do not survive downscaling).
- Optional (``view_head=True``): the image's type logits are the view-averaged cosine logits plus a linear
  correction read from how the views differ (:class:`ViewHead`: mean, max and min over views of the logits and
  statistics, mean and max of the normalised degradation embeddings; with ``view_head_holes=True`` also of the
  views' hole statistics). Some degradations show in only a few views (a handful of raindrops, the edge of one cast
  shadow); the mean over views dilutes them. The correction is fitted on whole training images after the towers
  (:mod:`vlmir.training.view_head`); with zero weights it is exactly DA-CLIP's cosine classification.

Example::

    >>> enc = DegradationAwareEncoder()
    >>> content, degra = enc.encode_image(torch.rand(2, 3, 128, 128))
    >>> content.shape, degra.shape
    (torch.Size([2, 128]), torch.Size([2, 128]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmir.constants import DEGRADATIONS_AND_CLEAR
from vlmir.models.image_stats import (
    N_BASIC_STATS,
    N_HOLE_STATS,
    N_IMAGE_STATS,
    basic_statistics,
    hole_statistics,
    image_statistics,
)

# statistics sets of the ``image_stats`` branch: name -> (function, count)
STATS_SETS = {"basic": (basic_statistics, N_BASIC_STATS), "full": (image_statistics, N_IMAGE_STATS)}

# DA-CLIP's ten degradation names (its dataset folders), plus ``clear`` for undegraded inputs.
DEGRADATION_NAMES: tuple[str, ...] = DEGRADATIONS_AND_CLEAR

# open_clip's CLIP normalisation (OPENAI_DATASET_MEAN / STD).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ViewHead(nn.Module):
    """Image-level type logits from the views of one image: ``mean_v(logits_v) + W z + b``.

    ``z`` = (:meth:`pool` - ``shift``) / ``scale``, the standardised view summary: the mean, max and min over views
    of the cosine logits (K each), of the image statistics (S each) and of the hole statistics (H each,
    :func:`~vlmir.models.image_stats.hole_statistics`), and the mean and max of the normalised degradation
    embeddings (D each). ``shift`` and ``scale`` are buffers set when the head is fitted. ``W`` and ``b``
    start at zero, so an unfitted head returns the plain view-averaged logits.

    Args:
        n_names: K, the class names.
        embed_dim: D.
        n_stats: S (0 without the statistics branch).
        n_holes: H (0 without the hole statistics).
    """

    def __init__(self, n_names: int, embed_dim: int, n_stats: int = 0, n_holes: int = 0) -> None:
        super().__init__()
        self.in_dim = 3 * n_names + 3 * n_stats + 3 * n_holes + 2 * embed_dim
        self.n_stats = n_stats
        self.n_holes = n_holes
        self.register_buffer("shift", torch.zeros(self.in_dim))
        self.register_buffer("scale", torch.ones(self.in_dim))
        self.linear = nn.Linear(self.in_dim, n_names)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def pool(self, logits: torch.Tensor, degradation: torch.Tensor, stats: torch.Tensor | None = None,
             holes: torch.Tensor | None = None) -> torch.Tensor:
        """The view summary (in_dim,) of one image's views: ``logits`` (V, K), ``degradation`` (V, D)
        unnormalised, ``stats`` (V, S) and ``holes`` (V, H) when the head was built with them."""
        for name, value, n in (("statistics", stats, self.n_stats), ("hole statistics", holes, self.n_holes)):
            if (value is None) != (n == 0):
                raise ValueError(f"this view head expects {n} {name} per view, got "
                                 f"{None if value is None else tuple(value.shape)}")
        d = F.normalize(degradation, dim=-1)
        parts = [logits.mean(0), logits.amax(0), logits.amin(0)]
        for value in (stats, holes):
            if value is not None:
                parts += [value.mean(0), value.amax(0), value.amin(0)]
        return torch.cat(parts + [d.mean(0), d.amax(0)])

    def correction(self, z: torch.Tensor) -> torch.Tensor:
        """``W (z - shift) / scale + b`` for view summaries ``z`` (..., in_dim)."""
        return self.linear((z - self.shift) / self.scale)

    def forward(self, logits: torch.Tensor, degradation: torch.Tensor, stats: torch.Tensor | None = None,
                holes: torch.Tensor | None = None) -> torch.Tensor:
        """Type logits (1, K) of one image from its views' outputs (see :meth:`pool`)."""
        z = self.pool(logits, degradation, stats, holes)
        return (logits.mean(0) + self.correction(z))[None]


class DegradationAwareEncoder(nn.Module):
    """Content tower + controller (degradation tower) + text tower, all open_clip modules.

    Args:
        embed_dim: joint embedding size of images and text (DA-CLIP ViT-B/32: 512). Default 128.
        image_size: side of the square crops the towers take, a multiple of 32. Default 128.
        vision_layers: ``ModifiedResNet`` bottleneck blocks per stage (4 stages). Default ``(1, 1, 1, 1)``.
        vision_width: ``ModifiedResNet`` stem width; stage channels are ``4, 8, 16, 32`` times it. Default 16.
        vision_head_width: channels per head of the attention pool. Default 32.
        text_width: text transformer width. Default 64.
        text_heads: text transformer heads. Default 2.
        text_layers: text transformer layers. Default 2.
        context_length: text tokens (open_clip BPE, start/end included). Default 16.
        degradation_names: class names, encoded by the text tower for classification. Default
            :data:`DEGRADATION_NAMES` (DA-CLIP's ten plus ``clear``).
        init_logit_scale: initial log temperature of both contrastive losses (CLIP: ``log(1 / 0.07)``).
        image_stats: add a projection of classical image statistics to the degradation embedding (module
            docstring). Default False.
        stats_set: which statistics: ``"basic"`` (the first 14, :func:`~vlmir.models.image_stats.basic_statistics`;
            the default, so configs saved before the structure statistics existed load unchanged) or ``"full"``
            (all of :func:`~vlmir.models.image_stats.image_statistics`; the shipped encoder).
        view_head: add a :class:`ViewHead` for the type logits of whole images (module docstring). Default False.
        view_head_holes: the view head also reads the views' hole statistics
            (:func:`~vlmir.models.image_stats.hole_statistics`: white regions with hard edges, which the towers confuse
            with clipped natural whites). Default False, so encoders saved before it existed load unchanged.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 128,
        image_size: int = 128,
        vision_layers: Sequence[int] = (1, 1, 1, 1),
        vision_width: int = 16,
        vision_head_width: int = 32,
        text_width: int = 64,
        text_heads: int = 2,
        text_layers: int = 2,
        context_length: int = 16,
        degradation_names: Sequence[str] = DEGRADATION_NAMES,
        init_logit_scale: float = math.log(1 / 0.07),
        image_stats: bool = False,
        stats_set: str = "basic",
        view_head: bool = False,
        view_head_holes: bool = False,
    ) -> None:
        super().__init__()
        from open_clip.model import CLIP
        from open_clip.modified_resnet import ModifiedResNet

        if image_size % 32 != 0 or image_size < 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
        if len(vision_layers) != 4:
            raise ValueError(f"vision_layers must list 4 stages, got {list(vision_layers)}")
        if stats_set not in STATS_SETS:
            raise ValueError(f"stats_set must be one of {sorted(STATS_SETS)}, got {stats_set!r}")
        if len(set(degradation_names)) != len(degradation_names) or len(degradation_names) < 2:
            raise ValueError(f"degradation_names must be at least two distinct names, got {list(degradation_names)}")
        self.config = dict(
            embed_dim=embed_dim,
            image_size=image_size,
            vision_layers=list(vision_layers),
            vision_width=vision_width,
            vision_head_width=vision_head_width,
            text_width=text_width,
            text_heads=text_heads,
            text_layers=text_layers,
            context_length=context_length,
            degradation_names=list(degradation_names),
            init_logit_scale=init_logit_scale,
            image_stats=bool(image_stats),
            stats_set=stats_set,
            view_head=bool(view_head),
            view_head_holes=bool(view_head_holes),
        )
        self.image_size = image_size
        self.image_stats = bool(image_stats)
        self._stats_fn, n_stats = STATS_SETS[stats_set]
        self.n_stats = n_stats if self.image_stats else 0
        self.degradation_names = tuple(degradation_names)
        vision_cfg = dict(layers=list(vision_layers), width=vision_width, head_width=vision_head_width, image_size=image_size)
        text_cfg = dict(context_length=context_length, width=text_width, heads=text_heads, layers=text_layers)
        # The open_clip CLIP: .visual is the content tower (DA-CLIP's image encoder), plus the text tower.
        self.clip = CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_scale=init_logit_scale)
        # The controller: same tower config; its attention pool gives the degradation embedding.
        self.controller = ModifiedResNet(
            layers=list(vision_layers),
            output_dim=embed_dim,
            heads=vision_width * 32 // vision_head_width,
            image_size=image_size,
            width=vision_width,
        )
        # Zero-initialised 1x1 convs carrying controller stage outputs into the content tower (stage channels 4w..32w).
        self.zero_convs = nn.ModuleList(nn.Conv2d(vision_width * m, vision_width * m, 1) for m in (4, 8, 16, 32))
        for conv in self.zero_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        if self.image_stats:
            # per-statistic standardisation (running batch statistics), then an MLP into the embedding space
            self.stats_proj = nn.Sequential(nn.BatchNorm1d(n_stats, affine=False), nn.Linear(n_stats, 64),
                                            nn.GELU(), nn.Linear(64, embed_dim))
            nn.init.zeros_(self.stats_proj[-1].weight)
            nn.init.zeros_(self.stats_proj[-1].bias)
        if view_head_holes and not view_head:
            raise ValueError("view_head_holes needs view_head=True")
        self.view_head = (ViewHead(len(degradation_names), embed_dim, self.n_stats,
                                   N_HOLE_STATS if view_head_holes else 0) if view_head else None)
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("name_tokens", self.tokenize(self.degradation_names), persistent=False)

    @property
    def pooled_dim(self) -> int:
        """Size of :meth:`forward_features`'s ``pooled``: spatial mean and standard deviation of each of the
        controller's four stages (``2 * (4 + 8 + 16 + 32) * vision_width``)."""
        return 2 * 60 * self.config["vision_width"]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip BPE tokens ``(N, context_length)`` int64 for ``texts``."""
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=self.config["context_length"])(list(texts))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run both towers on crops ``x`` (B, 3, S, S) in [0, 1], S = ``image_size``.

        Returns a dict of unnormalised ``content`` (B, D) and ``degradation`` (B, D) embeddings and ``pooled``
        (B, :attr:`pooled_dim`) globally pooled controller statistics (severity cues for the rater), and with
        ``image_stats`` the crops' ``stats`` (B, :attr:`n_stats`).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"expected crops (B, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        stats = self._stats_fn(x) if self.image_stats else None
        x = (x - self.mean) / self.std
        visual, ctrl = self.clip.visual, self.controller
        h, c = visual.stem(x), ctrl.stem(x)
        stages = []
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            c = getattr(ctrl, name)(c)  # (B, w*4*2^i, S/(4*2^i), S/(4*2^i))
            h = getattr(visual, name)(h) + self.zero_convs[i](c)  # DA-CLIP: encoder hidden state + zero-layer(control)
            stages.append(c)
        pooled = torch.cat([s.mean((2, 3)) for s in stages] + [s.std((2, 3)) for s in stages], dim=1)
        out = {"content": visual.attnpool(h), "degradation": ctrl.attnpool(c), "pooled": pooled}
        if stats is not None:
            out["degradation"] = out["degradation"] + self.stats_proj(stats)
            out["stats"] = stats
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`forward_features` plus ``logits`` (B, K) over the names, ``name_embeddings`` (K, D) and
        ``logit_scale`` (the training step, in one call so that distributed wrappers see every parameter used)."""
        f = self.forward_features(x)
        f["logit_scale"] = self.logit_scale()
        f["name_embeddings"] = self.name_embeddings()
        f["logits"] = f["logit_scale"] * F.normalize(f["degradation"], dim=-1) @ f["name_embeddings"].t()
        return f

    def encode_image(self, x: torch.Tensor, control: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """DA-CLIP's interface: ``(content, degradation)`` embeddings (B, D) of crops ``x``; ``control=False``
        returns the content tower alone (no controller injection) and a zero degradation embedding."""
        if not control:
            x = (x - self.mean) / self.std
            content = self.clip.visual(x)
            return content, torch.zeros_like(content)
        f = self.forward_features(x)
        return f["content"], f["degradation"]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings (N, D), unnormalised, of tokens (N, context_length)."""
        return self.clip.encode_text(tokens)

    def name_embeddings(self) -> torch.Tensor:
        """L2-normalised text embeddings (K, D) of :attr:`degradation_names`."""
        return F.normalize(self.encode_text(self.name_tokens), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """exp of the learned log temperature, clamped at 100 as in CLIP/DA-CLIP."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def degradation_logits(self, degradation: torch.Tensor) -> torch.Tensor:
        """``scale * cos(degradation embedding, name embeddings)``: (B, K) logits over the names."""
        return self.logit_scale() * F.normalize(degradation, dim=-1) @ self.name_embeddings().t()

    # -- images of any size ------------------------------------------------------------------------------------
    def view_side(self, h: int, w: int) -> int:
        """The short side of an (h, w) image after :meth:`views` rescales it: the image's own, clamped to
        [S, 4 S] (S the crop side)."""
        return min(max(min(int(h), int(w)), self.image_size), 4 * self.image_size)

    def views(self, x: torch.Tensor, max_views: int = 9) -> torch.Tensor:
        """Up to ``max_views`` crops (V, 3, S, S) of one image ``x`` (1, 3, H, W): :func:`grid_views` at this
        encoder's crop side S."""
        return grid_views(x, self.image_size, max_views)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, max_views: int = 9) -> dict[str, torch.Tensor]:
        """Embeddings of one image ``x`` (1, 3, H, W) of any size: view-averaged ``content``/``degradation`` (1, D)
        (unnormalised), ``pooled`` (1, P), ``logits`` (1, K) over :attr:`degradation_names` (the mean of the views'
        cosine logits) and ``type_logits`` (1, K), the image's classification: :class:`ViewHead`'s when the encoder
        has one, else ``logits``."""
        views = self.views(x, max_views)
        f = self.forward_features(views)
        view_logits = self.degradation_logits(f["degradation"])
        logits = view_logits.mean(0, keepdim=True)
        out = {
            "content": f["content"].mean(0, keepdim=True),
            "degradation": f["degradation"].mean(0, keepdim=True),
            "pooled": f["pooled"].mean(0, keepdim=True),
            "logits": logits,
        }
        if "stats" in f:
            out["stats"] = f["stats"].mean(0, keepdim=True)
        out["type_logits"] = (logits if self.view_head is None
                              else self.view_head(view_logits, f["degradation"], f.get("stats"), self.view_holes(views)))
        return out

    def view_holes(self, views: torch.Tensor) -> torch.Tensor | None:
        """The hole statistics (V, H) of ``views`` when the view head reads them, else None."""
        if self.view_head is None or not self.view_head.n_holes:
            return None
        return hole_statistics(views)


def grid_views(x: torch.Tensor, size: int, max_views: int = 9) -> torch.Tensor:
    """Up to ``max_views`` crops (V, 3, S, S), S = ``size``, of one image ``x`` (1, 3, H, W), on an even grid at
    native resolution.

    Images with a side below S are upscaled (bilinear) so that side is S. Very large images (short side above
    4 S) are downscaled to short side 4 S first so the crops see a comparable share of the scene as in training.
    """
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(x.shape)}")
    if max_views < 1:
        raise ValueError(f"max_views must be >= 1, got {max_views}")
    s = size
    h, w = x.shape[-2:]
    side = min(max(min(int(h), int(w)), s), 4 * s)
    if side != min(h, w):
        f = side / min(h, w)
        x = F.interpolate(x, size=(max(s, round(h * f)), max(s, round(w * f))), mode="bilinear",
                          align_corners=False, antialias=f < 1)
        h, w = x.shape[-2:]
    n = max(1, int(math.isqrt(max_views)))
    ys = torch.linspace(0, h - s, n).round().long().unique().tolist() if h > s else [0]
    xs = torch.linspace(0, w - s, n).round().long().unique().tolist() if w > s else [0]
    crops = [x[..., y : y + s, xx : xx + s] for y in ys for xx in xs]
    return torch.cat(crops, dim=0)
