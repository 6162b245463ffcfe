"""The degradation engine: determinism, ranges, severity ordering on real photos, mixtures, metadata, errors, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from vlmir.degradations import (
    APPLY_ORDER,
    DEGRADATIONS,
    LEVELS,
    degrade,
    sample_degradation,
    visibility,
)
from vlmir.degradations.blur import kernel_from_trajectory, trajectory
from vlmir.degradations.inpaint import FILL

ROOT = Path(__file__).resolve().parent.parent


def _photo(name: str, size: int) -> np.ndarray:
    img = getattr(data, name)().astype(np.float32) / 255.0
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return _photo("astronaut", 128)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_photo("astronaut", 128), _photo("chelsea", 128), _photo("coffee", 128)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def test_names_and_levels():
    assert DEGRADATIONS == (
        "motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy",
        "raindrop", "rainy", "shadowed", "snowy", "uncompleted",
    )  # fmt: skip
    assert LEVELS == ("excellent", "good", "fair", "poor", "bad")
    assert sorted(APPLY_ORDER) == sorted(DEGRADATIONS)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_deterministic_range_shape(photo, name):
    before = photo.copy()
    a, meta = degrade(photo, name, 3, seed=11)
    b, _ = degrade(photo, name, 3, seed=11)
    c, _ = degrade(photo, name, 3, seed=12)
    np.testing.assert_array_equal(photo, before)  # input untouched
    assert a.shape == photo.shape and a.dtype == np.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), f"{name}: seeds 11 and 12 gave the same pixels"
    assert float(np.abs(a - photo).mean()) > 1e-3, f"{name} left the image unchanged"
    assert meta == {"types": [name], "severity": [3], "seed": 11, "visibility": "poor", "visibility_score": 2}


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_psnr_falls_with_severity(photos, name):
    """On real photos (skimage astronaut, chelsea, coffee), averaged over seeds, PSNR strictly falls 1 -> 5."""
    curve = []
    for s in range(1, 6):
        vals = [psnr(degrade(img, name, s, seed=seed)[0], img) for img in photos for seed in (0, 1)]
        curve.append(float(np.mean(vals)))
    assert all(curve[i] > curve[i + 1] for i in range(4)), f"{name}: PSNR by severity {np.round(curve, 2)}"
    assert 5.0 < curve[-1] < curve[0] < 40.0, f"{name}: implausible PSNR range {np.round(curve, 2)}"


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_any_size_same_seed(name):
    """The same seed works on other sizes (non-square, small) and gives the same effect, scaled."""
    big = _photo("coffee", 192)
    small = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    wide = cv2.resize(big, (150, 90), interpolation=cv2.INTER_AREA)
    outs = {}
    for key, img in (("big", big), ("small", small), ("wide", wide)):
        out, _ = degrade(img, name, 4, seed=5)
        assert out.shape == img.shape and out.dtype == np.float32
        outs[key] = out
    # scaled, not re-drawn: the big result shrunk to 64 px is close to the small result
    shrunk = cv2.resize(outs["big"], (64, 64), interpolation=cv2.INTER_AREA)
    err_same = float(np.abs(shrunk - outs["small"]).mean())
    other = cv2.resize(degrade(big, name, 4, seed=6)[0], (64, 64), interpolation=cv2.INTER_AREA)
    err_other = float(np.abs(other - outs["small"]).mean())
    if name not in ("noisy", "low-light", "jpeg-compressed", "rainy", "snowy"):
        # per-pixel noise, codec blocks and particle fields differ pixel by pixel across sizes by nature
        assert err_same < err_other, f"{name}: same seed across sizes ({err_same:.4f}) vs other seed ({err_other:.4f})"


def test_scaled_geometry_uncompleted_and_shadow():
    """Relative geometry: the hole fraction and the shadowed area barely change between 96 px and 288 px."""
    for size_a, size_b in ((96, 288),):
        flat_a = np.full((size_a, size_a, 3), 0.4, np.float32)
        flat_b = np.full((size_b, size_b, 3), 0.4, np.float32)
        ha = (degrade(flat_a, "uncompleted", 4, seed=3)[0] == FILL).all(2).mean()
        hb = (degrade(flat_b, "uncompleted", 4, seed=3)[0] == FILL).all(2).mean()
        assert ha > 0.05 and abs(ha - hb) < 0.03, (ha, hb)
        sa = (degrade(flat_a, "shadowed", 4, seed=3)[0][..., 0] < 0.3).mean()
        sb = (degrade(flat_b, "shadowed", 4, seed=3)[0][..., 0] < 0.3).mean()
        assert sa > 0.05 and abs(sa - sb) < 0.03, (sa, sb)


def test_noise_sigma_matches_severity():
    grey = np.full((128, 128, 3), 0.5, np.float32)
    for s, sigma in zip(range(1, 6), (10, 20, 30, 40, 50), strict=True):
        out, _ = degrade(grey, "noisy", s, seed=s)
        assert abs(float((out - grey).std()) * 255 - sigma) < 2.0


def test_jpeg_is_a_real_codec(photo):
    out, _ = degrade(photo, "jpeg-compressed", 5, seed=0)
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)  # 8-bit grid
    # 8x8 block boundaries: the jump across block edges exceeds the jump inside blocks (blocking artefacts)
    d = np.abs(np.diff(out.mean(2), axis=1))
    edges = d[:, 7::8].mean()
    inner = np.delete(d, np.s_[7::8], axis=1).mean()
    assert edges > 1.2 * inner


def test_motion_blur_kernel_and_flat_image():
    pts = trajectory(np.random.Generator(np.random.PCG64(0)))
    k = kernel_from_trajectory(pts, 15.0)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1 and k.shape[0] >= 15
    assert abs(float(k.sum()) - 1.0) < 1e-5 and (k >= 0).all()
    flat = np.full((64, 80, 3), 0.37, np.float32)
    out, _ = degrade(flat, "motion-blurry", 5, seed=1)
    np.testing.assert_allclose(out, flat, atol=1e-5)  # kernel sums to 1


def test_haze_is_scattering_model():
    black = np.zeros((96, 96, 3), np.float32)
    top, bottom = [], []
    for seed in range(6):
        out, _ = degrade(black, "hazy", 5, seed=seed)  # J = 0: I = A (1 - t)
        assert float(out.min()) > 0.1  # airlight everywhere
        top.append(out[:20].mean())
        bottom.append(out[-20:].mean())
    assert np.mean(top) > np.mean(bottom)  # depth proxy: the top of the frame is farther
    white = np.full((96, 96, 3), 1.0, np.float32)
    assert float(degrade(white, "hazy", 5, seed=0)[0].max()) < 1.0  # airlight below white


def test_low_light_is_dark_and_signal_dependent_noise():
    ramp = np.tile(np.linspace(0.2, 1.0, 128, dtype=np.float32)[None, :, None], (128, 1, 3))
    out, _ = degrade(ramp, "low-light", 3, seed=0)
    assert out.mean() < 0.6 * ramp.mean()
    # shot noise: brighter columns are noisier in absolute terms (in linear light)
    lin = out**2.2
    assert lin[:, -16:].std(0).mean() > lin[:, :16].std(0).mean()


def test_mixture_order_seeding_and_visibility(photo):
    a, meta = degrade(photo, ["noisy", "hazy"], [3, 2], seed=4)
    b, meta_b = degrade(photo, ["hazy", "noisy"], [2, 3], seed=4)
    np.testing.assert_array_equal(a, b)  # physical order, whatever order the caller lists
    assert meta == meta_b
    assert meta["types"] == ["hazy", "noisy"] and meta["severity"] == [2, 3]
    assert (meta["visibility"], meta["visibility_score"]) == ("bad", 1)
    # per-type seeding: the mixture equals the chain of single degradations with the same seed
    step, _ = degrade(photo, "hazy", 2, seed=4)
    chain, _ = degrade(step, "noisy", 3, seed=4)
    np.testing.assert_array_equal(a, chain)
    out, m = degrade(photo, "rainy,motion-blurry", 1, seed=0)
    assert m["types"] == ["rainy", "motion-blurry"] and m["severity"] == [1, 1] and m["visibility"] == "fair"
    rain_only, _ = degrade(photo, "rainy", 1, seed=0)
    blurred_rain, _ = degrade(rain_only, "motion-blurry", 1, seed=0)
    np.testing.assert_array_equal(out, blurred_rain)  # weather first, then the camera shake blurs the streaks
    assert not np.array_equal(out, rain_only)


def test_visibility_rule():
    assert visibility([]) == ("excellent", 5)
    assert [visibility([s]) for s in range(1, 6)] == [("good", 4), ("fair", 3), ("poor", 2), ("bad", 1), ("bad", 1)]
    assert visibility([1, 1]) == ("fair", 3) and visibility([2, 2, 2]) == ("bad", 1)
    clean, meta = degrade(np.full((16, 16, 3), 0.5, np.float32), [], seed=2)
    assert meta == {"types": [], "severity": [], "seed": 2, "visibility": "excellent", "visibility_score": 5}
    assert float(clean.mean()) == pytest.approx(0.5)


def test_torch_tensor_in_and_out(photo):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(photo.transpose(2, 0, 1).copy())[None]
    y, meta = degrade(x, "snowy", 2, seed=9)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == torch.float32
    ref, _ = degrade(photo, "snowy", 2, seed=9)
    np.testing.assert_array_equal(y[0].permute(1, 2, 0).numpy(), ref)
    assert meta["types"] == ["snowy"]


def test_errors(photo):
    with pytest.raises(ValueError, match=r"hazy.*Valid types: motion-blurry"):
        degrade(photo, "hazzy", 1, 0)
    with pytest.raises(ValueError, match="unknown degradation type 'blur'"):
        degrade(photo, ["noisy", "blur"], 1, 0)
    for bad in (0, 6, 2.5, True, "3"):
        with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
            degrade(photo, "noisy", bad, 0)
    with pytest.raises(ValueError, match="one per type"):
        degrade(photo, ["noisy", "hazy"], [1, 2, 3], 0)
    with pytest.raises(ValueError, match="repeat"):
        degrade(photo, ["noisy", "noisy"], 1, 0)
    with pytest.raises(ValueError, match="seed"):
        degrade(photo, "noisy", 1, -1)
    with pytest.raises(ValueError, match="uint8 divide by 255"):
        degrade((photo * 255).astype(np.uint8), "noisy", 1, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        degrade(photo * 2, "noisy", 1, 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        degrade(photo[..., 0], "noisy", 1, 0)
    with pytest.raises(ValueError, match="at least 8"):
        degrade(photo[:4], "noisy", 1, 0)


def test_sample_degradation(photo):
    specs = [sample_degradation(np.random.Generator(np.random.PCG64(1))) for _ in range(2)]
    assert specs[0] == specs[1]
    rng = np.random.Generator(np.random.PCG64(0))
    draws = [sample_degradation(rng, p_mixture=0.5) for _ in range(400)]
    seen = {t for d in draws for t in d["types"]}
    assert seen == set(DEGRADATIONS)
    sizes = [len(d["types"]) for d in draws]
    assert 1 in sizes and max(sizes) <= 3 and sum(s > 1 for s in sizes) > 100
    assert not any({"rainy", "snowy"} <= set(d["types"]) for d in draws)
    single = [sample_degradation(rng, allow_mixtures=False, severities=(2, 4)) for _ in range(50)]
    assert all(len(d["types"]) == 1 and d["severity"][0] in (2, 4) for d in single)
    assert {d["severity"][0] for d in single} == {2, 4}
    clean = sample_degradation(rng, p_clean=1.0)
    assert clean["types"] == [] and degrade(photo, **clean)[1]["visibility"] == "excellent"
    out, meta = degrade(photo, **draws[0])
    assert out.shape == photo.shape and meta["seed"] == draws[0]["seed"]
    with pytest.raises(ValueError, match="p_clean"):
        sample_degradation(rng, p_clean=1.5)
    with pytest.raises(ValueError, match="severity"):
        sample_degradation(rng, severities=(0,))


def test_sample_degradation_weights():
    single = {"allow_mixtures": False}
    rng = np.random.Generator(np.random.PCG64(3))
    draws = [sample_degradation(rng, weights={"motion-blurry": 9.0}, **single)["types"][0] for _ in range(600)]
    share = draws.count("motion-blurry") / len(draws)
    assert 0.45 < share < 0.55  # 9 / (9 + 9 others at weight 1) = 0.5
    assert set(draws) == set(DEGRADATIONS)  # the others still appear
    only = [sample_degradation(rng, weights={t: 0.0 for t in DEGRADATIONS if t != "hazy"}, p_mixture=0.5)
            for _ in range(50)]
    assert all(d["types"] == ["hazy"] for d in only)  # zero weight: never drawn, not even in a mixture
    same = [sample_degradation(np.random.Generator(np.random.PCG64(1)), weights=w) for w in (None, None)]
    assert same[0] == same[1] == sample_degradation(np.random.Generator(np.random.PCG64(1)))
    with pytest.raises(ValueError, match="unknown degradation"):
        sample_degradation(rng, weights={"blurry": 2.0})
    with pytest.raises(ValueError, match="not all 0"):
        sample_degradation(rng, weights={t: 0.0 for t in DEGRADATIONS})
    with pytest.raises(ValueError, match=">= 0"):
        sample_degradation(rng, weights={"hazy": -1.0})


def test_import_is_light():
    code = "import sys, vlmir.degradations.compose as c; print(sorted(m for m in ('torch',) if m in sys.modules))"
    # the package itself needs no torch; vlmir/__init__ may import it (vlmir.io), so check the engine modules only
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    src = "".join(
        (ROOT / "vlmir" / "degradations" / f).read_text() for f in ("__init__.py", "compose.py", "_common.py")
    )
    assert "\nimport torch" not in src and "\nfrom torch" not in src


def test_cli_degrade_end_to_end(tmp_path, photo):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), cv2.cvtColor(np.round(photo[:, :100] * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "vlmir", "degrade", str(src), "--type", "hazy,noisy", "--severity", "2,1"]
    res = subprocess.run(
        cmd + ["--seed", "3", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta["types"] == ["hazy", "noisy"] and meta["severity"] == [2, 1] and meta["seed"] == 3
    assert meta["visibility"] == "poor" and meta["visibility_score"] == 2
    got = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    assert got.shape == (128, 100, 3)
    clean = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    expect, _ = degrade(clean, ["hazy", "noisy"], [2, 1], 3)
    assert np.abs(got - expect).max() <= 0.5 / 255 + 1e-6  # lossless PNG of the same pixels
    bad = subprocess.run(
        [sys.executable, "-m", "vlmir", "degrade", str(src), "--type", "smoky", "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown degradation type 'smoky'" in bad.stderr
    assert not (tmp_path / "x.png").exists()
