"""vlmir demo and evaluation space: restore, degradation type, visibility rating, compare, metric tables.

Run ``python app.py``. It honours ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``; ``VLMIR_MAX_PIXELS`` caps uploads,
``VLMIR_DEVICE`` picks the device, ``VLMIR_APP_WARMUP=0`` skips building the default models in the background at
start. On Hugging Face Spaces this is the ``app_file``. Nothing downloads at import; models are built on first use
(or by the warm-up) and cached per name. The UI lives in :mod:`vlmir.app.ui`.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import threading  # noqa: E402

from vlmir.app import service  # noqa: E402
from vlmir.app.ui import create_demo, style_kwargs  # noqa: E402

__all__ = ["create_demo", "main"]


def main() -> None:
    demo = create_demo()
    if os.environ.get("VLMIR_APP_WARMUP", "1") != "0":  # build the default models while the server starts
        threading.Thread(target=service.warm_up, name="vlmir-warm-up", daemon=True).start()
    max_mb = os.environ.get("VLMIR_MAX_UPLOAD_MB", "100")
    demo.queue(max_size=int(os.environ.get("VLMIR_QUEUE_SIZE", "32")), default_concurrency_limit=2).launch(
        max_file_size=f"{max_mb}mb",
        show_error=True,
        allowed_paths=[str(service.output_root())],  # per-request outputs, wherever VLMIR_APP_OUTPUT_DIR puts them
        **style_kwargs(),
    )


if __name__ == "__main__":
    main()
