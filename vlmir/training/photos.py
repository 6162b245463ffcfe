"""The catalogue of natural photos that installed pip packages ship, split three ways: train / select / report.

Every photo here is a file that a pip install really puts on disk (nothing is downloaded on demand). Each entry
names the photo, the pip distribution that ships it, the file's path inside that distribution's install folder,
its split and a few words on the scene.

Splits (fixed by name in :data:`CATALOGUE`, before any model was run on the new photos):

- ``train``: the photos a training run may see. The 18 photos the shipped embedded models were trained on
  (:data:`vlmir.training.data.TRAIN_PHOTOS`, kept so those models stay reproducible) and new ones.
- ``select``: for choosing hyper-parameters, add-ons, thresholds and checkpoints; never trained on. The three old
  held-out photos (:data:`vlmir.training.data.HELDOUT_PHOTOS`) are here, with new ones.
- ``report``: for the numbers a card or README reports and for nothing else: no choice may be made on them. Colour
  photos of scenes unlike each other (animals, buildings, a portrait, sea, a garden, a snowy road), none of them
  seen by the current training.

Files that are on disk but left out, and why: ``skimage/data/clock_motion.png`` (already motion-blurred),
``color.png``, ``phantom.png``, ``chessboard_*``, ``horse.png``, ``logo.png`` (synthetic or silhouettes),
``gradio/test_data/cheetah2.jpg`` (a cut-out on a transparent background), ``cheetah1-copy.jpg`` (a copy),
pyiqa's ``ResultsCalibra/dist_dir`` (distorted on purpose), ``tests/test_efficiency_img_dir/SPAQ_10241.jpg`` (a
noisy night shot, not a clean reference), mahotas' ``nuclear.png`` (fluorescence microscopy, mostly black),
``lena.jpg`` (withdrawn from use by the imaging community), pywt's ``camera`` (the same photo as scikit-image's),
icons, logos, test baselines and plots. Desktop-wallpaper packages are never used: they are kept for outside checks.

Grey photos load as RGB (three equal channels). Example::

    >>> from vlmir.training.photos import list_photos, photo_image
    >>> "lion" in list_photos("report")
    True
    >>> photo_image("lion", 128).shape[:2]
    (128, 128)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

SPLITS: tuple[str, ...] = ("train", "select", "report")


@dataclass(frozen=True)
class Photo:
    """One catalogued photo.

    Args:
        name: stable name used everywhere (configs, JSON, cards).
        distribution: the pip distribution that ships the file (``pip install <distribution>``).
        path: the file's path inside the distribution's install folder (site-packages), ``/``-separated.
        split: ``train``, ``select`` or ``report`` (module docstring).
        scene: a few words on the content.
        key: for ``.npz`` files, the array's key; ``None`` for encoded images.
    """

    name: str
    distribution: str
    path: str
    split: str
    scene: str
    key: str | None = None

    def file(self) -> Path:
        """Where the file is on this machine (it may be absent: see :meth:`available`)."""
        try:
            return Path(str(metadata.distribution(self.distribution).locate_file(self.path)))
        except metadata.PackageNotFoundError:
            return Path(self.path)

    def available(self) -> bool:
        """True when the distribution is installed and the file is on disk."""
        try:
            metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            return False
        return self.file().is_file()


def _p(name: str, dist: str, path: str, split: str, scene: str, key: str | None = None) -> Photo:
    return Photo(name, dist, path, split, scene, key)


_SK, _SKL, _MPL = "scikit-image", "scikit-learn", "matplotlib"
CATALOGUE: tuple[Photo, ...] = (
    # the shipped models' 18 training photos (vlmir.training.data.TRAIN_PHOTOS)
    _p("astronaut", _SK, "skimage/data/astronaut.png", "train", "portrait, flag, spacesuit"),
    _p("rocket", _SK, "skimage/data/rocket.jpg", "train", "rocket on the launch pad, sky"),
    _p("motorcycle_left", _SK, "skimage/data/motorcycle_left.png", "train", "motorcycle indoors, stereo left"),
    _p("motorcycle_right", _SK, "skimage/data/motorcycle_right.png", "train", "motorcycle indoors, stereo right"),
    _p("hubble_deep_field", _SK, "skimage/data/hubble_deep_field.jpg", "train", "galaxies on black"),
    _p("ihc", _SK, "skimage/data/ihc.png", "train", "stained tissue, microscopy"),
    _p("retina", _SK, "skimage/data/retina.jpg", "train", "retina fundus photo"),
    _p("china", _SKL, "sklearn/datasets/images/china.jpg", "train", "temple, trees, sky"),
    _p("flower", _SKL, "sklearn/datasets/images/flower.jpg", "train", "flower close-up"),
    _p("camera", _SK, "skimage/data/camera.png", "train", "cameraman, grey"),
    _p("brick", _SK, "skimage/data/brick.png", "train", "brick wall texture, grey"),
    _p("grass", _SK, "skimage/data/grass.png", "train", "grass texture, grey"),
    _p("gravel", _SK, "skimage/data/gravel.png", "train", "gravel texture, grey"),
    _p("coins", _SK, "skimage/data/coins.png", "train", "coins, grey"),
    _p("moon", _SK, "skimage/data/moon.png", "train", "lunar surface, grey"),
    _p("cell", _SK, "skimage/data/cell.png", "train", "cell, microscopy, grey"),
    _p("page", _SK, "skimage/data/page.png", "train", "printed page, grey"),
    _p("text", _SK, "skimage/data/text.png", "train", "hand-written text, grey"),
    # new training photos
    _p("cheetah_running", "gradio", "gradio/media_assets/images/cheetah.jpg", "train", "running cheetah, panned"),
    _p("groot", "gradio", "gradio/media_assets/images/groot.jpeg", "train", "film still, tree-like face"),
    _p("luispedro", "mahotas", "mahotas/demos/data/luispedro.jpg", "train", "portrait, office window"),
    _p("department_store", "mahotas", "mahotas/demos/data/DepartmentStore.jpg", "train", "dense crowd drawing"),
    _p("aero", "PyWavelets", "pywt/data/aero.npz", "train", "aerial photo, grey", key="data"),
    # select: the old held-out photos and new ones
    _p("chelsea", _SK, "skimage/data/chelsea.png", "select", "cat, close-up"),
    _p("coffee", _SK, "skimage/data/coffee.png", "select", "coffee cup on a table"),
    _p("grace_hopper", _MPL, "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "select", "portrait, uniform"),
    _p("cheetah_face", "gradio", "gradio/media_assets/images/cheetah1.jpg", "select", "cheetah face, close-up"),
    _p("kodak_hats", "pyiqa", "ResultsCalibra/ref_dir/I03.bmp", "select", "coloured hats on a wall, sky"),
    _p("ascent", "PyWavelets", "pywt/data/ascent.npz", "select", "outdoor stairs, people, grey", key="data"),
    # report: no decision may be made on these
    _p("lion", "gradio", "gradio/media_assets/images/lion.jpg", "report", "lions on a rock"),
    _p("tower", "gradio", "gradio/media_assets/images/tower.jpg", "report", "lit tower against a blue sky"),
    _p("quokka", "imgaug", "imgaug/quokka.jpg", "report", "quokka on a path, fence"),
    _p("kodak_portrait", "pyiqa", "ResultsCalibra/ref_dir/I04.bmp", "report", "portrait, red scarf"),
    _p("kodak_boat", "pyiqa", "ResultsCalibra/ref_dir/I06.bmp", "report", "sailing boat on the sea"),
    _p("kodak_houses", "pyiqa", "ResultsCalibra/ref_dir/I08.bmp", "report", "half-timbered houses"),
    _p("kodak_lighthouse", "pyiqa", "ResultsCalibra/ref_dir/I19.bmp", "report", "lighthouse, white fence"),
    _p("sunset_beach", "pyiqa", "tests/test_efficiency_img_dir/frame_7gzdcz9sif0ekg31.jpg", "report",
       "sunset over the sea, a walker"),
    _p("garden_fountain", "pyiqa", "tests/test_efficiency_img_dir/frame_4wrwr48cdk6rbcjl.jpg", "report",
       "formal garden, fountain"),
    _p("snowy_road", "pyiqa", "tests/test_efficiency_img_dir/frame_9ogwhvvy7gfj6jzh.jpg", "report",
       "cars on a snow-covered road"),
)

_BY_NAME: dict[str, Photo] = {p.name: p for p in CATALOGUE}


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def get_photo(name: str) -> Photo:
    """The catalogue entry of ``name``; an unknown name raises ``ValueError`` listing the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown photo {name!r}; valid names: {', '.join(sorted(_BY_NAME))}") from None


def list_photos(split: str | None = None, *, available_only: bool = True) -> tuple[str, ...]:
    """Names of the photos of ``split`` (all splits when ``None``), in catalogue order.

    Args:
        split: ``train``, ``select``, ``report`` or ``None``.
        available_only: keep only photos whose file is on disk (a package may not be installed).
    """
    _check_split(split)
    return tuple(p.name for p in CATALOGUE
                 if (split is None or p.split == split) and (not available_only or p.available()))


def missing_photos(split: str | None = None) -> tuple[str, ...]:
    """Names of catalogued photos of ``split`` whose package or file is absent here (``pip install`` them)."""
    _check_split(split)
    return tuple(p.name for p in CATALOGUE if (split is None or p.split == split) and not p.available())


def photo_file(name: str) -> Path:
    """Path of photo ``name`` on disk; ``FileNotFoundError`` naming the package when it is absent."""
    p = get_photo(name)
    if not p.available():
        raise FileNotFoundError(f"photo {name!r} is {p.path!r} of the pip package {p.distribution!r}, which is not "
                                f"installed here (pip install {p.distribution})")
    return p.file()


@lru_cache(maxsize=64)
def load_photo(name: str) -> np.ndarray:
    """Photo ``name`` as float32 ``(H, W, 3)`` RGB in [0, 1], through :func:`vlmir.io.load_image` (grey -> RGB).
    Cached: do not modify the returned array in place."""
    from vlmir.io import load_image, to_numpy

    p, path = get_photo(name), photo_file(name)
    if p.key is not None:
        with np.load(path) as z:
            src = z[p.key]
        return to_numpy(load_image(src))
    return to_numpy(load_image(path))


def resize_short_side(img: np.ndarray, short_side: int) -> np.ndarray:
    """``img`` (H, W, 3) resized so its shorter side is ``short_side`` px (area when shrinking, cubic when
    enlarging), aspect kept, clipped to [0, 1], float32."""
    import cv2

    if isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)) or short_side < 8:
        raise ValueError(f"short_side must be an int >= 8, got {short_side!r}")
    h, w = img.shape[:2]
    f = short_side / min(h, w)
    size = (max(short_side, round(w * f)), max(short_side, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, size, interpolation=interp).clip(0, 1).astype(np.float32)


def photo_image(name: str, short_side: int = 256) -> np.ndarray:
    """Photo ``name`` resized so its shorter side is ``short_side`` px: float32 (H, W, 3) in [0, 1]."""
    return resize_short_side(load_photo(name), short_side)


def photo_split(name: str) -> str:
    """The split of photo ``name``."""
    return get_photo(name).split
