"""The inference commands over the registry: JSON contracts, batch runs with one model load, bad inputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmir.commands import main
from vlmir.registry import ModelSpec, register

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop", "rainy", "shadowed", "snowy",
         "uncompleted")
BUILDS = []


class _Brightness:
    """A real (if simple) deterministic model used to test the plumbing: its outputs are functions of the pixels."""

    name = "test-brightness"
    random_weights = False

    def restore(self, x, *, steps=None, seed=0, tile=None, progress=None):
        return 1.0 - x

    def classify(self, x):
        import torch

        logits = torch.arange(len(NAMES), dtype=torch.float32) * float(x.mean())
        p = torch.softmax(logits, 0)
        return dict(zip(NAMES, p.tolist(), strict=True))

    def rate(self, x):
        m = float(x.mean())
        probs = {"excellent": m, "good": 1 - m, "fair": 0.0, "poor": 0.0, "bad": 0.0}
        r = 5 * probs["excellent"] + 4 * probs["good"]
        return {"score": r, "vlm_vis": (r - 1) / 4, "probs": probs}


def _build(device="cpu", **kw):
    BUILDS.append(device)
    return _Brightness()


for task in ("restorer", "classifier", "rater"):
    register(ModelSpec(name=f"test-brightness-{task}", task=task, build=_build), overwrite=True)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, v in enumerate((64, 192)):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((5, 7, 3), v, np.uint8)).save(p)
        paths.append(str(p))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    return paths, str(bad)


def test_restore_writes_same_size_pngs_with_one_model_load(tmp_path, images, capsys):
    paths, _ = images
    BUILDS.clear()
    rc = main(["restore", *paths, "--out-dir", str(tmp_path / "out"), "--model", "test-brightness-restorer"])
    assert rc == 0 and BUILDS == ["cpu"]
    for p, v in zip(paths, (64, 192), strict=True):
        out = np.asarray(Image.open(tmp_path / "out" / (Path(p).stem + ".png")))
        assert out.shape == (5, 7, 3) and int(out[0, 0, 0]) == 255 - v


def test_classify_json_contract(images, capsys):
    paths, bad = images
    rc = main(["classify", paths[0], bad, paths[1], "--json", "--model", "test-brightness-classifier"])
    out, err = capsys.readouterr()
    assert rc == 1 and "not a readable image" in err  # the bad file is reported, the others still run
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [paths[0], paths[1]]
    for r in rows:
        assert set(r["probs"]) == set(NAMES) and abs(sum(r["probs"].values()) - 1) < 1e-6
        assert r["label"] == max(r["probs"], key=r["probs"].get) == "uncompleted"


def test_rate_json_contract(images, capsys):
    paths, _ = images
    rc = main(["rate", paths[0], "--json", "--rater", "test-brightness-rater"])
    row = json.loads(capsys.readouterr().out)
    m = 64 / 255
    assert rc == 0
    assert row["score"] == pytest.approx(5 * m + 4 * (1 - m), abs=1e-6)
    assert row["vlm_vis"] == pytest.approx((row["score"] - 1) / 4)
    assert list(row["probs"]) == ["excellent", "good", "fair", "poor", "bad"]


def test_unknown_model_lists_close_names(images, capsys):
    paths, _ = images
    rc = main(["classify", paths[0], "--model", "test-brightnes-classifier"])
    err = capsys.readouterr().err
    assert rc == 1 and "Did you mean test-brightness-classifier" in err


def test_duplicate_stems_refused_before_anything_is_written(tmp_path, images):
    paths, _ = images
    other = tmp_path / "sub"
    other.mkdir()
    dup = other / Path(paths[0]).name
    dup.write_bytes(Path(paths[0]).read_bytes())
    rc = main(["restore", paths[0], str(dup), "--out-dir", str(tmp_path / "o"), "--model", "test-brightness-restorer"])
    assert rc == 1 and not (tmp_path / "o").exists()


def test_python_dash_m_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "vlmir", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0
    for cmd in ("restore", "classify", "rate", "list-models"):
        assert cmd in r.stdout


def test_describe_and_quality_prompt_on_a_tiny_vlm(tmp_path, images, capsys):
    from vlmir.vlm.tiny import save_tiny_llava

    paths, _ = images
    folder = save_tiny_llava(tmp_path / "tiny-llava")
    rc = main(["describe", paths[0], "--rater", str(folder), "--json", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert rc == 0 and row["path"] == paths[0] and isinstance(row["description"], str)
    assert "RANDOM weights" in err
    vis = main(["rate", paths[0], "--json", "--rater", str(folder)])
    r_vis = json.loads(capsys.readouterr().out)["score"]
    qual = main(["rate", paths[0], "--json", "--rater", str(folder), "--prompt", "quality"])
    r_qual = json.loads(capsys.readouterr().out)["score"]
    assert vis == qual == 0 and 1 <= r_vis <= 5 and 1 <= r_qual <= 5 and r_vis != r_qual  # the prompt matters


def test_describe_refuses_a_rater_without_descriptions(images, capsys):
    paths, _ = images
    rc = main(["describe", paths[0], "--rater", "test-brightness-rater"])
    assert rc == 1 and "cannot describe" in capsys.readouterr().err


def test_restore_with_the_shipped_embedded_model_and_a_given_type(tmp_path):
    """``--type`` picks the classical prior of the shipped embedded restorer; the output differs from the blind
    run's when the given type differs from the predicted one, and an unknown type is refused with the valid ones."""
    from vlmir.degradations import degrade
    from vlmir.io import load_image, save_image, to_numpy

    weights = ROOT / "assets" / "weights" / "embedded-restorer" / "model.safetensors"
    if not weights.is_file():
        pytest.skip("shipped embedded restorer not in assets/weights")
    from skimage import data

    img = data.astronaut()[::4, ::4].astype(np.float32) / 255  # 128 x 128
    src = tmp_path / "dark.png"
    save_image(degrade(img, "low-light", 3, seed=0)[0], src)
    assert main(["restore", str(src), "--out-dir", str(tmp_path / "a"), "--model", "embedded"]) == 0
    assert main(["restore", str(src), "--out-dir", str(tmp_path / "b"), "--model", "embedded",
                 "--type", "motion-blurry"]) == 0
    a, b = (to_numpy(load_image(tmp_path / d / "dark.png")) for d in ("a", "b"))
    assert a.shape == b.shape == img.shape
    assert a.mean() > to_numpy(load_image(src)).mean() + 0.1  # blind: recognised as low light and brightened
    assert np.abs(a - b).mean() > 0.01
    assert main(["restore", str(src), "--out-dir", str(tmp_path / "c"), "--model", "embedded", "--type", "foggy"]) != 0
