"""Finding the images of a results folder laid out as ``D/<method>/<category>/<image>``.

The reference (ground truth) for full-reference metrics is one more folder of the same layout,
``D/<reference>/<category>/<image>``; a method image is matched to the reference image of the same category and file
stem (``rain/001.png`` <-> ``rain/001.jpg`` is a match). The reference folder is not a method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class Item:
    """One image to score.

    Args:
        method: method folder name (a table row).
        category: category folder name (a column group).
        image: file name inside the category folder.
        path: full path of the image.
        ref_path: the matched reference image, or ``None`` (no reference folder, or no match).
    """

    method: str
    category: str
    image: str
    path: Path
    ref_path: Path | None = None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_dataset(root: str | os.PathLike, reference: str | None = None) -> tuple[list[Item], list[str]]:
    """All method images under ``root`` and the problems found (unmatched images, stray files, ...).

    Args:
        root: the dataset folder ``D``.
        reference: name of the reference folder inside ``D`` (``None``: no full-reference metrics).

    Returns:
        ``(items, problems)``: items sorted by method, category, image; problems as human-readable lines.

    Raises:
        ValueError: ``root`` or the reference folder does not exist, or no method folder holds images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {str(root)!r} does not exist (expected D/<method>/<category>/<image>)")
    problems: list[str] = []
    refs: dict[tuple[str, str], Path] = {}
    if reference is not None:
        ref_root = root / reference
        if not ref_root.is_dir():
            found = ", ".join(p.name for p in _subdirs(root)) or "(none)"
            raise ValueError(f"reference folder {reference!r} is not in {str(root)!r}; folders there: {found}")
        for cat in _subdirs(ref_root):
            for p in _images(cat):
                key = (cat.name, p.stem)
                if key in refs:
                    problems.append(f"reference {reference}/{cat.name}: several files with stem {p.stem!r}; using {refs[key].name}")
                    continue
                refs[key] = p
    items: list[Item] = []
    for method_dir in _subdirs(root):
        if method_dir.name == reference:
            continue
        stray = _images(method_dir)
        if stray:
            problems.append(f"{method_dir.name}: {len(stray)} image(s) directly under the method folder are ignored "
                            f"(expected {method_dir.name}/<category>/<image>)")
        for cat in _subdirs(method_dir):
            for p in _images(cat):
                ref = refs.get((cat.name, p.stem))
                if reference is not None and ref is None:
                    problems.append(f"{method_dir.name}/{cat.name}/{p.name}: no reference image "
                                    f"{reference}/{cat.name}/{p.stem}.* (full-reference metrics skipped for it)")
                items.append(Item(method_dir.name, cat.name, p.name, p, ref))
    if not items:
        raise ValueError(f"no images found under {str(root)!r} (expected D/<method>/<category>/<image>)")
    return items, problems
