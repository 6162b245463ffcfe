"""Tests of the Gradio demo (app.py, vlmir/app): every endpoint through gradio_client against ``python app.py``
launched as a subprocess on a free port, bad inputs, concurrency, the services, and (marked ``browser``) a
headless Chromium session that uses every tab and saves screenshots.

The server process registers three small test models next to whatever the package registers (``test-diffusion``
restorer with steps and seed, ``test-classifier``, ``test-rater`` with ``describe``) plus an unavailable one, so the
endpoints are checked against exact values computed here by the same deterministic functions.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCREENS = Path("/tmp/vlmir_screens")
CHROMIUM = "/usr/bin/chromium"
LIMIT = 20_000_000  # VLMIR_MAX_PIXELS of the test server


# ------------------------------------------------------------------------------------------------ test models


class TestDiffusion:
    """A seeded 'sampler': blends towards the image mean over ``steps`` steps, adding seeded noise each step."""

    name = "test-diffusion"
    random_weights = True

    def restore(self, x, *, steps=None, seed=0, tile=None, progress=None):
        steps = steps or 4
        g = torch.Generator().manual_seed(int(seed))
        y = x.clone()
        if tile:  # blend towards each tile's own mean, so tiling shows in the output
            t = int(tile)
            target = torch.nn.functional.avg_pool2d(x, t, ceil_mode=True)
            target = target.repeat_interleave(t, 2).repeat_interleave(t, 3)[..., : x.shape[2], : x.shape[3]]
        else:
            target = x.mean()
        for i in range(steps):
            y = 0.9 * y + 0.1 * target + 0.01 * torch.randn(y.shape, generator=g)
            if progress is not None:
                progress(i + 1, steps)
        return y.clamp(0, 1)


class TestClassifier:
    """Probabilities from brightness: dark images are low-light, bright ones hazy, the rest noisy."""

    name = "test-classifier"
    random_weights = False

    def classify(self, x):
        m = float(x.mean())
        logits = torch.tensor([4 * (0.5 - m), 4 * (m - 0.5), 0.0])
        p = torch.softmax(logits, 0)
        return {"low-light": float(p[0]), "hazy": float(p[1]), "noisy": float(p[2])}


class TestRater:
    """Level probabilities from brightness (brighter = better); r = sum_i i * p_i as in WResVLM."""

    name = "test-rater"
    random_weights = False

    def rate(self, x):
        m = float(x.mean())
        logits = torch.tensor([m * 4 - 2 * k * (1 - m) for k in range(5)])  # excellent ... bad
        p = torch.softmax(logits, 0).tolist()
        probs = dict(zip(("excellent", "good", "fair", "poor", "bad"), p, strict=True))
        r = sum(i * probs[lv] for i, lv in zip((5, 4, 3, 2, 1), probs, strict=True))
        return {"score": r, "vlm_vis": (r - 1) / 4, "probs": probs}

    def describe(self, x):
        return f"a test scene of mean brightness {float(x.mean()):.3f}"


def register_test_models() -> None:
    from vlmir.registry import ModelSpec, list_models, register

    list_models()  # load the package's providers first, so ours come on top of them
    specs = [
        ModelSpec(
            "test-diffusion",
            "restorer",
            lambda device="cpu", **k: TestDiffusion(),
            "test sampler",
            extra={"diffusion": True, "steps": 4, "max_steps": 10},
        ),
        ModelSpec("test-classifier", "classifier", lambda device="cpu", **k: TestClassifier(), "test classifier"),
        ModelSpec("test-rater", "rater", lambda device="cpu", **k: TestRater(), "test rater"),
        ModelSpec(
            "test-offline",
            "restorer",
            lambda device="cpu", **k: None,
            "needs hub weights",
            available=lambda: (False, "weights org/repo/model.pt are not in the local cache"),
        ),
    ]
    for s in specs:
        register(s, overwrite=True)


TEST_MODEL_NAMES = ("test-diffusion", "test-classifier", "test-rater", "test-offline", "test-counted")


@pytest.fixture
def test_models():
    """The test models in this process's registry for one test, removed afterwards (other test files in the same
    session see the package's registry unchanged)."""
    from vlmir import registry

    register_test_models()
    yield
    for name in TEST_MODEL_NAMES:
        registry._REGISTRY.pop(name, None)


def serve() -> None:
    """Entry point of the test server process: ``python app.py`` plus the test models."""
    register_test_models()
    import runpy

    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


# ------------------------------------------------------------------------------------------------ fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    out = tmp_path_factory.mktemp("app_out")
    env = dict(
        os.environ,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        VLMIR_MAX_PIXELS=str(LIMIT),
        VLMIR_APP_OUTPUT_DIR=str(out),
        VLMIR_EVAL_ROOTS=str(tmp_path_factory.getbasetemp()),
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        VLMIR_APP_WARMUP="0",
    )
    log = open(out / "server.log", "w")
    code = f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]; import test_app; test_app.serve()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(out), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("app did not start:\n" + (out / "server.log").read_text()) from None
            time.sleep(0.5)
    yield {"url": url, "out": out, "proc": proc}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(d / "rgb.png")
    Image.fromarray(np.full((40, 40, 3), 30, np.uint8)).save(d / "dark.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 16:, 3] = 255  # left half transparent -> white, right half opaque red-ish
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    grey16 = np.full((24, 24), 40000, np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(d / "one.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    (d / "text.jpg").write_text("this is not an image, just text renamed to .jpg\n")
    Image.new("L", (12000, 9000), 0).save(d / "huge.png", compress_level=1)
    return d


def _f(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def _png(path) -> np.ndarray:
    assert str(path).endswith(".png")
    return np.array(Image.open(path).convert("RGB"))


def _app_error(client, *args, api_name):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


# -------------------------------------------------------------------------------------------------- endpoints


def test_endpoints_take_an_image_first(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for ep in ("/restore", "/classify", "/rate", "/compare"):
        assert ep in api, sorted(api)
        first = api[ep]["parameters"][0]
        assert first["parameter_name"] == "image" and first["component"].lower() == "image"
    assert "/_restorer_settings" not in api  # UI-only events stay private


def test_restore_seeded_diffusion_is_reproducible_and_labelled_random(client, images):
    x = torch.from_numpy(_png(images / "rgb.png")).permute(2, 0, 1)[None].float() / 255
    (inp, out), dl, info = client.predict(
        _f(images / "rgb.png"), "test-diffusion", 6, 3, 0, "auto", api_name="/restore"
    )
    assert np.array_equal(_png(inp), _png(images / "rgb.png"))  # the "before" is the upload, losslessly
    expect = TestDiffusion().restore(x, steps=6, seed=3)
    got = _png(out).astype(np.float32) / 255
    np.testing.assert_allclose(got, expect[0].permute(1, 2, 0).numpy(), atol=1.01 / 255)
    assert np.array_equal(_png(dl), _png(out))
    assert "test-diffusion" in info and "RANDOM weights" in info
    (_, out2), _, _ = client.predict(_f(images / "rgb.png"), "test-diffusion", 6, 3, 0, "auto", api_name="/restore")
    (_, out3), _, _ = client.predict(_f(images / "rgb.png"), "test-diffusion", 6, 4, 0, "auto", api_name="/restore")
    assert np.array_equal(_png(out2), _png(out))
    assert not np.array_equal(_png(out3), _png(out))


def test_restore_passes_the_tile_size(client, images):
    x = torch.from_numpy(_png(images / "rgb.png")).permute(2, 0, 1)[None].float() / 255
    (_, out), _, _ = client.predict(_f(images / "rgb.png"), "test-diffusion", 2, 0, 64, "auto", api_name="/restore")
    expect = TestDiffusion().restore(x, steps=2, seed=0, tile=32 * 2)
    np.testing.assert_allclose(_png(out) / 255, expect[0].permute(1, 2, 0).numpy(), atol=1.01 / 255)
    msg = _app_error(client, _f(images / "rgb.png"), "test-diffusion", 2, 0, 10, "auto", api_name="/restore")
    assert "tile size must be in [64, 4096]" in msg


def _package_models(task):
    from vlmir.app import service

    return [
        c.name
        for c in service.model_choices(task)
        if c.available and "download" not in c.reason and not c.name.startswith("test-")
    ]


def test_package_models_serve_every_endpoint(client, images):
    """Whatever the package registers (embedded defaults, classical, ...) answers through the app."""
    restorers, classifiers, raters = (_package_models(t) for t in ("restorer", "classifier", "rater"))
    if not restorers:
        pytest.skip("no package restorer is available")
    for name in restorers:
        (inp, out), _, info = client.predict(_f(images / "rgb.png"), name, 0, 0, 0, "noisy", api_name="/restore")
        assert _png(out).shape == _png(inp).shape == (48, 64, 3), name
        assert f"**{name}** restored a 64×48 image" in info
    for name in classifiers:
        label, plot, _ = client.predict(_f(images / "rgb.png"), name, api_name="/classify")
        rows = plot["value"]["data"] if "value" in plot else plot["data"]
        probs = {r[0]: r[1] for r in rows}  # the bar chart holds every type, the label the top 3
        assert len(probs) >= 10 and sum(probs.values()) == pytest.approx(1.0, abs=1e-2), name
        assert label["label"] == max(probs, key=probs.get)
    for name in raters:
        info, plot, _ = client.predict(_f(images / "rgb.png"), name, False, api_name="/rate")
        m = re.search(r"r = ([0-9.]+) / 5 .* VLM-Vis = ([0-9.]+)", info)
        r, vis = float(m.group(1)), float(m.group(2))
        assert 1 <= r <= 5 and vis == pytest.approx((r - 1) / 4, abs=2e-3), name
    gallery, table, _ = client.predict(_f(images / "rgb.png"), restorers[:2], 0, 0, "noisy", api_name="/compare")
    assert [row[0] for row in table["data"]] == ["input", *restorers[:2]]


def test_the_pixel_limit_is_shown_in_the_ui(server):
    import urllib.request

    config = urllib.request.urlopen(server["url"] + "config", timeout=10).read().decode()
    assert "up to 20 MP (VLMIR_MAX_PIXELS)" in config


def test_restore_classical_given_type_keeps_size_and_changes_pixels(client, images):
    from vlmir.registry import list_models

    if "classical" not in list_models(task="restorer"):
        pytest.skip("the classical restorer is not registered")
    (inp, out), _, info = client.predict(_f(images / "rgb.png"), "classical", 0, 0, 0, "noisy", api_name="/restore")
    a, b = _png(inp), _png(out)
    assert a.shape == b.shape == (48, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5  # non-local means smooths uniform noise a lot
    assert b.std() < a.std()
    assert "RANDOM" not in info


def test_restore_refuses_unavailable_and_unknown_models(client, images):
    msg = _app_error(client, _f(images / "rgb.png"), "test-offline", 0, 0, 0, "auto", api_name="/restore")
    assert "not available" in msg and "org/repo/model.pt" in msg


def test_hub_raters_offline_say_why(client, images):
    from vlmir.registry import list_models

    hub = [n for n in list_models(task="rater") if n.startswith(("llava", "smolvlm"))]
    if not hub:
        pytest.skip("no hub VLM rater is registered")
    t = time.time()
    msg = _app_error(client, _f(images / "dark.png"), hub[0], True, api_name="/rate")
    assert "not available" in msg and "offline" in msg and time.time() - t < 10


def test_classify_returns_every_type_with_the_models_probabilities(client, images):
    label, plot, info = client.predict(_f(images / "dark.png"), "test-classifier", api_name="/classify")
    expect = TestClassifier().classify(torch.full((1, 3, 40, 40), 30 / 255))
    assert label["label"] == "low-light"
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert got.keys() == expect.keys()
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-6)
    assert "low-light" in info
    rows = plot["value"]["data"] if "value" in plot else plot["data"]
    assert len(rows) == 3


def test_rate_gives_r_vlm_vis_levels_and_description(client, images):
    info, plot, text = client.predict(_f(images / "dark.png"), "test-rater", True, api_name="/rate")
    expect = TestRater().rate(torch.full((1, 3, 40, 40), 30 / 255))
    assert f"r = {expect['score']:.3f}" in info and f"VLM-Vis = {expect['vlm_vis']:.3f}" in info
    rows = plot["value"]["data"] if "value" in plot else plot["data"]
    got = {r[0]: r[1] for r in rows}
    assert list(got) == ["excellent", "good", "fair", "poor", "bad"]
    for k, v in expect["probs"].items():
        assert got[k] == pytest.approx(v, abs=1e-4)
    assert text == "a test scene of mean brightness 0.118"
    _, _, text2 = client.predict(_f(images / "dark.png"), "test-rater", False, api_name="/rate")
    assert "tick" in text2


def test_compare_runs_each_method_and_scores_without_reference(client, images):
    gallery, table, info = client.predict(_f(images / "rgb.png"), ["test-diffusion"], 4, 1, "auto", api_name="/compare")
    assert len(gallery) == 2
    assert gallery[0]["caption"].startswith("input:") and gallery[1]["caption"].startswith("test-diffusion:")
    assert "RANDOM WEIGHTS" in gallery[1]["caption"]
    headers, data = table["headers"], table["data"]
    assert headers[0] == "method" and [r[0] for r in data] == ["input", "test-diffusion"]
    assert "PIQE" in headers and "VLM-Vis" in headers
    import pyiqa

    x = torch.from_numpy(_png(images / "rgb.png")).permute(2, 0, 1)[None].float() / 255
    piqe = float(pyiqa.create_metric("piqe", device="cpu")(x))
    assert data[0][headers.index("PIQE")] == pytest.approx(piqe, abs=1e-3)
    assert "↓" in info


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("corrupt.png", "not a readable image"),
        ("text.jpg", "not a readable image"),
        ("huge.png", "12000x9000 = 108.0 MP, above the limit of 20.0 MP"),
    ],
)
def test_bad_uploads_get_a_clear_error(client, images, name, expect):
    for api, args in (
        ("/restore", ("test-diffusion", 4, 0, 0, "auto")),
        ("/classify", ("test-classifier",)),
        ("/rate", ("test-rater", False)),
    ):
        msg = _app_error(client, _f(images / name), *args, api_name=api)
        assert expect in msg, msg
        assert name in msg and "/tmp/gradio" not in msg  # names the user's file, not the server path


def test_odd_but_valid_uploads_get_results(client, images):
    (inp, out), _, _ = client.predict(_f(images / "rgba.png"), "test-diffusion", 4, 0, 0, "auto", api_name="/restore")
    a = _png(inp)
    assert (a[:, :16] == 255).all() and (a[:, 16:] == [200, 0, 0]).all()  # alpha composited on white
    (inp, out), _, _ = client.predict(_f(images / "grey16.png"), "test-diffusion", 4, 0, 0, "auto", api_name="/restore")
    assert (_png(inp) == round(40000 / 65535 * 255)).all()  # 16-bit grey scaled by 65535, not clipped
    (inp, out), _, _ = client.predict(_f(images / "one.png"), "test-diffusion", 4, 0, 0, "auto", api_name="/restore")
    assert _png(out).shape == (1, 1, 3)
    label, _, _ = client.predict(_f(images / "one.png"), "test-classifier", api_name="/classify")
    assert label["label"] in ("low-light", "hazy", "noisy")


def test_bad_settings_get_a_clear_error(client, images):
    msg = _app_error(client, _f(images / "rgb.png"), "test-diffusion", 50, 0, 0, "auto", api_name="/restore")
    assert "steps must be in [1, 10]" in msg
    msg = _app_error(client, _f(images / "rgb.png"), [], 0, 0, "auto", api_name="/compare")
    assert "at least one method" in msg


def test_concurrent_requests_never_share_output_files(client, images):
    results: list = [None, None]

    def run(i):
        results[i] = client.predict(_f(images / "rgb.png"), "test-diffusion", 4, i, 0, "auto", api_name="/restore")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    (_, o0), _, _ = results[0]
    (_, o1), _, _ = results[1]
    assert o0 != o1 and not np.array_equal(_png(o0), _png(o1))  # seeds 0 and 1, each its own file


def test_server_keeps_serving_after_errors(server, client, images):
    assert server["proc"].poll() is None
    label, _, _ = client.predict(_f(images / "dark.png"), "test-classifier", api_name="/classify")
    assert label["label"] == "low-light"


# ---------------------------------------------------------------------------------------------- tables tab


def test_tables_from_reference_and_from_an_eval_folder(client, tmp_path_factory):
    eval_mod = pytest.importorskip("eval.tables", reason="the eval module is not installed")
    from eval import list_reference_tables

    refs = list_reference_tables()
    from eval import load_reference
    from eval.tables import display_name

    for ref in refs:  # every published number lands in its (method, category, metric) cell
        table, plots, info = client.predict("Reference table", ref, "", None, api_name="/tables")
        h, rows = table["headers"], {r[0]: r for r in table["data"]}
        assert h[0] == "method" and len(plots) >= 1 and ref in info
        paper = load_reference(ref)
        metrics = [c for c in paper.columns if f"Overall · {display_name(c)}" in h]
        assert metrics, (ref, h)
        for rec in paper.to_dict("records"):
            for m in metrics:
                assert rows[rec["method"]][h.index(f"{rec['category']} · {display_name(m)}")] == pytest.approx(rec[m])
    d = tmp_path_factory.getbasetemp() / "evalout"
    d.mkdir(exist_ok=True)
    rows = [
        ("ours", "Rain", "a.png", "psnr", 20.0),
        ("ours", "Rain", "b.png", "psnr", 30.0),
        ("base", "Rain", "a.png", "psnr", 10.0),
        ("base", "Rain", "b.png", "psnr", 12.0),
    ]
    import pandas as pd

    pd.DataFrame(rows, columns=["method", "category", "image", "metric", "score"]).to_csv(d / "scores.csv", index=False)
    table, plots, _ = client.predict("Eval output folder", None, str(d), None, api_name="/tables")
    h = table["headers"]
    cells = {r[0]: r for r in table["data"]}
    assert cells["ours"][h.index("Rain · PSNR")] == pytest.approx(25.0)
    assert cells["base"][h.index("Overall · PSNR")] == pytest.approx(11.0)
    assert len(plots) == 1
    assert eval_mod is not None
    msg = _app_error(client, "Eval output folder", None, "/etc", None, api_name="/tables")
    assert "outside the folders" in msg


# ---------------------------------------------------------------------------------------------- services


def test_model_choices_label_unavailable_models_with_their_reason(test_models):
    from vlmir.app import service

    cs = service.model_choices("restorer")
    off = next(c for c in cs if c.name == "test-offline")
    assert not off.available and "not in the local cache" in off.label
    assert [c.available for c in cs] == sorted((c.available for c in cs), reverse=True) or cs[0].default
    assert service.choice("test-diffusion", "restorer").diffusion
    with pytest.raises(ValueError, match="choose one of"):
        service.choice("nope", "restorer")


def test_model_cache_builds_each_model_once_across_threads(test_models):
    from vlmir.app import service
    from vlmir.registry import ModelSpec, register

    calls = []

    def build(device="cpu", **k):
        calls.append(device)
        time.sleep(0.2)
        return TestClassifier()

    register(ModelSpec("test-counted", "classifier", build, "counts builds"), overwrite=True)
    cache = service.ModelCache(device="cpu")
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("test-counted", "classifier"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1


def test_warm_up_builds_and_runs_the_given_models(monkeypatch, test_models):
    from vlmir.app import service

    cache = service.ModelCache(device="cpu")
    monkeypatch.setattr(service, "MODELS", cache)
    done = service.warm_up(
        size=32,
        metrics=False,
        models=[("test-classifier", "classifier"), ("test-rater", "rater"), ("test-offline", "restorer")],
    )
    assert done == ["test-classifier", "test-rater"]  # the unavailable one is skipped, not fatal
    assert cache.loaded() == ["test-classifier", "test-rater"]


def test_example_cache_computes_once_and_recomputes_missing_files(tmp_path, monkeypatch):
    from vlmir.app import service, ui

    monkeypatch.setattr(service, "_OUT_ROOT", tmp_path)
    calls = []

    def handler(image, model):
        calls.append((image, model))
        out = service.request_dir() / "out.png"
        out.write_bytes(b"x")
        return (image, str(out)), str(out), f"{model} done"

    cached = ui.ExampleCache().wrap(handler)
    first = cached("ex.jpg", "m1")
    assert cached("ex.jpg", "m1") == first and len(calls) == 1
    cached("ex.jpg", "m2")  # another model: its own entry
    assert len(calls) == 2
    Path(first[1]).unlink()  # its request folder expired
    again = cached("ex.jpg", "m1")
    assert len(calls) == 3 and Path(again[1]).exists()


def test_request_dirs_are_unique_and_old_ones_are_pruned(tmp_path, monkeypatch):
    from vlmir.app import service

    monkeypatch.setattr(service, "_OUT_ROOT", tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    os.utime(old, (time.time() - 2 * service.OUTPUT_TTL_S,) * 2)
    dirs = {service.request_dir() for _ in range(20)}
    assert len(dirs) == 20 and all(d.parent == tmp_path for d in dirs)
    assert not old.exists()


def test_creating_the_demo_builds_no_model_and_downloads_nothing(tmp_path):
    code = (
        f"import os, sys, socket; sys.path.insert(0, {str(ROOT)!r})\n"
        "def no_net(*a, **k): raise OSError('network used at import')\n"
        "socket.socket.connect = no_net\n"
        "import app; from vlmir.app import service\n"
        "demo = app.create_demo()\n"
        "print('LOADED', service.MODELS.loaded())\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED []" in r.stdout
    assert not list(ROOT.joinpath("vlmir", "app").glob("*.pyi"))  # no stubs written into the package


def test_examples_ship_small_and_are_licensed():
    ex = ROOT / "assets" / "examples"
    files = sorted(p for p in ex.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(files) >= 4
    assert sum(p.stat().st_size for p in files) < 600_000
    src = (ex / "SOURCES.md").read_text()
    for p in files:
        assert p.name in src
        with Image.open(p) as im:
            assert max(im.size) <= 512


# -------------------------------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_browser_every_tab(server, images, tmp_path, test_models):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    expect = pw.expect
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    shots = []
    example = sorted((ROOT / "assets" / "examples").glob("*.jpg"))[0]

    def shot(page, name, full_page=True):
        p = tmp_path / f"{len(shots):02d}_{name}.png"
        page.screenshot(path=str(p), full_page=full_page)  # the error toast is fixed-position: viewport shot
        shots.append(p)

    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        try:
            _browse(page, server, images, shot, expect, example)
        except Exception:
            shot(page, "failure")
            raise
        finally:
            SCREENS.mkdir(parents=True, exist_ok=True)
            for s in shots:
                shutil.copy(s, SCREENS / s.name)
            browser.close()
    for s in shots:
        assert s.stat().st_size > 10_000


def _browse(page, server, images, shot, expect, example):
    """Use every tab of the demo like a visitor would (test-model choices make the results exact)."""
    page.goto(server["url"], wait_until="networkidle")
    page.get_by_text("vision-language guided image restoration").first.wait_for()
    page.get_by_text("Models in this app").first.click()  # the status table names every model and its state
    page.get_by_text("test-offline").first.wait_for()
    shot(page, "home")
    page.get_by_text("Models in this app").first.click()

    def panel(tab):
        page.get_by_role("tab", name=tab).click()
        return page.locator("[role=tabpanel]:visible").first

    def pick(pnl, label, option):
        pnl.get_by_label(label).first.click()
        page.get_by_role("option", name=option).first.click()

    def upload(pnl, path):
        pnl.locator("input[type=file]").first.set_input_files(str(path))
        pnl.locator("img").first.wait_for(timeout=20_000)

    # Restore: the seeded test sampler shows steps and seed; the slider shows before/after.
    pnl = panel("Restore")
    upload(pnl, example)
    pnl.get_by_label("Restorer").first.click()  # unavailable models are listed with their reason
    page.get_by_role("option", name="test-offline (unavailable: weights org/repo/model.pt").first.wait_for()
    page.get_by_role("option", name="test-diffusion").first.click()
    pnl.get_by_label("Sampling steps").first.wait_for()
    pnl.get_by_role("button", name="Restore").click()
    page.get_by_text("restored a").first.wait_for(timeout=60_000)
    page.get_by_text("RANDOM weights").first.wait_for()
    shot(page, "restore")

    # Degradation type
    pnl = panel("Degradation type")
    upload(pnl, example)
    pick(pnl, "Classifier", "test-classifier")
    pnl.get_by_role("button", name="Classify").click()
    page.get_by_text("Most likely degradation").first.wait_for(timeout=60_000)
    pnl.locator("canvas, svg").first.wait_for(timeout=20_000)
    shot(page, "classify")

    # Visibility rating, with a description
    pnl = panel("Visibility rating")
    upload(pnl, example)
    pick(pnl, "Rater", "test-rater")
    pnl.get_by_label("Describe the scene").check()
    pnl.get_by_role("button", name="Rate visibility").click()
    page.get_by_text("VLM-Vis =").first.wait_for(timeout=60_000)
    expect(pnl.get_by_label("Scene description")).to_have_value(re.compile("a test scene of mean brightness"))
    shot(page, "rate")

    # Compare: tick the test sampler beside what is ticked by default
    pnl = panel("Compare")
    upload(pnl, example)
    pnl.get_by_label("test-diffusion").check()
    pnl.get_by_role("button", name="Compare").click()
    page.get_by_text("No-reference metrics:").first.wait_for(timeout=120_000)
    shot(page, "compare")

    # Metric tables: the shipped reference table when the eval module has one
    pnl = panel("Metric tables")
    pnl.get_by_role("button", name="Load table").click()
    page.get_by_text("Click a column header to sort").first.wait_for(timeout=60_000)
    shot(page, "tables")

    # A bad upload shows an error toast and the page stays usable
    pnl = panel("Degradation type")
    pnl.locator("input[type=file]").first.set_input_files(str(images / "text.jpg"))
    pnl.get_by_role("button", name="Classify").click()
    page.get_by_text("not a readable image").first.wait_for(timeout=30_000)
    shot(page, "error", full_page=False)

    # An example thumbnail fills the input and shows the default classifier's result (cached lazily)
    from vlmir.app import service

    default = service.default_choice("classifier")
    page.reload(wait_until="networkidle")
    pnl = panel("Degradation type")
    pnl.locator(".gallery-item, button.gallery-item, [data-testid=examples] button, .example").first.wait_for()
    page.locator("[role=tabpanel]:visible .gallery-item, [role=tabpanel]:visible .example").first.click()
    page.get_by_text(f"by {default} on a 384×").first.wait_for(timeout=90_000)
    expect(page.get_by_text("processing |")).to_have_count(0, timeout=60_000)
    shot(page, "example")
