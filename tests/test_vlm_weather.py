"""Tests of the weather-free rewrite (WResVLM's positive description) by rules and by an LLM."""

from __future__ import annotations

import re

import pytest
import torch

from vlmir.vlm.weather import remove_weather

WEATHER = re.compile(r"\b(rain\w*|fog\w*|haz\w*|mist\w*|snow\w*|overcast|storm\w*|drizzl\w*|droplets)\b", re.I)

CASES = [
    # the paper's own descriptions (WResVLM, Fig. 1)
    ("The snow is falling heavily, which creates a dense atmosphere, but the main subjects are still identifiable.",
     "The main subjects are still identifiable."),
    ("There's a clear view with the coastline and vegetation distinctly visible, and there's no discernible fog.",
     "There's a clear view with the coastline and vegetation distinctly visible."),
    ("Although the rainfall is visible as streaks against the green background, there is a reasonable level of "
     "detail observable.", "There is a reasonable level of detail observable."),
    ("Despite the snowfall, which adds a certain level of visual noise, the main subjects remain quite clear and "
     "distinguishable.", "The main subjects remain quite clear and distinguishable."),
    ("The heavy rainfall creates a dense curtain of water droplets, significantly obscuring the greenery in the "
     "background.", "A clear scene."),
    # phrases, adjectives, predicates, articles
    ("A rainy street with cars, seen through heavy fog. The sky is overcast.", "A street with cars. The sky is clear."),
    ("A city street on a rainy day with people walking.", "A city street on a clear day with people walking."),
    ("An overcast sky above a foggy harbour with boats.", "A clear sky above a harbour with boats."),
    ("The weather is snowy and cold.", "The weather is clear and cold."),
    ("A car drives through the mist at night.", "A car drives at night."),
    ("The image shows a park in hazy weather.", "The image shows a park."),
    ("A red bus parked near a building.", "A red bus parked near a building."),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_rules(text, expected):
    out = remove_weather(text)
    assert out == expected
    assert not WEATHER.search(out)


def test_rules_are_idempotent():
    for text, _ in CASES:
        once = remove_weather(text)
        assert remove_weather(once) == once


def test_llm_callable_and_bad_values():
    assert remove_weather("A rainy road.", llm=lambda t: "  A road.  ") == "A road."
    with pytest.warns(UserWarning, match="empty rewrite"):
        assert remove_weather("A rainy road.", llm=lambda t: "") == "A road."
    with pytest.raises(ValueError, match="llm must be"):
        remove_weather("A rainy road.", llm=3)
    with pytest.raises(ValueError, match="text must be a string"):
        remove_weather(None)


def test_llm_from_a_local_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmir.vlm.tiny import build_tokenizer

    tok = build_tokenizer("wordlevel")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    a = remove_weather("A rainy street.", llm=str(tmp_path / "llm"), max_new_tokens=5)
    b = remove_weather("A rainy street.", llm=str(tmp_path / "llm"), max_new_tokens=5)
    assert isinstance(a, str) and a and a == b  # greedy: reproducible (random weights: the words are noise)
    assert len(a.split()) <= 5
