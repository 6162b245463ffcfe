"""Training data from photos that pip packages ship, degraded on the fly by :mod:`vlmir.degradations`.

Photos: scikit-image's ``skimage/data`` folder, scikit-learn's sample images (china, flower) and matplotlib's
``grace_hopper.jpg``, plus procedural content (gradients, shapes, stripes); where every photo file lives, and the
three-way train / select / report split of all the photos installed packages ship, is
:mod:`vlmir.training.photos` (``DataConfig.photos`` may name any of its ``train`` photos). Three whole photos are held out for
validation and never seen in training: ``chelsea``, ``coffee`` (scikit-image) and ``grace_hopper`` (matplotlib).
Grey photos are used as RGB with a random colour tint. No desktop-wallpaper packages (reserved for evaluation).

A sample: pick a photo (or draw procedural content), rescale by a random factor, cut a random *window* (the image
the degradation sees: effects are drawn relative to the image size, so the window plays the role of a whole
photo), flip, jitter colour, degrade with :func:`vlmir.degradations.sample_degradation` (the ten types, mixtures,
clean), then cut the training *crop* from the same place of the clean and degraded windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from vlmir.constants import CLEAR, DEGRADATIONS_AND_CLEAR
from vlmir.degradations import degrade, sample_degradation

CLASS_NAMES: tuple[str, ...] = DEGRADATIONS_AND_CLEAR

# the photos the shipped embedded models were trained on, and their held-out photos (never used for training);
# both keep their meaning so those models stay reproducible
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field", "ihc", "retina",
    "china", "flower", "camera", "brick", "grass", "gravel", "coins", "moon", "cell", "page", "text",
)
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "grace_hopper")


def photo_path(name: str) -> Path:
    """Path of a shipped photo by name: any photo of the catalogue :mod:`vlmir.training.photos` (which includes
    :data:`TRAIN_PHOTOS` and :data:`HELDOUT_PHOTOS`, at the same files as before)."""
    from vlmir.training.photos import photo_file

    return photo_file(name)


def load_photo(name: str) -> np.ndarray:
    """Photo ``name`` as float32 HWC RGB in [0, 1] (:func:`vlmir.training.photos.load_photo`, cached)."""
    from vlmir.training.photos import load_photo as _load

    return _load(name)


def heldout_image(name: str, short_side: int = 256) -> np.ndarray:
    """Held-out photo resized (area) so its short side is ``short_side``: the validation images."""
    img = load_photo(name)
    h, w = img.shape[:2]
    f = short_side / min(h, w)
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA).clip(0, 1)


def procedural_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random synthetic content (size, size, 3) float32: a colour gradient with filled shapes and stripes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.random(3), rng.random(3)
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
    img = ((1 - t) * c0 + t * c1).astype(np.float32)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(float(v) for v in rng.random(3))
        kind = rng.integers(0, 3)
        p = rng.integers(0, size, 2)
        if kind == 0:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(3, size // 3)), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            q = rng.integers(0, size, 2)
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, -1)
        else:
            q = rng.integers(0, size, 2)
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 6)), cv2.LINE_AA)
    if rng.random() < 0.5:  # stripes: some high-frequency texture
        f = rng.uniform(4, 40)
        img = img * (0.8 + 0.2 * np.sin(2 * np.pi * f * (xx if rng.random() < 0.5 else yy)))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


@dataclass
class DataConfig:
    """How training samples are drawn (the ``data`` block of a training config).

    Args:
        crop: side of the training crop in px.
        window: (min, max) side of the window the degradation is applied to, before cropping.
        scale: (min, max) factor applied to the photo before cutting the window.
        p_clean: probability of a clean sample (target ``clear`` / identity).
        p_mixture: probability of a mixture of 2..``max_types`` types.
        max_types: most types in a mixture.
        p_procedural: probability of procedural content instead of a photo.
        severities: severities drawn uniformly per type.
        type_weights: relative sampling weight per type name (others weigh 1), to show hard types more often;
            ``None`` draws types uniformly.
        p_highlights: probability that a photo is over-exposed (gain 1.2-1.6, clipped), so that clipped natural
            whites are seen clean and not only as the engine's white holes. 0 (the default) draws nothing extra,
            so older configs give the same samples.
        photos: training photo names (default :data:`TRAIN_PHOTOS`).
        p_randomised: probability that a degraded sample uses the domain-randomised families
            (:mod:`vlmir.degradations.randomised`) instead of the default ones. 0 (the default) draws nothing
            extra, so older configs give the same samples.
        p_random_order: probability that a mixture is applied in the random order it was drawn in
            (``degrade(..., order="given")``, Real-ESRGAN-style shuffled steps) instead of the physical order.
            0 (the default) draws nothing extra, so older configs give the same samples.
    """

    crop: int = 128
    window: tuple[int, int] = (192, 320)
    scale: tuple[float, float] = (0.35, 1.0)
    p_clean: float = 0.12
    p_mixture: float = 0.2
    max_types: int = 2
    p_procedural: float = 0.1
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    type_weights: dict[str, float] | None = None
    p_highlights: float = 0.0
    photos: tuple[str, ...] = field(default_factory=lambda: TRAIN_PHOTOS)
    p_randomised: float = 0.0
    p_random_order: float = 0.0

    def __post_init__(self) -> None:
        self.window = tuple(self.window)
        self.scale = tuple(self.scale)
        self.severities = tuple(self.severities)
        self.photos = tuple(self.photos)
        if not 0.0 <= float(self.p_highlights) <= 1.0:
            raise ValueError(f"p_highlights must be a probability in [0, 1], got {self.p_highlights!r}")
        if not 0.0 <= float(self.p_randomised) <= 1.0:
            raise ValueError(f"p_randomised must be a probability in [0, 1], got {self.p_randomised!r}")
        if not 0.0 <= float(self.p_random_order) <= 1.0:
            raise ValueError(f"p_random_order must be a probability in [0, 1], got {self.p_random_order!r}")
        if self.type_weights is not None:
            self.type_weights = {str(k): float(v) for k, v in self.type_weights.items()}
            sample_degradation(np.random.default_rng(0), weights=self.type_weights)  # the same checks, now
        if self.window[0] < self.crop or self.window[1] < self.window[0]:
            raise ValueError(f"window {self.window} must satisfy crop ({self.crop}) <= min <= max")
        from vlmir.training.photos import photo_split

        bad = sorted(set(self.photos) & set(HELDOUT_PHOTOS))
        if bad:
            raise ValueError(f"held-out photos {bad} cannot be training photos")
        bad = sorted(p for p in set(self.photos) if photo_split(p) != "train")  # unknown names raise here too
        if bad:
            raise ValueError(f"photos {bad} are in the select or report split (vlmir.training.photos), not train")


# short sides of the whole photos drawn for fits on the inference geometry (the view head, a photo feature bank)
WHOLE_PHOTO_SIDES: tuple[int, ...] = (192, 224, 256, 256, 320, 384)


def _jitter(img: np.ndarray, rng: np.random.Generator, grey: bool, p_highlights: float = 0.0) -> np.ndarray:
    if grey:  # tint a grey photo so colour statistics vary
        img = img * rng.uniform(0.6, 1.0, 3).astype(np.float32) + rng.uniform(0, 0.2, 3).astype(np.float32)
    gain = rng.uniform(0.8, 1.15)
    if p_highlights > 0 and rng.random() < p_highlights:  # over-exposed: natural clipped whites (not holes)
        gain = rng.uniform(1.2, 1.6)
    sat = rng.uniform(0.7, 1.2)
    mean = img.mean(axis=2, keepdims=True)
    img = (mean + (img - mean) * sat) * gain
    return np.clip(img, 0, 1).astype(np.float32)


def class_target(types: Sequence[str]) -> np.ndarray:
    """Soft class label (K,) over :data:`CLASS_NAMES`: uniform over a mixture's types, ``clear`` when none."""
    tgt = np.zeros(len(CLASS_NAMES), np.float32)
    for name in types or [CLEAR]:
        tgt[CLASS_NAMES.index(name)] = 1.0 / max(1, len(types))
    return tgt


def _combined_severity(meta: dict) -> int:
    """The combined severity of a :func:`~vlmir.degradations.degrade` result: the sum over its types, at most 5
    (0 clean)."""
    return int(min(sum(meta["severity"]), 5)) if meta["types"] else 0


def _image_item(clean: np.ndarray, lq: np.ndarray, meta: dict, source: str) -> dict:
    """A whole-image sample (see :meth:`PairSampler.sample_images`)."""
    return {"lq": lq, "clean": clean, "target": class_target(meta["types"]), "types": list(meta["types"]),
            "severity": _combined_severity(meta), "visibility": int(meta["visibility_score"]), "photo": source}


class PairSampler:
    """Draws (clean, degraded) crops with their labels, reproducibly from ``seed``.

    ``sample(n)`` returns a dict: ``clean`` and ``lq`` float32 tensors (n, 3, crop, crop) in [0, 1], ``target``
    (n, K) soft class labels over :data:`CLASS_NAMES` (uniform over the types of a mixture, ``clear`` for clean),
    ``visibility`` (n,) the engine's visibility score r in 1..5, ``types`` (list of lists), ``severity`` (n,) the
    combined severity (0 clean), ``window`` (n,) the side of the window each crop was cut from (the image the
    degradation was sized to) and ``share`` (n,) the crop's share of its window's degradation: the mean absolute
    change ``|lq - clean|`` over the crop divided by that over the window (1 for clean crops; about 1 for types that
    cover the whole image, from 0 to several for those that cover part of it, such as a cast shadow), and
    ``photo`` (list) the source photo's name or ``"procedural"``.
    """

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.photos = [load_photo(p) for p in config.photos]
        self.grey = [bool(np.abs(p[..., 0] - p[..., 1]).mean() < 1e-4) for p in self.photos]

    def state(self) -> dict:
        """The sampler's RNG state (plain Python values, for checkpoints)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _window(self) -> tuple[np.ndarray, str]:
        """A square training window and its source (a photo name or ``"procedural"``)."""
        cfg, rng = self.config, self.rng
        size = int(rng.integers(cfg.window[0], cfg.window[1] + 1))
        if rng.random() < cfg.p_procedural or not self.photos:
            return procedural_image(rng, size), "procedural"
        i = int(rng.integers(0, len(self.photos)))
        img = self.photos[i]
        h, w = img.shape[:2]
        f = rng.uniform(*cfg.scale)
        f = max(f, size / min(h, w))  # the window must fit
        if f != 1.0:
            img = cv2.resize(img, (max(size, round(w * f)), max(size, round(h * f))),
                             interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        win = img[y : y + size, x : x + size]
        if rng.random() < 0.5:
            win = win[:, ::-1]
        return _jitter(np.ascontiguousarray(win), rng, self.grey[i], cfg.p_highlights), self.config.photos[i]

    def _degrade(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        """``img`` degraded by a spec drawn as the config says (clean share, mixtures, severities, weights)."""
        cfg = self.config
        spec = sample_degradation(self.rng, p_clean=cfg.p_clean, p_mixture=cfg.p_mixture, max_types=cfg.max_types,
                                  severities=cfg.severities, weights=cfg.type_weights)
        randomise = bool(cfg.p_randomised) and bool(self.rng.random() < cfg.p_randomised)  # no draw at 0
        shuffled = (len(spec["types"]) > 1 and bool(cfg.p_random_order)
                    and bool(self.rng.random() < cfg.p_random_order))  # no draw at 0 or for a single type
        return degrade(img, spec["types"], spec["severity"] or 1, seed=spec["seed"], randomise=randomise,
                       order="given" if shuffled else "physical")

    def _degraded_window(self) -> tuple[np.ndarray, np.ndarray, dict, str]:
        win, source = self._window()
        lq, meta = self._degrade(win)
        return win, lq, meta, source

    def sample_images(self, n: int) -> list[dict]:
        """``n`` whole degraded windows, uncropped (the geometry of an image the models see at inference): dicts
        with ``lq`` and ``clean`` float32 (S, S, 3) in [0, 1], S drawn from ``window``, ``target`` (K,),
        ``severity`` and ``visibility`` as in :meth:`sample`, ``types`` and ``photo`` (the source photo's name, or
        ``"procedural"``)."""
        return [_image_item(*self._degraded_window()) for _ in range(n)]

    def sample_photos(self, n: int, short_sides: Sequence[int] = (256,)) -> list[dict]:
        """``n`` whole photos degraded as a whole (the geometry of the held-out protocol and of a user's image):
        a training photo resized so its short side is drawn from ``short_sides``, flipped, colour-jittered, or
        with ``p_procedural`` a square procedural image of that side; degraded as :meth:`sample` draws. Dicts as
        :meth:`sample_images`."""
        cfg, rng = self.config, self.rng
        if not short_sides or min(short_sides) < 16:
            raise ValueError(f"short_sides must list sides >= 16 px, got {list(short_sides)}")
        out = []
        for _ in range(n):
            side = int(short_sides[int(rng.integers(0, len(short_sides)))])
            source = "procedural"
            if rng.random() < cfg.p_procedural or not self.photos:
                img = procedural_image(rng, side)
            else:
                i = int(rng.integers(0, len(self.photos)))
                source = cfg.photos[i]
                img = self.photos[i]
                h, w = img.shape[:2]
                f = side / min(h, w)
                img = cv2.resize(img, (max(side, round(w * f)), max(side, round(h * f))),
                                 interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
                if rng.random() < 0.5:
                    img = img[:, ::-1]
                img = _jitter(np.ascontiguousarray(img.clip(0, 1)), rng, self.grey[i], cfg.p_highlights)
            lq, meta = self._degrade(img)
            out.append(_image_item(img, lq, meta, source))
        return out

    def sample_one(self) -> dict:
        """One crop pair: ``clean`` and ``lq`` (crop, crop, 3), ``types``, ``severity`` (combined), ``visibility``,
        ``window`` and ``share`` (see the class docstring)."""
        cfg = self.config
        win, lq, meta, source = self._degraded_window()
        s = win.shape[0]
        y, x = int(self.rng.integers(0, s - cfg.crop + 1)), int(self.rng.integers(0, s - cfg.crop + 1))
        sl = (slice(y, y + cfg.crop), slice(x, x + cfg.crop))
        change = float(np.abs(lq - win).mean())
        share = float(np.abs(lq[sl] - win[sl]).mean()) / change if meta["types"] and change > 1e-6 else 1.0
        return {"clean": win[sl], "lq": lq[sl], "types": list(meta["types"]), "severity": _combined_severity(meta),
                "visibility": int(meta["visibility_score"]), "window": s, "share": share, "photo": source}

    def sample(self, n: int) -> dict:
        clean, lq, target, vis, sev, types, window, share, photos = [], [], [], [], [], [], [], [], []
        for _ in range(n):
            one = self.sample_one()
            clean.append(one["clean"])
            lq.append(one["lq"])
            target.append(class_target(one["types"]))
            vis.append(one["visibility"])
            sev.append(one["severity"])
            types.append(one["types"])
            window.append(one["window"])
            share.append(one["share"])
            photos.append(one["photo"])

        def stack(arrs: Sequence[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2).copy()).float()

        return {
            "clean": stack(clean),
            "lq": stack(lq).clamp(0, 1),
            "target": torch.from_numpy(np.stack(target)),
            "visibility": torch.tensor(vis, dtype=torch.float32),
            "severity": torch.tensor(sev),
            "types": types,
            "window": torch.tensor(window),
            "share": torch.tensor(share, dtype=torch.float32),
            "photo": photos,
        }
