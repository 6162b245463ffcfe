"""The dataset builder: LQ/GT pairs, meta.jsonl, DA-CLIP caption CSV, captioner and its fallback/error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

from vlmir.degradations import APPLY_ORDER, DEGRADATIONS
from vlmir.degradations.dataset import (
    Captioner,
    center_square,
    clean_caption,
    make_dataset,
    parse_severities,
    title_for,
)

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["<s>", "</s>", "a", "cat", "dog", "on", "the", "grass", "photo", "of"]


@pytest.fixture()
def src(tmp_path) -> Path:
    """Two small real photos, one in a sub-folder (PNG and JPEG)."""
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "astronaut.png"), cv2.cvtColor(data.astronaut()[::8, ::8], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "sub" / "coffee.jpg"), cv2.cvtColor(data.coffee()[::8, ::8], cv2.COLOR_RGB2BGR))
    (d / "notes.txt").write_text("not an image")
    return d


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")  # open_clip's CsvDataset default separator


def test_helpers():
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("4,2, 2") == (2, 4) and parse_severities("3") == (3,)
    assert parse_severities("1-2,5") == (1, 2, 5)
    for bad in ("0-3", "6", "a", "3-1", ""):
        with pytest.raises(ValueError):
            parse_severities(bad)
    assert clean_caption("a dog: on\tthe\nbeach ") == "a dog on the beach"
    assert title_for("a dog: running", ["hazy"]) == "a dog running: hazy"
    assert title_for("a dog", ["rainy", "noisy"]) == "a dog: rainy, noisy"
    assert title_for(None, ["hazy"]) == "hazy" and title_for("", []) == "clear"
    sq = center_square(np.random.default_rng(0).random((60, 90, 3), dtype=np.float32), 32)
    assert sq.shape == (32, 32, 3) and sq.dtype == np.float32


def test_make_dataset_layout_csv_and_determinism(src, tmp_path):
    out = tmp_path / "ds"
    summary = make_dataset(src, out, per_image=2, p_mixture=0.5, seed=3, size=48, log=lambda s: None)
    assert summary["pairs"] == 4 and summary["sources"] == 2
    names = sorted(p.stem for p in (out / "LQ").glob("*.png"))
    assert names == ["astronaut_000", "astronaut_001", "sub__coffee_000", "sub__coffee_001"]
    assert names == sorted(p.stem for p in (out / "GT").glob("*.png"))
    metas = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    assert [m["name"] for m in metas] == names
    df = _read_csv(out / "daclip_train.csv")
    assert list(df.columns) == ["filepath", "title"] and len(df) == 4
    for (_, row), m in zip(df.iterrows(), metas, strict=True):
        assert Path(row["filepath"]) == (out / m["lq"]).resolve() and Path(row["filepath"]).is_file()
        assert row["title"] == ", ".join(m["types"]) == m["title"]  # no captioner: the degradation alone
        assert m["caption"] is None and m["types"] and all(t in DEGRADATIONS for t in m["types"])
        assert m["types"] == sorted(m["types"], key=APPLY_ORDER.index)
        assert 1 <= m["visibility_score"] <= 4 and len(m["severity"]) == len(m["types"])
        lq, gt = _read_rgb(out / m["lq"]), _read_rgb(out / m["gt"])
        assert lq.shape == gt.shape == (48, 48, 3)
        assert np.abs(lq - gt).mean() > 0.002  # degraded
    # GT is the resized, centre-cropped source
    clean = center_square(_read_rgb(src / "astronaut.png"), 48)
    assert np.abs(_read_rgb(out / "GT" / "astronaut_000.png") - clean).max() <= 0.5 / 255 + 1e-6
    # same arguments -> same dataset
    out2 = tmp_path / "ds2"
    make_dataset(src, out2, per_image=2, p_mixture=0.5, seed=3, size=48, log=lambda s: None)
    strip = [
        {k: v for k, v in json.loads(x).items() if k != "source"} for x in (out / "meta.jsonl").read_text().splitlines()
    ]
    strip2 = [
        {k: v for k, v in json.loads(x).items() if k != "source"}
        for x in (out2 / "meta.jsonl").read_text().splitlines()
    ]
    assert strip == strip2
    for n in names:
        assert (out / "LQ" / f"{n}.png").read_bytes() == (out2 / "LQ" / f"{n}.png").read_bytes()


def test_make_dataset_type_pool_and_errors(src, tmp_path):
    summary = make_dataset(src, tmp_path / "o", types="hazy,noisy", per_image=3, severities="2", log=lambda s: None)
    assert set(summary["per_type"]) <= {"hazy", "noisy"} and sum(summary["per_type"].values()) == 6
    metas = [json.loads(x) for x in (tmp_path / "o" / "meta.jsonl").read_text().splitlines()]
    assert all(m["severity"] == [2] and m["visibility"] == "fair" for m in metas)
    with pytest.raises(ValueError, match="per_image"):
        make_dataset(src, tmp_path / "o", per_image=0)
    with pytest.raises(ValueError, match="unknown degradation type 'foggy'"):
        make_dataset(src, tmp_path / "o", types="foggy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_dataset(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        make_dataset(tmp_path / "empty", tmp_path / "o")


def test_cli_make_dataset_end_to_end(src, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "vlmir", "make-dataset", "--src", str(src), "--out", str(out), "--per-image", "2"]
    cmd += ["--severities", "1-3", "--mixtures", "0.3", "--seed", "1", "--size", "40", "--types", "rainy,snowy,hazy"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "notice: no --caption-model given" in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 4
    df = _read_csv(out / "daclip_train.csv")
    assert list(df.columns) == ["filepath", "title"] and len(df) == 4
    for title in df["title"]:
        parts = title.split(", ")
        assert set(parts) <= {"rainy", "snowy", "hazy"} and not {"rainy", "snowy"} <= set(parts)
    assert all(_read_rgb(Path(p)).shape == (40, 40, 3) for p in df["filepath"])


def _tiny_captioner(path: Path) -> None:
    """A random-weight ViT + GPT-2 VisionEncoderDecoder captioner with a 10-word vocabulary, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)  # fmt: skip
    dec = GPT2Config(vocab_size=len(WORDS), n_positions=64, n_embd=32, n_layer=1, n_head=2, add_cross_attention=True,
                     is_decoder=True, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 0, 1, 1
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config=cfg)
    # random weights would emit only <s>; suppress it and forbid an immediate end so a caption has words
    model.generation_config = GenerationConfig(decoder_start_token_id=0, bos_token_id=0, eos_token_id=1,
                                               pad_token_id=1, min_new_tokens=3, suppress_tokens=[0])  # fmt: skip
    model.save_pretrained(path)
    fast.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def test_captioner_from_local_tiny_model(src, tmp_path):
    pytest.importorskip("transformers")
    model_dir = tmp_path / "tiny-captioner"
    _tiny_captioner(model_dir)
    cap = Captioner(str(model_dir))
    img = center_square(_read_rgb(src / "astronaut.png"), 48)
    caption = cap(img)
    assert caption and ":" not in caption and set(caption.split()) <= set(WORDS[2:])
    assert cap(img) == caption  # greedy: deterministic
    out = tmp_path / "capds"
    make_dataset(src, out, per_image=2, size=48, seed=0, captioner=cap, log=lambda s: None)
    df = _read_csv(out / "daclip_train.csv")
    metas = [json.loads(x) for x in (out / "meta.jsonl").read_text().splitlines()]
    for (_, row), m in zip(df.iterrows(), metas, strict=True):
        assert row["title"] == f"{m['caption']}: {', '.join(m['types'])}"  # DA-CLIP: "<caption>: <degradation>"
        caption_part, deg_part = row["title"].split(": ")
        assert caption_part and deg_part.split(", ")[0] in DEGRADATIONS
    # the two pairs of one source share the clean image's caption
    assert metas[0]["caption"] == metas[1]["caption"]


def test_caption_model_fails_fast_offline(src, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"'Salesforce/blip-image-captioning-base'.*offline"):
        Captioner("Salesforce/blip-image-captioning-base")
    assert time.perf_counter() - t0 < 10
    not_model = tmp_path / "empty-model"
    not_model.mkdir()
    with pytest.raises(RuntimeError, match="could not load caption model"):
        Captioner(str(not_model))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vlmir", "make-dataset", "--src", str(src), "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd + ["--caption-model", "nobody/no-such-captioner"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=180)  # fmt: skip
    assert res.returncode == 1 and "nobody/no-such-captioner" in res.stderr and "offline" in res.stderr
    assert not (tmp_path / "x" / "daclip_train.csv").exists()
