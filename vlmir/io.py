"""The one door through which images enter and leave vlmir.

Everything the package computes on works on float32 tensors ``(B, 3, H, W)`` holding RGB in [0, 1]. This module
turns paths, bytes, file objects, PIL images, numpy arrays and tensors into that form, and writes results back
losslessly (PNG, 8 or 16 bit). What it guarantees for every input:

- EXIF orientation is applied (phone photos come out upright);
- alpha is composited on white (RGBA, LA, P with transparency);
- grey (L, I;16, I, F), palette (P), CMYK, YCbCr, LAB and HSV are converted to RGB, 16-bit and 32-bit data scaled by
  their real range, not clipped at 255;
- an image above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 40 MP, or ``VLMIR_MAX_PIXELS``) is refused
  from its header, before its pixels are decoded;
- corrupt, truncated, empty, zero-sized or non-image input raises ``ValueError`` with a message saying what was
  wrong and what is allowed. Nothing is written or modified on failure.

Example::

    >>> x = load_image("photo.jpg")             # doctest: +SKIP
    >>> x.shape, x.dtype                        # doctest: +SKIP
    (torch.Size([1, 3, 3000, 4000]), torch.float32)
    >>> save_image(x, "copy.png")               # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width * height) accepted by default: 40 MP. Override per call or with ``VLMIR_MAX_PIXELS``."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray | torch.Tensor

_ALLOWED = (
    "a path to an image file, bytes of an encoded image, a binary file object, a PIL image, a numpy array "
    "(H, W), (H, W, 1|3|4) or (3, H, W), or a tensor (3, H, W) / (1, 3, H, W)"
)


def max_pixels_default() -> int:
    """The pixel limit in force: ``VLMIR_MAX_PIXELS`` when set (a positive integer), else 40 MP."""
    env = os.environ.get("VLMIR_MAX_PIXELS", "").strip()
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(env))
    except ValueError:
        raise ValueError(f"VLMIR_MAX_PIXELS={env!r} is not a number of pixels") from None
    if value <= 0:
        raise ValueError(f"VLMIR_MAX_PIXELS={env!r} must be a positive number of pixels")
    return value


def _check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"{what} has zero size ({width}x{height}); an image needs at least 1x1 pixels")
    limit = max_pixels_default() if max_pixels is None else int(max_pixels)
    if width * height > limit:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of {limit / 1e6:.1f} MP; "
            f"downscale it or raise the limit (max_pixels= or VLMIR_MAX_PIXELS)"
        )


def _open_pil(src: Any) -> tuple[Image.Image, str]:
    """Open (lazily, header only) an encoded image from a path, bytes or file object."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        what = f"image file {str(path)!r}"
        if not path.exists():
            raise ValueError(f"{what} does not exist")
        if path.is_dir():
            raise ValueError(f"{what} is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ValueError(f"{what} is empty (0 bytes)")
        fp: Any = path
    elif isinstance(src, (bytes, bytearray, memoryview)):
        what = "image bytes"
        if len(src) == 0:
            raise ValueError("image bytes are empty (0 bytes)")
        fp = io.BytesIO(bytes(src))
    elif hasattr(src, "read"):
        what = f"image file object {getattr(src, 'name', '')!r}".replace(" ''", "")
        data = src.read()
        if not data:
            raise ValueError(f"{what} is empty (0 bytes)")
        fp = io.BytesIO(data)
    else:
        raise ValueError(f"cannot read an image from {type(src).__name__}; expected {_ALLOWED}")
    img = None
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check fires before ours for huge images; ours gives the clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise ValueError(
            f"{what} is not a readable image (unknown or corrupt format); use PNG, JPEG, WebP, TIFF, BMP or GIF"
        ) from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} is too large to decode safely: {e}") from None
    except OSError as e:
        raise ValueError(f"{what} could not be opened: {e}") from None
    if img.format == "PNG" and img.mode in ("RGB", "RGBA"):
        # Pillow reads 16-bit colour PNGs as 8 bit; keep their full depth by decoding those with OpenCV.
        head = _read_head(fp, 26)
        if len(head) >= 26 and head[24] == 16:
            img.info["vlmir_png16"] = fp
    return img, what


def _read_head(fp: Any, n: int) -> bytes:
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()[:n]
    with open(fp, "rb") as f:
        return f.read(n)


def _decode_png16(fp: Any, what: str) -> np.ndarray:
    import cv2

    data = fp.getvalue() if isinstance(fp, io.BytesIO) else Path(fp).read_bytes()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3:
        raise ValueError(f"{what} is a corrupt 16-bit PNG and could not be decoded")
    arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]].astype(np.float32) / 65535.0  # BGR(A) -> RGB(A)
    if arr.shape[2] == 4:
        arr = arr[..., :3] * arr[..., 3:4] + (1.0 - arr[..., 3:4])
    return np.ascontiguousarray(arr, dtype=np.float32)


def _pil_to_array(img: Image.Image, what: str) -> np.ndarray:
    """Decode ``img`` (EXIF orientation, alpha on white, mode conversion) to float32 RGB (H, W, 3) in [0, 1]."""
    if "vlmir_png16" in img.info:  # PNG carries no EXIF orientation in practice; OpenCV ignores it too
        return _decode_png16(img.info["vlmir_png16"], what)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} is too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} is corrupt or truncated and could not be decoded: {e}") from None
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        elif mode == "I":
            # 32-bit integer grey: 16-bit PNGs often decode as "I"; scale by the smallest range that holds the data.
            top = arr.max() if arr.size else 0
            arr = arr / (65535.0 if top > 255 else 255.0) if top <= 65535 else arr / max(top, 1.0)
        else:  # float grey, assumed [0, 1] when it fits, else min-max scaled
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            if lo < 0.0 or hi > 1.0:
                arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
        arr = np.clip(np.nan_to_num(arr), 0.0, 1.0).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("RGB", "L") and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return (rgba[..., :3] * alpha + (1.0 - alpha)).astype(np.float32)
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.float32) / 255.0


def _array_to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """An in-memory array (H, W), (H, W, C) or (C, H, W) to float32 RGB (H, W, 3) in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] > 4:
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} has shape {tuple(np.shape(arr))}; expected {_ALLOWED}")
    if np.issubdtype(a.dtype, np.integer):
        top = 65535.0 if (a.dtype.itemsize >= 2 and a.max(initial=0) > 255) else 255.0
        a = a.astype(np.float32) / top
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        if a.size and (a.min() < -1e-3 or a.max() > 1.0 + 1e-3):
            raise ValueError(
                f"{what} is floating point with values in [{a.min():.3g}, {a.max():.3g}]; float images must lie in "
                "[0, 1] (use uint8/uint16 for 0..255/0..65535 data)"
            )
        a = np.clip(a, 0.0, 1.0)
    else:
        raise ValueError(f"{what} has dtype {a.dtype}; expected an integer or floating point array")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[-1] == 4:
        alpha = a[..., 3:4]
        a = a[..., :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(a, dtype=np.float32)


def load_image(src: ImageSource, *, max_pixels: int | None = None) -> torch.Tensor:
    """Load an image as a float32 tensor ``(1, 3, H, W)`` of RGB in [0, 1].

    Args:
        src: a path, bytes, binary file object, PIL image, numpy array or tensor (see module docstring).
        max_pixels: largest accepted ``W * H``; ``None`` uses ``VLMIR_MAX_PIXELS`` or 40 MP. Encoded images are
            checked from their header, before decoding.

    Raises:
        ValueError: the input is not a readable image, is empty/zero-sized, or is too large.
    """
    if isinstance(src, torch.Tensor):
        t = src.detach().to("cpu")
        if t.ndim == 4 and t.shape[0] != 1:
            raise ValueError(f"tensor image has batch size {t.shape[0]}; load_image takes one image (1, 3, H, W)")
        arr = t.reshape(t.shape[1:]) if t.ndim == 4 else t
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            arr = arr.permute(1, 2, 0)
        a = arr.float().numpy() if arr.is_floating_point() else arr.numpy()
        a = _array_to_rgb(a, "tensor image")
        what = "tensor image"
    elif isinstance(src, np.ndarray):
        a = _array_to_rgb(src, "array image")
        what = "array image"
    else:
        if isinstance(src, Image.Image):
            img, what = src, "PIL image"
        else:
            img, what = _open_pil(src)
        _check_size(img.width, img.height, max_pixels, what)
        a = _pil_to_array(img, what)
    h, w = a.shape[:2]
    _check_size(w, h, max_pixels, what)
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def image_size(src: str | os.PathLike | bytes) -> tuple[int, int]:
    """``(width, height)`` of an encoded image read from its header only (EXIF rotation applied)."""
    img, _ = _open_pil(src)
    w, h = img.size
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    except Exception:  # unreadable EXIF block: the stored size is what decoding will give
        pass
    return w, h


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor ``(1, 3, H, W)`` or ``(3, H, W)`` in [0, 1] to float32 numpy ``(H, W, 3)``."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image (1, 3, H, W), got batch size {x.shape[0]}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an RGB tensor (3, H, W) or (1, 3, H, W), got shape {tuple(x.shape)}")
    return np.ascontiguousarray(x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())


def from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A numpy image (see :func:`load_image` for accepted shapes and dtypes) to float32 ``(1, 3, H, W)``."""
    return load_image(np.asarray(arr), max_pixels=np.iinfo(np.int64).max)


def to_pil(x: torch.Tensor, *, bits: int = 8) -> Image.Image:
    """A tensor image in [0, 1] to a PIL image: RGB (``bits=8``) or 16-bit grey-free RGB is not a PIL mode, so
    ``bits=16`` is only available through :func:`save_image`."""
    if bits != 8:
        raise ValueError(f"to_pil gives 8-bit RGB images; bits={bits} is not supported (save_image(bits=16) is)")
    a = to_numpy(x)
    return Image.fromarray(np.round(a * 255.0).astype(np.uint8), mode="RGB")


def save_image(x: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike, *, bits: int = 8) -> Path:
    """Write an image losslessly as PNG (8 or 16 bits per channel) and return its path.

    The file is written to a temporary name in the same folder and moved into place, so an interrupted write never
    leaves a half-written image. Any extension other than ``.png`` is refused (the point is to lose nothing).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image writes lossless PNG; got {str(path)!r} (use a .png file name)")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if isinstance(x, Image.Image):
        x = load_image(x, max_pixels=np.iinfo(np.int64).max)
    elif isinstance(x, np.ndarray):
        x = from_numpy(x)
    a = to_numpy(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        if bits == 8:
            Image.fromarray(np.round(a * 255.0).astype(np.uint8), mode="RGB").save(tmp, format="PNG")
        else:
            import cv2  # PIL cannot write 16-bit RGB PNGs

            b = np.round(a * 65535.0).astype(np.uint16)[..., ::-1]
            if not cv2.imwrite(tmp, np.ascontiguousarray(b)):
                raise OSError(f"could not write {tmp}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
