"""Weather-free rewrite of a scene description: WResVLM's positive text for the semantic loss.

Paper: WResVLM (Xu et al., ECCV 2024), "Description-assisted semantic enhancement": the VLM describes a real
adverse-weather image with its weather; the description with the weather removed is the positive text ``d_pos``
and the original the negative ``d_neg`` of ``L_sem`` (a CLIP softmax over the two). The paper rewrites with a
language model; here :func:`remove_weather` does it by rules (default, deterministic, no model) or with a
transformers text-generation model when one is given.

Rules, applied sentence by sentence (case-insensitive, whole words):

1. weather phrases go: ``"in the heavy rain"``, ``"under a hazy sky"``, ``"covered in snow"``, ``", with fog
   rolling in"``, ``"despite the snowfall"``, ...;
2. weather adjectives before a time/weather noun become ``clear`` (``"on a rainy day"`` -> ``"on a clear day"``);
   before any other noun they are dropped (``"a foggy street"`` -> ``"a street"``);
3. a weather predicate becomes ``clear`` (``"the weather is rainy"`` -> ``"the weather is clear"``);
4. a clause still about weather (a weather noun, or a visibility loss such as "obscured" or "reduced clarity")
   is dropped, with a "which ..."/"-ing ..." clause hanging on it; a sentence with nothing left goes;
5. tidying: spaces, commas, ``a``/``an`` agreement, capitals, final full stop. An empty result becomes
   ``"A clear scene."``.

Example::

    >>> remove_weather("A rainy street with cars, seen through heavy fog. The sky is overcast.")
    'A street with cars. The sky is clear.'
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

# Weather nouns (and their plurals) whose mention makes text "about weather".
WEATHER_NOUNS = (
    "rain", "rains", "rainfall", "raindrop", "raindrops", "rainstorm", "rainwater", "drizzle", "downpour", "shower",
    "showers", "fog", "fogs", "haze", "mist", "smog", "snow", "snowfall", "snowflake", "snowflakes", "snowstorm",
    "blizzard", "sleet", "hail", "storm", "storms", "thunderstorm", "precipitation", "droplets", "water droplets",
    "rain streaks", "streaks of rain", "overcast", "cloud cover", "murk",
)
# Weather adjectives.
WEATHER_ADJECTIVES = (
    "rainy", "raining", "drizzly", "foggy", "hazy", "misty", "smoggy", "snowy", "snowing", "snow-covered",
    "overcast", "stormy", "gloomy", "murky", "wet", "rain-soaked", "rain-slicked", "frosty", "cloudy", "dreary",
)
# Nouns after which a weather adjective is the time or the weather itself: the adjective becomes "clear".
TIME_NOUNS = ("day", "days", "morning", "afternoon", "evening", "night", "weather", "conditions", "condition",
              "atmosphere", "sky", "skies", "air")
# Words of lost visibility: a sentence with one of them is about the weather's effect, and goes.
VISIBILITY_LOSS = (
    r"obscur\w*", r"blur\w*", r"reduc\w* (?:the )?(?:visibility|clarity|contrast|detail)", r"low visibility",
    r"poor visibility", r"limited visibility", r"visibility is \w+", r"dim(?:s|med|ming)?", r"veil\w*",
    r"shroud\w*", r"blanket\w*", r"curtain of \w+",
)
_INTENSITY = r"(?:(?:heavy|heavily|light|lightly|thick|thin|dense|falling|steady|pouring|driving|fresh|freshly|" \
             r"fallen|gentle|soft|slight|persistent|constant|some|a lot of|lots of|a layer of|a blanket of|a veil of)\s+)*"
_ARTICLE = r"(?:(?:a|an|the|some)\s+)?"
_PREPOSITIONS = (
    r"in", r"under", r"through", r"amid", r"amidst", r"during", r"with", r"despite", r"beneath", r"behind",
    r"covered (?:in|with|by)", r"blanketed (?:in|with|by)", r"shrouded (?:in|by)", r"obscured by", r"due to",
    r"because of", r"filled with", r"dusted with",
)
_ADV = r"(?:(?:quite|very|extremely|slightly|somewhat|rather|fairly|heavily|mostly|partly|a bit|a little)\s+)?"


def _alt(words: tuple[str, ...]) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_NOUN = _alt(WEATHER_NOUNS)
_ADJ = _alt(WEATHER_ADJECTIVES)
_ADJ_RUN = rf"(?:{_ADJ})(?:\s*(?:,|and|or)\s*(?:{_ADJ}))*"
_PARTICIPLE = r"(?:(?:seen|visible|viewed|captured|taken|photographed|shot|standing|walking|driving)\s+)?"
_RULES: tuple[tuple[re.Pattern, str], ...] = (
    # 1. "<prep> the heavy rain", "under a hazy sky", ", seen through fog", ", with fog rolling in" (and a
    #    ", which ..." clause about it): the whole phrase and its comma go.
    (re.compile(rf",?\s*\b{_PARTICIPLE}(?:{'|'.join(_PREPOSITIONS)})\s+{_ARTICLE}{_INTENSITY}"
                rf"(?:(?:{_NOUN})|(?:{_ADJ_RUN})\s+\w+)\b(?:\s+(?:rolling in|falling|coming down|in the air))?"
                rf"(?:\s*,\s*which\b[^,.;]*)?", re.I), ""),
    # 3. "is rainy", "looks hazy and misty" -> "is clear" (before 2b, which would take "snowy and").
    (re.compile(rf"\b(is|are|was|were|be|been|being|appears|appear|seems|seem|looks|look|remains|remain)\s+{_ADV}"
                rf"(?:{_ADJ_RUN})\b", re.I), r"\1 clear"),
    # 2a. "a rainy day" -> "a clear day" (time/weather nouns).
    (re.compile(rf"\b{_ADV}(?:{_ADJ_RUN})\s+(?=(?:{_alt(TIME_NOUNS)})\b)", re.I), "clear "),
    # 2b. "a foggy street" -> "a street" (an attributive adjective: a noun follows, not a function word).
    (re.compile(rf"\b{_ADV}(?:{_ADJ_RUN})\s+(?=(?!(?:and|or|but|with|in|on|at|of|to|is|are|was|were|for|from|as)\b)"
                rf"[a-z])", re.I), ""),
)
_ABOUT_WEATHER = re.compile(rf"\b(?:{_NOUN}|{_ADJ}|{'|'.join(VISIBILITY_LOSS)})\b", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _tidy(sentence: str) -> str:
    s = re.sub(r"\s+", " ", sentence).strip()
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    s = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", s)
    s = re.sub(r"^[,;:\s]+", "", s)
    s = re.sub(r"[,;:\s]+([.!?])$", r"\1", s)
    s = re.sub(r"\b(?:and|but|or|while|which|as)\s*([.!?])$", r"\1", s)
    s = re.sub(r"\b(an?)\s+(\w)", lambda m: _article(m.group(1), m.group(2)), s, flags=re.I)
    s = re.sub(r"\b(clear)(?:\s+clear)+\b", r"\1", s, flags=re.I)
    if not s or not re.search(r"\w", s):
        return ""
    s = s[0].upper() + s[1:]
    if s[-1] not in ".!?":
        s += "."
    return s


def _article(article: str, first: str) -> str:
    cap = article[0].isupper()
    new = "an" if first.lower() in "aeiou" else "a"
    return (new.capitalize() if cap else new) + " " + first


# Clause boundaries inside a sentence: commas/semicolons (with a following conjunction) and " and/but there ...".
_CLAUSE_SPLIT = re.compile(
    r"(\s*[,;]\s*(?:(?:and|but|while|whereas|although|though|yet|so)\s+)?"
    r"|\s+(?:and|but|while|whereas)\s+(?=(?:there|it|the|a|an|this|its|they)\b))",
    re.I,
)
# A clause that hangs on the one before it ("which ...", "reducing ..."): it goes when that one goes.
_DEPENDENT = re.compile(r"^\s*(?:which|that|who|whose|where|especially|particularly|mainly|mostly|even|\w+ing)\b", re.I)


def _drop_weather_clauses(sentence: str) -> str:
    parts = _CLAUSE_SPLIT.split(sentence)
    clauses, seps = parts[0::2], [""] + parts[1::2]
    out: list[str] = []
    previous_dropped = False
    for clause, sep in zip(clauses, seps, strict=True):
        drop = bool(_ABOUT_WEATHER.search(clause)) or (previous_dropped and bool(_DEPENDENT.match(clause)))
        if not drop and clause.strip():
            out.append((sep if out else "") + clause)
        previous_dropped = drop
    return "".join(out)


def remove_weather_rules(text: str) -> str:
    """Rule-based weather-free rewrite of ``text`` (see the module docstring)."""
    kept = []
    for sentence in _SENTENCE.split(text.strip()):
        s = sentence
        for pattern, repl in _RULES:
            s = pattern.sub(repl, s)
        # What is still about weather (a weather noun, a visibility loss) goes clause by clause.
        s = _tidy(_drop_weather_clauses(s))
        if s:
            kept.append(s)
    return " ".join(kept) if kept else "A clear scene."


LLM_INSTRUCTION = (
    "Rewrite the following scene description so that it describes the same scene in clear weather: remove every "
    "mention of rain, fog, haze, mist, snow, clouds and their effects, and keep everything else unchanged. "
    "Answer with the rewritten description only."
)

_LLM_CACHE: dict[str, tuple[Any, Any]] = {}


def _llm_rewrite(text: str, llm: str, *, device: str, max_new_tokens: int) -> str:
    from vlmir.vlm.loading import load_causal_lm

    key = f"{llm}@{device}"
    if key not in _LLM_CACHE:
        _LLM_CACHE[key] = load_causal_lm(llm, device=device)
    model, tokenizer = _LLM_CACHE[key]
    request = f"{LLM_INSTRUCTION}\n\nDescription: {text}"
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                               tokenize=False)
    else:
        prompt = request + "\nRewritten:"
    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    import torch

    torch.manual_seed(0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return answer.strip().split("\n")[0].strip()


def remove_weather(
    text: str,
    llm: str | Callable[[str], str] | None = None,
    *,
    device: str = "cpu",
    max_new_tokens: int = 128,
) -> str:
    """The weather-free version of a scene description (WResVLM's positive text ``d_pos``).

    Args:
        text: a description, e.g. from :meth:`VisibilityRater.describe`.
        llm: ``None`` (default) for the rules; a transformers text-generation model (local folder or hub id,
            loaded offline first and cached) asked with :data:`LLM_INSTRUCTION` and greedy decoding; or a callable
            ``str -> str``.
        device: device of the LLM.
        max_new_tokens: longest LLM answer in tokens.

    Returns:
        The rewrite. When the LLM answers nothing, the rule-based rewrite is returned with a warning.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if llm is None:
        return remove_weather_rules(text)
    if callable(llm):
        answer = str(llm(text)).strip()
    elif isinstance(llm, str) and llm.strip():
        answer = _llm_rewrite(text, llm, device=device, max_new_tokens=max_new_tokens)
    else:
        raise ValueError(f"llm must be None, a model name/path or a callable, got {llm!r}")
    if not answer:
        warnings.warn("the LLM gave an empty rewrite; using the rule-based rewrite instead", stacklevel=2)
        return remove_weather_rules(text)
    return answer
