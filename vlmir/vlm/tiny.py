"""Tiny random-weight LLaVA models saved as real transformers folders, for tests and CPU benchmarks.

Nothing here is a trained model: the weights are random (``torch.manual_seed(seed)``), the tokenizer is a small
word-level vocabulary built from the prompts, and the folder is written with ``save_pretrained`` so that it is
loaded back through the real loading path (:func:`vlmir.vlm.loading.load_vlm`).

The chat template follows ``llava-hf``'s LLaVA-1.5 template: a system message renders as its text and a space, a
user turn as ``"USER: "`` + ``"<image>\\n"`` per image + each text and a space, and the generation prompt is
``"ASSISTANT:"``; with LLaVA v1's system text this is exactly the original ``conv_llava_v1`` string.

Example::

    >>> folder = save_tiny_llava("/tmp/tiny-llava")          # doctest: +SKIP
    >>> VisibilityRater.from_pretrained(folder).rate(x)      # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from vlmir.vlm.prompts import DESCRIBE_PROMPT, LEVELS, LLAVA_V1_SYSTEM, PROMPTS

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

TOKENIZER_KINDS = ("wordlevel", "metaspace", "space-token", "split-word")

_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>", "<|im_start|>", "<|im_end|>")
_EXTRA_TEXT = "USER: ASSISTANT: clear rainy hazy snowy foggy street car tree sky the a is with and . , ( ) :"


def _corpus() -> str:
    return " ".join([LLAVA_V1_SYSTEM, DESCRIBE_PROMPT, *PROMPTS.values(), " ".join(w for w, _ in LEVELS), _EXTRA_TEXT])


def build_tokenizer(kind: str = "wordlevel"):
    """A ``PreTrainedTokenizerFast`` over the prompts' words (+ specials ``<unk> <s> </s> <pad> <image> <video>
    <|im_start|> <|im_end|>``).

    Kinds: ``"wordlevel"`` (words and punctuation, spaces dropped), ``"metaspace"`` (SentencePiece-like
    ``"▁word"`` pieces, the space is part of the token), ``"space-token"`` (the space is its own token, so every
    answer word follows a ``" "`` token), ``"split-word"`` (WordPiece where ``"excellent"`` is two tokens).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {TOKENIZER_KINDS}")
    text = _corpus()
    vocab = {s: i for i, s in enumerate(_SPECIALS)}

    def add(piece: str) -> None:
        vocab.setdefault(piece, len(vocab))

    if kind == "wordlevel":
        for w in re.findall(r"\w+|[^\w\s]+", text):
            add(w)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    elif kind == "metaspace":
        for w in text.replace("\n", " ").split():
            add("\u2581" + w)
        add("\u2581USER:")
        add("\u2581<image>\n")
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    elif kind == "space-token":
        for w in re.findall(r"\w+|[^\w\s]+|\s", text + " \n"):
            add(w)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\s"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:  # split-word
        for w in re.findall(r"\w+|[^\w\s]+", text):
            if w != "excellent":
                add(w)
        add("excel")
        add("##lent")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def save_tiny_llava(
    folder: str | os.PathLike,
    *,
    tokenizer_kind: str = "wordlevel",
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    chat_template: str | None = LLAVA_CHAT_TEMPLATE,
) -> Path:
    """Build a random LLaVA (tiny CLIP vision tower + tiny Llama) with its processor and save both to ``folder``.

    Args:
        folder: output folder (created).
        tokenizer_kind: see :func:`build_tokenizer`.
        image_size: side of the square input of the vision tower (pixels); ``(image_size / patch_size)^2`` image
            tokens per image.
        patch_size: ViT patch size.
        hidden_size: width of the language model (the vision tower is half as wide).
        num_layers: layers of each tower (>= 2, since LLaVA reads the vision tower's second-to-last layer).
        seed: seeds the random weights.
        chat_template: the processor's chat template (``None`` for none).

    Returns:
        ``Path(folder)``.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2 (LLaVA uses the second-to-last vision layer), got {num_layers}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    tokenizer = build_tokenizer(tokenizer_kind)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=chat_template, num_additional_image_tokens=1,
    )
    n_image_tokens = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=hidden_size // 2, intermediate_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=hidden_size // 2,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_image_tokens, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    config.vlmir_random_weights = True  # saved in config.json: raters loaded from this folder say so
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger logits than the default init, so the five level probabilities differ visibly
        model.lm_head.weight.mul_(20.0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# A Qwen-style template (ChatML with spaces, since the word-level tokenizer drops whitespace): the generation prompt
# ends in a space, so level words are encoded without a leading one.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{{ ' <|im_end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)


def save_tiny_onevision(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """A random LLaVA-OneVision (tiny SigLIP + tiny Qwen2, anyres grid 32 px tiles) with processor, in ``folder``.

    Unlike LLaVA-1.5, the number of image tokens depends on the image's aspect ratio (anyres tiles), so a batch of
    differently shaped images is left-padded: the case :class:`~vlmir.vlm.visibility.VisibilityRater` batching
    must get right.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tile, patch = 32, 8
    grid = [[tile, tile], [tile, 2 * tile], [2 * tile, tile]]
    tokenizer = build_tokenizer("wordlevel")
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": tile, "width": tile}, image_grid_pinpoints=grid),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": tile, "width": tile}),
        tokenizer=tokenizer, num_image_tokens=(tile // patch) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=tile, patch_size=patch),
        text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=grid,
    )
    config.vlmir_random_weights = True
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# SmolVLM's layout: "<|im_start|>User: <image>question<end_of_utterance>Assistant:" (spaces dropped by the tokenizer).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}{{ ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{{ '<end_of_utterance>' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def save_tiny_smolvlm(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """A random SmolVLM / Idefics3 (tiny vision tower with pixel shuffle + tiny Llama) with processor, in ``folder``.

    Its processor splits an image into up to 2x2 tiles of 32 px plus a global view, each tile 4 image tokens
    between row/column tags, so images of different shapes give prompts of different lengths (left padding).
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tile, patch, shuffle = 32, 8, 2
    tokenizer = build_tokenizer("wordlevel")
    tags = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tags += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer.add_tokens(tags, special_tokens=True)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                               do_image_splitting=True),
        tokenizer=tokenizer, image_seq_len=(tile // patch) ** 2 // shuffle**2, chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=tile, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=shuffle,
    )
    config.vlmir_random_weights = True
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
