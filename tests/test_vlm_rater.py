"""Tests of the VLM rater registry specs and load_rater (names, local folders, the HF cache, offline errors)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from vlmir.registry import create_model, get_spec, list_models
from vlmir.vlm.rater import HUB_VLMS, load_rater, vlm_available
from vlmir.vlm.tiny import save_tiny_llava
from vlmir.vlm.visibility import VisibilityRater

REPO = "vlmir-tests/tiny-llava"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava-rater"), seed=1)


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch, tiny_dir) -> Path:
    """A Hugging Face hub cache holding REPO (the tiny model) as one snapshot, and nothing else."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


def test_specs_are_registered():
    names = list_models(task="rater")
    for want in ("llava-1.5-7b", "llava-onevision-0.5b", "smolvlm-256m"):
        assert want in names
    spec = get_spec("llava-1.5-7b", task="rater")
    assert spec.source == "hf:llava-hf/llava-1.5-7b-hf"
    assert spec.extra["repo_id"] == "llava-hf/llava-1.5-7b-hf"
    assert {v.repo_id for v in HUB_VLMS} >= {"llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "HuggingFaceTB/SmolVLM-256M-Instruct"}


def test_availability_offline_not_cached(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok, why = get_spec("llava-1.5-7b").availability()
    assert not ok and "llava-hf/llava-1.5-7b-hf" in why and "offline" in why
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="llava-hf/llava-1.5-7b-hf"):
        load_rater("llava-1.5-7b")
    assert time.perf_counter() - t0 < 5.0
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    ok, why = vlm_available("llava-hf/llava-1.5-7b-hf", 14.1)
    assert ok and "downloaded on first use" in why


def test_hub_id_loads_from_the_local_cache_offline(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert vlm_available(REPO) == (True, "")
    r = load_rater(REPO)  # a hub id that is not registered: loaded from the cache, no network
    assert isinstance(r, VisibilityRater) and r.name == REPO
    ref = VisibilityRater.from_pretrained(hf_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" /
                                          "0123456789abcdef0123456789abcdef01234567")
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert r.rate(x)["score"] == pytest.approx(ref.rate(x)["score"], abs=1e-9)


def test_load_rater_local_folder(tiny_dir):
    r = load_rater(str(tiny_dir), prompt="quality")
    assert isinstance(r, VisibilityRater)
    assert r.name == str(tiny_dir) and r.random_weights is True  # the tiny folder's config says so
    assert "Rate the quality of the image." in r.prompt_text
    out = r.rate(torch.full((1, 3, 16, 16), 0.5))
    assert set(out) == {"score", "vlm_vis", "probs"} and 1 <= out["score"] <= 5


def test_registry_builder_passes_kwargs(hf_cache, monkeypatch):
    from vlmir.registry import ModelSpec, register
    from vlmir.vlm.rater import HubVLM, _availability, _builder

    vlm = HubVLM("tiny-llava-test", REPO, "test", "apache-2.0", 0.0)
    register(ModelSpec(name=vlm.name, task="rater", build=_builder(vlm), source=f"hf:{REPO}",
                       available=_availability(vlm)), overwrite=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = create_model("tiny-llava-test", task="rater", prompt="quality", random_weights=True)
    assert r.name == "tiny-llava-test" and r.random_weights is True
    assert r.question.startswith("Rate the quality")


def test_load_rater_bad_names(tmp_path):
    with pytest.raises(ValueError, match="unknown rater 'llava-1.5-7'.*Did you mean.*llava-1.5-7b"):
        load_rater("llava-1.5-7")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_rater(str(tmp_path / "missing" / "model"))
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_rater(str(tmp_path / "nocfg"))


def test_incomplete_cache_snapshot_is_a_clear_error(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = hf_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (snap / "model.safetensors").unlink()  # config.json cached, weights not
    with pytest.raises(FileNotFoundError, match=r"'vlmir-tests/tiny-llava' .* is incomplete.*hf download vlmir-tests/tiny-llava"):
        load_rater(REPO)


def test_random_weights_flag_comes_from_the_config(tiny_dir, tmp_path):
    import json

    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    cfg = json.loads((plain / "config.json").read_text())
    assert cfg.pop("vlmir_random_weights") is True
    (plain / "config.json").write_text(json.dumps(cfg))
    assert load_rater(str(plain)).random_weights is False
    assert load_rater(str(plain), random_weights=True).random_weights is True
