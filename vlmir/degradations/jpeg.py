"""``jpeg-compressed``: real JPEG encoding and decoding through OpenCV's libjpeg.

The image is quantised to 8 bits (round to nearest), encoded as baseline JPEG with 4:2:0 chroma subsampling (the
libjpeg default, as cameras and the web use) at a quality that falls with severity, and decoded back to float. The
blocking, ringing and colour bleeding are therefore those of a real codec, not an imitation. DA-CLIP's JPEG task
uses qualities in the 10..40 range; severity 1 here is milder (50) and severity 5 harsher (6).
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmir.degradations._common import by_severity

NAME = "jpeg-compressed"
# libjpeg quality (1..100) by severity 1..5; a seeded jitter of +-2 keeps the levels disjoint
QUALITY = (50, 34, 22, 13, 6)


def apply(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Round-trip ``img`` through a JPEG encoder at quality ``QUALITY[severity - 1]`` (+-2).

    Args:
        img: float32 ``(H, W, 3)`` RGB in [0, 1].
        severity: 1..5.
        rng: the seeded generator (only the quality jitter is random).
    Returns:
        float32 ``(H, W, 3)``, values on the 8-bit grid k/255.
    """
    q = int(np.clip(by_severity(QUALITY, severity) + rng.integers(-2, 3), 2, 95))
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {img.shape}")
    dec = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return dec.astype(np.float32) / np.float32(255.0)
