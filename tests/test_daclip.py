"""DA-CLIP (vlmir.models.daclip) against the reference fixture of the original implementation, plus loading rules.

The fixture (``../shared/fixtures/daclip_reference``) was produced by the paper's code (open_clip 2.20 fork) with
small random weights; outputs must match to 1e-4 max abs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmir.models.daclip import (
    DEGRADATIONS,
    OPENAI_MEAN,
    OPENAI_STD,
    DaCLIP,
    DaCLIPClassifier,
    infer_clip_config,
    load_checkpoint_file,
    normalize_state_dict,
    preprocess,
)

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "daclip_reference"
CKPT = FIXTURE / "tiny_a_daclip_trainckpt.pt"
TOL = 1e-4

needs_fixture = pytest.mark.skipif(not CKPT.is_file(), reason=f"DA-CLIP reference fixture not found at {FIXTURE}")


@dataclass
class Disallowed:  # a global that is not on the loader's allow-list
    x: int = 1


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "tiny_a_meta.json").read_text())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k[len("daclip.") :]: v
        for k, v in load_file(str(FIXTURE / "tiny_a_io.safetensors")).items()
        if k.startswith("daclip.")
    }


@pytest.fixture(scope="module")
def model(meta) -> DaCLIP:
    return DaCLIP.from_pretrained(CKPT, clip_config=meta["clip_cfg"])


def _outputs(m: DaCLIP, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        image_context, degra_context = m.encode_image(io["image"], control=True)
        return {
            "image_context": image_context,
            "degra_context": degra_context,
            "plain_image_features": m.encode_image(io["image"], control=False),
            "text_features": m.encode_text(io["tokens"]),
            "degradation_probs": m.classify(io["image"]),
        }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# parity with the reference
# ---------------------------------------------------------------------------------------------------------------


@needs_fixture
def test_official_checkpoint_loads_without_missing_or_unexpected_keys(model, meta):
    ckpt = load_checkpoint_file(CKPT)
    assert set(ckpt) >= {"epoch", "name", "state_dict"}
    raw = ckpt["state_dict"]
    assert all(k.startswith("module.") for k in raw)
    sd = normalize_state_dict(ckpt)
    own = model.state_dict()
    assert set(sd) == set(own)
    # every visual.* alias is dropped, clip.visual.* kept: 169 raw keys = model keys + alias keys
    n_alias = sum(k.startswith("module.visual.") for k in raw)
    assert n_alias > 0 and len(raw) == len(own) + n_alias
    for k, v in sd.items():
        assert torch.equal(own[k], v), k
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.visual_control.parameters())


@needs_fixture
def test_outputs_match_reference(model, io):
    got = _outputs(model, io)
    for name, value in got.items():
        assert value.shape == io[name].shape, name
        assert _max_diff(value, io[name]) <= TOL, (name, _max_diff(value, io[name]))
    # the reference probabilities are confident: same argmax per image
    assert got["degradation_probs"].argmax(-1).tolist() == io["degradation_probs"].argmax(-1).tolist()
    assert torch.allclose(got["degradation_probs"].sum(-1), torch.ones(2))


@needs_fixture
def test_control_changes_content_and_hidden_order_is_reversed(model, io):
    """The controller matters (content != plain), and only the reversed (pop) order reproduces the reference."""
    image = io["image"]
    assert _max_diff(io["image_context"], io["plain_image_features"]) > 1e-2
    from vlmir.models.daclip import _tower_embed, _tower_pool

    with torch.no_grad():
        ctrl = model.visual_control
        _, hiddens = ctrl.transformer(_tower_embed(ctrl, image))
        x = _tower_embed(model.clip.visual, image)
        for i, block in enumerate(model.clip.visual.transformer.resblocks):
            x = block(x) + hiddens[i]  # forward order: NOT what the original does
        forward_order = _tower_pool(model.clip.visual, x)
    assert _max_diff(forward_order, io["image_context"]) > 1e-2


@needs_fixture
def test_normalize_and_forward(model, io):
    with torch.no_grad():
        c, d = model.encode_image(io["image"], normalize=True)
        out = model(io["image"], torch.cat([io["tokens"][:2], io["tokens"][2:4]], dim=-1))
    torch.testing.assert_close(c, torch.nn.functional.normalize(io["image_context"], dim=-1), atol=TOL, rtol=0)
    torch.testing.assert_close(d, torch.nn.functional.normalize(io["degra_context"], dim=-1), atol=TOL, rtol=0)
    torch.testing.assert_close(out["image_degra_features"], d)
    text = torch.nn.functional.normalize(io["text_features"], dim=-1)
    torch.testing.assert_close(out["text_features"], text[:2], atol=TOL, rtol=0)
    torch.testing.assert_close(out["text_degra_features"], text[2:4], atol=TOL, rtol=0)
    assert out["logit_scale"].item() == pytest.approx(model.logit_scale.exp().item())


@needs_fixture
def test_tokenizer_matches_fixture_tokens(model, io, meta):
    assert tuple(meta["degradations"]) == DEGRADATIONS
    assert torch.equal(model.tokenize(DEGRADATIONS), io["tokens"])


def test_fresh_controller_is_a_no_op():
    """Zero-initialised linears: at initialisation the controlled CLIP equals the plain CLIP (ControlNet property)."""
    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    }
    m = DaCLIP(**cfg).eval()
    assert m.config == {**cfg, "quick_gelu": False}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        c, d = m.encode_image(x)
        plain = m.encode_image(x, control=False)
    torch.testing.assert_close(c, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(d, plain, atol=1e-6, rtol=0)  # the controller starts as a copy of the tower
    assert c.abs().max() > 0.1
    for z in m.visual_control.transformer.zero_modules:
        assert z.bias is not None and z.weight.abs().sum() == 0 and z.bias.abs().sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# formats: convert, plain state dicts, safetensors
# ---------------------------------------------------------------------------------------------------------------


@needs_fixture
def test_convert_round_trip_gives_identical_outputs(model, io, meta, tmp_path, capsys):
    from vlmir.commands import main

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(meta["clip_cfg"]))
    out = tmp_path / "converted"
    assert main(["convert", str(CKPT), "--out", str(out), "--config", str(cfg_file)]) == 0
    assert "round trip verified" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["vision_cfg"]["head_width"] == 32 and saved_cfg["_class_name"] == "DaCLIP"
    ref = _outputs(model, io)
    for src in (out, out / "model.safetensors"):  # folder, or the file with config.json beside it
        got = _outputs(DaCLIP.from_pretrained(src), io)
        for k in ref:
            assert torch.equal(got[k], ref[k]), k


@needs_fixture
def test_convert_errors(tmp_path):
    from vlmir.commands import main

    assert main(["convert", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o")]) == 1
    assert main(["convert", str(CKPT), "--out", str(tmp_path / "o"), "--config", "not-a-model"]) == 1
    assert not (tmp_path / "o").exists()


@needs_fixture
@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dict_loading(model, io, meta, tmp_path, prefix):
    path = tmp_path / "plain.pth"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    m = DaCLIP.from_pretrained(path, clip_config=meta["clip_cfg"])
    got = _outputs(m, io)
    assert _max_diff(got["image_context"], io["image_context"]) <= TOL
    assert _max_diff(got["degra_context"], io["degra_context"]) <= TOL


@needs_fixture
def test_missing_unexpected_and_misshaped_keys_raise(model, meta):
    sd = dict(model.state_dict())
    gone = sd.pop("visual_control.transformer.zero_modules.1.weight")
    with pytest.raises(ValueError, match=r"1 missing .*visual_control\.transformer\.zero_modules\.1\.weight"):
        DaCLIP(**meta["clip_cfg"]).load_weights(sd)
    sd["visual_control.transformer.zero_modules.1.weight"] = gone
    sd["clip.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 unexpected .*clip\.extra_head\.weight"):
        DaCLIP(**meta["clip_cfg"]).load_weights(sd)
    del sd["clip.extra_head.weight"]
    bad_cfg = json.loads(json.dumps(meta["clip_cfg"]))
    bad_cfg["embed_dim"] = 16
    with pytest.raises(ValueError, match="wrong shape"):
        DaCLIP(**bad_cfg).load_weights(sd)
    # an alias visual.* that disagrees with clip.visual.* is refused
    sd2 = {("module." + k): v for k, v in sd.items()}
    sd2["module.visual.proj"] = sd["clip.visual.proj"] + 1
    with pytest.raises(ValueError, match="alias"):
        normalize_state_dict({"state_dict": sd2})


def test_bad_config_and_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown DaCLIP config keys"):
        DaCLIP.from_pretrained(tmp_path, clip_config={"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}, "bogus": 1})
    with pytest.raises(FileNotFoundError, match="not found"):
        DaCLIP.from_pretrained(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        DaCLIP.from_model_name("ViT-Q-99")


# ---------------------------------------------------------------------------------------------------------------
# config inference, official layout
# ---------------------------------------------------------------------------------------------------------------


@needs_fixture
def test_official_layout_infers_vit_b_32_and_matches_exactly():
    import open_clip

    layout = json.loads((FIXTURE / "official_key_layout.json").read_text())["daclip_ViT-B-32"]
    assert len(layout) == 631
    sd = {"module." + k: torch.empty(shape, device="meta") for k, shape in layout.items()}  # shapes only
    cfg = infer_clip_config({"epoch": 1, "state_dict": sd})
    assert cfg == open_clip.get_model_config("ViT-B-32")
    with torch.device("meta"):
        m = DaCLIP(**cfg)
    own = {k: list(v.shape) for k, v in m.state_dict().items()}
    official = {k: list(v) for k, v in layout.items() if not k.startswith("visual.")}
    assert own == official
    # the dropped keys are exactly the visual.* alias of clip.visual.*
    alias = {k for k in layout if k.startswith("visual.")}
    assert len(alias) == 152 and {"clip." + k for k in alias} == {k for k in own if k.startswith("clip.visual.")}
    assert len(m.visual_control.transformer.zero_modules) == 12
    assert m.image_size == 224 and m.context_length == 77


@needs_fixture
def test_tiny_checkpoint_inference_up_to_heads(meta):
    """Shapes give everything but the head count (assumed 64-wide, documented); the fixture uses 32-wide heads."""
    cfg = infer_clip_config(load_checkpoint_file(CKPT))
    ref = json.loads(json.dumps(meta["clip_cfg"]))
    assert ref["vision_cfg"].pop("head_width") == 32
    assert cfg == ref


# ---------------------------------------------------------------------------------------------------------------
# safe loading and offline behaviour
# ---------------------------------------------------------------------------------------------------------------


@needs_fixture
def test_disallowed_global_is_refused_and_plain_extras_are_allowed(model, tmp_path):
    sd = model.state_dict()
    bad = tmp_path / "bad.pt"
    torch.save({"epoch": 1, "state_dict": sd, "extra": Disallowed()}, bad)
    with pytest.raises(ValueError, match=r"refusing to load .*Disallowed"):
        DaCLIP.from_pretrained(bad)
    ok = tmp_path / "ok.pt"
    extras = {
        "args": argparse.Namespace(lr=1e-4, model="daclip_ViT-B-32"),
        "best": np.float64(0.5),
        "arr": np.arange(3),
    }
    torch.save({"epoch": 2, "name": "x", "state_dict": {"module." + k: v for k, v in sd.items()}, **extras}, ok)
    ckpt = load_checkpoint_file(ok)
    assert ckpt["args"].lr == 1e-4 and float(ckpt["best"]) == 0.5 and ckpt["arr"].tolist() == [0, 1, 2]
    m = DaCLIP.from_pretrained(ok, clip_config=model.config)
    assert torch.equal(m.logit_scale, model.logit_scale)


def test_offline_registry_name_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        DaCLIP.from_pretrained("daclip")
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "weblzw/daclip-uir-ViT-B-32-irsde" in msg and "daclip_ViT-B-32.pt" in msg
    from vlmir.models.daclip import availability

    ok, reason = availability("daclip")
    assert ok is False and "daclip_ViT-B-32.pt" in reason and "offline" in reason
    with pytest.raises(ValueError, match="unknown DaCLIP weights"):
        availability("nope")


# ---------------------------------------------------------------------------------------------------------------
# preprocessing and the registry classifier
# ---------------------------------------------------------------------------------------------------------------


def test_preprocess_matches_torchvision_resize_crop_normalize():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    torch.manual_seed(0)
    x = torch.rand(1, 3, 300, 450)
    got = preprocess(x, 224)
    ref = TF.resize(x, 224, interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    assert tuple(ref.shape[-2:]) == (224, 336)
    ref = TF.normalize(TF.center_crop(ref, 224), OPENAI_MEAN, OPENAI_STD)
    assert got.shape == (1, 3, 224, 224)
    assert _max_diff(got, ref) < 1e-5
    # a constant image maps to (c - mean) / std exactly; small images are upsampled
    flat = preprocess(torch.full((2, 3, 20, 30), 0.5), 64)
    assert flat.shape == (2, 3, 64, 64)
    expected = (0.5 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    torch.testing.assert_close(flat[1, :, 10, 10], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("size", [(300, 450), (40, 30)])
def test_preprocess_exact_is_the_original_pil_transform(size):
    """exact=True is the original's clip_transform (uint8 truncation, PIL bicubic); the fast path is close to it."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    torch.manual_seed(2)
    x = torch.rand(1, 3, *size)
    original = Compose(
        [
            Resize(64, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(64),
            ToTensor(),
            Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    np_image = x[0].permute(1, 2, 0).numpy()
    ref = original(Image.fromarray((np_image * 255).astype(np.uint8)))[None]
    exact = preprocess(x, 64, exact=True)
    assert _max_diff(exact, ref) < 1e-6
    fast = preprocess(x, 64)
    assert (fast - ref).abs().mean().item() < 3 / 255 / min(OPENAI_STD)


@needs_fixture
def test_classifier_contract(model):
    clf = DaCLIPClassifier(model, name="daclip-tiny", random_weights=True)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 80, 100)
    probs = clf.classify(x)
    assert list(probs) == list(DEGRADATIONS)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    ref = model.classify(model.preprocess(x))[0]
    assert [probs[k] for k in DEGRADATIONS] == pytest.approx(ref.tolist(), abs=1e-6)
    assert clf.name == "daclip-tiny" and clf.random_weights is True
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        clf.classify(torch.rand(2, 3, 64, 64))


@pytest.mark.gpu
@needs_fixture
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_on_cuda(meta, io):
    m = DaCLIP.from_pretrained(CKPT, clip_config=meta["clip_cfg"], device="cuda")
    got = _outputs(m, {k: v.cuda() for k, v in io.items()})
    for name, value in got.items():
        assert value.is_cuda
        assert _max_diff(value, io[name]) <= TOL, name


@needs_fixture
def test_convert_unet_kind(meta, tmp_path):
    """``--kind unet`` goes through ConditionalUNet (vlmir.models.irsde_unet) and keeps every tensor."""
    unet_mod = pytest.importorskip("vlmir.models.irsde_unet", reason="ConditionalUNet not present in this tree")
    from safetensors.torch import load_file

    from vlmir.commands import main

    src = FIXTURE / "tiny_a_unet.safetensors"
    out = tmp_path / "unet"
    assert (
        main(["convert", str(src), "--out", str(out), "--kind", "unet", "--config", json.dumps(meta["unet_cfg"])]) == 0
    )
    assert json.loads((out / "config.json").read_text())["nf"] == meta["unet_cfg"]["nf"]
    ref, got = load_file(str(src)), load_file(str(out / "model.safetensors"))
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    assert isinstance(unet_mod.ConditionalUNet.from_pretrained(out), torch.nn.Module)
