"""eval.weights: the file table matches the installed pyiqa, and metrics that need files run from locally made
ones in a tmp --weights-dir through pyiqa's own loading path (no network)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import eval as ev
from eval.weights import METRIC_WEIGHTS, WeightsUnavailable, missing_weights, offline_pyiqa

pyiqa = pytest.importorskip("pyiqa")


def _pyiqa_file_names(module: str) -> set[str]:
    mod = importlib.import_module(f"pyiqa.archs.{module}")
    urls = list(getattr(mod, "default_model_urls", {}).values())
    for attr in ("FID_WEIGHTS_URL",):
        if hasattr(mod, attr):
            urls.append(getattr(mod, attr))
    return {u.rsplit("/", 1)[-1] for u in urls}


@pytest.mark.parametrize("metric, module", [
    ("niqe", "niqe_arch"), ("brisque", "brisque_arch"), ("nima", "nima_arch"), ("musiq", "musiq_arch"),
    ("clipiqa+", "clipiqa_arch"), ("liqe", "liqe_arch"), ("lpips", "lpips_arch"), ("dists", "dists_arch"),
    ("fid", "inception"), ("cnniqa", "cnniqa_arch"), ("nrqm", "nrqm_arch"),
])
def test_table_names_match_installed_pyiqa(metric, module):
    ours = {wf.filename for wf in METRIC_WEIGHTS[metric] if wf.kind == "pyiqa"}
    assert ours and ours <= _pyiqa_file_names(module)


def test_clip_file_names_and_digests_match_pyiqa():
    from pyiqa.archs.clip_model import _MODELS

    for metric, backbone in (("clipiqa", "RN50"), ("liqe", "ViT-B/32")):
        (wf,) = [w for w in METRIC_WEIGHTS[metric] if w.kind == "clip"]
        assert wf.url == _MODELS[backbone] and wf.sha256 == _MODELS[backbone].split("/")[-2]


def test_every_table_metric_is_a_pyiqa_metric():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    assert set(METRIC_WEIGHTS) <= set(DEFAULT_CONFIGS)
    for name in ("psnr", "ssim", "piqe", "gmsd", "entropy"):
        assert METRIC_WEIGHTS[name] == ()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    rng = np.random.default_rng(1)
    for method in ("m1", "m2"):
        for cat in ("snow",):
            for i in range(2):
                (root / method / cat).mkdir(parents=True, exist_ok=True)
                base = np.linspace(0, 255, 192 * 192 * 3).reshape(192, 192, 3)
                img = np.clip(base + rng.normal(0, 20 if method == "m1" else 60, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / method / cat / f"{i}.png")
    return root


def _direct(metric_cls_kwargs, metric, path):
    from vlmir.io import load_image

    m = pyiqa.create_metric(metric, device="cpu", **metric_cls_kwargs)
    return float(m(load_image(path)).reshape(-1)[0])


def test_niqe_and_brisque_from_local_parameter_files(small_dataset, tmp_path):
    import scipy.io

    wdir = tmp_path / "hub"
    (wdir / "pyiqa").mkdir(parents=True)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(36, 36))
    niqe_file = wdir / "pyiqa" / "niqe_modelparameters.mat"
    scipy.io.savemat(niqe_file, {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T + 36 * np.eye(36)})
    sv = torch.randn(20, 36, dtype=torch.float64)
    brisque_file = wdir / "pyiqa" / "brisque_svm_weights.pth"
    torch.save((torch.randn(20, dtype=torch.float64), sv), brisque_file)
    assert missing_weights("niqe", wdir) == [] and missing_weights("brisque", wdir) == []

    scores = ev.run(small_dataset, ["niqe", "brisque"], out=tmp_path / "o", weights_dir=wdir, verbose=False)
    assert len(scores) == 8
    for row in scores.itertuples():
        path = small_dataset / row.method / row.category / row.image
        f = niqe_file if row.metric == "niqe" else brisque_file
        want = _direct({"pretrained_model_path": str(f)}, row.metric, path)
        assert row.score == pytest.approx(want, rel=1e-5)
    # lower is better for both: the bold cell is the smaller one
    table = ev.make_table(scores)
    md = (tmp_path / "o" / "table.md").read_text()
    best = table[("Overall", "niqe")].min()
    assert f"**{best:.2f}**" in md


def test_learned_metric_from_random_state_dict(small_dataset, tmp_path):
    """CNNIQA (pyiqa arch, random weights) saved as pyiqa's checkpoint file name; eval loads it offline."""
    from pyiqa.archs.cnniqa_arch import CNNIQA

    torch.manual_seed(0)
    net = CNNIQA(pretrained=None)
    wdir = tmp_path / "hub"
    (wdir / "pyiqa").mkdir(parents=True)
    (wf,) = METRIC_WEIGHTS["cnniqa"]
    torch.save({"params": net.state_dict()}, wdir / "pyiqa" / wf.filename)
    scores = ev.run(small_dataset, ["cnniqa"], out=tmp_path / "o", weights_dir=wdir, verbose=False)
    from vlmir.io import load_image

    net.eval()
    for row in scores.itertuples():
        x = load_image(small_dataset / row.method / row.category / row.image)
        with torch.no_grad():
            want = float(net(x).reshape(-1)[0])
        assert row.score == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_offline_context_points_pyiqa_at_the_weights_dir_and_restores(tmp_path):
    import pyiqa.archs.liqe_arch as liqe_arch
    import pyiqa.utils.download_util as du
    import torch.hub

    before = (du.DEFAULT_CACHE_DIR, liqe_arch.DEFAULT_CACHE_DIR, torch.hub.get_dir())
    (tmp_path / "pyiqa").mkdir()
    with offline_pyiqa(tmp_path) as hub:
        assert hub == tmp_path.resolve()
        assert du.DEFAULT_CACHE_DIR == str(tmp_path.resolve() / "pyiqa")
        assert torch.hub.get_dir() == str(tmp_path.resolve())
        with pytest.raises(WeightsUnavailable, match="never downloads"):
            du.load_file_from_url("https://example.invalid/x.pth")
        with pytest.raises(WeightsUnavailable, match="never downloads"):
            torch.hub.load_state_dict_from_url("https://example.invalid/y.pth")
    assert (du.DEFAULT_CACHE_DIR, liqe_arch.DEFAULT_CACHE_DIR, torch.hub.get_dir()) == before


def test_liqe_text_cache_goes_to_a_writable_dir(tmp_path):
    import pyiqa.archs.liqe_arch as liqe_arch

    # no writable <hub>/pyiqa (here: absent) -> the run's writable cache; a writable one is used as it is
    with offline_pyiqa(tmp_path / "nohub", writable_cache=tmp_path / "w"):
        assert liqe_arch.DEFAULT_CACHE_DIR == str(tmp_path / "w")
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
    with offline_pyiqa(tmp_path / "hub", writable_cache=tmp_path / "w"):
        assert liqe_arch.DEFAULT_CACHE_DIR == str((tmp_path / "hub" / "pyiqa").resolve())


def test_nima_backbone_is_built_without_a_download():
    import pyiqa.archs.nima_arch as nima_arch

    with offline_pyiqa():
        m = nima_arch.timm.create_model("resnet18", pretrained=True, features_only=True)
    assert m.feature_info.channels()[-1] == 512


def test_missing_pkg_resources_gives_a_clear_error(tmp_path):
    """openai-clip imports pkg_resources (gone in setuptools>=81): the CLIP metrics say how to fix it. Run in a fresh
    interpreter where ``import pkg_resources`` fails, as it does with setuptools>=81."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys
sys.modules["pkg_resources"] = None  # import pkg_resources -> ModuleNotFoundError
import eval.metrics as m
from eval.weights import MetricUnavailable
m.check_weights = lambda *a, **k: None  # get past the file check to the import
assert m.PyiqaMetric("psnr", weights_dir={str(tmp_path)!r}).info.mode == "FR"  # weight-free: no clip import
try:
    m.PyiqaMetric("clipiqa", weights_dir={str(tmp_path)!r})
except MetricUnavailable as e:
    print("CLEAR:", e)
"""
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "CLEAR:" in r.stdout and "setuptools<81" in r.stdout and "clipiqa" in r.stdout


def test_hub_downloads_are_cache_only_inside_the_context(tmp_path):
    import time

    import huggingface_hub.constants as c
    from huggingface_hub import hf_hub_download

    before = c.HF_HUB_OFFLINE
    t0 = time.perf_counter()
    with offline_pyiqa(tmp_path), pytest.raises(Exception, match="(?i)offline|cache|local"):
        hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors", cache_dir=tmp_path / "hf")
    assert time.perf_counter() - t0 < 20 and c.HF_HUB_OFFLINE == before


def test_nima_end_to_end_without_backbone_download(small_dataset, tmp_path):
    """NIMA (small timm backbone, random weights, its own checkpoint): built offline, the timm backbone is not
    fetched, the checkpoint loads strictly, and the scores equal a direct forward of the same network."""
    import pyiqa.archs.nima_arch as nima_arch

    with offline_pyiqa(tmp_path):
        torch.manual_seed(0)
        net = nima_arch.NIMA(base_model_name="resnet10t", num_classes=10, pretrained=False)
    ckpt = tmp_path / "nima_resnet10t.pth"
    torch.save({"params": net.state_dict()}, ckpt)
    opts = {"nima": {"base_model_name": "resnet10t", "pretrained_model_path": str(ckpt)}}
    scores = ev.run(small_dataset, ["nima"], out=None, weights_dir=tmp_path, options=opts, verbose=False,
                    skip_unavailable=False)
    from vlmir.io import load_image

    net.eval()
    for row in scores.itertuples():
        with torch.no_grad():
            want = float(net(load_image(small_dataset / row.method / row.category / row.image)).reshape(-1)[0])
        assert row.score == pytest.approx(want, rel=1e-5)
    assert 1 <= scores.score.min() and scores.score.max() <= 10  # NIMA's mean of a 10-bin distribution
