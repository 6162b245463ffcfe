"""Models found by name: one place for what each model is, how it is built and where its weights live.

Every model the command line, the app and the eval module can use is a :class:`ModelSpec` here. A spec names its
task (``restorer``, ``classifier``, ``rater``, ``encoder``), a builder, and its weight source: a file under
``assets/`` (embedded defaults, always offline), a Hugging Face Hub repo and file (fetched lazily with
``hf_hub_download``), or nothing (classical methods). Modules register their models when they are imported; the
registry imports those modules lazily, so ``import vlmir`` stays cheap and never downloads.

The objects a builder returns follow one small contract per task, which the CLI and the app rely on:

- ``restorer``: ``restore(x, *, steps=None, seed=0, tile=None, progress=None) -> Tensor`` with ``x`` float
  ``(1, 3, H, W)`` in [0, 1]; returns the same shape.
- ``classifier``: ``classify(x) -> dict[str, float]`` probabilities over degradation names, summing to 1.
- ``rater``: ``rate(x) -> dict`` with ``score`` (r in [1, 5]), ``vlm_vis`` ((r - 1) / 4) and ``probs`` over
  excellent/good/fair/poor/bad; optionally ``describe(x) -> str``.

Example::

    >>> from vlmir.registry import list_models
    >>> "classical" in list_models(task="restorer")
    True
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_DIR = ASSETS_DIR / "weights"

TASKS = ("restorer", "classifier", "rater", "encoder")

# Modules whose import registers models. Imported on first registry lookup, each at most once; a module that is
# missing (a part of the package not built yet) or fails to import is recorded and reported, never silently dropped.
_PROVIDER_MODULES = (
    "vlmir.models.classical",
    "vlmir.models.embedded",
    "vlmir.pipelines.restoration",
    "vlmir.pipelines.vlmir",
    "vlmir.vlm.rater",
)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one named model.

    Args:
        name: registry name, e.g. ``"daclip"`` or ``"embedded"``.
        task: one of :data:`TASKS`.
        build: ``build(device="cpu", **kwargs) -> object`` following the task's contract (module docstring).
        description: one line for users (CLI ``--help``, app dropdowns).
        source: where the weights come from: ``"assets:<relative path>"``, ``"hf:<repo_id>/<filename>"`` (several
            separated by ``;``) or ``"none"`` for weight-free methods.
        sha256: expected digests of the weight files, by file name, when known.
        license: licence of the weights.
        default: the default model of its task.
        extra: anything else a builder or the app needs (e.g. ``{"diffusion": True}`` to show steps and seed).
    """

    name: str
    task: str
    build: Callable[..., Any]
    description: str = ""
    source: str = "none"
    sha256: dict[str, str] = field(default_factory=dict)
    license: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    available: Callable[[], tuple[bool, str]] | None = None

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` when the model can be built now, else ``(False, reason)`` (e.g. weights absent offline)."""
        if self.available is None:
            return True, ""
        return self.available()


_REGISTRY: dict[str, ModelSpec] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_LOADED = False


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry. Names are unique across tasks."""
    if spec.task not in TASKS:
        raise ValueError(f"task {spec.task!r} is not one of {TASKS}")
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_providers() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _PROVIDER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a part of the package that is not present
            if e.name and mod.startswith(e.name) or e.name == mod:
                _IMPORT_ERRORS[mod] = f"not installed: {e}"
            else:
                _IMPORT_ERRORS[mod] = f"{type(e).__name__}: {e}"
        except Exception as e:  # reported by get_spec when a name is not found
            _IMPORT_ERRORS[mod] = f"{type(e).__name__}: {e}"


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (and ``task``), sorted."""
    _load_providers()
    return sorted(n for n, s in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (task is None or s.task == task))


def get_spec(name: str, task: str | None = None) -> ModelSpec:
    """The spec for ``name``; an unknown name raises ``ValueError`` listing the closest valid names."""
    _load_providers()
    spec = _REGISTRY.get(name)
    if spec is None or (task is not None and spec.task != task):
        valid = list_models(task=task)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        msg = f"unknown {task or 'model'} {name!r}.{hint} Valid names: {', '.join(valid) or '(none)'}."
        if _IMPORT_ERRORS:
            msg += " Some model providers failed to import: " + "; ".join(f"{k}: {v}" for k, v in _IMPORT_ERRORS.items())
        raise ValueError(msg)
    return spec


def default_model(task: str) -> str:
    """Name of the default model for ``task`` (the embedded one where there is one)."""
    _load_providers()
    for name, spec in sorted(_REGISTRY.items()):
        if spec.task == task and spec.default:
            return name
    names = list_models(task=task)
    if not names:
        raise ValueError(f"no {task} model is registered")
    return names[0]


def create_model(name: str | None = None, task: str | None = None, device: str = "cpu", **kwargs: Any) -> Any:
    """Build the model ``name`` (or ``task``'s default) on ``device``.

    Example::

        >>> restorer = create_model("classical")
        >>> restorer.restore  # doctest: +ELLIPSIS
        <bound method ...>
    """
    if name is None:
        if task is None:
            raise ValueError("give a model name or a task")
        name = default_model(task)
    spec = get_spec(name, task)
    # Explicit weights (weights_dir=, *_path=) make the default sources irrelevant: the builder checks those itself.
    explicit = any(k == "weights_dir" or k.endswith("_path") for k, v in kwargs.items() if v is not None)
    if not explicit:
        ok, reason = spec.availability()
        if not ok:
            raise RuntimeError(f"model {name!r} is not available: {reason}")
    return spec.build(device=device, **kwargs)


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_file(repo_id: str, filename: str, *, local_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``filename`` of hub repo ``repo_id``: from ``local_dir``, the local HF cache, or a download.

    Offline (``HF_HUB_OFFLINE=1``) or with no route to the hub, this fails at once with a ``FileNotFoundError``
    that names the repo and file and says how to provide them; it never hangs (short etag timeout).
    """
    if local_dir is not None:
        p = Path(local_dir) / filename
        if p.is_file():
            return p
    from huggingface_hub import hf_hub_download

    how = (
        f"Download {filename!r} from https://huggingface.co/{repo_id} on a machine with network and either put it in "
        f"the Hugging Face cache (huggingface-cli download {repo_id} {filename}) or pass its path explicitly."
    )
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:
        if hub_offline():
            raise FileNotFoundError(f"{repo_id}/{filename} is not in the local cache and the hub is offline. {how}") from None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return Path(hf_hub_download(repo_id, filename, etag_timeout=5))
    except Exception as e:
        raise FileNotFoundError(f"could not fetch {repo_id}/{filename} ({type(e).__name__}: {e}). {how}") from None


def hub_available(repo_id: str, filename: str) -> tuple[bool, str]:
    """Availability check for a hub file without network: present in the local cache, or (online) fetchable."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str) and os.path.isfile(hit):
            return True, ""
    except Exception:
        pass
    if hub_offline():
        return False, f"weights {repo_id}/{filename} are not in the local Hugging Face cache and the hub is offline"
    return True, f"weights {repo_id}/{filename} will be downloaded on first use"
