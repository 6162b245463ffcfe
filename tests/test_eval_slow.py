"""Slow eval checks: real multi-process sharding with torchrun, and real FID (random Inception weights, 95 MB file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import eval as ev

REPO = Path(__file__).resolve().parent.parent


def _dataset(root: Path, n: int = 3, size: int = 48) -> Path:
    rng = np.random.default_rng(5)
    for cat in ("rain", "snow"):
        for i in range(n):
            gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for m, s in (("gt", 0), ("a", 10), ("b", 40)):
                d = root / m / cat
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(gt + rng.normal(0, s, gt.shape), 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_torchrun_two_processes_match_single_run(tmp_path):
    ds = _dataset(tmp_path / "d")
    single = ev.run(ds, "psnr,piqe", reference="gt", out=None, verbose=False)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run(["torchrun", "--nproc_per_node", "2", "-m", "eval", "run", "--dataset", str(ds), "--reference",
                        "gt", "--metrics", "psnr,piqe", "--out", str(tmp_path / "o"), "--device", "cpu"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("psnr: computed 6 score(s)") == 2  # 12 images, 6 per process
    merged = pd.read_csv(tmp_path / "o" / "scores.csv")
    np.testing.assert_allclose(merged["score"], single["score"], rtol=1e-5)
    assert list(merged["image"]) == list(single["image"])


@pytest.mark.slow
def test_fid_with_random_inception_weights(tmp_path, monkeypatch):
    import pyiqa.archs.inception as inception

    # the FID Inception with random weights, saved under the file name pyiqa loads
    monkeypatch.setattr(inception, "load_pretrained_network", lambda *a, **k: None)
    torch.manual_seed(0)
    net = inception.fid_inception_v3()
    monkeypatch.undo()
    wdir = tmp_path / "hub"
    (wdir / "pyiqa").mkdir(parents=True)
    torch.save(net.state_dict(), wdir / "pyiqa" / "pt_inception-2015-12-05-6726825d.pth")
    ds = _dataset(tmp_path / "d", n=3, size=32)
    scores = ev.run(ds, ["fid"], reference="gt", out=tmp_path / "o", weights_dir=wdir, verbose=False)
    assert set(scores["image"]) == {"*"} and len(scores) == 6  # 2 methods x (rain, snow, Overall)
    import pyiqa

    from eval.weights import offline_pyiqa

    with offline_pyiqa(wdir):
        direct = pyiqa.create_metric("fid", device="cpu")
        want = float(direct(str(ds / "a" / "rain"), str(ds / "gt" / "rain"), num_workers=0, verbose=False))
    got = scores[(scores.method == "a") & (scores.category == "rain")].score.item()
    assert got == pytest.approx(want, rel=1e-4)
    t = ev.make_table(scores)
    assert t.loc["a", ("Overall", "fid")] == pytest.approx(scores[(scores.method == "a") & (scores.category == "Overall")].score.item())
    assert sys.modules.get("eval") is ev
