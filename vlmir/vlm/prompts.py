"""Prompts, rating levels and chat formatting for VLM image assessment (WResVLM, Q-Align).

WResVLM (Xu et al., "Towards Real-World Adverse Weather Image Restoration: Enhancing Clearness and Semantics with
Vision-Language Models", ECCV 2024) asks LLaVA-1.5 to rate the visibility of an image with five level words and to
describe the scene with its weather; Q-Align (Wu et al., ICML 2024) rates quality the same way. The rating is read
from the next-token logits of the answer (see :mod:`vlmir.vlm.visibility`); the words and prompts are kept here,
exactly as the papers give them.

LLaVA-1.5 was trained with the ``conv_llava_v1`` conversation of the original repository
(https://github.com/haotian-liu/LLaVA, ``llava/conversation.py``): the system text below, roles ``USER`` and
``ASSISTANT``, separator ``" "`` after the system text and the user turn, so that a question renders as::

    <system> USER: <image>\\n<question> ASSISTANT:

The ``llava-hf`` checkpoints carry a chat template that renders a system message as its bare text followed by a
space, which gives the same string; :func:`llava_v1_prompt` builds it without a template.
"""

from __future__ import annotations

# (word, level) pairs, best first: r = sum_i i * p_i with excellent = 5 ... bad = 1 (WResVLM eq. for r^vlm).
LEVELS: tuple[tuple[str, int], ...] = (("excellent", 5), ("good", 4), ("fair", 3), ("poor", 2), ("bad", 1))

# WResVLM, "Image Assessment": the visibility question put to LLaVA.
VISIBILITY_PROMPT = (
    "Rate the visibility of the image against rain, fog, and snow. "
    "Please answer with excellent, good, fair, poor, or bad."
)
# WResVLM's quality question (Q-Align-style quality rating with the same five words).
QUALITY_PROMPT = "Rate the quality of the image. Please answer with excellent, good, fair, poor, or bad."
# WResVLM, "Description-assisted semantic enhancement": the description question.
DESCRIBE_PROMPT = "Describe the scene with weather information (e.g., clear, rainy, hazy, snowy)"

PROMPTS: dict[str, str] = {"visibility": VISIBILITY_PROMPT, "quality": QUALITY_PROMPT}

# System text of LLaVA v1 (conv_llava_v1 / conv_vicuna_v1), used by LLaVA-1.5.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Model types (``config.model_type``) whose checkpoints were trained with the LLaVA v1 conversation.
LLAVA_V1_MODEL_TYPES = ("llava",)


def resolve_prompt(prompt: str) -> str:
    """The question text for ``prompt``: ``"visibility"``, ``"quality"`` or any custom non-empty question."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be 'visibility', 'quality' or a non-empty question, got {prompt!r}")
    return PROMPTS.get(prompt, prompt)


def default_system(model_type: str) -> str | None:
    """The system text a model was trained with: LLaVA v1's for LLaVA-1.5, else ``None`` (the template's own)."""
    return LLAVA_V1_SYSTEM if model_type in LLAVA_V1_MODEL_TYPES else None


def llava_v1_prompt(question: str, *, system: str | None = LLAVA_V1_SYSTEM, image_token: str = "<image>") -> str:
    """``conv_llava_v1`` text of one user turn with one image, ending with the assistant prefix ``"ASSISTANT:"``.

    Example::

        >>> llava_v1_prompt("Hi?", system=None)
        'USER: <image>\\nHi? ASSISTANT:'
    """
    head = f"{system} " if system else ""
    return f"{head}USER: {image_token}\n{question} ASSISTANT:"


def chat_messages(question: str, *, system: str | None = None) -> list[dict]:
    """Chat messages (transformers multimodal format) for one image and one question, with an optional system turn."""
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
    return messages
