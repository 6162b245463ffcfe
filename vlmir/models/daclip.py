"""DA-CLIP: degradation-aware CLIP with a controller on the image encoder, on the released ``open_clip_torch``.

Paper: Z. Luo, F. K. Gustafsson, Z. Zhao, J. Sjolund, T. B. Schon, "Controlling Vision-Language Models for
Multi-Task Image Restoration", ICLR 2024 (``/work/shared/seeds/``). Original code: github.com/Algolzw/daclip-uir
(``da-clip/src/open_clip/daclip_model.py`` and ``ControlTransformer`` in ``transformer.py``, a fork of open_clip
2.20). Weights: Hugging Face ``weblzw/daclip-uir-ViT-B-32-irsde`` / ``daclip_ViT-B-32.pt`` (an open_clip training
checkpoint). This file is our own implementation on ``open_clip.CLIP``; it loads the original checkpoints unchanged.

How the original computes (paper Sec. 3.1, Fig. 3), and how we match it exactly:

- ``clip`` is a frozen pre-trained CLIP (ViT-B-32). ``visual_control`` is a deep copy of ``clip.visual`` whose
  ``transformer`` is wrapped by a ``ControlTransformer``: the wrapped transformer stays under
  ``visual_control.transformer.transformer`` and one ``Linear(width, width)`` *with bias*, zero-initialised, per
  block lives under ``visual_control.transformer.zero_modules.N`` (the original passes ``bias=1``).
- Controller pass: embeddings (conv1, class token, positional embedding, patch dropout, ln_pre) as CLIP; then for
  each block ``j``: ``x = block_j(x)`` and the hidden ``h_j = zero_j(x)`` is taken *after* the zero linear from the
  block output. The zero linear output is NOT added back into the controller's own stream (the original has
  ``# x = x + zx`` commented out), so the controller's stream is a plain ViT. The controller's own ``ln_post`` and
  ``proj`` are used on its class token: that pooled, projected vector is the degradation embedding
  ``degra_context`` (e_d in the paper).
- Main pass: ``clip.visual`` with ``x = block_i(x); x = x + h.pop()`` after every block, ``hiddens`` being the list
  ``[h_0, ..., h_{L-1}]``; ``pop()`` takes from the end, so main block ``i`` receives ``h_{L-1-i}`` (reversed order,
  kept as in the original: the released weights were trained that way). Then CLIP's own ln_post/proj on the class
  token give the content embedding ``image_context`` (e_c).
- Neither output is normalised unless ``normalize=True`` (F.normalize over the last dim), as the original
  ``encode_image``. ``encode_image(control=False)`` is plain ``clip.encode_image``. Text goes through the frozen
  CLIP text tower unchanged. ``logit_scale`` is DaCLIP's own copy of CLIP's (trained for the contrastive loss).
- Degradation classification: softmax(100 * cos(degra_context, text(degradation name))) over the ten bare names
  (no prompt template), as the original demo.

Deviations (none numerical in the model): the original's default is ``encode_image(control=False)``; ours is
``control=True`` (the restoration use). The original hard-codes ``.cuda()`` for the zero modules; ours follows ``.to(device)``.
Layer order relative to open_clip: 2.20 used LND with ``ln_post`` applied to the pooled token, open_clip 3.x uses NLD
with ``ln_post`` before pooling; per-token LayerNorm makes both identical for ``pool_type="tok"``.
Pre-processing: :func:`preprocess` with ``exact=True`` is the original's PIL ``clip_transform`` (uint8
truncation, PIL bicubic); the default resizes the float tensor with PIL's bicubic kernel (mean difference ~0.5/255).
Checkpoint layout: the original ``DaCLIP`` also registers ``self.visual = clip.visual``, so its state dicts hold
every ``clip.visual.*`` tensor twice (``visual.*``). We do not keep that alias; the loader checks it equals
``clip.visual.*`` and drops it.

Example::

    >>> from vlmir.models.daclip import DaCLIP, preprocess
    >>> # the official weights: from the Hugging Face cache, or downloaded when online
    >>> m = DaCLIP.from_pretrained("daclip")  # doctest: +SKIP
    >>> image_context, degra_context = m.encode_image(preprocess(x), control=True)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The ten degradation types of DA-CLIP's training set, in the order of the original (and of its demo output).
from vlmir.constants import DEGRADATIONS  # noqa: E402,F401  (re-exported)

# OpenAI CLIP normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD), used by the original's clip_transform.
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Registry names -> (hub repo, file, open_clip model name of its architecture).
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "daclip": ("weblzw/daclip-uir-ViT-B-32-irsde", "daclip_ViT-B-32.pt", "ViT-B-32"),
    "daclip_ViT-B-32": ("weblzw/daclip-uir-ViT-B-32-irsde", "daclip_ViT-B-32.pt", "ViT-B-32"),
}

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# Classification temperature of the original demo: softmax(100 * cosine).
CLASSIFY_SCALE = 100.0


# ---------------------------------------------------------------------------------------------------------------
# Safe checkpoint loading
# ---------------------------------------------------------------------------------------------------------------


def _safe_globals() -> list[Any]:
    """The explicit allow-list for ``torch.load(weights_only=True)`` beyond torch's own.

    open_clip training checkpoints (the official release format) hold ``epoch``, ``name``, ``state_dict`` and
    possibly ``optimizer``/``scaler`` state; extra fields written by training scripts can hold numpy scalars/arrays
    (e.g. a best metric) or the ``argparse.Namespace`` of the run. Those are plain data; we allow exactly them
    (under both the numpy 1.x ``numpy.core`` and numpy 2.x ``numpy._core`` names). Nothing else is unpickled.
    """
    import numpy as np

    try:
        core = np._core.multiarray  # numpy >= 2
    except AttributeError:  # numpy 1.x
        core = np.core.multiarray
    allowed: list[Any] = [argparse.Namespace, np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((core.scalar, f"{mod}.scalar"))
        allowed.append((core._reconstruct, f"{mod}._reconstruct"))
    for dtype_cls in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), dtype_cls, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a ``.pt``/``.pth``/``.bin`` pickle with ``torch.load(weights_only=True)`` and the allow-list above.

    Raises:
        ValueError: when the file holds a Python global outside the allow-list (named in the message); the file is
            then refused, never unpickled arbitrarily.
    """
    path = Path(path)
    with torch.serialization.safe_globals(_safe_globals()):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            try:
                bad = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # not a zip checkpoint: report torch's own message
                bad = []
            allowed = {a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in _safe_globals()}
            bad = [b for b in bad if b not in allowed]
            what = f"Python objects outside the allow-list ({', '.join(bad)})" if bad else f"unsafe content ({e})"
            raise ValueError(
                f"refusing to load {path}: it holds {what}. Only tensors, plain containers, numpy scalars/arrays and "
                "argparse.Namespace are allowed. Re-save the weights as a plain state dict or safetensors."
            ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict or a checkpoint dict")
    return dict(obj)


def normalize_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Bring an official DA-CLIP state dict to our key layout.

    Accepts an open_clip training checkpoint (``{"state_dict": ...}``) or a bare state dict; strips the
    ``module.`` (DistributedDataParallel) prefix, and drops the ``visual.*`` alias of ``clip.visual.*`` after
    checking both hold the same values.

    Raises:
        ValueError: on non-tensor values or an alias that differs from ``clip.visual.*``.
    """
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    alias = [k for k in out if k.startswith("visual.")]
    for k in alias:
        target = "clip." + k
        a, b = out.get(target), out[k]
        same = a is None or (a.shape == b.shape and (a.is_meta or b.is_meta or torch.equal(a, b)))
        if not same:
            raise ValueError(f"{k!r} should be an alias of {target!r} (original DaCLIP.visual) but holds other values")
        if target not in out:  # an alias without its target: keep it as clip.visual.* (same tensor in the original)
            out[target] = out[k]
        del out[k]
    return out


def infer_clip_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) implied by a DA-CLIP state dict.

    Width, layers, patch size, image size, MLP ratio, embed_dim, text width/layers, vocabulary and context length
    come from tensor shapes. The number of attention heads cannot be read from weights; as open_clip's defaults we
    assume 64-wide heads (``head_width=64`` for vision, ``heads = width // 64`` for text), which holds for every
    standard ViT CLIP (ViT-B-32: 12 vision and 8 text heads). Pass ``clip_config`` explicitly for anything else.
    The official ``daclip_ViT-B-32`` infers to exactly ``open_clip.get_model_config("ViT-B-32")``.
    """
    sd = normalize_state_dict(sd)
    need = (
        "clip.visual.conv1.weight",
        "clip.visual.positional_embedding",
        "clip.visual.proj",
        "clip.token_embedding.weight",
        "clip.positional_embedding",
        "clip.text_projection",
    )
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(
            f"cannot infer a CLIP config: the state dict lacks {missing} (is it a DA-CLIP ViT checkpoint?)"
        )

    def count_layers(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
        return max(idx) + 1 if idx else 0

    conv = sd["clip.visual.conv1.weight"]  # (width, 3, patch, patch)
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_tok = int(sd["clip.visual.positional_embedding"].shape[0])  # grid**2 + 1
    grid = math.isqrt(n_tok - 1)
    if grid * grid != n_tok - 1:
        raise ValueError(f"clip.visual.positional_embedding has {n_tok} tokens, not grid**2 + 1 (non-square input?)")
    vision_cfg: dict[str, Any] = {
        "image_size": grid * patch,
        "layers": count_layers("clip.visual.transformer.resblocks."),
        "width": v_width,
        "patch_size": patch,
    }
    v_mlp = int(sd["clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) / v_width
    if v_mlp != 4.0:
        vision_cfg["mlp_ratio"] = v_mlp
    t_width = int(sd["clip.token_embedding.weight"].shape[1])
    text_cfg: dict[str, Any] = {
        "context_length": int(sd["clip.positional_embedding"].shape[0]),
        "vocab_size": int(sd["clip.token_embedding.weight"].shape[0]),
        "width": t_width,
        "heads": max(1, t_width // 64),
        "layers": count_layers("clip.transformer.resblocks."),
    }
    t_mlp = int(sd["clip.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) / t_width
    if t_mlp != 4.0:
        text_cfg["mlp_ratio"] = t_mlp
    return {"embed_dim": int(sd["clip.text_projection"].shape[1]), "vision_cfg": vision_cfg, "text_cfg": text_cfg}


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


class ControlTransformer(nn.Module):
    """The controller's transformer: the copied ViT blocks plus one zero-initialised ``Linear(width, width)`` each.

    Args:
        transformer: an open_clip ``Transformer`` (kept as ``self.transformer``, so its blocks are
            ``transformer.resblocks.N``, the official key layout).
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.width = int(transformer.width)
        self.layers = int(transformer.layers)
        # ControlNet-style zero modules: the controller starts as a no-op on the frozen CLIP.
        self.zero_modules = nn.ModuleList(nn.Linear(self.width, self.width, bias=True) for _ in range(self.layers))
        for z in self.zero_modules:
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks on ``x`` (batch-first (B, N, width)); return the output and the hiddens ``zero_j(block_j)``.

        The zero-linear outputs are only collected, never added into this stream (as the original).
        """
        hiddens: list[torch.Tensor] = []
        for block, zero in zip(self.transformer.resblocks, self.zero_modules, strict=True):
            x = block(x)
            hiddens.append(zero(x))  # (B, N, width)
        return x, hiddens


def _tower_embed(visual: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """open_clip ViT embeddings: patches, class token, positional embedding, patch dropout, ln_pre -> (B, N, width)."""
    x = visual.conv1(image)  # (B, width, gh, gw)
    x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, width)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, N, width)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def _tower_pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ln_post on the pooled token(s) and the projection: (B, N, width) -> (B, embed_dim)."""
    pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(dim=1)
    pooled = visual.ln_post(pooled)
    return pooled @ visual.proj if visual.proj is not None else pooled


class DaCLIP(nn.Module):
    """Degradation-aware CLIP (paper Sec. 3.1): a frozen open_clip ``CLIP`` and a trainable image controller.

    The constructor takes an open_clip model config; the config is exactly these arguments (``self.config``).

    Args:
        embed_dim: joint embedding size (512 for ViT-B-32).
        vision_cfg: open_clip ``CLIPVisionCfg`` fields as a dict (image_size, layers, width, patch_size, ...).
        text_cfg: open_clip ``CLIPTextCfg`` fields as a dict (context_length, vocab_size, width, heads, layers).
        quick_gelu: use QuickGELU (OpenAI weights); the official DA-CLIP (from LAION ViT-B-32) uses GELU.

    Example::

        >>> cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        ...        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
        >>> m = DaCLIP(**cfg)
        >>> e_c, e_d = m.encode_image(torch.zeros(1, 3, 64, 64))
        >>> tuple(e_c.shape), tuple(e_d.shape)
        ((1, 32), (1, 32))
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        vision_cfg: Mapping[str, Any],
        text_cfg: Mapping[str, Any],
        quick_gelu: bool = False,
    ):
        super().__init__()
        import open_clip
        from open_clip.transformer import VisionTransformer

        self.config: dict[str, Any] = {
            "embed_dim": int(embed_dim),
            "vision_cfg": dict(vision_cfg),
            "text_cfg": dict(text_cfg),
            "quick_gelu": bool(quick_gelu),
        }
        for bad in ("timm_model_name", "hf_model_name"):
            if bad in vision_cfg or bad in text_cfg:
                raise ValueError(f"DaCLIP supports open_clip's native ViT CLIP only, got a config with {bad!r}")
        self.clip = open_clip.CLIP(
            embed_dim=int(embed_dim), vision_cfg=dict(vision_cfg), text_cfg=dict(text_cfg), quick_gelu=bool(quick_gelu)
        )
        visual = self.clip.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"DaCLIP needs a ViT image tower, the config builds {type(visual).__name__}")
        if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
            raise ValueError(
                f"DaCLIP supports token/avg pooling without attentional pooling, got pool_type={visual.pool_type!r}"
            )
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("DaCLIP expects open_clip's batch-first transformer (open_clip_torch >= 2.24)")

        # The controller: a copy of the image tower (the original's initial_controller copies CLIP's weights),
        # with its transformer wrapped so each block feeds a zero linear.
        self.visual_control = copy.deepcopy(visual)
        self.visual_control.transformer = ControlTransformer(self.visual_control.transformer)
        self.logit_scale = nn.Parameter(self.clip.logit_scale.detach().clone())
        self.lock_clip()
        self._text_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    # -- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_model_name(cls, name: str = "ViT-B-32") -> DaCLIP:
        """A randomly initialised DaCLIP of open_clip architecture ``name`` (e.g. ``"ViT-B-32"``)."""
        import open_clip

        cfg = open_clip.get_model_config(name)
        if cfg is None:
            close = [n for n in open_clip.list_models() if n.lower().startswith(name.lower()[:4])][:8]
            raise ValueError(
                f"unknown open_clip model {name!r}; e.g. {', '.join(close) or open_clip.list_models()[:8]}"
            )
        return cls(**_config_kwargs(cfg))

    def lock_clip(self) -> None:
        """Freeze the pre-trained CLIP (the paper trains only the controller)."""
        for p in self.clip.parameters():
            p.requires_grad_(False)

    @property
    def image_size(self) -> int:
        """Input side of the image towers (224 for ViT-B-32)."""
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, Sequence) else size)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    # -- encoders --------------------------------------------------------------------------------------------

    def encode_image(
        self, image: torch.Tensor, control: bool = True, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Encode CLIP-normalised images (see :func:`preprocess`).

        Args:
            image: float (B, 3, S, S), S = ``image_size``, normalised with OpenAI mean/std.
            control: True -> ``(image_context, degra_context)``, each (B, embed_dim): content embedding of the
                controlled CLIP and degradation embedding of the controller. False -> plain CLIP features (B, E).
            normalize: L2-normalise the outputs.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        if not control:
            return self.clip.encode_image(image, normalize=normalize)
        ctrl = self.visual_control
        x, hiddens = ctrl.transformer(_tower_embed(ctrl, image))
        degra = _tower_pool(ctrl, x)  # (B, E): controller's own ln_post + proj

        main = self.clip.visual
        x = _tower_embed(main, image)
        for block in main.transformer.resblocks:
            x = block(x) + hiddens.pop()  # main block i gets controller hidden L-1-i (original: list.pop())
        content = _tower_pool(main, x)
        if normalize:
            content, degra = F.normalize(content, dim=-1), F.normalize(degra, dim=-1)
        return content, degra

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Frozen CLIP text features of token ids ``text`` (B, context_length) int64 -> (B, embed_dim)."""
        return self.clip.encode_text(text, normalize=normalize)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> dict[str, Any]:
        """Training forward of the original: ``text`` is ``[caption | degradation]`` tokens concatenated on the
        last dim (B, 2 * context_length); all features normalised."""
        caption, degradation = text.chunk(2, dim=-1) if text is not None else (None, None)
        image_features, image_degra = (
            self.encode_image(image, control=True, normalize=True) if image is not None else (None, None)
        )
        return {
            "image_features": image_features,
            "text_features": self.encode_text(caption, normalize=True) if caption is not None else None,
            "image_degra_features": image_degra,
            "text_degra_features": self.encode_text(degradation, normalize=True) if degradation is not None else None,
            "logit_scale": self.logit_scale.exp(),
        }

    # -- degradation classification --------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], tokenizer: Any = None) -> torch.Tensor:
        """Token ids (len(texts), context_length) with ``tokenizer`` or open_clip's ViT-B-32 BPE tokenizer."""
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=self.context_length)
        return tokenizer(list(texts))

    @torch.no_grad()
    def degradation_text_features(self, tokenizer: Any = None, names: Sequence[str] = DEGRADATIONS) -> torch.Tensor:
        """Normalised text features (len(names), E) of the bare degradation names; cached per device/dtype."""
        p = self.clip.token_embedding.weight
        key = (tuple(names), id(tokenizer) if tokenizer is not None else None, p.device, p.dtype, p._version)
        feats = self._text_cache.get(key)
        if feats is None:
            tokens = self.tokenize(names, tokenizer).to(p.device)
            feats = self.encode_text(tokens, normalize=True)
            self._text_cache = {key: feats}
        return feats

    @torch.no_grad()
    def classify(self, image: torch.Tensor, tokenizer: Any = None) -> torch.Tensor:
        """Degradation probabilities (B, 10) over :data:`DEGRADATIONS` = softmax(100 * cos(e_d, text)).

        Args:
            image: CLIP-normalised (B, 3, S, S) (see :func:`preprocess`).
        """
        _, degra = self.encode_image(image, control=True, normalize=True)
        text = self.degradation_text_features(tokenizer)
        return (CLASSIFY_SCALE * degra @ text.t()).softmax(dim=-1)

    def preprocess(self, x: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        """:func:`preprocess` at this model's image size."""
        return preprocess(x, self.image_size, exact=exact)

    # -- weights ---------------------------------------------------------------------------------------------

    def load_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Load a (possibly official-format) state dict strictly; a clear ``ValueError`` names what does not fit."""
        sd = normalize_state_dict(state_dict)
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:6])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:6])})")
            raise ValueError("state dict does not fit DaCLIP " + json.dumps(self.config) + ": " + "; ".join(parts))
        wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
        if wrong:
            raise ValueError(f"{len(wrong)} tensors have the wrong shape for this config (file vs model): {wrong[:6]}")
        self.load_state_dict(sd, strict=True)
        self._text_cache = {}

    @classmethod
    def from_pretrained(
        cls,
        src: str | Path,
        clip_config: Mapping[str, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        local_dir: str | Path | None = None,
    ) -> DaCLIP:
        """Load DA-CLIP weights, in eval mode with CLIP frozen.

        Args:
            src: a registry name (``"daclip"``: the official ``weblzw/daclip-uir-ViT-B-32-irsde`` /
                ``daclip_ViT-B-32.pt``, from ``local_dir``, the HF cache, or the hub; fails fast offline), a
                directory holding ``model.safetensors`` + ``config.json`` (what ``python -m vlmir convert`` writes),
                a ``.safetensors`` file (its ``config.json`` beside it), or a ``.pt``/``.pth`` official training
                checkpoint or plain state dict (with or without ``module.``).
            clip_config: open_clip config dict (embed_dim, vision_cfg, text_cfg[, quick_gelu]); default: the
                ``config.json`` beside the weights, else the registry entry's architecture, else inferred from the
                tensor shapes (:func:`infer_clip_config`).
            device: where to put the model.
            local_dir: for registry names, a folder that may hold the hub file.
        """
        if clip_config is not None:
            _config_kwargs(clip_config)  # fail on a bad config before reading any weights
        path, config = _resolve_source(src, local_dir)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Mapping[str, Any] = load_file(str(path))
            cfg_file = path.with_name(CONFIG_NAME)
            if config is None and cfg_file.is_file():
                config = json.loads(cfg_file.read_text())
        else:
            sd = load_checkpoint_file(path)
        sd = normalize_state_dict(sd)
        config = dict(clip_config) if clip_config is not None else (config or infer_clip_config(sd))
        model = cls(**_config_kwargs(config))
        model.load_weights(sd)
        return model.eval().to(device)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``out_dir``; ``from_pretrained(out_dir)`` rebuilds."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "model": "daclip"})
        (out / CONFIG_NAME).write_text(json.dumps({"_class_name": "DaCLIP", **self.config}, indent=2) + "\n")
        return out


def availability(name: str = "daclip") -> tuple[bool, str]:
    """Registry ``ModelSpec.available`` for a :data:`PRETRAINED` name: whether its hub file is cached (or fetchable)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown DaCLIP weights {name!r}; known: {', '.join(PRETRAINED)}")
    from vlmir.registry import hub_available

    repo, filename, _ = PRETRAINED[name]
    return hub_available(repo, filename)


def _config_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an open_clip/DaCLIP config dict (metadata such as ``_class_name`` dropped)."""
    unknown = set(config) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "_class_name", "custom_text"}
    if unknown:
        raise ValueError(
            f"unknown DaCLIP config keys {sorted(unknown)}; allowed: embed_dim, vision_cfg, text_cfg, quick_gelu"
        )
    for k in ("embed_dim", "vision_cfg", "text_cfg"):
        if k not in config:
            raise ValueError(f"DaCLIP config lacks {k!r} (got keys {sorted(config)})")
    return {k: config[k] for k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu") if k in config}


def _resolve_source(src: str | Path, local_dir: str | Path | None) -> tuple[Path, dict[str, Any] | None]:
    """(weights file, config or None) for a registry name, a directory or a file."""
    if isinstance(src, str) and src in PRETRAINED:
        import open_clip

        from vlmir.registry import hub_file

        repo, filename, arch = PRETRAINED[src]
        return hub_file(repo, filename, local_dir=local_dir), open_clip.get_model_config(arch)
    path = Path(src)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"DaCLIP weights {src!s} not found: give a file (.pt/.pth/.safetensors), a folder with {WEIGHTS_NAME} + "
            f"{CONFIG_NAME}, or a registry name ({', '.join(PRETRAINED)})"
        )
    return path, None


# ---------------------------------------------------------------------------------------------------------------
# Pre-processing and the registry classifier
# ---------------------------------------------------------------------------------------------------------------


def preprocess(x: torch.Tensor, image_size: int = 224, *, exact: bool = False) -> torch.Tensor:
    """The original's ``clip_transform``: bicubic resize of the shortest side to ``image_size``, centre crop to
    ``image_size`` x ``image_size``, OpenAI mean/std.

    Args:
        x: float (B, 3, H, W) RGB in [0, 1].
        image_size: output side (the model's ``image_size``).
        exact: reproduce the original bit for bit: it converts the float image to uint8 by truncation
            (``(img * 255).astype(np.uint8)``) and resizes the PIL image (torchvision ``Resize`` on PIL). Default
            False: resize the float tensor on its device with PyTorch's antialiased bicubic (PIL's filter, a=-0.5,
            without the 8-bit truncation) and clamp the overshoot to [0, 1]; differences are of the order of 1/255.

    Returns:
        float (B, 3, image_size, image_size) on ``x``'s device.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a float tensor (B, 3, H, W), got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be float in [0, 1], got dtype {x.dtype}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    h, w = x.shape[-2:]
    # torchvision's Resize(int): shorter side -> size, longer side int(size * long / short) (floors)
    new_h, new_w = (image_size, int(image_size * w / h)) if h <= w else (int(image_size * h / w), image_size)
    if exact:
        import numpy as np
        from PIL import Image

        arrays = (x.detach().permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)  # truncation, as the original
        resized = [np.asarray(Image.fromarray(a).resize((new_w, new_h), Image.BICUBIC)) for a in arrays]
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0
    elif (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
    x = x[..., top : top + image_size, left : left + image_size]
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class DaCLIPClassifier:
    """Registry ``classifier``: ``classify(x) -> {degradation: probability}`` for one image in [0, 1].

    Args:
        model: a :class:`DaCLIP` (moved to ``device``).
        name: registry name shown to users.
        random_weights: True when ``model`` has random weights (user-visible output must say so).
        device: where to run.
    """

    def __init__(
        self, model: DaCLIP, *, name: str = "daclip", random_weights: bool = False, device: str | torch.device = "cpu"
    ):
        self.model = model.eval().to(device)
        self.name = name
        self.random_weights = bool(random_weights)
        self.device = torch.device(device)
        self.labels: tuple[str, ...] = DEGRADATIONS

    @classmethod
    def from_pretrained(
        cls, src: str | Path = "daclip", *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> DaCLIPClassifier:
        """Classifier over :meth:`DaCLIP.from_pretrained` ``(src, **kwargs)``."""
        name = src if isinstance(src, str) and src in PRETRAINED else "daclip"
        return cls(DaCLIP.from_pretrained(src, **kwargs), name=name, device=device)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> dict[str, float]:
        """Probabilities over the ten degradation names for ``x`` float (1, 3, H, W) in [0, 1]; sums to 1."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"x must be a float tensor (1, 3, H, W), got {getattr(x, 'shape', type(x))}")
        p = self.model.classify(self.model.preprocess(x.to(self.device, torch.float32)))[0]
        return {label: float(v) for label, v in zip(self.labels, p.cpu(), strict=True)}
