"""Tests of vlmir.vlm: WResVLM's r^vlm / VLM-Vis on a tiny random LLaVA saved and loaded through the real path."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from vlmir.vlm.prompts import (
    DESCRIBE_PROMPT,
    LEVELS,
    LLAVA_V1_SYSTEM,
    QUALITY_PROMPT,
    VISIBILITY_PROMPT,
    llava_v1_prompt,
)
from vlmir.vlm.tiny import build_tokenizer, save_tiny_llava
from vlmir.vlm.visibility import VisibilityRater, _image_to_pil, resolve_level_tokens, scores_from_logits

WORDS = [w for w, _ in LEVELS]
LLAVA_V1_VISIBILITY = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the human's questions. USER: <image>\nRate the visibility of the image against rain, "
    "fog, and snow. Please answer with excellent, good, fair, poor, or bad. ASSISTANT:"
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), tokenizer_kind="wordlevel", seed=0)


@pytest.fixture(scope="session")
def rater(tiny_dir) -> VisibilityRater:
    return VisibilityRater.from_pretrained(tiny_dir, random_weights=True)


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 24 + 7 * i, 40 - 3 * i, generator=g) for i in range(n)]


# ---------------------------------------------------------------------------------------------------- prompts
def test_llava_prompt_is_conv_llava_v1(rater):
    assert rater.model_type == "llava"
    assert rater.system == LLAVA_V1_SYSTEM
    assert rater.prompt_text == LLAVA_V1_VISIBILITY
    assert rater.prompt_text == llava_v1_prompt(VISIBILITY_PROMPT)
    assert rater.chat_text(DESCRIBE_PROMPT).endswith(
        "USER: <image>\nDescribe the scene with weather information (e.g., clear, rainy, hazy, snowy) ASSISTANT:"
    )


def test_quality_prompt_and_no_system(rater):
    q = VisibilityRater(model=rater.model, processor=rater.processor, prompt="quality", system=None)
    assert q.prompt_text == "USER: <image>\nRate the quality of the image. Please answer with excellent, good, fair, poor, or bad. ASSISTANT:"
    assert q.question == QUALITY_PROMPT
    custom = VisibilityRater(model=rater.model, processor=rater.processor, prompt="Is it clear?", system=None,
                             answer_prefix="The visibility of the image is")
    assert custom.prompt_text == "USER: <image>\nIs it clear? ASSISTANT: The visibility of the image is"


def test_prompt_without_chat_template_falls_back_to_conv_llava_v1(tmp_path):
    folder = save_tiny_llava(tmp_path / "notemplate", chat_template=None)
    r = VisibilityRater.from_pretrained(folder)
    assert r.processor.chat_template is None
    assert r.prompt_text == LLAVA_V1_VISIBILITY


def test_image_tokens_are_expanded(rater):
    enc = rater._inputs([rater.prompt_text], [_image_to_pil(_images(1)[0])])
    image_id = rater.model.config.image_token_index
    assert int((enc["input_ids"] == image_id).sum()) == 16  # (32 / 8)^2 patches, CLS dropped ("default")
    assert enc["pixel_values"].shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------- tokens
def test_level_tokens_word_level(rater):
    assert rater.prefix_ids == []
    assert rater.level_ids == {w: rater.tokenizer.convert_tokens_to_ids(w) for w in WORDS}


def test_level_tokens_sentencepiece_space_in_token():
    tok = build_tokenizer("metaspace")
    prefix, ids = resolve_level_tokens(tok, LLAVA_V1_VISIBILITY, WORDS)
    assert prefix == []
    assert tok.convert_ids_to_tokens([ids[w] for w in WORDS]) == ["\u2581" + w for w in WORDS]
    # encoding the word alone would also give "▁good"; in context it must be the same token
    assert ids["good"] == tok.convert_tokens_to_ids("\u2581good")


def test_level_tokens_space_as_own_token_moves_into_prompt():
    tok = build_tokenizer("space-token")
    prefix, ids = resolve_level_tokens(tok, LLAVA_V1_VISIBILITY, WORDS)
    assert tok.convert_ids_to_tokens(prefix) == [" "]
    assert tok.convert_ids_to_tokens([ids[w] for w in WORDS]) == WORDS


def test_space_token_rater_reads_logits_after_the_space(tmp_path):
    folder = save_tiny_llava(tmp_path / "space", tokenizer_kind="space-token")
    r = VisibilityRater.from_pretrained(folder)
    x = _images(1)[0]
    enc = r.processor(text=[r.prompt_text], images=[_image_to_pil(x)], return_tensors="pt")
    space = torch.tensor([r.prefix_ids])
    with torch.no_grad():
        logits = r.model(input_ids=torch.cat([enc["input_ids"], space], 1), pixel_values=enc["pixel_values"]).logits
    expected = scores_from_logits(logits[:, -1, [r.level_ids[w] for w in WORDS]])[0]
    assert r.rate(x)["score"] == pytest.approx(expected["score"], abs=1e-5)


def test_multi_token_word_is_refused():
    tok = build_tokenizer("split-word")
    with pytest.raises(ValueError, match=r"'excellent' is 2 tokens \['excel', '##lent'\]"):
        resolve_level_tokens(tok, LLAVA_V1_VISIBILITY, WORDS)


def test_unknown_word_and_bad_levels_are_refused(rater):
    with pytest.raises(ValueError, match="'superb' is not in the tokenizer's vocabulary"):
        VisibilityRater(model=rater.model, processor=rater.processor, levels=[("superb", 5), ("bad", 1)])
    with pytest.raises(ValueError, match="at least two"):
        VisibilityRater(model=rater.model, processor=rater.processor, levels=[("good", 4)])
    with pytest.raises(ValueError, match="prompt must be"):
        VisibilityRater(model=rater.model, processor=rater.processor, prompt="  ")


# ---------------------------------------------------------------------------------------------------- formula
def test_formula_on_the_papers_logits():
    # WResVLM, Image Assessment figure: logits (13.1, 16.2, 18.8, 12.6, 11.5) -> p (3.1e-3, 0.069, 0.93, 1.9e-3, 6.3e-4)
    out = scores_from_logits(torch.tensor([[13.1, 16.2, 18.8, 12.6, 11.5]], dtype=torch.float64))[0]
    paper = {"excellent": 3.1e-3, "good": 0.069, "fair": 0.93, "poor": 1.9e-3, "bad": 6.3e-4}
    for w, p in paper.items():
        assert out["probs"][w] == pytest.approx(p, rel=0.06)
    e = [math.exp(v) for v in (13.1, 16.2, 18.8, 12.6, 11.5)]
    assert out["score"] == pytest.approx(sum(lv * ei / sum(e) for lv, ei in zip((5, 4, 3, 2, 1), e, strict=True)), abs=1e-12)
    assert out["score"] == pytest.approx(3.0718, abs=1e-4)
    assert out["vlm_vis"] == pytest.approx((out["score"] - 1) / 4, abs=1e-12)


def test_rate_matches_hand_computation_from_model_logits(rater):
    x = _images(1, seed=3)[0]
    enc = rater.processor(text=[rater.prompt_text], images=[_image_to_pil(x)], return_tensors="pt")
    with torch.no_grad():
        last = rater.model(**enc).logits[0, -1]  # (V,)
    ls = [float(last[rater.tokenizer.convert_tokens_to_ids(w)]) for w in WORDS]
    z = sum(math.exp(v) for v in ls)
    p = [math.exp(v) / z for v in ls]
    r = sum(level * pi for (_, level), pi in zip(LEVELS, p, strict=True))
    got = rater.rate(x)
    assert got["score"] == pytest.approx(r, abs=1e-5)
    assert got["vlm_vis"] == pytest.approx((r - 1) / 4, abs=1e-5)
    assert [got["probs"][w] for w in WORDS] == pytest.approx(p, abs=1e-5)
    assert sum(got["probs"].values()) == pytest.approx(1.0, abs=1e-9)
    assert 1.0 <= got["score"] <= 5.0
    assert max(p) - min(p) > 0.05  # the tiny model's probabilities are not uniform: a real check
    assert set(got) == {"score", "vlm_vis", "probs"} and list(got["probs"]) == WORDS


def test_pil_and_tensor_inputs_agree(rater):
    x = _images(1, seed=5)[0]
    assert rater.rate(_image_to_pil(x))["score"] == pytest.approx(rater.rate(x)["score"], abs=1e-9)


# ---------------------------------------------------------------------------------------------------- batching
def test_batch_equals_one_by_one(rater):
    xs = _images(5, seed=1)
    one = [rater.rate(x) for x in xs]
    calls = []
    batch = rater.rate_batch(xs, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 5), (5, 5)]
    for a, b in zip(one, batch, strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert [b["probs"][w] for w in WORDS] == pytest.approx([a["probs"][w] for w in WORDS], abs=1e-4)
    assert len({round(o["score"], 6) for o in one}) > 1  # different images, different scores


def test_left_padded_rows_equal_unpadded(rater):
    # Prompts of different lengths in one batch (as with models whose image token count varies): the shorter row
    # is left-padded and must give the numbers it gives alone.
    long_q = rater.chat_text(VISIBILITY_PROMPT)
    short_q = rater.chat_text("Rate the image.")
    pil = [_image_to_pil(x) for x in _images(2, seed=2)]
    both = rater._level_logits([long_q, short_q], pil)
    enc = rater._inputs([long_q, short_q], pil)
    assert int((enc["attention_mask"] == 0).sum()) > 0  # padding really happened
    alone = torch.cat([rater._level_logits([long_q], pil[:1]), rater._level_logits([short_q], pil[1:])])
    assert torch.allclose(both, alone, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "bad, msg",
    [
        (torch.rand(1, 1, 8, 8), "expected \\(1, 3, H, W\\)"),
        (torch.rand(2, 3, 8, 8), "batch size 2"),
        (torch.rand(1, 3, 8, 8) * 3, "expected \\[0, 1\\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "expected float"),
        ("img.png", "float tensor"),
    ],
)
def test_bad_images_raise(rater, bad, msg):
    with pytest.raises(ValueError, match=msg):
        rater.rate(bad)


def test_bad_arguments_raise(rater, tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        rater.rate_batch(_images(1), batch_size=0)
    assert rater.rate_batch([]) == []  # no batches, no forward pass
    with pytest.raises(ValueError, match="no images"):
        rater.level_logits([])
    with pytest.raises(ValueError, match="max_new_tokens"):
        rater.describe(_images(1)[0], max_new_tokens=0)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        VisibilityRater.from_pretrained(tiny_dir, quantization="8bit")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        VisibilityRater.from_pretrained(tiny_dir, quantization="4bit")
    with pytest.raises(ValueError, match="quantization '3bit'"):
        VisibilityRater.from_pretrained(tiny_dir, quantization="3bit")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        VisibilityRater.from_pretrained(tiny_dir, dtype="int8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VisibilityRater.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        VisibilityRater.from_pretrained("./no/such/model")


def test_offline_hub_name_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        VisibilityRater.from_pretrained("vlmir-tests/not-a-cached-vlm")
    assert time.perf_counter() - t0 < 5.0
    msg = str(e.value)
    assert "'vlmir-tests/not-a-cached-vlm'" in msg and "offline" in msg
    assert "hf download vlmir-tests/not-a-cached-vlm" in msg and "folder" in msg


# ---------------------------------------------------------------------------------------------------- dtype
def test_fp16_and_bf16_requests_give_that_dtype(tiny_dir):
    r = VisibilityRater.from_pretrained(tiny_dir, dtype="bfloat16")
    assert next(r.model.parameters()).dtype == torch.bfloat16
    ref = VisibilityRater.from_pretrained(tiny_dir)
    assert next(ref.model.parameters()).dtype == torch.float32  # CPU default
    x = _images(1, seed=4)[0]
    assert r.rate(x)["score"] == pytest.approx(ref.rate(x)["score"], abs=0.15)


# ---------------------------------------------------------------------------------------------------- describe
def test_describe_is_greedy_and_reproducible(rater):
    x = _images(1, seed=6)[0]
    a = rater.describe(x, max_new_tokens=6, seed=0)
    b = rater.describe(x, max_new_tokens=6, seed=1)
    assert isinstance(a, str) and a == b  # greedy: the seed does not change the answer
    assert 0 < len(a.split()) <= 6


# ---------------------------------------------------------------------------------------------------- other VLMs
OTHER_VLMS = {
    "llava_onevision": "<|im_start|>user <image>" + VISIBILITY_PROMPT + " <|im_end|> <|im_start|>assistant ",
    "idefics3": "<|im_start|>User: <image>" + VISIBILITY_PROMPT + "<end_of_utterance>Assistant:",
}


@pytest.mark.parametrize("model_type", list(OTHER_VLMS))
def test_variable_image_tokens_batch_equals_one_by_one(tmp_path, model_type):
    from vlmir.vlm.tiny import save_tiny_onevision, save_tiny_smolvlm

    save = save_tiny_onevision if model_type == "llava_onevision" else save_tiny_smolvlm
    r = VisibilityRater.from_pretrained(save(tmp_path / model_type))
    assert r.model_type == model_type and r.system is None and r.random_weights
    assert r.prompt_text == OTHER_VLMS[model_type]
    assert r.prefix_ids == [] and r.level_ids == {w: r.tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    g = torch.Generator().manual_seed(7)
    xs = [torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 80, generator=g),
          torch.rand(1, 3, 90, 30, generator=g)]
    enc = r._inputs([r.prompt_text] * 3, [_image_to_pil(x) for x in xs])
    pads = (enc["attention_mask"] == 0).sum(1).tolist()
    assert len(set(pads)) > 1  # different image token counts: real left padding
    one = [r.rate(x) for x in xs]
    batch = r.rate_batch(xs, batch_size=3)
    for a, b in zip(one, batch, strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert [b["probs"][w] for w in WORDS] == pytest.approx([a["probs"][w] for w in WORDS], abs=1e-4)
    assert isinstance(r.describe(xs[1], max_new_tokens=3), str)


# ---------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_fp16_and_fp32(tiny_dir):
    xs = _images(4, seed=8)
    ref = [o["score"] for o in VisibilityRater.from_pretrained(tiny_dir).rate_batch(xs)]
    r32 = VisibilityRater.from_pretrained(tiny_dir, device="cuda", dtype="float32")
    assert [o["score"] for o in r32.rate_batch(xs, batch_size=4)] == pytest.approx(ref, abs=1e-3)
    r16 = VisibilityRater.from_pretrained(tiny_dir, device="cuda")  # CUDA default: float16
    assert next(r16.model.parameters()).dtype == torch.float16
    assert [o["score"] for o in r16.rate_batch(xs, batch_size=4)] == pytest.approx(ref, abs=0.15)


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_cuda_bitsandbytes(tiny_dir, quantization):
    pytest.importorskip("bitsandbytes", reason="quantization needs bitsandbytes")
    r = VisibilityRater.from_pretrained(tiny_dir, device="cuda", quantization=quantization)
    out = r.rate(_images(1)[0])
    assert 1.0 <= out["score"] <= 5.0 and sum(out["probs"].values()) == pytest.approx(1.0, abs=1e-6)
