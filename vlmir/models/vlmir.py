"""VLMIR stage 1: a LoRA-tuned open_clip CLIP with a degradation predictor, and the context it gives stage 2.

Paper: "VLMIR: vision-language models for image restoration" (abstract in ``shared/seeds/000_*``): "In the first
stage, we extract complementary visual and linguistic representations of input images ... we align the embeddings
of captions from low-quality and high-quality images using a cosine similarity loss with LoRA fine-tuning, and
employ a degradation predictor to decompose degradation and clean image content embeddings. These complementary
visual and textual embeddings are then integrated into a diffusion-based model via cross-attention mechanisms."
No public code; this is our reading of it.

Stage 1 (:class:`VLMIRAligner`), for an LQ image ``x_lq``, its caption ``c_lq`` and the HQ pair ``(x_hq, c_hq)``:

- ``clip``: any open_clip CLIP (``ViT-B-32`` for the paper-scale run; a custom config such as the towers of our
  embedded encoder, or a tiny one in tests), frozen, with **peft LoRA** adapters on the image tower
  (``lora_image_targets``) and optionally the text tower (``lora_text``). ``E_I`` / ``E_T`` are the adapted towers,
  ``E_I^0`` / ``E_T^0`` the frozen base (adapters disabled), which gives every target.
- ``e = E_I(x_lq)`` (D,); the **degradation predictor** splits it: ``e_d = P_d(e)`` (the degradation embedding) and
  ``e_c = e + P_c(e)`` (the clean content embedding, ``P_c``'s last layer zero-initialised so training starts
  from ``e``).
- Losses (weights in the config, :meth:`VLMIRAligner.losses`):
  ``L_deg = CE(s * cos(e_d, E_T^0(names)), y)`` (DA-CLIP's degradation matching; ``y`` soft over mixtures),
  ``L_content = 1 - cos(e_c, E_T^0(c_hq)) + w_img (1 - cos(e_c, E_I^0(x_hq)))``,
  ``L_caption = 1 - cos(E_T(c_lq), E_T^0(c_hq))`` (caption alignment through the text LoRA).

Stage 2 context (:meth:`VLMIRAligner.context`): the tokens ``[e_c, e_d, E_T(c_lq)_1..L]`` (the caption's token
embeddings after ``ln_final`` and the text projection, padding masked) for the UNet's cross-attention, and ``e_d``
for its prompt (DA-CLIP's time-embedding path). ``context_mode="single"`` gives DA-CLIP's one-token context
``e_c``; ``captions=False`` drops the caption tokens; without a predictor ``e_c = e`` and there is no ``e_d``.

Deviations / choices (the paper gives no details): the content target is the HQ caption *and* the HQ image
embedding; targets come from the frozen base towers so they cannot drift; images larger than the tower's input are
embedded as the mean over a grid of native-resolution crops (``image_views > 0``, as our embedded encoder; degradation
cues do not survive downscaling) or resized and centre-cropped (``image_views = 0``, CLIP's own preprocessing).

Example (tiny random towers)::

    >>> m = build_aligner({"clip_config": TINY_CLIP_CONFIG, "lora_rank": 4})
    >>> out = m(torch.rand(2, 3, 64, 64))
    >>> out["content"].shape, out["degradation"].shape
    (torch.Size([2, 32]), torch.Size([2, 32]))
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmir.constants import DEGRADATIONS_AND_CLEAR

CONFIG_NAME = "config.json"
PREDICTOR_FILE = "predictor.safetensors"
LORA_DIR = "lora"
CONTEXT_MODES = ("multi", "single")
# LoRA targets (peft regular expressions on module names, matched in full). ViT and text towers: the MLPs of every
# block (``nn.MultiheadAttention`` reads its ``out_proj`` weight directly, so a LoRA there would never run);
# ModifiedResNet towers: the bottleneck convolutions and the attention pool's projections.
VIT_IMAGE_TARGETS = r"visual\.transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)"
RESNET_IMAGE_TARGETS = r"visual\.(layer\d\.\d+\.conv\d|attnpool\.(q_proj|k_proj|v_proj|c_proj))"
TEXT_TARGETS = r"transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A tiny ViT CLIP for tests and examples (random weights).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_clip(clip_model: str | None = None, clip_config: dict[str, Any] | None = None) -> nn.Module:
    """An open_clip CLIP with random weights: the named architecture (``"ViT-B-32"``) or a config
    ``{"embed_dim", "vision_cfg", "text_cfg"}`` (open_clip's model-config layout)."""
    import open_clip
    from open_clip.model import CLIP

    if (clip_model is None) == (clip_config is None):
        raise ValueError("give exactly one of clip_model (an open_clip model name) or clip_config")
    if clip_model is not None:
        if clip_model not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(clip_model, open_clip.list_models(), n=3)
            raise ValueError(f"unknown open_clip model {clip_model!r}; close names: {', '.join(close) or 'none'}")
        return open_clip.create_model(clip_model, pretrained=None)
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(clip_config)
    if missing:
        raise ValueError(f"clip_config needs the keys embed_dim, vision_cfg, text_cfg; missing {sorted(missing)}")
    return CLIP(int(clip_config["embed_dim"]), vision_cfg=dict(clip_config["vision_cfg"]),
                text_cfg=dict(clip_config["text_cfg"]))


def _is_resnet(clip: nn.Module) -> bool:
    from open_clip.modified_resnet import ModifiedResNet

    return isinstance(clip.visual, ModifiedResNet)


class DegradationPredictor(nn.Module):
    """Splits an LQ image representation into a degradation embedding ``e_d = P_d([e, z])`` and a clean content
    embedding ``e_c = e + P_c(e)`` (``P_c``'s last layer zero-initialised: ``e_c = e`` at the start).

    ``e`` (B, D) is the tower's embedding; ``z`` (B, S) optional feature statistics of the tower's intermediate
    maps (channel means and standard deviations): the pooled embedding of a tower trained for content keeps little
    of the noise, blur and blocking statistics that the early maps still carry.

    Args:
        dim: embedding width D.
        hidden: width of both MLPs' hidden layer.
        stats_dim: S, 0 for none.
    """

    def __init__(self, dim: int, hidden: int = 256, stats_dim: int = 0) -> None:
        super().__init__()
        self.stats_dim = int(stats_dim)
        self.stats_norm = nn.LayerNorm(stats_dim) if stats_dim else None
        self.degradation = nn.Sequential(nn.LayerNorm(dim + stats_dim), nn.Linear(dim + stats_dim, hidden), nn.GELU(),
                                         nn.Linear(hidden, dim))
        self.content = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.content[-1].weight)
        nn.init.zeros_(self.content[-1].bias)

    def forward(self, e: torch.Tensor, stats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e_d, e_c)``, each (B, D)."""
        if self.stats_dim:
            if stats is None or stats.shape[-1] != self.stats_dim:
                raise ValueError(f"the predictor needs feature statistics (B, {self.stats_dim}), got "
                                 f"{None if stats is None else tuple(stats.shape)}")
            z = torch.cat([e, self.stats_norm(stats)], dim=-1)
        else:
            z = e
        return self.degradation(z), e + self.content(e)


class VLMIRAligner(nn.Module):
    """VLMIR stage 1 (module docstring): CLIP + LoRA + degradation predictor.

    Args:
        clip_model: open_clip model name (``"ViT-B-32"``, the paper-scale setting), or None with ``clip_config``.
        clip_config: an open_clip model config ``{"embed_dim", "vision_cfg", "text_cfg"}`` (the embedded encoder's
            towers: :func:`embedded_clip_config`; tests: :data:`TINY_CLIP_CONFIG`).
        base: where the frozen CLIP's weights come from (recorded for loading; :func:`load_base_weights`):
            ``"embedded-encoder"``, ``"open_clip:<model>/<pretrained tag>"``, a local file, or ``"random"``.
        image_views: 0 resizes an image to the tower's input (CLIP's preprocessing); N > 0 averages the embeddings
            of up to N native-resolution crops on a grid (images of the tower's input size are used as they are).
        lora_rank: LoRA rank r (0 = no LoRA: the "frozen CLIP" ablation).
        lora_alpha: LoRA scaling alpha (the update is ``alpha / r * B A``).
        lora_dropout: dropout on the LoRA branch.
        lora_text: also adapt the text tower (the caption alignment L_caption needs it).
        lora_image_targets: peft regex of the image-tower modules to adapt; None picks ViT or ResNet targets.
        predictor: use the degradation predictor (False: the "no predictor" ablation; ``e_c = e``, no ``e_d``).
        predictor_hidden: hidden width of the predictor's MLPs.
        predictor_stats: the predictor also reads the channel means and standard deviations of this many of the
            image tower's intermediate maps, counted from the first (ResNet: stem and the four stages; ViT: blocks);
            0 for the embedding alone.
        degradation_names: the classes ``e_d`` is matched to (DA-CLIP's ten plus ``clear``).
        init_logit_scale: initial log temperature of L_deg (CLIP: log(1 / 0.07)).
    """

    def __init__(
        self,
        *,
        clip_model: str | None = None,
        clip_config: dict[str, Any] | None = None,
        base: str = "random",
        image_views: int = 0,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_text: bool = True,
        lora_image_targets: str | None = None,
        predictor: bool = True,
        predictor_hidden: int = 256,
        predictor_stats: int = 0,
        degradation_names: Sequence[str] = DEGRADATIONS_AND_CLEAR,
        init_logit_scale: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        if not isinstance(lora_rank, int) or lora_rank < 0:
            raise ValueError(f"lora_rank must be an int >= 0, got {lora_rank!r}")
        if not isinstance(image_views, int) or image_views < 0:
            raise ValueError(f"image_views must be an int >= 0, got {image_views!r}")
        if len(set(degradation_names)) != len(degradation_names) or len(degradation_names) < 2:
            raise ValueError(f"degradation_names must be at least two distinct names, got {list(degradation_names)}")
        self.config = dict(
            clip_model=clip_model, clip_config=copy.deepcopy(clip_config), base=base, image_views=image_views,
            lora_rank=lora_rank, lora_alpha=float(lora_alpha), lora_dropout=float(lora_dropout),
            lora_text=bool(lora_text), lora_image_targets=lora_image_targets, predictor=bool(predictor),
            predictor_hidden=predictor_hidden, predictor_stats=int(predictor_stats),
            degradation_names=list(degradation_names),
            init_logit_scale=float(init_logit_scale),
        )
        clip = build_clip(clip_model, clip_config)
        for p in clip.parameters():
            p.requires_grad_(False)
        self.base_clip = clip  # None while :attr:`peft` wraps it (see :attr:`clip_model`)
        self.peft = None  # the peft model once adapters are added (:meth:`add_lora`, :meth:`load_adapter`)
        self.embed_dim = int(clip.text_projection.shape[1] if torch.is_tensor(clip.text_projection)
                             else clip.text_projection.out_features)
        self.image_size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, (tuple, list))
                              else clip.visual.image_size)
        self.context_length = int(clip.context_length)
        self.degradation_names = tuple(degradation_names)
        self.stats_dim = self._stats_dim(clip, int(predictor_stats)) if predictor else 0
        self.predictor = DegradationPredictor(self.embed_dim, predictor_hidden, self.stats_dim) if predictor else None
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._tokenizer = None
        self.register_buffer("name_tokens", self.tokenize(self.degradation_names), persistent=False)

    def train(self, mode: bool = True) -> VLMIRAligner:
        """Train mode for the predictor and the adapters; the frozen CLIP stays in eval mode (its batch-norm
        statistics, where the tower has them, must not move)."""
        super().train(mode)
        self.clip_model.eval()
        return self

    # -- LoRA -------------------------------------------------------------------------------------------------
    def lora_targets(self, clip: nn.Module | None = None) -> str:
        """The peft ``target_modules`` regex: image tower (and text tower with ``lora_text``)."""
        clip = self.clip_model if clip is None else clip
        image = self.config["lora_image_targets"] or (RESNET_IMAGE_TARGETS if _is_resnet(clip) else VIT_IMAGE_TARGETS)
        return f"({image}|{TEXT_TARGETS})" if self.config["lora_text"] else image

    def lora_config(self, clip: nn.Module | None = None) -> Any:
        from peft import LoraConfig

        cfg = self.config
        return LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                          target_modules=self.lora_targets(clip), bias="none")

    def add_lora(self) -> VLMIRAligner:
        """Wrap the (loaded) base CLIP with fresh LoRA adapters (``get_peft_model``); only they train."""
        from peft import get_peft_model

        if self.peft is not None:
            raise ValueError("this aligner already has adapters")
        if self.config["lora_rank"] == 0:
            raise ValueError("lora_rank is 0: this aligner has no adapters")
        self.peft = get_peft_model(self.base_clip, self.lora_config(self.base_clip))
        self.base_clip = None
        return self

    @property
    def clip_model(self) -> nn.Module:
        """The open_clip CLIP itself (with LoRA layers in place when adapters are on and not merged)."""
        return self.base_clip if self.peft is None else self.peft.base_model.model

    def base_outputs(self):
        """Context manager: inside it the towers compute the frozen base (adapters disabled)."""
        import contextlib

        return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()

    def merge_lora(self) -> VLMIRAligner:
        """Fold the adapters into the base weights (``merge_and_unload``) for inference; same outputs."""
        if self.peft is not None:
            self.base_clip = self.peft.merge_and_unload()
            self.peft = None
        return self

    def save_adapter(self, directory: str | Path) -> Path:
        """peft ``save_pretrained`` of the adapters into ``directory`` (``adapter_config.json``,
        ``adapter_model.safetensors``)."""
        if self.peft is None:
            raise ValueError("this aligner has no LoRA adapters to save (lora_rank=0 or already merged)")
        self.peft.save_pretrained(str(directory))
        return Path(directory)

    def load_adapter(self, directory: str | Path) -> None:
        """Replace the adapters by those saved in ``directory`` (``PeftModel.from_pretrained`` on the base)."""
        from peft import PeftModel

        directory = Path(directory)
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no peft adapter in {directory} (expected adapter_config.json and "
                                    "adapter_model.safetensors)")
        base = self.peft.unload() if self.peft is not None else self.base_clip
        self.peft = PeftModel.from_pretrained(base, str(directory))
        for p in self.peft.parameters():
            p.requires_grad_(False)
        self.base_clip = None

    # -- images and text --------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip tokens ``(N, context_length)`` of ``texts`` (the model's own tokenizer)."""
        if self._tokenizer is None:
            import open_clip

            name = self.config["clip_model"]
            self._tokenizer = (open_clip.get_tokenizer(name) if name else
                               open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length))
        return self._tokenizer(list(texts))

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Normalised tower inputs of images ``x`` (B, 3, H, W) in [0, 1], and per image its number of crops."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        s = self.image_size
        if x.shape[-2:] == (s, s):
            crops, counts = x, [1] * x.shape[0]
        elif self.config["image_views"] > 0:
            from vlmir.models.encoder import grid_views

            views = [grid_views(x[i : i + 1], s, self.config["image_views"]) for i in range(x.shape[0])]
            crops, counts = torch.cat(views), [v.shape[0] for v in views]
        else:
            h, w = x.shape[-2:]
            f = s / min(h, w)
            r = F.interpolate(x, size=(max(s, round(h * f)), max(s, round(w * f))), mode="bicubic",
                              align_corners=False, antialias=f < 1).clamp(0, 1)
            top, left = (r.shape[-2] - s) // 2, (r.shape[-1] - s) // 2
            crops, counts = r[..., top : top + s, left : left + s], [1] * x.shape[0]
        return (crops - self.mean) / self.std, counts

    @staticmethod
    def _stats_dim(clip: nn.Module, n: int) -> int:
        if n <= 0:
            return 0
        s = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, (tuple, list)) else clip.visual.image_size)
        with torch.no_grad():
            maps = clip.visual.forward_intermediates(torch.zeros(1, 3, s, s), indices=list(range(n)),
                                                     intermediates_only=True)["image_intermediates"]
        return 2 * sum(m.shape[1] for m in maps)

    def _tower(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image tower on normalised crops: ``(e (B, D), statistics (B, S) or None)``."""
        visual = self.clip_model.visual
        n = self.config["predictor_stats"] if self.predictor is not None else 0
        if n <= 0:
            return visual(crops), None
        out = visual.forward_intermediates(crops, indices=list(range(n)))
        maps = out["image_intermediates"]  # (B, C_i, H_i, W_i)
        stats = torch.cat([m.mean((2, 3)) for m in maps] + [m.std((2, 3)) for m in maps], dim=1)
        return out["image_features"], stats

    def encode_image(self, x: torch.Tensor, *, with_stats: bool = False):
        """``e = E_I(x)`` (B, D), unnormalised (with ``with_stats`` also the predictor's feature statistics);
        views of one image are averaged."""
        crops, counts = self._inputs(x)
        e, stats = self._tower(crops)
        if max(counts) > 1:
            e = torch.stack([c.mean(0) for c in torch.split(e, counts)])
            stats = None if stats is None else torch.stack([c.mean(0) for c in torch.split(stats, counts)])
        return (e, stats) if with_stats else e

    def text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text tower on ``tokens`` (N, L): ``(pooled (N, D), token embeddings (N, L, D), mask (N, L))``.

        Token embeddings are the per-token outputs after ``ln_final`` and the text projection (the pooled embedding
        is the one at the end-of-text token); ``mask`` is True up to and including that token (padding False).
        """
        clip = self.clip_model
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding.to(cast)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))  # (N, L, width)
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (N, L, D)
        eot = tokens.argmax(dim=-1)  # open_clip's end-of-text token has the largest id
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]
        return pooled, x, mask

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled text embeddings (N, D), unnormalised (through the adapters when they are on)."""
        return self.text_tokens(tokens)[0]

    # -- stage 1 ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """LQ images ``x`` (B, 3, H, W) in [0, 1] -> ``embedding`` e, ``content`` e_c and ``degradation`` e_d
        (B, D; e_d is absent without a predictor)."""
        e, stats = self.encode_image(x, with_stats=True)
        out = {"embedding": e, "content": e}
        if self.predictor is not None:
            out["degradation"], out["content"] = self.predictor(e, stats)
        return out

    def name_embeddings(self) -> torch.Tensor:
        """L2-normalised frozen-base text embeddings (K, D) of :attr:`degradation_names`."""
        with torch.no_grad(), self.base_outputs():
            return F.normalize(self.encode_text(self.name_tokens), dim=-1)

    def degradation_logits(self, degradation: torch.Tensor, names: torch.Tensor | None = None) -> torch.Tensor:
        """``s * cos(e_d, E_T^0(name_k))`` (B, K), s = exp(logit_scale) clamped at 100."""
        names = self.name_embeddings() if names is None else names
        return self.logit_scale.exp().clamp(max=100.0) * F.normalize(degradation, dim=-1) @ names.t()

    def losses(self, lq: torch.Tensor, hq: torch.Tensor, target: torch.Tensor, lq_tokens: torch.Tensor,
               hq_tokens: torch.Tensor, *, w_deg: float = 1.0, w_content: float = 1.0, w_image: float = 1.0,
               w_caption: float = 1.0) -> dict[str, torch.Tensor]:
        """Stage 1 losses of a batch (module docstring), each a scalar, and their weighted sum ``loss``.

        Args:
            lq, hq: image pairs (B, 3, H, W) in [0, 1].
            target: (B, K) soft labels over :attr:`degradation_names`.
            lq_tokens, hq_tokens: tokens (B, L) of the LQ and HQ captions.
            w_*: the weights of L_deg, the caption and image terms of L_content, and L_caption.
        """
        if target.shape != (lq.shape[0], len(self.degradation_names)):
            raise ValueError(f"target must be (B, {len(self.degradation_names)}), got {tuple(target.shape)}")
        out = self(lq)
        with torch.no_grad(), self.base_outputs():
            t_hq = F.normalize(self.encode_text(hq_tokens), dim=-1)
            i_hq = F.normalize(self.encode_image(hq), dim=-1)
            names = F.normalize(self.encode_text(self.name_tokens), dim=-1)
        c = F.normalize(out["content"], dim=-1)
        logs: dict[str, torch.Tensor] = {
            "content_caption": (1 - (c * t_hq).sum(-1)).mean(),
            "content_image": (1 - (c * i_hq).sum(-1)).mean(),
        }
        loss = w_content * logs["content_caption"] + w_image * logs["content_image"]
        if self.predictor is not None:
            logits = self.degradation_logits(out["degradation"], names)
            logs["deg"] = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
            logs["deg_acc"] = (logits.argmax(-1) == target.argmax(-1)).float().mean().detach()
            loss = loss + w_deg * logs["deg"]
        if self.peft is not None and self.config["lora_text"] and w_caption > 0:
            t_lq = F.normalize(self.encode_text(lq_tokens), dim=-1)
            logs["caption"] = (1 - (t_lq * t_hq).sum(-1)).mean()
            loss = loss + w_caption * logs["caption"]
        logs["loss"] = loss
        return logs

    # -- stage 2 context --------------------------------------------------------------------------------------
    def context(self, lq: torch.Tensor, captions: Sequence[str] | None = None, *, mode: str = "multi",
                use_captions: bool = True, features: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor | None]:
        """The conditioning of the stage-2 UNet for LQ images ``lq`` (B, 3, H, W).

        Returns ``text_context`` (B, D) (e_d for the prompt path, None without a predictor), ``image_context``
        (B, M, D) tokens and ``context_mask`` (B, M): ``[e_c, e_d, caption tokens]`` (``mode="multi"``; e_d only
        with a predictor, caption tokens only with ``use_captions`` and ``captions``), or ``[e_c]`` (``"single"``).
        ``features``: this model's output for ``lq`` when already computed (``forward``).
        """
        if mode not in CONTEXT_MODES:
            raise ValueError(f"mode must be one of {CONTEXT_MODES}, got {mode!r}")
        out = self(lq) if features is None else features
        e_c, e_d = out["content"], out.get("degradation")
        b = lq.shape[0]
        tokens = [e_c[:, None]]
        if mode == "multi" and e_d is not None:
            tokens.append(e_d[:, None])
        mask = [torch.ones(b, len(tokens), dtype=torch.bool, device=lq.device)]
        if mode == "multi" and use_captions:
            if captions is None or len(captions) != b:
                raise ValueError(f"use_captions needs one caption per image ({b}), got "
                                 f"{None if captions is None else len(captions)}")
            _, cap, cap_mask = self.text_tokens(self.tokenize(captions).to(lq.device))
            tokens.append(cap)
            mask.append(cap_mask)
        return {"text_context": e_d, "image_context": torch.cat(tokens, 1), "context_mask": torch.cat(mask, 1)}

    # -- files ------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``predictor.safetensors`` (predictor and logit scale) and the LoRA adapters
        (``lora/``, peft format). The frozen base is not written: :func:`load_base_weights` reads it from
        ``config["base"]``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        own = {k: v.detach().contiguous() for k, v in self.state_dict().items()
               if k.startswith("predictor.") or k == "logit_scale"}
        save_file(own, str(directory / PREDICTOR_FILE))
        if self.peft is not None:
            self.save_adapter(directory / LORA_DIR)
        (directory / CONFIG_NAME).write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=1))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, base_state: dict[str, torch.Tensor] | None = None,
                        merge: bool = True, device: str = "cpu") -> VLMIRAligner:
        """Rebuild from :meth:`save_pretrained`'s folder: the base CLIP's weights from ``base_state`` or
        ``config["base"]`` (:func:`load_base_weights`), the adapters with ``PeftModel.from_pretrained``, then
        (``merge``) folded into the base for inference."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_file = directory / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no VLMIR aligner in {directory}: {cfg_file} is missing")
        cfg = json.loads(cfg_file.read_text())
        cfg.pop("_class_name", None)
        model = cls(**cfg)
        state = base_state if base_state is not None else load_base_weights(cfg.get("base", "random"))
        if state is not None:
            model.load_base(state)
        if model.config["lora_rank"] > 0:
            model.load_adapter(directory / LORA_DIR)
        own_file = directory / PREDICTOR_FILE
        if not own_file.is_file():
            raise FileNotFoundError(f"VLMIR aligner weights not found: {own_file}")
        own = load_file(str(own_file))
        missing = model.load_state_dict(own, strict=False)
        expected = {k for k in model.state_dict() if k.startswith("predictor.") or k == "logit_scale"}
        lost = sorted(expected & set(missing.missing_keys))
        if lost or missing.unexpected_keys:
            raise RuntimeError(f"{own_file} does not match the config: missing {lost[:6]}, unexpected "
                               f"{missing.unexpected_keys[:6]}")
        if merge:
            model.merge_lora()
        return model.to(device).eval()

    def load_base(self, state: dict[str, torch.Tensor]) -> None:
        """Load the frozen CLIP's weights (an open_clip CLIP state dict) strictly."""
        if self.peft is not None:
            raise ValueError("load the base weights before adding adapters")
        self.base_clip.load_state_dict(state, strict=True)


def embedded_clip_config(encoder_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip config of the CLIP inside our embedded encoder (its content and text towers)."""
    c = encoder_config
    return {
        "embed_dim": c["embed_dim"],
        "vision_cfg": {"layers": list(c["vision_layers"]), "width": c["vision_width"],
                       "head_width": c["vision_head_width"], "image_size": c["image_size"]},
        "text_cfg": {"context_length": c["context_length"], "width": c["text_width"], "heads": c["text_heads"],
                     "layers": c["text_layers"]},
    }


def build_aligner(config: dict[str, Any], *, base_state: dict[str, torch.Tensor] | None = None,
                  load_base: bool = True) -> VLMIRAligner:
    """A stage-1 model ready to train: built from ``config`` (constructor arguments), the frozen base loaded from
    ``base_state`` or ``config["base"]`` (``load_base``), then fresh LoRA adapters when ``lora_rank > 0``."""
    cfg = {k: v for k, v in config.items() if k != "_class_name"}
    model = VLMIRAligner(**cfg)
    state = base_state if base_state is not None else (load_base_weights(model.config["base"]) if load_base else None)
    if state is not None:
        model.load_base(state)
    if model.config["lora_rank"] > 0:
        model.add_lora()
    return model.train()  # the predictor and adapters in train mode, the frozen CLIP in eval mode


def load_base_weights(base: str) -> dict[str, torch.Tensor] | None:
    """The frozen CLIP's state dict named by ``base``.

    - ``"random"``: None (keep the random init; tests).
    - ``"embedded-encoder"`` or ``"embedded-encoder:<folder>"``: the CLIP towers of our embedded encoder
      (``assets/weights/embedded-encoder``), offline: its content tower and its text tower.
    - ``"embedded-controller"`` (or ``"embedded-controller:<folder>"``): the same, with the encoder's controller
      (the tower it trained to match degradation names; the same ModifiedResNet config) as the image tower. The
      content tower was trained to ignore degradations (a logistic regression on its embedding of engine crops
      tells the type 13% of the time, chance 9%), which leaves a degradation predictor nothing to read; a
      pre-trained CLIP, as the paper uses, sees both.
    - ``"open_clip:<model>/<tag>"``: an open_clip pretrained tag (e.g. ``open_clip:ViT-B-32/openai``), from the
      Hugging Face cache or the hub (:func:`vlmir.registry.hub_file`: offline it fails at once naming the file).
    - a path: an open_clip checkpoint or state dict (``.pt``/``.bin``/``.safetensors``), loaded safely.
    """
    if base == "random":
        return None
    kind, _, folder = base.partition(":")
    if kind in ("embedded-encoder", "embedded-controller"):
        from vlmir.models.embedded import load_encoder

        enc, _ = load_encoder(folder or None, allow_random=False)
        state = enc.clip.state_dict()
        if kind == "embedded-controller":
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
            state.update({f"visual.{k}": v for k, v in enc.controller.state_dict().items()})
        return state
    if base.startswith("open_clip:"):
        import open_clip

        name, _, tag = base.removeprefix("open_clip:").partition("/")
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg or not cfg.get("hf_hub"):
            raise ValueError(f"open_clip has no hub weights for {name!r} / {tag!r}; known tags: "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}")
        if cfg.get("quick_gelu") and not name.endswith("-quickgelu"):
            raise ValueError(f"open_clip's {name}/{tag} weights were trained with QuickGELU: use the model name "
                             f"{name}-quickgelu (clip_model and base)")
        from vlmir.registry import hub_file

        repo = cfg["hf_hub"].rstrip("/")
        # open_clip's hub repos hold the weights as safetensors and/or the older pickle-free state-dict .bin
        errors = []
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            try:
                return _read_state(hub_file(repo, filename))
            except FileNotFoundError as e:
                errors.append(str(e))
        raise FileNotFoundError(" / ".join(errors))
    path = Path(base)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP base weights {base!r}: not 'random', 'embedded-encoder', "
                                "'open_clip:<model>/<tag>' or an existing file")
    return _read_state(path)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
