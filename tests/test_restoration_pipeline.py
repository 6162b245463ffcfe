"""DaCLIPRestorationPipeline: end-to-end on the tiny reference models, seeds, tiling, registry entries offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vlmir.models.irsde_unet import ConditionalUNet
from vlmir.pipelines import restoration as R
from vlmir.pipelines.restoration import DaCLIPRestorationPipeline, clip_transform
from vlmir.schedulers.irsde import IRSDEScheduler

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "daclip_reference"
REPO = Path(__file__).resolve().parents[1]


def _need_fixture():
    if not (FIXTURE / "tiny_a_daclip_trainckpt.pt").is_file():
        pytest.skip(f"reference fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def meta():
    _need_fixture()
    return json.loads((FIXTURE / "tiny_a_meta.json").read_text())


@pytest.fixture(scope="module")
def models(meta):
    from vlmir.models.daclip import DaCLIP

    daclip = DaCLIP.from_pretrained(FIXTURE / "tiny_a_daclip_trainckpt.pt", clip_config=meta["clip_cfg"])
    unet = ConditionalUNet.from_pretrained(FIXTURE / "tiny_a_unet.safetensors", **meta["unet_cfg"])
    return daclip, unet


@pytest.fixture()
def pipe(models):
    daclip, unet = models
    return DaCLIPRestorationPipeline(daclip, unet, IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005))


def _image(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear")


class _Calls:
    """Forward hook recording the (H, W) of every UNet call."""

    def __init__(self, module):
        self.sizes = []
        self.handle = module.register_forward_hook(lambda m, args, out: self.sizes.append(tuple(args[0].shape[-2:])))

    def close(self):
        self.handle.remove()


def test_clip_transform_values():
    # constant colour: resize/crop keep it; uint8 truncation then OpenAI mean/std, as the original clip_transform
    x = torch.full((1, 3, 30, 50), 0.5)
    y = clip_transform(x, 64)
    assert y.shape == (1, 3, 64, 64)
    want = (torch.tensor([127 / 255] * 3) - torch.tensor(R.CLIP_MEAN)) / torch.tensor(R.CLIP_STD)
    assert torch.allclose(y[0, :, 10, 10], want, atol=1e-6)


def test_tensor_preprocess_close_to_original(models):
    daclip, unet = models
    x = _image(80, 120)
    a = DaCLIPRestorationPipeline(daclip, unet).encode(x)
    b = DaCLIPRestorationPipeline(daclip, unet, preprocess="tensor").encode(x)
    for u, v in zip(a, b, strict=True):
        assert nn.functional.cosine_similarity(u, v).item() > 0.99
        assert not torch.equal(u, v)  # 8-bit rounding and the resampler differ slightly
    with pytest.raises(ValueError, match="preprocess"):
        DaCLIPRestorationPipeline(daclip, unet, preprocess="pil")


def test_matches_explicit_loop_and_seeds(pipe, models):
    daclip, unet = models
    x = _image()
    out = pipe(x, steps=3, seed=7)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    # the loop the pipeline is documented to run, written out
    s = IRSDEScheduler()
    s.set_timesteps(3)
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        image_ctx, degra_ctx = daclip.encode_image(clip_transform(x, daclip.image_size), control=True)
        x_t = x + (50 / 255) * torch.randn(x.shape, generator=g)
        for t in s.timesteps:
            eps = unet(x_t, x, int(t), text_context=degra_ctx, image_context=image_ctx)
            x_t = s.step(eps, t, x_t, mu=x, variance_noise=torch.randn(x.shape, generator=g)).prev_sample
    assert (out - x_t.clamp(0, 1)).abs().max().item() <= 1e-5
    # seeds: same seed -> same output; another seed -> another output; an explicit generator = the seed
    assert torch.equal(pipe(x, steps=3, seed=7), out)
    assert not torch.equal(pipe(x, steps=3, seed=8), out)
    assert torch.equal(pipe(x, steps=3, generator=torch.Generator().manual_seed(7)), out)


def test_fast_equals_port(models):
    daclip, unet = models
    x = _image()
    try:
        port = DaCLIPRestorationPipeline(daclip, unet, fast=False)(x, steps=4, seed=1, mode="sde")
        fast = DaCLIPRestorationPipeline(daclip, unet, fast=True)(x, steps=4, seed=1, mode="sde")
    finally:
        unet.set_fast(True)
    assert (port - fast).abs().max().item() <= 1e-4


def test_steps_progress_and_modes(pipe, models):
    calls = _Calls(models[1])
    seen = []
    try:
        y = pipe.restore(_image(), steps=5, seed=0, progress=lambda i, n: seen.append((i, n)))
    finally:
        calls.close()
    assert len(calls.sizes) == 5 and seen == [(i, 5) for i in range(1, 6)]
    wrapped = []
    pipe.restore(_image(), steps=2, progress=lambda it: (wrapped.append(int(t)) or t for t in it))
    assert wrapped == [100, 1]
    sde = pipe(_image(), steps=5, seed=0, mode="sde")
    assert y.shape == sde.shape and not torch.equal(y, sde)


def test_tile_covering_image_is_exact(pipe):
    x = _image(40, 56)  # odd size: reflect padding inside the UNet
    assert torch.equal(pipe(x, steps=2, seed=3), pipe(x, steps=2, seed=3, tile=64))


def test_tiled_noise_prediction_close(pipe, models):
    x = _image(64, 96)
    g = torch.Generator().manual_seed(0)
    x_t = x + 0.2 * torch.randn(x.shape, generator=g)
    ctx = pipe.encode(x)
    cache = models[1].prepare_context(ctx[1], ctx[0])
    calls = _Calls(models[1])
    with torch.inference_mode():
        full = pipe.predict_noise(x_t, x, 50, ctx, cache)
        tiled = pipe.predict_noise(x_t, x, 50, ctx, cache, tile=64, tile_overlap=32)
    calls.close()
    assert calls.sizes == [(64, 96), (64, 64), (64, 64)]
    err = (tiled - full).abs()
    assert err.max().item() < 0.02 * full.abs().max().item()
    assert err.mean().item() < 1e-3 * full.abs().mean().item() * 10
    # the whole pipeline with real tiles stays close to untiled (a random UNet amplifies rare pixels)
    y = pipe(x[..., :32, :48], steps=3, seed=0)
    yt = pipe(x[..., :32, :48], steps=3, seed=0, tile=32, tile_overlap=16)
    assert (y - yt).abs().mean().item() < 5e-3


class _Pointwise(nn.Module):
    """A stand-in 'UNet' with no spatial context: tiling must then reproduce the untiled output exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))

    def set_fast(self, fast=True):
        return self

    def prepare_context(self, text_context=None, image_context=None):
        return None

    def forward(self, xt, cond, t, text_context=None, image_context=None, context=None):
        return self.w * (xt - cond) + 0.01 * t


def test_blending_is_exact_for_a_pointwise_model(models):
    pipe = DaCLIPRestorationPipeline(models[0], _Pointwise(), fast=False)
    x = _image(100, 150)
    a = pipe(x, steps=3, seed=0)
    for tile, ov in ((64, 32), (48, 16), (40, 8)):  # irregular last tiles on both axes
        assert (pipe(x, steps=3, seed=0, tile=tile, tile_overlap=ov) - a).abs().max().item() <= 1e-5
    w = R._ramp(64, 32, left=True, right=True)
    assert torch.allclose(w[32:] + R._ramp(64, 32, left=True, right=False)[:32], torch.ones(32, dtype=w.dtype))
    assert R._tile_starts(150, 64, 32) == [0, 32, 64, 86]


def test_memory_bounded_tiles_on_large_image(models, monkeypatch):
    small = ConditionalUNet(in_nc=3, out_nc=3, nf=32, ch_mult=[1, 1], context_dim=32, use_image_context=False)
    pipe = DaCLIPRestorationPipeline(models[0], small)
    calls = _Calls(small)
    monkeypatch.setattr(R, "AUTO_TILE_PIXELS", 96 * 96)
    monkeypatch.setattr(R, "DEFAULT_TILE", 64)
    y = pipe(_image(160, 224), steps=1, seed=0)  # tile=None: auto-tiled because the image is "large"
    calls.close()
    assert y.shape == (1, 3, 160, 224) and torch.isfinite(y).all()
    assert max(h * w for h, w in calls.sizes) == 64 * 64 and len(calls.sizes) == 4 * 6  # starts 0,32,64,96 x 0,32,...,160


@pytest.mark.slow
def test_4000x3000_photo_within_fixed_memory(meta, tmp_path):
    """A 12 MP photo through a tiny real UNet, tiled; the peak RSS stays far below one untiled activation map."""
    script = f"""
import json, resource, torch
from vlmir.models.daclip import DaCLIP
from vlmir.models.irsde_unet import ConditionalUNet
from vlmir.pipelines.restoration import DaCLIPRestorationPipeline
meta = json.loads(open({str(FIXTURE / 'tiny_a_meta.json')!r}).read())
d = DaCLIP.from_pretrained({str(FIXTURE / 'tiny_a_daclip_trainckpt.pt')!r}, clip_config=meta['clip_cfg'])
u = ConditionalUNet(in_nc=3, out_nc=3, nf=32, ch_mult=[1, 1], context_dim=32, use_image_context=False)
x = torch.rand(1, 3, 3000, 4000)
y = DaCLIPRestorationPipeline(d, u)(x, steps=1, seed=0, tile=512)
assert y.shape == x.shape
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=1800,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    peak_mib = float(r.stdout.strip().splitlines()[-1])
    # one untiled fp32 activation map of 32 channels at 12 MP is 1.5 GiB; the UNet holds several at once
    assert peak_mib < 2500, peak_mib


def test_bad_inputs(pipe):
    x = _image()
    with pytest.raises(ValueError, match="mode"):
        pipe(x, mode="ode")
    with pytest.raises(ValueError, match="steps"):
        pipe(x, steps=0)
    with pytest.raises(ValueError, match="tile"):
        pipe(x, tile=8)
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        pipe(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        pipe((x * 255).to(torch.uint8))


# ---------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------


def test_registered_and_unavailable_offline(monkeypatch, tmp_path):
    from vlmir.registry import create_model, get_spec, list_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMIR_DACLIP_DIR", str(tmp_path))  # an empty local folder
    assert {"daclip", "daclip-mix"} <= set(list_models(task="restorer"))
    assert "daclip-classifier" in list_models(task="classifier")
    spec = get_spec("daclip")
    assert spec.extra["diffusion"] is True and spec.extra["default_steps"] == 100
    assert "weblzw/daclip-uir-ViT-B-32-irsde/universal-ir.pth" in spec.source
    assert "universal-ir-mix.pth" in get_spec("daclip-mix").source
    t0 = time.perf_counter()
    ok, reason = spec.availability()
    assert not ok and "weblzw/daclip-uir-ViT-B-32-irsde/daclip_ViT-B-32.pt" in reason and str(tmp_path) in reason
    with pytest.raises(RuntimeError, match="weblzw/daclip-uir-ViT-B-32-irsde"):
        create_model("daclip", task="restorer")
    # the builder itself, offline, fails at once naming repo and file
    with pytest.raises(FileNotFoundError, match="daclip-uir-ViT-B-32-irsde/daclip_ViT-B-32_mix.pt"):
        get_spec("daclip-mix").build()
    assert time.perf_counter() - t0 < 10


def _official_files(folder: Path, clip_name: str, unet_name: str) -> None:
    """Write the fixture weights in the official release formats: an open_clip training checkpoint (dict with
    epoch/name/state_dict, keys prefixed ``module.``) and a plain UNet state dict ``.pth``."""
    from safetensors.torch import load_file

    ckpt = torch.load(FIXTURE / "tiny_a_daclip_trainckpt.pt", map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    torch.save({"epoch": 30, "name": "daclip_ViT-B-32", "state_dict": sd}, folder / clip_name)
    torch.save(load_file(str(FIXTURE / "tiny_a_unet.safetensors")), folder / unet_name)


def test_create_model_from_local_official_files(meta, monkeypatch, tmp_path):
    from vlmir.registry import create_model

    _official_files(tmp_path, "daclip_ViT-B-32.pt", "universal-ir.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMIR_DACLIP_DIR", str(tmp_path))
    cfg = {"clip_config": meta["clip_cfg"], "unet_config": meta["unet_cfg"]}
    model = create_model("daclip", task="restorer", **cfg)
    assert model.name == "daclip" and model.random_weights is False
    x = _image()
    y = model.restore(x, steps=2, seed=0, tile=None, progress=None)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    # an explicit folder (without the environment variable) gives the same model
    monkeypatch.delenv("VLMIR_DACLIP_DIR")
    other = R.build_restorer(weights_dir=tmp_path, **cfg)
    assert torch.equal(other.restore(x, steps=2, seed=0), y)
    # the classifier entry over the same DA-CLIP checkpoint
    clf = R.build_classifier(weights_dir=tmp_path, clip_config=meta["clip_cfg"])
    probs = clf.classify(x)
    assert clf.name == "daclip-classifier" and len(probs) == 10
    assert abs(sum(probs.values()) - 1) < 1e-5 and "noisy" in probs


def test_cli_restores_with_daclip_from_a_weights_dir_in_official_formats(meta, monkeypatch, tmp_path, capsys):
    """``python -m vlmir restore --model daclip --weights-dir D``: official file names and formats, sizes given by
    ``<file>.json`` sidecars; the PNG equals the pipeline's own output, and offline without the folder it says why."""
    from PIL import Image

    from vlmir.commands import main
    from vlmir.io import load_image, save_image

    wdir = tmp_path / "weights"
    wdir.mkdir()
    _official_files(wdir, "daclip_ViT-B-32.pt", "universal-ir.pth")
    (wdir / "daclip_ViT-B-32.pt.json").write_text(json.dumps(meta["clip_cfg"]))
    (wdir / "universal-ir.pth.json").write_text(json.dumps(meta["unet_cfg"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMIR_DACLIP_DIR", str(tmp_path / "empty"))
    src = save_image(_image(40, 56), tmp_path / "in.png")
    rc = main(["restore", str(src), "--model", "daclip", "--weights-dir", str(wdir), "--steps", "3", "--seed", "5",
               "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    out = tmp_path / "out" / "in.png"
    assert Image.open(out).size == (56, 40)
    pipe = R.build_restorer(weights_dir=wdir)  # the sidecars again, through the Python API
    expect = pipe.restore(load_image(src), steps=3, seed=5)
    assert torch.allclose(load_image(out), (expect * 255).round() / 255, atol=1 / 255 + 1e-6)
    clf = R.build_classifier(weights_dir=wdir)
    assert abs(sum(clf.classify(load_image(src)).values()) - 1) < 1e-5
    # a broken sidecar is a clear error, not a crash deep inside the model
    (wdir / "universal-ir.pth.json").write_text("{nope")
    with pytest.raises(ValueError, match="universal-ir.pth.json is not valid JSON"):
        R.build_restorer(weights_dir=wdir)
    # offline and no folder: the message names the file and the flag
    capsys.readouterr()
    rc = main(["restore", str(src), "--model", "daclip", "--out-dir", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 1 and "daclip_ViT-B-32.pt" in err and "--weights-dir" in err
