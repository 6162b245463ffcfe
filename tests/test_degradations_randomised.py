"""Domain-randomised degradation families: contract, severity order, variety beyond the default family, sampler."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from vlmir.degradations import degrade
from vlmir.degradations.randomised import FAMILIES
from vlmir.training.data import DataConfig, PairSampler


def _photo(name: str, size: int) -> np.ndarray:
    img = getattr(data, name)().astype(np.float32) / 255.0
    s = min(img.shape[:2])
    return cv2.resize(img[:s, :s], (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_photo("astronaut", 96), _photo("chelsea", 96), _photo("coffee", 96)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def test_covers_the_seven_types_the_other_engines_share():
    assert sorted(FAMILIES) == sorted(["hazy", "rainy", "snowy", "noisy", "motion-blurry", "jpeg-compressed",
                                       "low-light"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_contract_and_severity_order(photos, name):
    img = photos[0]
    a, meta = degrade(img, name, 3, seed=4, randomise=True)
    b, _ = degrade(img, name, 3, seed=4, randomise=True)
    default, _ = degrade(img, name, 3, seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert not np.array_equal(a, default)  # the randomised family, not the default one
    assert meta["randomised"] is True and "randomised" not in degrade(img, name, 3, seed=4)[1]
    # averaged over photos and seeds, a higher severity is stronger
    curve = [np.mean([psnr(degrade(p, name, s, seed=k, randomise=True)[0], p) for p in photos for k in range(3)])
             for s in (1, 3, 5)]
    assert curve[0] > curve[1] > curve[2], f"{name}: PSNR at severities 1/3/5 {np.round(curve, 2)}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_wider_than_the_default_family(photos, name):
    """Across seeds at one severity the randomised family spreads its strength wider than the default one."""
    img = photos[1]
    spread = {}
    for randomise in (False, True):
        vals = [psnr(degrade(img, name, 3, seed=k, randomise=randomise)[0], img) for k in range(10)]
        spread[randomise] = float(np.std(vals))
    assert spread[True] > spread[False], f"{name}: PSNR spread default {spread[False]:.3f}, randomised {spread[True]:.3f}"


def test_randomised_models_differ_in_kind():
    """Draws differ in model, not only strength: hazy airlight colours, noise luma vs chroma, blur kernels."""
    flat = np.full((64, 64, 3), 0.3, np.float32)
    tints = {tuple(np.round(degrade(flat, "hazy", 5, seed=k, randomise=True)[0].mean((0, 1)), 2)) for k in range(12)}
    assert len(tints) >= 4
    chroma = []
    for k in range(16):
        out = degrade(flat, "noisy", 3, seed=k, randomise=True)[0] - flat
        chroma.append(float(np.abs(out - out.mean(2, keepdims=True)).mean()))
    assert min(chroma) < 1e-3 < max(chroma)  # some draws are luma-only noise, others per-channel


def test_sampler_draws_randomised_only_when_asked():
    base = dict(crop=32, window=(48, 64), p_clean=0.0, p_procedural=0.0, photos=("astronaut", "camera"))
    old = PairSampler(DataConfig(**base), seed=1).sample_images(3)
    again = PairSampler(DataConfig(**base, p_randomised=0.0), seed=1).sample_images(3)
    for x, y in zip(old, again, strict=True):  # p_randomised 0 leaves older configs' samples as they were
        np.testing.assert_array_equal(x["lq"], y["lq"])
    rnd = PairSampler(DataConfig(**base, p_randomised=1.0), seed=1).sample_images(3)
    assert any(not np.array_equal(x["lq"], y["lq"]) for x, y in zip(old, rnd, strict=True))
    with pytest.raises(ValueError, match="p_randomised"):
        DataConfig(**base, p_randomised=1.5)


def test_given_order_applies_a_mixture_as_listed(photos):
    img = photos[0]
    phys, meta = degrade(img, ["jpeg-compressed", "noisy"], 3, seed=5)
    assert meta["types"] == ["noisy", "jpeg-compressed"] and "order" not in meta  # physical: noise, then codec
    given, gmeta = degrade(img, ["jpeg-compressed", "noisy"], 3, seed=5, order="given")
    assert gmeta["types"] == ["jpeg-compressed", "noisy"] and gmeta["order"] == "given"
    # noise after the codec is not blocked by it: the two orders give different pixels
    assert psnr(phys, given) < 40
    same, _ = degrade(img, ["noisy", "jpeg-compressed"], 3, seed=5, order="given")
    np.testing.assert_array_equal(same, phys)  # listed in the physical order, "given" changes nothing
    with pytest.raises(ValueError, match="order"):
        degrade(img, "noisy", 3, order="shuffled")


def test_sampler_shuffles_mixtures_only_when_asked():
    base = dict(crop=32, window=(48, 64), p_clean=0.0, p_procedural=0.0, p_mixture=1.0, max_types=3,
                photos=("astronaut", "camera"))
    old = PairSampler(DataConfig(**base), seed=2).sample_images(6)
    again = PairSampler(DataConfig(**base, p_random_order=0.0), seed=2).sample_images(6)
    for x, y in zip(old, again, strict=True):  # p_random_order 0 leaves older configs' samples as they were
        np.testing.assert_array_equal(x["lq"], y["lq"])
    from vlmir.degradations import APPLY_ORDER

    shuffled = PairSampler(DataConfig(**base, p_random_order=1.0), seed=2).sample_images(12)
    orders = [s["types"] for s in shuffled]
    assert all(len(t) >= 2 for t in orders)
    assert any(t != sorted(t, key=APPLY_ORDER.index) for t in orders)  # some mixtures out of physical order
    with pytest.raises(ValueError, match="p_random_order"):
        DataConfig(**base, p_random_order=-0.1)
