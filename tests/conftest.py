"""Test-wide settings: nothing may reach the network, and hardware-bound or long tests skip with a reason.

- ``gpu`` tests run only where CUDA is available.
- ``slow`` tests (minutes each: a 4000x3000 restore, FID with a full Inception) run with ``--runslow`` or
  ``VLMIR_RUN_SLOW=1``; CI sets the latter.
- ``browser`` tests skip themselves when Debian's chromium is absent.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    run_slow = config.getoption("--runslow") or os.environ.get("VLMIR_RUN_SLOW", "") in ("1", "true", "yes")
    skip_slow = pytest.mark.skip(reason="slow test (minutes); run with --runslow or VLMIR_RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
