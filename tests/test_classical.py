"""Tests for the classical, weight-free restorer (vlmir.models.classical).

Real photographs from ``skimage.data`` degraded by the project's degradation engine; each restoration path must
raise the PSNR by a measured margin. Building blocks are checked against direct reference computations.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from vlmir.degradations import degrade
from vlmir.models import classical as C
from vlmir.registry import create_model, get_spec, list_models


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Two real photos, downscaled to 256 px wide for speed, float32 (H, W, 3) in [0, 1]."""
    out = {}
    for name in ("astronaut", "coffee"):
        a = getattr(data, name)()
        h, w = a.shape[:2]
        a = cv2.resize(a, (256, round(256 * h / w)), interpolation=cv2.INTER_AREA)
        out[name] = a.astype(np.float32) / 255.0
    return out


def _gain(photos: dict[str, np.ndarray], kind: str, severity: int, fn=None) -> list[float]:
    fn = fn or C.METHODS[kind]
    out = []
    for seed, img in enumerate(photos.values()):
        lq, meta = degrade(img, kind, severity, seed=seed)
        assert meta["types"] == [kind]
        rest = fn(lq)
        assert rest.shape == img.shape and rest.dtype == np.float32
        assert 0.0 <= rest.min() and rest.max() <= 1.0
        out.append(_psnr(img, rest) - _psnr(img, lq))
    return out


# --------------------------------------------------------------------------------------------------- guided filter
def _guided_filter_bruteforce(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Direct transcription of He et al. (2013) Eqs. (7)-(8)/(14): per window k (cut at the border), solve the
    ridge regression p ~ a_k^T I + b_k, then average a_k, b_k over the windows containing each pixel."""
    h, w = p.shape
    g = guide.reshape(h, w, -1).astype(np.float64)
    c = g.shape[2]
    a = np.zeros((h, w, c))
    b = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            gi = g[win].reshape(-1, c)
            pi = p[win].reshape(-1)
            mu = gi.mean(0)
            cov = (gi - mu).T @ (gi - mu) / len(pi)
            cip = (gi * pi[:, None]).mean(0) - mu * pi.mean()
            a[y, x] = np.linalg.solve(cov + eps * np.eye(c), cip)
            b[y, x] = pi.mean() - a[y, x] @ mu
    q = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            q[y, x] = a[win].reshape(-1, c).mean(0) @ g[y, x] + b[win].mean()
    return q


@pytest.mark.parametrize("colour", [False, True])
def test_guided_filter_matches_bruteforce(colour: bool) -> None:
    rng = np.random.default_rng(0)
    guide = rng.random((13, 11, 3) if colour else (13, 11))
    p = rng.random((13, 11))
    for r, eps in [(1, 1e-2), (3, 1e-3)]:
        ours = C.guided_filter(guide, p, r, eps)
        ref = _guided_filter_bruteforce(guide, p, r, eps)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_guided_filter_properties() -> None:
    rng = np.random.default_rng(1)
    # the guide filtering itself with tiny eps is (almost) the identity: a_k -> 1, b_k -> 0
    g = rng.random((20, 20))
    np.testing.assert_allclose(C.guided_filter(g, g, 2, 1e-8), g, atol=1e-4)
    # a constant input stays constant
    np.testing.assert_allclose(C.guided_filter(g, np.full((20, 20), 0.3), 2, 1e-3), 0.3, atol=1e-6)
    # multi-channel src is filtered per channel
    src = rng.random((20, 20, 2))
    out = C.guided_filter(g, src, 2, 1e-2)
    np.testing.assert_allclose(out[..., 1], C.guided_filter(g, src[..., 1], 2, 1e-2), atol=1e-6)
    with pytest.raises(ValueError, match="radius"):
        C.guided_filter(g, g, 0, 1e-3)
    with pytest.raises(ValueError, match="eps"):
        C.guided_filter(g, g, 2, 0.0)


def test_box_filter_cut_windows() -> None:
    x = np.arange(20, dtype=np.float64).reshape(4, 5)
    out = C.box_filter(x, 1)
    assert out[0, 0] == pytest.approx(x[:2, :2].mean())  # corner: 2x2 part of the window
    assert out[2, 2] == pytest.approx(x[1:4, 1:4].mean())


# ------------------------------------------------------------------------------------------------ restoration gains
def test_dehaze_raises_psnr(photos) -> None:
    gains = _gain(photos, "hazy", 3)
    assert min(gains) > 3.0, gains
    assert np.mean(gains) > 5.0, gains


def test_dehaze_exact_when_the_prior_holds() -> None:
    """A scene whose dark channel is 0 (one channel black in every pixel) under uniform haze t = 0.6, with a patch
    of sky (t = 0, I = A) to find the airlight from: with omega = 1 the dark channel prior recovers J closely."""
    rng = np.random.default_rng(0)
    clean = rng.random((96, 96, 3), dtype=np.float32)
    clean[np.arange(96)[:, None], np.arange(96)[None, :], rng.integers(0, 3, (96, 96))] = 0.0
    t = np.full((96, 96, 1), 0.6, np.float32)
    t[:12, :12] = 0.0  # sky
    airlight = np.float32([0.9, 0.88, 0.85])
    hazy = clean * t + airlight * (1 - t)
    out = C.dehaze_dcp(hazy, omega=1.0, patch=3)
    np.testing.assert_allclose(C.estimate_airlight(hazy, C.dark_channel(hazy, 3)), airlight, atol=1e-6)
    scene = (slice(20, None), slice(None))  # away from the sky and its border
    assert _psnr(clean[scene], hazy[scene]) < 15.0
    assert _psnr(clean[scene], out[scene]) > 35.0


def test_airlight_and_dark_channel() -> None:
    img = np.full((32, 32, 3), 0.2, np.float32)
    img[5:8, 20:23] = [0.9, 0.85, 0.8]  # the haziest (brightest dark channel) region
    dark = C.dark_channel(img, 3)
    assert dark.shape == (32, 32) and dark[6, 21] == pytest.approx(0.8) and dark[20, 5] == pytest.approx(0.2)
    np.testing.assert_allclose(C.estimate_airlight(img, dark), [0.9, 0.85, 0.8])


def test_denoise_raises_psnr(photos) -> None:
    gains = _gain(photos, "noisy", 2)
    assert min(gains) > 3.0, gains
    assert np.mean(gains) > 3.5, gains


def test_noise_sigma_estimate() -> None:
    img = data.astronaut()[:256, :256].astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    for sigma in (0.02, 0.05):
        noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 1).astype(np.float32)
        assert C.estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.2)


def test_low_light_raises_psnr(photos) -> None:
    gains = _gain(photos, "low-light", 3)
    assert min(gains) > 5.0, gains


def test_rain_and_snow_raise_psnr(photos) -> None:
    for kind in ("rainy", "snowy"):
        gains = _gain(photos, kind, 2)
        assert min(gains) > 1.0, (kind, gains)


def test_inpaint_raises_psnr(photos) -> None:
    gains = _gain(photos, "uncompleted", 2)
    assert min(gains) > 5.0, gains


def test_hole_detection() -> None:
    img = data.coffee()[:96, :96].astype(np.float32) / 255.0
    holed = img.copy()
    holed[10:30, 40:70] = 1.0
    mask = C.detect_holes(holed)
    assert mask.dtype == np.uint8 and mask[15, 50] == 255 and mask[60, 10] == 0
    assert (mask > 0).sum() == pytest.approx(20 * 30, rel=0.35)  # the hole plus a 1-px dilation
    auto = C.detect_holes(np.where(np.arange(96)[:, None, None] < 20, 0.25, img).astype(np.float32), fill="auto")
    assert auto[5, 5] == 255 and auto[60, 60] == 0
    # nothing to fill: returned unchanged
    np.testing.assert_array_equal(C.inpaint_holes(img), img)
    with pytest.raises(ValueError, match="fill"):
        C.detect_holes(img, fill="grey")


def test_other_methods_are_mild(photos) -> None:
    """Methods with no big PSNR gain to expect must at least not damage the image much."""
    assert min(_gain(photos, "jpeg-compressed", 3)) > 0.0
    assert min(_gain(photos, "motion-blurry", 2)) > -1.0
    img = photos["astronaut"]
    shadowed, _ = degrade(img, "shadowed", 3, seed=0)
    out = C.equalize_illumination(shadowed)
    assert out.mean() > shadowed.mean()  # brightens
    np.testing.assert_allclose(C.equalize_illumination(shadowed, strength=0.0), shadowed, atol=1e-6)


# ---------------------------------------------------------------------------------------- restorer contract, errors
def test_registry_entry() -> None:
    assert "classical" in list_models(task="restorer")
    spec = get_spec("classical", task="restorer")
    assert spec.source == "none" and spec.availability() == (True, "")
    r = create_model("classical", task="restorer")
    assert isinstance(r, C.ClassicalRestorer)
    assert r.name == "classical" and r.random_weights is False
    assert set(r.degradations) == set(C.METHODS) and "clear" in r.degradations and len(r.degradations) == 11


def test_restore_tensor_contract(photos) -> None:
    r = C.ClassicalRestorer()
    img = photos["coffee"][:64, :80]
    lq, _ = degrade(img, "noisy", 3, seed=0)
    x = torch.from_numpy(lq).permute(2, 0, 1)[None].contiguous()
    y = r.restore(x, degradation="noisy", steps=10, seed=3, tile=32)
    assert y.shape == (1, 3, 64, 80) and y.dtype == torch.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    np.testing.assert_allclose(y[0].permute(1, 2, 0).numpy(), C.denoise_nlm(lq), atol=1e-6)
    # identity on clear
    torch.testing.assert_close(r.restore(x, degradation="clear"), x)
    # several types apply in order
    both = r.restore(x, degradation=["noisy", "jpeg-compressed"])
    np.testing.assert_allclose(both[0].permute(1, 2, 0).numpy(), C.deblock_bilateral(C.denoise_nlm(lq)), atol=1e-6)


def test_unknown_type_lists_valid() -> None:
    r = C.ClassicalRestorer()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="hazy.*noisy") as e:
        r.restore(x, degradation="foggy")
    assert "'foggy'" in str(e.value)
    with pytest.raises(ValueError, match="unknown degradation"):
        C.restore_array(np.zeros((8, 8, 3), np.float32), ["hazy", "blurry"])
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        r.restore(torch.rand(3, 16, 16), degradation="hazy")


def test_bad_image_inputs() -> None:
    with pytest.raises(ValueError, match="float"):
        C.dehaze_dcp(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.denoise_nlm(np.full((8, 8, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        C.unsharp_mask(np.zeros((8, 8), np.float32))


def test_classifier_is_used_or_asked_for(monkeypatch) -> None:
    class FakeClassifier:
        def classify(self, x):
            return {"hazy": 0.1, "noisy": 0.7, "clear": 0.2}

    import vlmir.registry as reg

    def fake_create(name=None, task=None, device="cpu", **kw):
        assert task == "classifier"
        return FakeClassifier()

    monkeypatch.setattr(reg, "create_model", fake_create)
    r = C.ClassicalRestorer()
    x = torch.rand(1, 3, 32, 32)
    assert r.predict_degradation(x) == "noisy"
    torch.testing.assert_close(r.restore(x), r.restore(x, degradation="noisy"))

    def no_classifier(name=None, task=None, device="cpu", **kw):
        raise ValueError("no classifier model is registered")

    monkeypatch.setattr(reg, "create_model", no_classifier)
    with pytest.raises(ValueError, match="needs the degradation type.*hazy"):
        C.ClassicalRestorer().restore(x)
