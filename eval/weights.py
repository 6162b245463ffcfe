"""Where every metric's weights live, and running pyiqa offline without surprises.

pyiqa 0.1.16 fetches its files lazily at metric construction time, from three places that all sit under the torch
hub directory (``torch.hub.get_dir()``, i.e. ``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``):

- ``<hub>/pyiqa/<file>``: pyiqa's own checkpoints (``pyiqa.utils.download_util.load_file_from_url`` with
  ``DEFAULT_CACHE_DIR = os.path.join(torch.hub.get_dir(), "pyiqa")``, evaluated once when pyiqa is imported); the
  files come from the hub repo ``chaofengc/IQA-PyTorch-Weights``.
- ``<hub>/checkpoints/<file>``: torchvision ImageNet backbones (LPIPS' AlexNet/VGG), fetched by
  ``torch.hub.load_state_dict_from_url``.
- ``<hub>/clip/<file>``: OpenAI CLIP checkpoints (CLIP-IQA's RN50, LIQE's ViT-B/32), fetched by pyiqa's vendored
  ``clip_model._download``, which checks the SHA-256 embedded in the URL and re-downloads on a mismatch.

Two more traps: NIMA builds its timm backbone with ``pretrained=True`` (a Hugging Face Hub download of ImageNet
weights that the NIMA checkpoint then overwrites completely, strict load), and Q-Align loads
``q-future/one-align`` with ``from_pretrained`` (Hugging Face cache only, ``$HF_HOME``).

:func:`check_weights` tells, before anything is built, which files a metric still lacks and exactly where each
must go; :func:`offline_pyiqa` is the context the metrics are built in: pyiqa looks in the chosen hub directory, every
download path raises at once with a clear message instead of touching the network, NIMA's redundant backbone
download is skipped, and LIQE's text-feature cache goes to a writable directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PYIQA_REPO = "chaofengc/IQA-PyTorch-Weights"

KINDS = ("pyiqa", "checkpoints", "clip", "hf")


class MetricUnavailable(RuntimeError):
    """A metric cannot be built here (missing weights, or a missing dependency); ``--skip-unavailable`` skips it."""


class WeightsUnavailable(MetricUnavailable):
    """A metric cannot be built because a weight file is missing (raised before any network access)."""


CLIP_IMPORT_HINT = (
    "pyiqa's CLIP metrics (clipiqa, liqe, ...) import the openai-clip package `clip`, which imports `pkg_resources`; "
    "setuptools>=81 no longer ships it: pip install 'setuptools<81' (pinned in requirements.txt)"
)


@contextlib.contextmanager
def clear_import_errors(metric: str) -> Iterator[None]:
    """Turn openai-clip's ``pkg_resources`` import failure into a :class:`MetricUnavailable` that says what to do."""
    try:
        yield
    except ImportError as e:
        if e.name in ("pkg_resources", "clip") or "pkg_resources" in str(e):
            raise MetricUnavailable(f"metric {metric!r} cannot be built: {e}. {CLIP_IMPORT_HINT}") from e
        raise


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs.

    Args:
        filename: file name as pyiqa / torchvision / CLIP look it up.
        kind: one of :data:`KINDS`: the sub-directory of the hub dir it lives in (``hf``: a Hugging Face repo).
        url: where to download it on a machine with network.
        sha256: expected digest where the loader checks one (OpenAI CLIP), else ``""``.
        repo_id: Hugging Face repo for ``kind == "hf"``.
    """

    filename: str
    kind: str
    url: str
    sha256: str = ""
    repo_id: str = ""


def _pyiqa(filename: str) -> WeightFile:
    return WeightFile(filename, "pyiqa", f"https://huggingface.co/{PYIQA_REPO}/resolve/main/{filename}")


def _tv(filename: str) -> WeightFile:
    return WeightFile(filename, "checkpoints", f"https://download.pytorch.org/models/{filename}")


_CLIP_SHA = {
    "RN50.pt": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
    "ViT-B-32.pt": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
}


def _clip(filename: str) -> WeightFile:
    sha = _CLIP_SHA[filename]
    return WeightFile(filename, "clip", f"https://openaipublic.azureedge.net/clip/models/{sha}/{filename}", sha256=sha)


def _hf(repo_id: str, filename: str) -> WeightFile:
    return WeightFile(filename, "hf", f"https://huggingface.co/{repo_id}/resolve/main/{filename}", repo_id=repo_id)


# Metric (pyiqa name) -> the files pyiqa 0.1.16 loads for its default config (``pyiqa/default_model_configs.py`` and
# the ``default_model_urls`` of each ``pyiqa/archs/*_arch.py``). An empty tuple: the metric is computed from the
# pixels alone. ``tests/test_eval_weights.py`` checks these names against the installed pyiqa.
METRIC_WEIGHTS: dict[str, tuple[WeightFile, ...]] = {
    # weight-free (full reference)
    "psnr": (),
    "psnry": (),
    "ssim": (),
    "ssimc": (),
    "ms_ssim": (),
    "cw_ssim": (),
    "fsim": (),
    "vif": (),
    "gmsd": (),
    "nlpd": (),
    "vsi": (),
    "mad": (),
    # weight-free (no reference)
    "piqe": (),
    "entropy": (),
    # classical NR metrics whose fitted parameters are downloaded
    "niqe": (_pyiqa("niqe_modelparameters.mat"),),
    "brisque": (_pyiqa("brisque_svm_weights.pth"),),
    "ilniqe": (_pyiqa("ILNIQE_templateModel.mat"),),
    "nrqm": (_pyiqa("NRQM_model.mat"),),
    "pi": (_pyiqa("NRQM_model.mat"), _pyiqa("niqe_modelparameters.mat")),
    "cnniqa": (_pyiqa("CNNIQA_koniq10k-e6f14c91.pth"),),
    # learned NR metrics of the WResVLM tables
    "nima": (_pyiqa("NIMA_InceptionV2_ava-b0c77c00.pth"),),  # backbone weights are inside this checkpoint
    "nima-koniq": (_pyiqa("NIMA_koniq-250367ae.pth"),),
    "nima-spaq": (_pyiqa("NIMA-spaq-46a7fcb7.pth"),),
    "musiq": (_pyiqa("musiq_koniq_ckpt-e95806b9.pth"),),
    "musiq-ava": (_pyiqa("musiq_ava_ckpt-e8d3f067.pth"),),
    "musiq-spaq": (_pyiqa("musiq_spaq_ckpt-358bb6af.pth"),),
    "musiq-paq2piq": (_pyiqa("musiq_paq2piq_ckpt-364c0c84.pth"),),
    "clipiqa": (_clip("RN50.pt"),),
    # pyiqa keeps the URL-quoted name on disk ('+' -> '%2B': load_file_from_url does not unquote)
    "clipiqa+": (_clip("RN50.pt"), _pyiqa("CLIP-IQA%2B_learned_prompts-603f3273.pth")),
    "liqe": (_clip("ViT-B-32.pt"), _pyiqa("liqe_koniq.pt")),
    "liqe_mix": (_clip("ViT-B-32.pt"), _pyiqa("liqe_mix.pt")),
    "qalign": (_hf("q-future/one-align", "config.json"),),
    # full reference, learned
    "lpips": (_tv("alexnet-owt-7be5be79.pth"), _pyiqa("LPIPS_v0.1_alex-df73285e.pth")),
    "lpips-vgg": (_tv("vgg16-397923af.pth"), _pyiqa("LPIPS_v0.1_vgg-a78928a0.pth")),
    "dists": (_tv("vgg16-397923af.pth"), _pyiqa("DISTS_weights-f5e65c96.pth")),
    # folder level
    "fid": (_pyiqa("pt_inception-2015-12-05-6726825d.pth"),),
}


def hub_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """The torch-hub style directory metrics load from: ``weights_dir`` or ``torch.hub.get_dir()`` ($TORCH_HOME/hub)."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser().resolve()
    import torch.hub

    return Path(torch.hub.get_dir())


def weight_path(wf: WeightFile, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``wf`` must be (for ``kind == "hf"``: the repo's snapshot file in the Hugging Face cache, if any)."""
    if wf.kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(wf.repo_id, wf.filename)
        return Path(hit) if isinstance(hit, str) else Path(f"<HF cache>/{wf.repo_id}/{wf.filename}")
    return hub_dir(weights_dir) / wf.kind / wf.filename


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_weights(metric: str, weights_dir: str | os.PathLike | None = None,
                    options: dict | None = None) -> list[str]:
    """Messages for each file ``metric`` needs that is absent (or fails its checksum); ``[]`` when all are there.

    Metrics that are not in :data:`METRIC_WEIGHTS` are not checked here (``[]``); the download guard of
    :func:`offline_pyiqa` still stops them with a clear message if they try to fetch something. With a pyiqa option
    ``pretrained_model_path`` (``options``) that file replaces the metric's own pyiqa checkpoint.
    """
    problems = []
    files = METRIC_WEIGHTS.get(metric, ())
    explicit = (options or {}).get("pretrained_model_path")
    if explicit:
        if not Path(explicit).is_file():
            problems.append(f"metric {metric!r}: pretrained_model_path {str(explicit)!r} is not a file")
        files = tuple(wf for wf in files if wf.kind != "pyiqa")
    for wf in files:
        path = weight_path(wf, weights_dir)
        if wf.kind == "hf":
            if not path.is_file():
                problems.append(
                    f"metric {metric!r} needs the Hugging Face repo {wf.repo_id} ({wf.filename} not in the local cache); "
                    f"run `huggingface-cli download {wf.repo_id}` on a machine with network and copy the cache "
                    f"($HF_HOME, default ~/.cache/huggingface) here"
                )
            continue
        if not path.is_file():
            problems.append(
                f"metric {metric!r} needs {wf.filename}: put it at {path} (download from {wf.url}; "
                f"use --weights-dir DIR for DIR/{wf.kind}/{wf.filename}, or set TORCH_HOME so that "
                f"$TORCH_HOME/hub/{wf.kind}/{wf.filename} exists)"
            )
        elif wf.sha256 and _sha256(path) != wf.sha256:
            problems.append(
                f"metric {metric!r}: {path} does not have the SHA-256 {wf.sha256} that the CLIP loader checks "
                f"(it would try to re-download it); replace it with the file from {wf.url}"
            )
    return problems


def check_weights(metric: str, weights_dir: str | os.PathLike | None = None, options: dict | None = None) -> None:
    """Raise :class:`WeightsUnavailable` naming every missing file of ``metric`` and where to put it."""
    problems = missing_weights(metric, weights_dir, options)
    if problems:
        raise WeightsUnavailable("; ".join(problems))


def _blocked(what: str, url: str, dst: str | os.PathLike | None) -> WeightsUnavailable:
    where = f" to {dst}" if dst else ""
    return WeightsUnavailable(
        f"{what} tried to download {url}{where}; eval never downloads weights. Fetch that file on a machine with "
        f"network and place it there (see eval/weights.py and --weights-dir / TORCH_HOME)"
    )


class _NoPretrainedTimm:
    """Stand-in for the ``timm`` module inside ``pyiqa.archs.nima_arch``: builds backbones without ImageNet weights.

    NIMA's checkpoint holds every backbone parameter and is loaded with ``strict=True`` right after, so skipping the
    backbone download changes no number; it only removes a Hugging Face Hub access.
    """

    def __init__(self, timm_module):
        self._timm = timm_module

    def create_model(self, *args, **kwargs):
        kwargs["pretrained"] = False
        return self._timm.create_model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._timm, name)


@contextlib.contextmanager
def offline_pyiqa(weights_dir: str | os.PathLike | None = None, *, writable_cache: str | os.PathLike | None = None,
                  metric: str | None = None) -> Iterator[Path]:
    """Context for building pyiqa metrics offline from ``weights_dir`` (a torch-hub style directory).

    Inside it pyiqa's cache dir is ``<hub>/pyiqa``, torchvision and CLIP look in ``<hub>/checkpoints`` and
    ``<hub>/clip``, and any download raises :class:`WeightsUnavailable` at once. LIQE's text-feature cache
    (written on first use) goes to ``<hub>/pyiqa`` when that is writable, else to ``writable_cache``.
    Everything is restored on exit. Yields the hub directory. ``metric`` limits the arch modules patched (and so
    imported) to those that metric uses; ``None`` patches all.
    """
    import importlib
    import sys

    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util
    import torch.hub

    def wanted(module: str, prefix: str):
        # patch an arch module only where it matters: the metric uses it, or it is loaded already (importing LIQE's
        # module pulls in openai-clip, NIMA's pulls in timm)
        full = f"pyiqa.archs.{module}"
        if metric is None or metric.startswith(prefix) or full in sys.modules:
            with clear_import_errors(metric or module):
                return importlib.import_module(full)
        return None

    liqe_arch = wanted("liqe_arch", "liqe")
    nima_arch = wanted("nima_arch", "nima")

    hub = hub_dir(weights_dir)
    pyiqa_dir = hub / "pyiqa"
    liqe_dir = pyiqa_dir
    if writable_cache is not None and not (
        (pyiqa_dir / "liqe_text_feat.pt").is_file() or (pyiqa_dir.is_dir() and os.access(pyiqa_dir, os.W_OK))
    ):
        liqe_dir = Path(writable_cache)
        liqe_dir.mkdir(parents=True, exist_ok=True)

    def no_url_download(url, dst, *args, **kwargs):
        raise _blocked("pyiqa/torchvision", url, dst)

    def clip_from_dir(url: str, root: str) -> str:
        # Same lookup as pyiqa's clip_model._download (file name from the URL, SHA-256 from its parent path), no fetch.
        target = hub / "clip" / os.path.basename(url)
        expected = url.split("/")[-2]
        if target.is_file() and _sha256(target) == expected:
            return str(target)
        if target.is_file():
            raise WeightsUnavailable(f"{target} does not match the SHA-256 {expected} of {url}; replace it with that file")
        raise _blocked("CLIP", url, target)

    patches = [
        (download_util, "DEFAULT_CACHE_DIR", str(pyiqa_dir)),
        (download_util, "download_url_to_file", no_url_download),
        (torch.hub, "download_url_to_file", no_url_download),
        (clip_model, "_download", clip_from_dir),
    ]
    if liqe_arch is not None:
        patches.append((liqe_arch, "DEFAULT_CACHE_DIR", str(liqe_dir)))
    if nima_arch is not None:
        patches.append((nima_arch, "timm", _NoPretrainedTimm(nima_arch.timm)))
    # Hugging Face downloads (timm backbones of other metrics, Q-Align's from_pretrained): cache only, fail fast
    import huggingface_hub.constants as hf_constants

    patches.append((hf_constants, "HF_HUB_OFFLINE", True))
    saved = {(mod, attr): getattr(mod, attr) for mod, attr, _ in patches}
    saved_hub = getattr(torch.hub, "_hub_dir", None)  # set_dir has no getter for "unset"; restore the raw value
    try:
        for mod, attr, value in patches:
            setattr(mod, attr, value)
        torch.hub.set_dir(str(hub))
        yield hub
    finally:
        for (mod, attr), value in saved.items():
            setattr(mod, attr, value)
        torch.hub._hub_dir = saved_hub
