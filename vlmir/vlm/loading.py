"""Loading transformers VLMs (and text LLMs) from a local folder or the Hugging Face Hub, offline first.

A VLM is a whole repository snapshot (config, processor, tokenizer, weights), not one file, so this resolves a
*folder*: an explicit local directory (always offline), the local Hugging Face cache (``local_files_only=True``,
tried first), or, only when the hub may be contacted, a download with short timeouts. Offline
(``HF_HUB_OFFLINE=1``) with nothing cached, it fails at once with an error naming the repo and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlmir.registry import hub_offline

QUANTIZATIONS = (None, "8bit", "4bit")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

# Files a model snapshot needs; weights in safetensors only (safe loading, see DESIGN.md).
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")


def how_to_provide(repo_id: str) -> str:
    """One sentence telling a user how to make hub repo ``repo_id`` available offline."""
    return (
        f"On a machine with network run `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) and copy "
        f"the Hugging Face cache (~/.cache/huggingface/hub) here, or save the repo to a folder and pass that folder's "
        f"path instead of {repo_id!r}."
    )


def cached_snapshot(repo_id: str, *, revision: str | None = None) -> Path | None:
    """The local cache folder of hub repo ``repo_id`` when its ``config.json`` is cached, else ``None``. No network."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(hit).parent
    return None


def resolve_model_dir(name_or_path: str | os.PathLike, *, revision: str | None = None) -> tuple[Path, str]:
    """Folder holding the model ``name_or_path`` and a label of where it came from (``"local"``/``"cache"``/``"hub"``).

    Raises:
        FileNotFoundError: a local path that does not exist or has no ``config.json``, or a hub repo that is not
            cached while offline (or cannot be fetched); the message names the repo and how to provide it.
    """
    text = os.fspath(name_or_path)
    p = Path(text).expanduser()
    looks_local = p.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model folder {str(p)!r} has no config.json; expected a saved transformers model")
        return p, "local"
    if looks_local:
        raise FileNotFoundError(f"model path {text!r} is not a folder; give a saved transformers model folder or a hub repo id")
    repo_id = text
    snap = cached_snapshot(repo_id, revision=revision)
    if snap is not None:
        return snap, "cache"
    if hub_offline():
        raise FileNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1). "
            + how_to_provide(repo_id)
        )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(SNAPSHOT_PATTERNS), etag_timeout=5)
    except Exception as e:  # any hub/network failure becomes one clear, actionable error
        raise FileNotFoundError(
            f"model {repo_id!r} is not cached and could not be fetched ({type(e).__name__}: {e}). " + how_to_provide(repo_id)
        ) from None
    return Path(folder), "hub"


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``torch.dtype`` for ``dtype``; ``None`` means float32 on CPU and float16 on CUDA."""
    dev = torch.device(device)
    if dtype is None:
        return torch.float16 if dev.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; allowed: float32, float16, bfloat16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def quantization_config(quantization: str | None, device: str | torch.device, dtype: torch.dtype) -> Any:
    """A ``BitsAndBytesConfig`` for ``"8bit"``/``"4bit"`` (CUDA only), ``None`` for no quantization."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not supported; allowed: None, '8bit', '4bit'")
    if quantization is None:
        return None
    if torch.device(device).type != "cuda":
        raise ValueError(
            f"quantization={quantization!r} needs a CUDA device (bitsandbytes); got device={str(device)!r}. "
            "Use quantization=None (fp32) on CPU."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")


def load_vlm(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    quantization: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, Path]:
    """Load ``(model, processor, folder)`` of an image-text-to-text model (``AutoModelForImageTextToText``).

    Args:
        name_or_path: a local model folder or a hub repo id (e.g. ``"llava-hf/llava-1.5-7b-hf"``).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``None`` (float32 on CPU, float16 on CUDA), ``"float32"``, ``"float16"``, ``"bfloat16"``.
        quantization: ``None``, ``"8bit"`` or ``"4bit"`` (bitsandbytes, CUDA only).
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow a repository's own modelling code (off by default).

    Returns:
        The model in eval mode on ``device``, its processor (tokenizer padding on the left, for batching) and the
        folder it was loaded from. Everything loads with ``local_files_only=True`` from that folder.
    """
    torch_dtype = resolve_dtype(dtype, device)
    qcfg = quantization_config(quantization, device, torch_dtype)  # validated before any file is read
    folder, where = resolve_model_dir(name_or_path, revision=revision)
    try:
        return _load_vlm_folder(folder, device=device, torch_dtype=torch_dtype, qcfg=qcfg,
                                trust_remote_code=trust_remote_code)
    except OSError as e:  # a file the folder lacks (e.g. a cache holding config.json but not the weights)
        name = os.fspath(name_or_path)
        hint = how_to_provide(name) if where != "local" else "Save the whole model (save_pretrained) to that folder."
        raise FileNotFoundError(f"model {name!r} at {str(folder)!r} is incomplete ({e}). {hint}") from None


def _load_vlm_folder(folder: Path, *, device: str | torch.device, torch_dtype: torch.dtype, qcfg: Any,
                     trust_remote_code: bool) -> tuple[Any, Any, Path]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"the processor in {str(folder)!r} has no tokenizer; a VLM processor is needed")
    tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True, "trust_remote_code": trust_remote_code}
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map={"": torch.device(device).index or 0})
    model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
    if qcfg is None:
        model = model.to(device)
    model.eval()
    return model, processor, folder


def load_causal_lm(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a text-generation model (``AutoModelForCausalLM``), offline first."""
    torch_dtype = resolve_dtype(dtype, device)
    folder, _ = resolve_model_dir(name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=True).to(device).eval()
    return model, tokenizer
