"""vlmir.io: every way an image can enter, every way it can be wrong. Files are made in the tests."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlmir.io import from_numpy, image_size, load_image, save_image, to_numpy, to_pil


def _rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_path_round_trip_is_lossless(tmp_path):
    arr = _rgb()
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    x = load_image(p)
    assert x.shape == (1, 3, 6, 8) and x.dtype == torch.float32
    assert torch.equal(torch.round(x * 255).to(torch.uint8)[0].permute(1, 2, 0), torch.from_numpy(arr))
    out = save_image(x, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(out)), arr)


def test_bytes_file_object_pil_array_tensor_agree(tmp_path):
    arr = _rgb(5, 7, seed=1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    ref = load_image(Image.fromarray(arr))
    for src in (buf.getvalue(), io.BytesIO(buf.getvalue()), arr, ref[0], ref):
        assert torch.allclose(load_image(src), ref)
    chw = np.moveaxis(arr, -1, 0)
    assert torch.allclose(load_image(chw), ref)
    assert np.allclose(to_numpy(ref), arr / 255.0, atol=1e-7)
    assert np.array_equal(np.asarray(to_pil(ref)), arr)
    assert torch.allclose(from_numpy(arr.astype(np.float32) / 255.0), ref)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((4, 10, 3), np.uint8)
    arr[:, :5] = 255  # left half white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif, quality=100)
    x = load_image(p)
    assert x.shape == (1, 3, 10, 4)
    assert image_size(p) == (4, 10)
    # after a 90 degree clockwise turn, the white left half is on top
    assert x[0, :, :4].mean() > 0.9 and x[0, :, 6:].mean() < 0.1


def test_alpha_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 0  # transparent pixel -> white
    rgba[0, 1, 3] = 255  # opaque red
    rgba[1, :, 3] = 128  # half red over white
    x = load_image(Image.fromarray(rgba, "RGBA"))[0]
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert torch.allclose(x[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(x[:, 1, 0], torch.tensor([1.0, 1 - 128 / 255, 1 - 128 / 255]), atol=1e-6)
    la = load_image(Image.fromarray(np.stack([np.full((2, 2), 0, np.uint8), np.full((2, 2), 0, np.uint8)], -1), "LA"))
    assert torch.allclose(la, torch.ones_like(la))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "I"])
def test_modes_convert_to_rgb(tmp_path, mode):
    grey = np.linspace(0, 255, 12, dtype=np.uint8).reshape(3, 4)
    if mode == "L":
        img = Image.fromarray(grey, "L")
        expect = grey / 255.0
    elif mode == "P":
        img = Image.fromarray(grey, "L").convert("P")
        expect = np.asarray(img.convert("L")) / 255.0
    elif mode == "CMYK":
        img = Image.fromarray(np.stack([grey] * 3, -1)).convert("CMYK")
        expect = np.asarray(img.convert("RGB"))[..., 0] / 255.0
    elif mode == "I;16":
        g16 = (grey.astype(np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(g16)
        expect = g16 / 65535.0
    else:
        g32 = grey.astype(np.int32) * 257
        img = Image.fromarray(g32)
        expect = g32 / 65535.0
    p = tmp_path / ("m.tif" if mode in ("CMYK", "I") else "m.png")
    img.save(p)
    x = load_image(p)
    assert x.shape == (1, 3, 3, 4)
    assert torch.allclose(x[0, 0], torch.from_numpy(np.asarray(expect, np.float32)), atol=2 / 255)
    assert torch.allclose(x[0, 0], x[0, 2])


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    g16 = np.array([[0, 1000, 65535]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g16).save(p)
    x = load_image(p)
    assert torch.allclose(x[0, 1, 0], torch.tensor([0.0, 1000 / 65535, 1.0]), atol=1e-6)
    # 16-bit save round trip
    out = save_image(x, tmp_path / "o16.png", bits=16)
    y = load_image(out)
    assert torch.allclose(x, y, atol=1 / 65535)


def test_pixel_limit_refused_before_decoding(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    with pytest.raises(ValueError, match=r"300x200 .*above the limit"):
        load_image(p, max_pixels=50_000)
    monkeypatch.setenv("VLMIR_MAX_PIXELS", "10000")
    with pytest.raises(ValueError, match="above the limit"):
        load_image(p)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ValueError):
        load_image(p)
    assert decoded == []  # refused from the header


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: _write(d / "empty.png", b""), "empty"),
        (lambda d: _write(d / "text.jpg", b"hello, not an image"), "not a readable image"),
        (lambda d: d, "directory"),
    ],
)
def test_bad_files_raise_clear_value_errors(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        load_image(make(tmp_path))


def test_truncated_and_corrupt_files(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
    data = buf.getvalue()
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
    jpg = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(jpg, format="JPEG")
    with pytest.raises(ValueError):
        load_image(jpg.getvalue()[:200])
    with pytest.raises(ValueError, match="empty"):
        load_image(b"")


def test_bad_arrays_and_types():
    with pytest.raises(ValueError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 3.0, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((2, 2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="cannot read an image from int"):
        load_image(42)
    with pytest.raises(ValueError, match="batch size"):
        load_image(torch.zeros(2, 3, 4, 4))


def test_one_pixel_image_and_save_rules(tmp_path):
    x = load_image(Image.new("RGB", (1, 1), (10, 20, 30)))
    assert x.shape == (1, 3, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([10, 20, 30]) / 255.0)
    with pytest.raises(ValueError, match="lossless PNG"):
        save_image(x, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    save_image(x, tmp_path / "sub" / "x.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temp file left behind
