"""VLM visibility / quality rating r^vlm and scene descriptions over any transformers image-text-to-text model.

Paper: WResVLM, Xu et al., "Towards Real-World Adverse Weather Image Restoration: Enhancing Clearness and Semantics
with Vision-Language Models", ECCV 2024 (Image Assessment). The same scoring is Q-Align's (Wu et al., ICML 2024).

The VLM (LLaVA-1.5 in the paper, ``llava-hf/llava-1.5-7b-hf``) is asked, in its chat format, to rate the image
with one of five level words. Instead of sampling an answer, the next-token logits right after the assistant prefix
are read at the five words' token ids, ``l = (l_excellent, l_good, l_fair, l_poor, l_bad)``, and

    p_i = softmax(l)_i,    r^vlm = sum_i i * p_i  in [1, 5]   (excellent = 5 ... bad = 1),
    VLM-Vis = (r^vlm - 1) / 4  in [0, 1].

Deviations from the paper: none in the formula. Token ids are resolved from the tokenizer by encoding
``prompt + word`` and diffing against ``prompt`` (so a SentencePiece ``"▁good"`` or a byte-level ``"Ġgood"`` is
found without guessing); whitespace tokens shared by all five words are moved into the prompt, and a word that is
still more than one token is refused. Left-padded batches get explicit position ids, so a batch rates exactly as
one image at a time.

Example::

    >>> rater = VisibilityRater.from_pretrained("llava-hf/llava-1.5-7b-hf", device="cuda")   # doctest: +SKIP
    >>> rater.rate(x)                                                                         # doctest: +SKIP
    {'score': 3.07, 'vlm_vis': 0.52, 'probs': {'excellent': 0.003, 'good': 0.069, 'fair': 0.93, ...}}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmir.vlm.prompts import (
    DESCRIBE_PROMPT,
    LEVELS,
    chat_messages,
    default_system,
    llava_v1_prompt,
    resolve_prompt,
)

# Models whose language model uses multi-axis (M-RoPE) positions computed inside ``forward`` from the attention
# mask; 1-D position ids must not be passed to them.
_MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v")


def _image_to_pil(x: Any) -> Image.Image:
    """One image as an RGB PIL image: a float tensor ``(1, 3, H, W)``/``(3, H, W)`` in [0, 1] or a PIL image."""
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"image must be a float tensor (1, 3, H, W) in [0, 1] or a PIL image, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[0] != 1:
        raise ValueError(f"image tensor has batch size {x.shape[0]}; give one image (1, 3, H, W) or use rate_batch")
    t = x[0] if x.ndim == 4 else x
    if t.ndim != 3 or t.shape[0] != 3 or t.shape[1] < 1 or t.shape[2] < 1:
        raise ValueError(f"image tensor has shape {tuple(x.shape)}; expected (1, 3, H, W) RGB")
    if not t.is_floating_point():
        raise ValueError(f"image tensor has dtype {t.dtype}; expected float in [0, 1]")
    if not torch.isfinite(t).all():
        raise ValueError("image tensor contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image tensor values lie in [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
    # 8-bit, as the VLM's image processor sees a decoded photo (round half up, like PIL's conversions).
    arr = (t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def resolve_level_tokens(
    tokenizer: Any, prompt_text: str, words: Sequence[str]
) -> tuple[list[int], dict[str, int]]:
    """Token ids of the level ``words`` as the next token after ``prompt_text``.

    Each word is encoded as the answer would be written, ``prompt_text + " " + word`` (no space when the prompt
    already ends in whitespace), and the ids are diffed against those of ``prompt_text``. Leading tokens shared by
    all words that decode to whitespace only (a tokenizer that makes the space its own token) are returned as
    ``prefix_ids``, to be appended to the prompt; what remains of each word must be exactly one known token.

    Args:
        tokenizer: a transformers tokenizer.
        prompt_text: the full chat text up to the assistant prefix (image placeholder unexpanded).
        words: the level words, e.g. ``("excellent", "good", "fair", "poor", "bad")``.

    Returns:
        ``(prefix_ids, {word: token_id})``.

    Raises:
        ValueError: a word is several tokens or unknown to the tokenizer, the prompt's tokens change when a word is
            appended, or two words share a token id.
    """
    sep = "" if prompt_text[-1:].isspace() else " "
    base = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    diffs: dict[str, list[int]] = {}
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"level word {w!r} must be a non-empty string")
        full = tokenizer(prompt_text + sep + w, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base:
            raise ValueError(
                f"appending level word {w!r} changes the prompt's own tokens (the tokenizer merges across the "
                "boundary); end the prompt (answer_prefix) so that the answer starts a new token"
            )
        diffs[w] = list(full[len(base) :])
    # Longest common prefix, kept only while it is pure whitespace and every word keeps at least one token.
    prefix: list[int] = []
    shortest = min(len(d) for d in diffs.values())
    for i in range(shortest - 1):
        tok = diffs[words[0]][i]
        if all(d[i] == tok for d in diffs.values()) and tokenizer.decode([tok]).strip() == "":
            prefix.append(tok)
        else:
            break
    ids: dict[str, int] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for w in words:
        rest = diffs[w][len(prefix) :]
        if len(rest) != 1:
            pieces = tokenizer.convert_ids_to_tokens(rest)
            raise ValueError(
                f"level word {w!r} is {len(rest)} tokens {pieces} for this tokenizer after the prompt; each level "
                "word must be a single token (choose other words with levels=...)"
            )
        if unk is not None and rest[0] == unk:
            raise ValueError(f"level word {w!r} is not in the tokenizer's vocabulary (it encodes as the unknown token)")
        ids[w] = int(rest[0])
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"level words share token ids: {ids}; each word needs its own token")
    return prefix, ids


def scores_from_logits(level_logits: torch.Tensor, levels: Sequence[tuple[str, int]] = LEVELS) -> list[dict]:
    """The rater contract per row of ``level_logits`` ``(B, L)``, columns in the order of ``levels``.

    ``p = softmax(l)``, ``score = sum_i level_i * p_i``, ``vlm_vis = (score - min) / (max - min)`` (``(r - 1) / 4``
    for the five WResVLM levels). Computed in float64 so fp16 models give stable numbers.
    """
    if level_logits.ndim != 2 or level_logits.shape[1] != len(levels):
        raise ValueError(f"level logits have shape {tuple(level_logits.shape)}; expected (B, {len(levels)})")
    p = torch.softmax(level_logits.detach().double().cpu(), dim=-1)  # (B, L)
    values = torch.tensor([float(v) for _, v in levels], dtype=torch.float64)  # (L,)
    r = p @ values  # (B,)
    lo, hi = float(values.min()), float(values.max())
    out = []
    for b in range(p.shape[0]):
        score = float(r[b])
        out.append({
            "score": score,
            "vlm_vis": (score - lo) / (hi - lo),
            "probs": {w: float(p[b, i]) for i, (w, _) in enumerate(levels)},
        })
    return out


class VisibilityRater:
    """WResVLM's r^vlm from a transformers VLM: visibility (or quality, or a custom question) in [1, 5].

    Args:
        model: an ``AutoModelForImageTextToText`` model in eval mode.
        processor: its ``AutoProcessor`` (tokenizer + image processor + chat template).
        prompt: ``"visibility"`` (WResVLM), ``"quality"`` (WResVLM/Q-Align) or a custom question.
        system: system text; ``"auto"`` (default) is LLaVA v1's for LLaVA-1.5 (``model_type == "llava"``) and
            none for other models (their template's own default applies); ``None`` for none.
        answer_prefix: text put after the assistant prefix before reading the logits (default ``""``: the logits
            of the first answer token, as in WResVLM). E.g. ``"The visibility of the image is"``.
        levels: ``(word, level)`` pairs; default excellent=5, good=4, fair=3, poor=2, bad=1.
        name: name shown to users (registry name or folder).
        random_weights: True when the model's weights are random (tests); user-facing output must say so. Also
            set when the model's config has ``vlmir_random_weights`` (folders from :mod:`vlmir.vlm.tiny`).
    """

    def __init__(
        self,
        *,
        model: Any,
        processor: Any,
        prompt: str = "visibility",
        system: str | None = "auto",
        answer_prefix: str = "",
        levels: Sequence[tuple[str, int]] = LEVELS,
        name: str = "vlm",
        random_weights: bool = False,
    ) -> None:
        if not isinstance(answer_prefix, str):
            raise ValueError(f"answer_prefix must be a string, got {type(answer_prefix).__name__}")
        levels = tuple((str(w), int(v)) for w, v in levels)
        if len(levels) < 2 or len({v for _, v in levels}) < 2:
            raise ValueError(f"levels must hold at least two (word, level) pairs with different levels, got {levels}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model_type = str(getattr(model.config, "model_type", ""))
        self.question = resolve_prompt(prompt)
        self.system = default_system(self.model_type) if system == "auto" else system
        self.answer_prefix = answer_prefix
        self.levels = levels
        self.name = name
        # folders written by vlmir.vlm.tiny carry ``vlmir_random_weights`` in their config.json
        self.random_weights = bool(random_weights) or bool(getattr(model.config, "vlmir_random_weights", False))
        self.prompt_text = self.chat_text(self.question, answer_prefix=answer_prefix)
        self.prefix_ids, self.level_ids = resolve_level_tokens(self.tokenizer, self.prompt_text, [w for w, _ in levels])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        prompt: str = "visibility",
        system: str | None = "auto",
        answer_prefix: str = "",
        levels: Sequence[tuple[str, int]] = LEVELS,
        name: str | None = None,
        random_weights: bool = False,
    ) -> VisibilityRater:
        """Load a rater from a local model folder (offline) or a hub repo id (cache first, fails fast offline).

        ``dtype``: ``None`` (float32 on CPU, float16 on CUDA), ``"float32"``, ``"float16"``, ``"bfloat16"``;
        ``quantization``: ``None``, ``"8bit"``, ``"4bit"`` (bitsandbytes, CUDA only; ``ValueError`` on CPU). Other
        arguments as in the class.
        """
        from vlmir.vlm.loading import load_vlm

        model, processor, _ = load_vlm(
            name_or_path, device=device, dtype=dtype, quantization=quantization, revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return cls(
            model=model, processor=processor, prompt=prompt, system=system, answer_prefix=answer_prefix,
            levels=levels, name=name or os.fspath(name_or_path), random_weights=random_weights,
        )

    # ------------------------------------------------------------------ prompts
    def chat_text(self, question: str, *, answer_prefix: str = "") -> str:
        """The model's chat text for one image and ``question``, up to the assistant prefix (+ ``answer_prefix``)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            text = self.processor.apply_chat_template(
                chat_messages(question, system=self.system), add_generation_prompt=True, tokenize=False
            )
        elif self.model_type in ("llava",):  # LLaVA-1.5 without a template: the conv_llava_v1 format itself
            text = llava_v1_prompt(question, system=self.system, image_token=getattr(self.processor, "image_token", "<image>"))
        else:
            raise ValueError(f"the processor of model type {self.model_type!r} has no chat template; cannot build the prompt")
        if answer_prefix:
            text = text + (" " if not text[-1:].isspace() else "") + answer_prefix
        return text

    # ------------------------------------------------------------------ model calls
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, texts: list[str], images: list[Image.Image], extra_ids: Sequence[int] = ()) -> dict:
        """Processor outputs for a left-padded batch, with ``extra_ids`` appended and explicit position ids."""
        enc = self.processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
        enc = dict(enc)
        if extra_ids:
            b = enc["input_ids"].shape[0]
            extra = torch.tensor(list(extra_ids), dtype=enc["input_ids"].dtype).expand(b, -1)
            enc["input_ids"] = torch.cat([enc["input_ids"], extra], dim=1)
            enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(extra)], dim=1)
        dev, dtype = self.device, next(self.model.parameters()).dtype
        out = {}
        for k, v in enc.items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev)
                if v.is_floating_point():
                    v = v.to(dtype if dtype.is_floating_point else torch.float16)
            out[k] = v
        return out

    @torch.no_grad()
    def level_logits(self, images: Sequence[Any]) -> torch.Tensor:
        """Next-token logits at the level words, ``(B, L)`` float32, for a batch of images (one forward pass)."""
        pil = [_image_to_pil(x) for x in images]
        if not pil:
            raise ValueError("no images given")
        return self._level_logits([self.prompt_text] * len(pil), pil)

    def _level_logits(self, texts: list[str], pil: list[Image.Image]) -> torch.Tensor:
        """Level logits ``(B, L)`` for chat ``texts`` (one image each); texts of different lengths are left-padded."""
        inputs = self._inputs(texts, pil, self.prefix_ids)
        if self.model_type not in _MROPE_MODEL_TYPES:
            # Left padding: positions count real tokens only, so a padded row equals the same row alone.
            mask = inputs["attention_mask"]
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]  # (B, V)
        ids = torch.tensor([self.level_ids[w] for w, _ in self.levels], device=logits.device)
        return logits.index_select(-1, ids).float().cpu()  # (B, L)

    def rate(self, x: Any) -> dict:
        """Rate one image (float tensor ``(1, 3, H, W)`` in [0, 1]): ``{"score", "vlm_vis", "probs"}``."""
        return scores_from_logits(self.level_logits([x]), self.levels)[0]

    def rate_batch(self, images: Sequence[Any], *, batch_size: int = 8, progress: Any = None) -> list[dict]:
        """Rate many images, ``batch_size`` per forward pass; same numbers as :meth:`rate` one by one.

        Args:
            images: image tensors ``(1, 3, H, W)`` in [0, 1] (or PIL images), any sizes.
            batch_size: images per forward pass (>= 1).
            progress: optional callable ``progress(done, total)``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        images = list(images)
        out: list[dict] = []
        for i in range(0, len(images), batch_size):
            out.extend(scores_from_logits(self.level_logits(images[i : i + batch_size]), self.levels))
            if progress is not None:
                progress(len(out), len(images))
        return out

    @torch.no_grad()
    def describe(self, x: Any, *, max_new_tokens: int = 96, seed: int = 0, prompt: str = DESCRIBE_PROMPT) -> str:
        """The scene description with weather (WResVLM's second question), greedy decoding.

        Args:
            x: one image tensor ``(1, 3, H, W)`` in [0, 1].
            max_new_tokens: longest answer in tokens (>= 1).
            seed: seeds torch before generating (greedy decoding is deterministic; the seed pins any model that
                still draws random numbers).
            prompt: the question (default WResVLM's "Describe the scene with weather information (e.g., clear,
                rainy, hazy, snowy)").
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        text = self.chat_text(resolve_prompt(prompt))
        inputs = self._inputs([text], [_image_to_pil(x)])
        torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def __repr__(self) -> str:
        return (f"VisibilityRater(name={self.name!r}, model_type={self.model_type!r}, question={self.question!r}, "
                f"random_weights={self.random_weights})")
