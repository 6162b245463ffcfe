"""eval: end-to-end tables on a tiny dataset made here, checked against direct pyiqa calls and means by hand;
score cache (a second run computes nothing, an interrupted run resumes), sharding, skip and error paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import eval as ev
from eval import runner as runner_mod
from eval.metrics import PyiqaMetric
from eval.weights import WeightsUnavailable

pyiqa = pytest.importorskip("pyiqa")


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """D/{gt,alpha,beta}/{haze,rain}/<img>: haze has 1 image, rain 3 (so Overall != mean of category means);
    rain holds two sizes (batches split by size); beta has an unreadable file and an image without reference."""
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    layout = {"haze": [(40, 48)], "rain": [(32, 40), (32, 40), (36, 44)]}
    for cat, sizes in layout.items():
        for i, (h, w) in enumerate(sizes):
            gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            _save(root / "gt" / cat / f"{i}.png", gt)
            for method, sigma in (("alpha", 8.0), ("beta", 25.0)):
                noisy = np.clip(gt + rng.normal(0, sigma, gt.shape), 0, 255).astype(np.uint8)
                _save(root / method / cat / f"{i}.png", noisy)
    (root / "beta" / "rain" / "broken.png").write_bytes(b"not an image")
    _save(root / "beta" / "rain" / "extra.png", rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    return root


def _direct(metric, path, ref=None):
    from vlmir.io import load_image

    m = pyiqa.create_metric(metric, device="cpu", as_loss=False)
    x = load_image(path)
    out = m(x, load_image(ref)) if ref is not None else m(x)
    return float(out.reshape(-1)[0])


def test_weight_free_metrics_end_to_end(dataset, tmp_path):
    out = tmp_path / "out"
    scores, report = ev.run(dataset, "psnr,ssim,gmsd,piqe", reference="gt", out=out, verbose=False,
                            batch_size=2, return_report=True)
    assert {p.name for p in out.iterdir()} >= {"scores.csv", "table.csv", "table.md", "table.tex", "score_cache.sqlite"}
    # the reference is not a method; the unreadable image is reported and skipped, the unmatched one gets NR only
    assert sorted(scores["method"].unique()) == ["alpha", "beta"]
    assert any("broken.png" in p and "unreadable" in p for p in report.problems)
    assert any("extra.png" in p and "no reference" in p for p in report.problems)
    extra = scores[scores["image"] == "extra.png"]
    assert sorted(extra["metric"]) == ["piqe"]
    # every per-image score equals a direct pyiqa call
    for row in scores.sample(n=8, random_state=0).itertuples():
        img = dataset / row.method / row.category / row.image
        ref = dataset / "gt" / row.category / row.image if row.metric != "piqe" else None
        assert row.score == pytest.approx(_direct(row.metric, img, ref), rel=1e-4, abs=1e-6)
    # cells are means by hand; Overall is the mean over all images, not the mean of category means
    table = ev.make_table(scores)
    for method in ("alpha", "beta"):
        for metric in ("psnr", "ssim", "gmsd", "piqe"):
            s = scores[(scores.method == method) & (scores.metric == metric)]
            for cat in ("haze", "rain"):
                assert table.loc[method, (cat, metric)] == pytest.approx(s[s.category == cat].score.mean())
            assert table.loc[method, ("Overall", metric)] == pytest.approx(s.score.mean())
    s = scores[(scores.method == "alpha") & (scores.metric == "psnr")]
    assert s.score.mean() != pytest.approx(s.groupby("category").score.mean().mean())
    assert list(dict.fromkeys(c for c, _ in table.columns)) == ["haze", "rain", "Overall"]
    # bold: alpha (less noise) wins PSNR/SSIM (higher better) and GMSD (lower better)
    md = (out / "table.md").read_text()
    alpha_row = next(line for line in md.splitlines() if line.startswith("| alpha"))
    beta_row = next(line for line in md.splitlines() if line.startswith("| beta"))
    psnr = table.loc["alpha", ("Overall", "psnr")]
    assert f"**{psnr:.2f}**" in alpha_row
    assert f"**{table.loc['alpha', ('Overall', 'gmsd')]:.3f}**" in alpha_row
    assert f"{table.loc['beta', ('Overall', 'gmsd')]:.3f}" in beta_row and "**" + f"{table.loc['beta', ('Overall', 'gmsd')]:.3f}" not in beta_row
    assert "\\textbf{" + f"{psnr:.2f}" + "}" in (out / "table.tex").read_text()
    csv = pd.read_csv(out / "table.csv", index_col="method")
    assert csv.loc["alpha", "Overall/ssim"] == pytest.approx(round(table.loc["alpha", ("Overall", "ssim")], 3))
    long = pd.read_csv(out / "scores.csv")
    assert list(long.columns) == ["method", "category", "image", "metric", "score"] and len(long) == len(scores)


_ORIG_CALL, _ORIG_INIT = PyiqaMetric.__call__, PyiqaMetric.__init__


class _Counter:
    """Wraps PyiqaMetric.__call__ to count images scored; optionally fails after ``fail_after`` calls."""

    def __init__(self, monkeypatch, fail_after=None):
        self.images = 0
        self.calls = 0
        self.builds = 0
        orig_call, orig_init = _ORIG_CALL, _ORIG_INIT  # the unpatched methods, not an earlier counter's
        counter = self

        def call(self_, x, ref=None):
            if fail_after is not None and counter.calls >= fail_after:
                raise KeyboardInterrupt("simulated kill")
            counter.calls += 1
            counter.images += x.shape[0]
            return orig_call(self_, x, ref)

        def init(self_, *a, **k):
            counter.builds += 1
            orig_init(self_, *a, **k)

        monkeypatch.setattr(PyiqaMetric, "__call__", call)
        monkeypatch.setattr(PyiqaMetric, "__init__", init)


def test_second_run_computes_nothing_and_loads_no_model(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    c1 = _Counter(monkeypatch)
    first = ev.run(dataset, ["psnr", "piqe"], reference="gt", out=out, verbose=False)
    assert c1.images == 8 + 9  # psnr: 4 matched alpha + 4 matched beta; piqe: 4 alpha + 5 readable beta
    assert c1.builds == 2  # one model load per metric per run
    c2 = _Counter(monkeypatch)
    second = ev.run(dataset, ["psnr", "piqe"], reference="gt", out=out, verbose=False)
    assert c2.images == 0 and c2.builds == 0
    pd.testing.assert_frame_equal(first, second)
    # a new metric computes only itself
    c3 = _Counter(monkeypatch)
    ev.run(dataset, ["psnr", "piqe", "ssim"], reference="gt", out=out, verbose=False)
    assert c3.images == 8 and c3.builds == 1


def test_interrupted_run_resumes(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache.sqlite"
    _Counter(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        ev.run(dataset, ["psnr"], reference="gt", out=tmp_path / "o", cache=cache, batch_size=1, verbose=False)
    from eval.cache import ScoreCache

    with ScoreCache(cache) as c:
        assert len(c) == 2  # the two finished batches survived the kill
    c2 = _Counter(monkeypatch)
    scores = ev.run(dataset, ["psnr"], reference="gt", out=tmp_path / "o", cache=cache, batch_size=1, verbose=False)
    assert c2.images == 8 - 2
    full = ev.run(dataset, ["psnr"], reference="gt", out=None, verbose=False)
    pd.testing.assert_frame_equal(scores, full)


def _open_cache_and_write(path, barrier, worker, errors):
    from eval.cache import ScoreCache

    barrier.wait()  # every process opens the new file at the same moment, as torchrun's ranks do
    try:
        with ScoreCache(path, timeout=20.0) as c:
            c.put_many("psnr", "v1", [(f"{worker}-{i}", float(i)) for i in range(5)])
    except Exception as e:  # reported to the parent: a child's traceback alone would not fail the test
        errors.put(f"{type(e).__name__}: {e}")


def test_cache_opened_by_many_processes_at_once(tmp_path):
    """A new cache file opened by several processes at once: none fails with "database is locked"."""
    import multiprocessing as mp

    from eval.cache import ScoreCache

    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    n_proc, rounds = 6, 8
    for r in range(rounds):
        path = tmp_path / f"c{r}" / "score_cache.sqlite"
        barrier = ctx.Barrier(n_proc)
        procs = [ctx.Process(target=_open_cache_and_write, args=(path, barrier, w, errors)) for w in range(n_proc)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * n_proc
        assert errors.empty(), errors.get()
        with ScoreCache(path) as c:
            assert len(c) == 5 * n_proc
            assert c.get_many("psnr", "v1", ["3-4", "5-0"]) == {"3-4": 4.0, "5-0": 0.0}


def test_shards_merge_equals_single_run(dataset, tmp_path):
    single, _ = runner_mod.compute_scores(dataset, ["psnr", "piqe"], "gt", verbose=False)
    parts = [runner_mod.compute_scores(dataset, ["psnr", "piqe"], "gt", shard=(i, 2), verbose=False)[0] for i in range(2)]
    assert 0 < len(parts[0]) < len(single) and len(parts[0]) + len(parts[1]) == len(single)
    merged = runner_mod.merge_scores(parts)
    pd.testing.assert_frame_equal(merged, runner_mod.merge_scores([single]))
    # the cut is accelerate's: the first len % n shards get one more, contiguous, in order
    items = list(range(11))
    cuts = [runner_mod.shard_items(items, 3, i) for i in range(3)]
    assert cuts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    from accelerate import PartialState

    with PartialState().split_between_processes(items) as mine:  # single process: everything
        assert list(mine) == runner_mod.shard_items(items, 1, 0)


def test_missing_weights_fail_fast_or_skip(dataset, tmp_path):
    wdir = tmp_path / "empty_weights"
    with pytest.raises(WeightsUnavailable) as e:
        ev.run(dataset, ["psnr", "niqe"], out=tmp_path / "o", weights_dir=wdir, reference="gt", verbose=False)
    msg = str(e.value)
    assert "niqe" in msg and "niqe_modelparameters.mat" in msg and str(wdir / "pyiqa" / "niqe_modelparameters.mat") in msg
    scores, report = ev.run(dataset, ["psnr", "niqe", "clipiqa"], reference="gt", out=tmp_path / "o", weights_dir=wdir,
                            skip_unavailable=True, verbose=False, return_report=True)
    assert sorted(scores["metric"].unique()) == ["psnr"]
    assert report.skipped_metrics == ["niqe", "clipiqa"]
    assert any("RN50.pt" in p for p in report.problems)
    # the CLI says so and exits 2
    from eval.__main__ import main

    assert main(["run", "--dataset", str(dataset), "--metrics", "niqe", "--out", str(tmp_path / "c"),
                 "--weights-dir", str(wdir), "--quiet"]) == 2


def test_download_guard_blocks_metrics_outside_the_table(tmp_path):
    """A metric whose files are not in eval/weights.py still never downloads: the guard raises at once."""
    import time

    from eval.weights import METRIC_WEIGHTS

    assert "wadiqam_nr" not in METRIC_WEIGHTS
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="WaDIQaM|wadiqam"):
        PyiqaMetric("wadiqam_nr", weights_dir=tmp_path)
    assert time.perf_counter() - t0 < 20
    import pyiqa.utils.download_util as du
    import torch.hub

    assert du.download_url_to_file is torch.hub.download_url_to_file  # both restored after the context


def test_unknown_metric_and_missing_reference(dataset, tmp_path):
    with pytest.raises(ValueError, match="Did you mean psnr"):
        ev.run(dataset, "psnrr", out=None, verbose=False)
    with pytest.raises(ValueError, match="need a reference"):
        ev.run(dataset, "ssim", out=None, verbose=False)
    with pytest.raises(ValueError, match="reference folder 'nope'"):
        ev.run(dataset, "ssim", reference="nope", out=None, verbose=False)
    with pytest.raises(ValueError, match="batch_size"):
        ev.run(dataset, "piqe", out=None, batch_size=0, verbose=False)


def test_batched_equals_one_by_one(dataset):
    a, _ = runner_mod.compute_scores(dataset, ["ssim", "psnr"], "gt", batch_size=1, verbose=False)
    b, _ = runner_mod.compute_scores(dataset, ["ssim", "psnr"], "gt", batch_size=8, verbose=False)
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-4, atol=1e-6)


# --- VLM-Vis through the registry contract ---------------------------------------------------------------------


class _BrightnessRater:
    """A rater whose probabilities are a real deterministic function of the pixels (mean brightness)."""

    name = "test-brightness"
    random_weights = False

    def rate(self, x):
        assert x.shape[0] == 1 and x.shape[1] == 3
        b = float(x.mean())
        logits = torch.tensor([5 * b, 4 * b, 3 * b, 2 * b, 1 * b]) * 4  # excellent..bad
        p = torch.softmax(logits, 0)
        r = float(sum((5 - i) * p[i] for i in range(5)))
        names = ["excellent", "good", "fair", "poor", "bad"]
        return {"score": r, "vlm_vis": (r - 1) / 4, "probs": {n: float(v) for n, v in zip(names, p, strict=True)}}


@pytest.fixture()
def brightness_rater():
    from vlmir.registry import ModelSpec, register

    register(ModelSpec(name="test-brightness", task="rater", build=lambda device="cpu", **k: _BrightnessRater()),
             overwrite=True)
    return "test-brightness"


def test_vlm_vis_from_registry_rater(dataset, tmp_path, brightness_rater):
    from vlmir.io import load_image

    scores = ev.run(dataset, ["vlm_vis"], out=tmp_path / "o", rater=brightness_rater, verbose=False)
    rater = _BrightnessRater()
    for row in scores.itertuples():
        x = load_image(dataset / row.method / row.category / row.image)
        assert row.score == pytest.approx(rater.rate(x)["vlm_vis"], rel=1e-6)
    table = ev.make_table(scores)
    assert table.loc["beta", ("Overall", "vlm_vis")] == pytest.approx(scores[scores.method == "beta"].score.mean())
    assert 0 <= scores.score.min() and scores.score.max() <= 1


def test_random_weight_rater_is_flagged(dataset, tmp_path):
    from vlmir.registry import ModelSpec, register

    class Random(_BrightnessRater):
        random_weights = True

    register(ModelSpec(name="test-random-rater", task="rater", build=lambda device="cpu", **k: Random()), overwrite=True)
    ev.run(dataset, ["vlm_vis"], out=tmp_path / "o", rater="test-random-rater", verbose=False)
    assert "RANDOM weights" in (tmp_path / "o" / "table.md").read_text()


# --- folder-level metric (FID) plumbing with a real (non-Inception) folder statistic ----------------------------


def test_folder_metric_rows_and_overall(dataset, tmp_path, monkeypatch):
    """FID's per-folder and Overall rows, cache and table; the folder statistic here is |mean(A) - mean(B)| of the
    images (the real Inception FID needs its 95 MB weights, covered by the weights tests)."""
    from eval import metrics as metrics_mod
    from vlmir.io import load_image

    calls = []

    class MeanGap:
        name, random_weights = "fid", False
        info = metrics_mod.metric_info("fid")

        def score_folders(self, a, b):
            calls.append((a, b))
            mean = lambda d: float(np.mean([load_image(p).mean() for p in sorted(d.iterdir())]))  # noqa: E731
            return abs(mean(a) - mean(b))

    monkeypatch.setattr(runner_mod, "create_metric", lambda name, **k: MeanGap() if name == "fid" else metrics_mod.create_metric(name, **k))
    import eval.weights as w

    monkeypatch.setattr(w, "check_weights", lambda *a, **k: None)
    scores = ev.run(dataset, ["fid"], reference="gt", out=tmp_path / "o", verbose=False)
    fid = scores[scores.metric == "fid"]
    assert set(fid["image"]) == {"*"}
    assert sorted(fid[fid.method == "alpha"].category) == ["Overall", "haze", "rain"]
    n = len(calls)
    assert n == 6
    scores2 = ev.run(dataset, ["fid"], reference="gt", out=tmp_path / "o", verbose=False)
    assert len(calls) == n  # cached
    pd.testing.assert_frame_equal(scores, scores2)
    table = ev.make_table(scores)
    a = fid[(fid.method == "alpha") & (fid.category == "Overall")].score.item()
    assert table.loc["alpha", ("Overall", "fid")] == pytest.approx(a)
    md = (tmp_path / "o" / "table.md").read_text()
    best = min(table.loc["alpha", ("rain", "fid")], table.loc["beta", ("rain", "fid")])
    assert f"**{best:.2f}**" in md  # lower is better for FID


def test_vlm_vis_batches_a_vlm_rater_with_the_same_numbers(tmp_path):
    import torch

    from eval.metrics import VlmVisMetric
    from vlmir.vlm.rater import load_rater
    from vlmir.vlm.tiny import save_tiny_llava

    folder = save_tiny_llava(tmp_path / "tiny")
    metric = VlmVisMetric(rater=str(folder))
    calls = []
    real = metric._rater.rate_batch
    metric._rater.rate_batch = lambda imgs, **kw: calls.append(len(imgs)) or real(imgs, **kw)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = metric(x)
    one = load_rater(str(folder))
    expect = [one.rate(x[i : i + 1])["vlm_vis"] for i in range(3)]
    assert calls == [3]
    assert got == pytest.approx(expect, abs=1e-4)
