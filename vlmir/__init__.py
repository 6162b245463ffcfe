"""vlmir: vision-language-model guided image restoration.

The public API is small and cheap to import (torch loads on first use, nothing is downloaded at import time)::

    import vlmir
    x = vlmir.load_image("photo.jpg")                 # float32 (1, 3, H, W) in [0, 1]
    restorer = vlmir.create_model(task="restorer")     # embedded default, offline
    y = restorer.restore(x)
    vlmir.save_image(y, "restored.png")
"""

from vlmir.registry import create_model, default_model, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "default_model", "list_models", "load_image", "save_image"]


def __getattr__(name):
    # vlmir.io imports torch; keep `import vlmir.degradations` (data-loader workers) free of that cost.
    if name in ("load_image", "save_image"):
        from vlmir import io

        return getattr(io, name)
    raise AttributeError(f"module 'vlmir' has no attribute {name!r}")
