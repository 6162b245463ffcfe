"""The model registry: lookup by name, close-name hints, availability, and hub files that fail fast offline."""

import time

import pytest

from vlmir import registry
from vlmir.registry import ModelSpec, create_model, get_spec, hub_available, hub_file, list_models, register


def _spec(name, task="restorer", **kw):
    return ModelSpec(name=name, task=task, build=lambda device="cpu", **k: (name, device, k), **kw)


def test_register_lookup_and_patterns():
    register(_spec("zz-test-alpha"), overwrite=True)
    register(_spec("zz-test-beta", task="rater"), overwrite=True)
    assert "zz-test-alpha" in list_models("zz-test-*")
    assert list_models("zz-test-*", task="rater") == ["zz-test-beta"]
    assert create_model("zz-test-alpha", task="restorer", device="cuda", tile=64) == ("zz-test-alpha", "cuda", {"tile": 64})
    with pytest.raises(ValueError, match="already registered"):
        register(_spec("zz-test-alpha"))
    with pytest.raises(ValueError, match="task 'painter' is not one of"):
        register(_spec("zz-test-gamma", task="painter"))


def test_unknown_name_suggests_close_ones():
    register(_spec("zz-test-alpha"), overwrite=True)
    with pytest.raises(ValueError, match="Did you mean zz-test-alpha"):
        get_spec("zz-test-alpah")
    with pytest.raises(ValueError, match="unknown rater 'zz-test-alpha'"):
        get_spec("zz-test-alpha", task="rater")  # exists, but not as a rater


def test_unavailable_model_says_why():
    register(_spec("zz-test-off", available=lambda: (False, "weights x/y.pt are not cached")), overwrite=True)
    with pytest.raises(RuntimeError, match="not available: weights x/y.pt are not cached"):
        create_model("zz-test-off")
    # explicit weights bypass the default-source check; the builder gets them
    assert create_model("zz-test-off", weights_dir="/w") == ("zz-test-off", "cpu", {"weights_dir": "/w"})


def test_hub_file_offline_fails_fast_naming_repo_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        hub_file("weblzw/daclip-uir-ViT-B-32-irsde", "daclip_ViT-B-32.pt")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "weblzw/daclip-uir-ViT-B-32-irsde" in msg and "daclip_ViT-B-32.pt" in msg and "offline" in msg
    ok, reason = hub_available("weblzw/daclip-uir-ViT-B-32-irsde", "daclip_ViT-B-32.pt")
    assert not ok and "offline" in reason


def test_hub_file_prefers_a_local_dir(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"123")
    assert hub_file("some/repo", "w.pt", local_dir=tmp_path) == tmp_path / "w.pt"


def test_hub_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not registry.hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert registry.hub_offline()
