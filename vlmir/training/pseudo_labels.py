"""WResVLM's pseudo-label store: one entry per unlabelled image, on disk, safe and resumable.

Paper: WResVLM (Xu et al., ECCV 2024), "Pseudo-Labeling": every real (unlabelled) image ``x_i`` gets a pseudo-label
``y_i^ps``, first the best of several restorers' outputs by the VLM rating r^vlm (and IQA votes), later replaced by
the EMA teacher's restoration whenever that one rates higher; the student learns ``L_ps = L1(y_hat_i, y_i^ps)``.

Layout of a store folder::

    store/
      index.json                   # {"version": 1, "entries": {id: entry}}
      labels/<id>.<rev>.safetensors  # the pseudo-label image, float32 (3, H, W) in [0, 1], key "image"

An entry is a plain JSON object: ``source`` (the unlabelled image's path), ``input_sha256`` (of the source file),
``label`` (file name under ``labels/``), ``label_sha256``, ``score`` (r^vlm of the label, in [1, 5]), ``scores``
(every rating and IQA score of the label, by name), ``origin`` (which restorer, or ``teacher@round<k>``), ``round``,
``rev`` (how often it was replaced) and the descriptions ``d_neg`` / ``d_pos`` (``L_sem``).

Safety: a new label is written to a new file first, then ``index.json`` is replaced atomically (write to a temporary
file, ``os.replace``), and only then is the old label file removed. A kill at any point leaves an index whose every
entry points at a complete file, so no entry is lost. Opening a store checks the index and every label's SHA-256; a
corrupt or truncated file is refused with a :class:`CorruptStoreError` that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

INDEX = "index.json"
LABELS = "labels"
VERSION = 1


class CorruptStoreError(ValueError):
    """A pseudo-label store whose index or a label file cannot be read or fails its checksum."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ValueError(f"a pseudo-label must be a float tensor (3, H, W) or (1, 3, H, W), got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"a pseudo-label must have shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("a pseudo-label contains NaN or infinite values")
    return image.detach().to("cpu", torch.float32).clamp(0, 1).contiguous()


class PseudoLabelStore:
    """The pseudo-labels of a run (module docstring). ``PseudoLabelStore(folder)`` opens or creates it.

    ``verify`` checks every label's SHA-256 on opening; ``clean`` removes label files no entry points at (left by a
    kill); readers beside the writing process pass ``clean=False``.

    Example::

        >>> store = PseudoLabelStore(tmp / "pseudo")                                     # doctest: +SKIP
        >>> store.add("img0", source="u/img0.png", image=y, score=3.2, origin="embedded")  # doctest: +SKIP
        >>> store.replace_if_better("img0", image=y2, score=3.5, origin="teacher@round1")  # doctest: +SKIP
        True
    """

    def __init__(self, folder: str | os.PathLike, *, verify: bool = True, clean: bool = True) -> None:
        self.folder = Path(folder)
        self.labels_dir = self.folder / LABELS
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        index = self.folder / INDEX
        if index.is_file():
            try:
                data = json.loads(index.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorruptStoreError(f"pseudo-label index {index} is not valid JSON ({e}); restore it or delete "
                                        f"the store folder {self.folder} to rebuild it") from e
            if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
                raise CorruptStoreError(f"pseudo-label index {index} is not a version-{VERSION} store index")
            self.entries = data["entries"]
            if verify:
                for key in self.entries:
                    self._verify(key)
        if clean:  # only the one process that writes the store removes files (the others only read it)
            self._remove_orphans()

    # -- reading -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def entry(self, key: str) -> dict[str, Any]:
        if key not in self.entries:
            raise KeyError(f"no pseudo-label for {key!r} in {self.folder}")
        return dict(self.entries[key])

    def _verify(self, key: str) -> Path:
        e = self.entries[key]
        path = self.labels_dir / str(e.get("label", ""))
        if not path.is_file():
            raise CorruptStoreError(f"pseudo-label file {path} of entry {key!r} is missing")
        if file_sha256(path) != e.get("label_sha256"):
            raise CorruptStoreError(f"pseudo-label file {path} of entry {key!r} fails its SHA-256 check (corrupt or "
                                    f"truncated); delete the store folder {self.folder} to rebuild it")
        return path

    def image(self, key: str) -> torch.Tensor:
        """The pseudo-label of ``key``, float32 (3, H, W) in [0, 1]."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._verify(key)
        try:
            return load_file(str(path))["image"]
        except (SafetensorError, KeyError, OSError) as e:
            raise CorruptStoreError(f"pseudo-label file {path} of entry {key!r} cannot be read: {e}") from e

    def scores(self) -> dict[str, float]:
        return {k: float(e["score"]) for k, e in sorted(self.entries.items())}

    # -- writing -------------------------------------------------------------------------------------------------
    def _write_label(self, key: str, image: torch.Tensor, rev: int) -> tuple[str, str]:
        from safetensors.torch import save_file

        name = f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.{rev}.safetensors"
        tmp = self.labels_dir / (name + ".tmp")
        save_file({"image": _check_image(image)}, str(tmp))
        os.replace(tmp, self.labels_dir / name)
        return name, file_sha256(self.labels_dir / name)

    def _write_index(self) -> None:
        data = {"version": VERSION, "entries": self.entries}
        _atomic_write(self.folder / INDEX, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def _remove_orphans(self) -> None:
        """Label files no entry points at (left by a kill between writing a label and the index, or after)."""
        used = {e.get("label") for e in self.entries.values()}
        for path in self.labels_dir.iterdir():
            if path.name not in used:
                path.unlink()

    def add(self, key: str, *, source: str, image: torch.Tensor, score: float, origin: str,
            scores: dict[str, float] | None = None, round: int = 0, **fields: Any) -> None:
        """A new entry (``key`` must not exist yet); ``fields`` are kept as they are (plain JSON values)."""
        if key in self.entries:
            raise ValueError(f"pseudo-label {key!r} already exists in {self.folder}; use replace_if_better")
        score = float(score)
        if not 1.0 <= score <= 5.0:
            raise ValueError(f"score must be an r^vlm in [1, 5], got {score}")
        src = Path(source)
        name, sha = self._write_label(key, image, 0)
        self.entries[key] = {
            **fields, "source": str(source), "input_sha256": file_sha256(src) if src.is_file() else None,
            "label": name, "label_sha256": sha, "score": score, "scores": {k: float(v) for k, v in (scores or {}).items()},
            "origin": str(origin), "round": int(round), "rev": 0,
        }
        self._write_index()

    def replace_if_better(self, key: str, *, image: torch.Tensor, score: float, origin: str,
                          scores: dict[str, float] | None = None, round: int = 0) -> bool:
        """Replace ``key``'s label by ``image`` when ``score`` is strictly higher than the stored one (WResVLM's
        refresh with the EMA teacher's output). Returns whether it was replaced."""
        e = self.entries.get(key)
        if e is None:
            raise KeyError(f"no pseudo-label for {key!r} in {self.folder}")
        score = float(score)
        if not score > float(e["score"]):
            return False
        old = e["label"]
        rev = int(e["rev"]) + 1
        name, sha = self._write_label(key, image, rev)
        self.entries[key] = {**e, "label": name, "label_sha256": sha, "score": score, "origin": str(origin),
                             "scores": {k: float(v) for k, v in (scores or {}).items()}, "round": int(round),
                             "rev": rev}
        self._write_index()
        if old != name and (self.labels_dir / old).is_file():
            (self.labels_dir / old).unlink()
        return True
