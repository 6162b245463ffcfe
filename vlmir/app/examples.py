"""Make the demo's example images: public-domain / CC0 photos that ship with scikit-image, degraded by
:func:`vlmir.degradations.degrade` with fixed seeds.

Run ``python -m vlmir.app.examples [OUT_DIR]`` (default ``assets/examples/``) to rebuild them; the files are small
JPEGs (quality 92) of at most 384 px on the long side, a few hundred KB together.

Sources and licences (from scikit-image's ``skimage/data/_fetchers.py`` docstrings):

- ``astronaut.png``: NASA, public domain;
- ``rocket.jpg``: SpaceX, public domain;
- ``chelsea.png``: Stefan van der Walt, CC0;
- ``coffee.png``: Rachel Michetti, CC0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

OUT_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"

# (file name, skimage photo, degradation types, severity, seed)
EXAMPLES: tuple[tuple[str, str, str | tuple[str, ...], int, int], ...] = (
    ("rocket_hazy.jpg", "rocket", "hazy", 3, 11),
    ("astronaut_rainy.jpg", "astronaut", "rainy", 3, 12),
    ("chelsea_snowy.jpg", "chelsea", "snowy", 3, 13),
    ("coffee_low-light.jpg", "coffee", "low-light", 3, 14),
    ("chelsea_noisy.jpg", "chelsea", "noisy", 3, 15),
    ("astronaut_motion-blurry.jpg", "astronaut", "motion-blurry", 3, 16),
)

LICENCES = {
    "astronaut": "NASA, public domain",
    "rocket": "SpaceX, public domain",
    "chelsea": "Stefan van der Walt, CC0",
    "coffee": "Rachel Michetti, CC0",
}

LONG_SIDE = 384


def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as float32 RGB (H, W, 3) in [0, 1], long side :data:`LONG_SIDE` px."""
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    scale = LONG_SIDE / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def make_examples(out_dir: str | Path = OUT_DIR) -> list[Path]:
    """Write every example of :data:`EXAMPLES` to ``out_dir`` (and a ``SOURCES.md``); return the image paths."""
    from vlmir.degradations import degrade

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, lines = (
        [],
        [
            "# Demo examples",
            "",
            "Made by `python -m vlmir.app.examples`.",
            "",
            "| file | photo (licence) | degradation | severity | seed |",
            "|---|---|---|---|---|",
        ],
    )
    for fname, photo, types, severity, seed in EXAMPLES:
        out, _meta = degrade(_photo(photo), types, severity, seed)
        p = out_dir / fname
        Image.fromarray(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)).save(p, quality=92)
        paths.append(p)
        lines.append(f"| {fname} | skimage `{photo}` ({LICENCES[photo]}) | {types} | {severity} | {seed} |")
    (out_dir / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


if __name__ == "__main__":
    for path in make_examples(sys.argv[1] if len(sys.argv) > 1 else OUT_DIR):
        print(path, f"{path.stat().st_size / 1024:.0f} KB")
