"""VLMIR: multi-token cross-attention in the UNet, stage 1 (LoRA alignment, degradation predictor), stage 2, CLI."""

import pytest
import torch

from vlmir.models.irsde_unet import ConditionalUNet


def _unet(seed=0):
    torch.manual_seed(seed)
    u = ConditionalUNet(in_nc=3, out_nc=3, nf=32, ch_mult=[1, 1, 2, 2], context_dim=32, use_degra_context=True,
                        use_image_context=True).eval()
    # the zero-free random init keeps every path active
    return u


def _inputs(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 24, 40, generator=g)
    lq = torch.rand(b, 3, 24, 40, generator=g)
    return x, lq


@pytest.mark.parametrize("fast", [True, False])
def test_one_token_context_equals_single_token_path(fast):
    u = _unet().set_fast(fast)
    x, lq = _inputs()
    deg, img = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        single = u(x, lq, 30, text_context=deg, image_context=img)
        tokens = u(x, lq, 30, text_context=deg, image_context=img[:, None], context_mask=torch.ones(2, 1, dtype=torch.bool))
    assert (single - tokens).abs().max().item() <= 1e-5
    assert single.abs().mean().item() > 1e-3


def test_multi_token_fast_equals_port_and_padding_is_ignored():
    u = _unet()
    x, lq = _inputs()
    deg, ctx = torch.randn(2, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        fast = u.set_fast(True)(x, lq, 30, text_context=deg, image_context=ctx, context_mask=mask)
        port = u.set_fast(False)(x, lq, 30, text_context=deg, image_context=ctx, context_mask=mask)
        other = ctx.clone()
        other[0, 3:] = torch.randn(2, 32) * 10  # padded tokens of sample 0 change
        padded = u.set_fast(True)(x, lq, 30, text_context=deg, image_context=other, context_mask=mask)
        unmasked = u(x, lq, 30, text_context=deg, image_context=other)
        # sample 0 with only its three kept tokens, no mask
        short = u(x[:1], lq[:1], 30, text_context=deg[:1], image_context=ctx[:1, :3])
    assert (fast - port).abs().max().item() <= 1e-4
    assert (padded - fast).abs().max().item() <= 1e-5
    assert (short - fast[:1]).abs().max().item() <= 1e-5
    assert (unmasked[0] - fast[0]).abs().max().item() > 1e-4  # without the mask the padding would matter


def test_context_mask_errors():
    u = _unet()
    x, lq = _inputs()
    ctx = torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match="context_mask must have shape"):
        u(x, lq, 30, image_context=ctx, context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        u(x, lq, 30, image_context=ctx, context_mask=torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, M, 32\)"):
        u(x, lq, 30, image_context=torch.randn(2, 3, 16))


# ---------------------------------------------------------------------------------------------------------------
# stage 1
# ---------------------------------------------------------------------------------------------------------------
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vlmir.captions import CaptionCache, image_key, metadata_caption  # noqa: E402
from vlmir.models.vlmir import TINY_CLIP_CONFIG, VLMIRAligner, build_aligner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _aligner(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {"clip_config": TINY_CLIP_CONFIG, "lora_rank": 4, "predictor_hidden": 32, **kw}
    return build_aligner(cfg)


def _batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lq, hq = torch.rand(b, 3, 64, 64, generator=g), torch.rand(b, 3, 64, 64, generator=g)
    target = torch.zeros(b, 11)
    target[torch.arange(b), torch.arange(b) % 11] = 1.0
    return lq, hq, target


def _nudge_lora(m, seed=1):
    """LoRA B starts at zero (an identity adapter); give every adapter weight a value so outputs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_lora_trains_only_adapters_and_predictor():
    m = _aligner()
    base_before = {k: v.clone() for k, v in m.clip_model.state_dict().items() if "lora_" not in k}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("predictor.") or n == "logit_scale" for n in trainable)
    assert any(".visual." in n for n in trainable) and any(".transformer." in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in m.named_parameters() if "lora_" in n}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    lq, hq, target = _batch()
    tok = m.tokenize(["a photo of a cat, hazy"] * 3)
    for _ in range(2):
        loss = m.losses(lq, hq, target, tok, m.tokenize(["a photo of a cat"] * 3))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {k: v for k, v in m.clip_model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(base_before)
    assert all(torch.equal(after[k], base_before[k]) for k in base_before)  # base bit-identical
    changed = [n for n, p in m.named_parameters() if "lora_" in n and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)  # every adapter moved (A and B)


def test_adapters_save_load_merge_same_outputs(tmp_path):
    m = _aligner().eval()
    _nudge_lora(m)
    with torch.no_grad():
        m.predictor.content[-1].weight.normal_(0, 0.1)
    x = torch.rand(2, 3, 64, 64)
    tok = m.tokenize(["a photo, noisy", "a photo of coins"])
    with torch.no_grad():
        ref, ref_text = m(x), m.text_tokens(tok)
        with m.base_outputs():
            base = m(x)["embedding"]
    assert (ref["embedding"] - base).abs().max() > 1e-3  # the adapters change the image tower
    m.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "a" / "lora" / "adapter_model.safetensors").is_file()
    state = m.clip_model.state_dict()
    base_state = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    for merge in (False, True):
        back = VLMIRAligner.from_pretrained(tmp_path / "a", base_state=base_state, merge=merge)
        assert (back.peft is None) == merge
        with torch.no_grad():
            out, text = back(x), back.text_tokens(tok)
        for k in ("embedding", "content", "degradation"):
            assert (out[k] - ref[k]).abs().max().item() <= 1e-5, (merge, k)
        assert (text[1] - ref_text[1]).abs().max().item() <= 1e-5
        assert torch.equal(text[2], ref_text[2])
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLMIRAligner.from_pretrained(tmp_path / "missing")


def test_predictor_shapes_and_losses_by_hand():
    m = _aligner(lora_text=True).eval()
    lq, hq, target = _batch(b=2)
    lq_tok, hq_tok = m.tokenize(["a photo, hazy", "a photo, noisy"]), m.tokenize(["a photo of a", "a photo of b"])
    with torch.no_grad():
        out = m(lq)
        logs = m.losses(lq, hq, target, lq_tok, hq_tok, w_deg=1.0, w_content=0.5, w_image=0.25, w_caption=2.0)
        # by hand, from the towers (adapters start as the identity: B = 0)
        e = m.clip_model.visual((lq - m.mean) / m.std)
        e_d, e_c = m.predictor(e)
        names = F.normalize(m.encode_text(m.tokenize(m.degradation_names)), dim=-1)
        t_hq = F.normalize(m.encode_text(hq_tok), dim=-1)
        i_hq = F.normalize(m.clip_model.visual((hq - m.mean) / m.std), dim=-1)
        logits = math.exp(math.log(1 / 0.07)) * F.normalize(e_d, dim=-1) @ names.t()
        deg = -(target * logits.log_softmax(-1)).sum(-1).mean()
        cap = 1 - F.cosine_similarity(e_c, t_hq).mean()
        img = 1 - F.cosine_similarity(e_c, i_hq).mean()
        txt = 1 - F.cosine_similarity(m.encode_text(lq_tok), t_hq).mean()
    assert out["content"].shape == out["degradation"].shape == (2, 32)
    assert torch.allclose(out["content"], out["embedding"])  # P_c starts at zero: e_c = e
    assert abs(logs["deg"].item() - deg.item()) < 1e-4
    assert abs(logs["content_caption"].item() - cap.item()) < 1e-5
    assert abs(logs["content_image"].item() - img.item()) < 1e-5
    assert abs(logs["caption"].item() - txt.item()) < 1e-5
    total = deg + 0.5 * cap + 0.25 * img + 2.0 * txt
    assert abs(logs["loss"].item() - total.item()) < 1e-4
    # ablations: no predictor -> no L_deg, e_c = e; no LoRA -> no caption loss
    bare = _aligner(predictor=False, lora_rank=0)
    lb = bare.losses(lq, hq, target, lq_tok, hq_tok)
    assert "deg" not in lb and "caption" not in lb and "degradation" not in bare(lq)
    assert not [p for n, p in bare.named_parameters() if p.requires_grad and n != "logit_scale"]


def test_context_tokens_and_masks():
    m = _aligner().eval()
    x = torch.rand(2, 3, 64, 64)
    caps = ["a photo, hazy", "a photo of a red motorcycle on a road, heavily noisy"]
    with torch.no_grad():
        multi = m.context(x, caps)
        single = m.context(x, caps, mode="single")
        nocap = m.context(x, None, use_captions=False)
        out = m(x)
    L = m.context_length
    assert multi["image_context"].shape == (2, 2 + L, 32) and multi["context_mask"].shape == (2, 2 + L)
    n_tok = [len(m.tokenize([c])[0].nonzero()) for c in caps]  # start, words, end
    assert multi["context_mask"].sum(1).tolist() == [2 + n for n in n_tok]
    assert torch.equal(multi["image_context"][:, 0], out["content"]) and torch.equal(multi["text_context"], out["degradation"])
    assert torch.equal(multi["image_context"][:, 1], out["degradation"])
    assert single["image_context"].shape == (2, 1, 32) and nocap["image_context"].shape == (2, 2, 32)
    # the caption's pooled embedding is its end-of-text token embedding
    pooled, tokens, mask = m.text_tokens(m.tokenize(caps))
    assert torch.allclose(pooled, m.encode_text(m.tokenize(caps)))
    assert torch.allclose(tokens[1, n_tok[1] - 1], pooled[1])
    with pytest.raises(ValueError, match="one caption per image"):
        m.context(x, ["only one"])
    with pytest.raises(ValueError, match="mode"):
        m.context(x, caps, mode="pairs")


def test_views_average_native_crops():
    m = _aligner(image_views=4).eval()
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        whole = m.encode_image(x)
        left, right = m.encode_image(x[..., :64]), m.encode_image(x[..., 64:])
    assert torch.allclose(whole, (left + right) / 2, atol=1e-5)


def test_base_weight_sources(tmp_path):
    from vlmir.models.vlmir import load_base_weights

    assert load_base_weights("random") is None
    with pytest.raises(FileNotFoundError, match="open_clip"):
        load_base_weights(str(tmp_path / "nope.pt"))
    m = _aligner(lora_rank=0)
    torch.save(m.clip_model.state_dict(), tmp_path / "clip.pt")
    state = load_base_weights(str(tmp_path / "clip.pt"))
    assert set(state) == set(m.clip_model.state_dict())
    # the paper-scale base from the hub: offline it fails at once, naming the repo and file
    with pytest.raises(FileNotFoundError, match="open_clip_model.safetensors"):
        load_base_weights("open_clip:ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_aligner({"clip_model": "ViT-B-33"})


def test_embedded_encoder_towers_are_the_lite_base():
    from vlmir.models.embedded import ENCODER_DIR, load_encoder
    from vlmir.models.vlmir import embedded_clip_config

    if not (ENCODER_DIR / "model.safetensors").is_file():
        pytest.skip("embedded encoder weights are not shipped in this checkout")
    cfg = json.loads((ENCODER_DIR / "config.json").read_text())
    m = build_aligner({"clip_config": embedded_clip_config(cfg), "base": "embedded-encoder", "lora_rank": 2})
    enc, _ = load_encoder()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ours = m.encode_image(x)
        theirs, _ = enc.encode_image(x, control=False)
    assert torch.allclose(ours, theirs, atol=1e-5)  # zero-initialised LoRA: exactly the embedded content tower
    ctrl = build_aligner({"clip_config": embedded_clip_config(cfg), "base": "embedded-controller", "lora_rank": 0})
    with torch.no_grad():
        theirs = enc.controller((x - enc.mean) / enc.std)
        assert torch.allclose(ctrl.eval().encode_image(x), theirs, atol=1e-5)  # the controller as the image tower
        assert torch.allclose(ctrl.encode_text(ctrl.name_tokens), enc.encode_text(enc.name_tokens), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------------------------
def test_metadata_captions_and_cache(tmp_path):
    assert metadata_caption("motorcycle_left") == "a photo of motorcycle left"
    assert metadata_caption("procedural", ["snowy"], severity=5) == "a photo of a synthetic pattern, extremely snowy"
    assert metadata_caption("chelsea_003.png", ["rainy", "hazy"], severity=3) == "a photo of chelsea, rainy and hazy"
    assert metadata_caption(None, ["clear"]) == "a photo"
    with pytest.raises(ValueError, match="severity"):
        metadata_caption("x", ["hazy"], severity=7)
    img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    calls = []

    def cap(im):
        calls.append(1)
        return f"caption {len(calls)}"

    path = tmp_path / "c" / "captions.jsonl"
    cache = CaptionCache(path)
    assert cache.caption(cap, "m1", img) == "caption 1" and cache.caption(cap, "m1", img) == "caption 1"
    assert cache.caption(cap, "m2", img) == "caption 2"  # another model: its own caption
    assert len(calls) == 2
    again = CaptionCache(path)  # on disk
    assert again.get("m1", image_key(img)) == "caption 1" and len(again) == 2
    with open(path, "a") as f:
        f.write('{"captioner": "m1", "key"')  # a run killed mid-line
    assert len(CaptionCache(path)) == 2
    path.write_text('not json\n{"captioner": "m1", "key": "k", "caption": "c"}\n')
    with pytest.raises(ValueError, match="line 1"):
        CaptionCache(path)


def test_make_dataset_writes_vlmir_captions(tmp_path):
    import skimage

    from vlmir.degradations.dataset import make_dataset

    src = tmp_path / "src"
    src.mkdir()
    from PIL import Image

    Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").resize((64, 64)).save(src / "astronaut.png")
    make_dataset(src, tmp_path / "ds", per_image=2, size=48, seed=1, log=lambda s: None)
    metas = [json.loads(x) for x in (tmp_path / "ds" / "meta.jsonl").read_text().splitlines()]
    for m in metas:
        assert m["caption_source"] == "metadata-template" and m["hq_caption"] == "a photo of astronaut"
        assert m["lq_caption"].startswith("a photo of astronaut, ") and m["types"][-1] in m["lq_caption"]

    def fake(image):
        return f"mean {image.mean():.3f}"

    fake.name = "fake-captioner"
    make_dataset(src, tmp_path / "ds2", per_image=1, size=48, seed=1, captioner=fake, log=lambda s: None)
    m = json.loads((tmp_path / "ds2" / "meta.jsonl").read_text().splitlines()[0])
    assert m["caption_source"] == "fake-captioner" and m["hq_caption"] != m["lq_caption"]
    cached = CaptionCache(tmp_path / "ds2" / "captions.jsonl")
    assert len(cached) == 2 and cached.get("fake-captioner", image_key(np.zeros((1, 1, 3)))) is None


# ---------------------------------------------------------------------------------------------------------------
# both stages end to end
# ---------------------------------------------------------------------------------------------------------------
TINY_ALIGN = {
    "kind": "vlmir-align", "seed": 0, "steps": 6, "batch_size": 3, "lr": 1e-3, "warmup": 2, "threads": 1,
    "log_every": 3, "checkpoint_every": 3,
    "model": {"clip_config": TINY_CLIP_CONFIG, "lora_rank": 4, "predictor_hidden": 32},
    "data": {"window": [64, 80], "p_procedural": 0.5, "photos": ["camera", "coins"]},
}
TINY_RESTORER = {
    "kind": "vlmir-restorer", "seed": 0, "steps": 4, "batch_size": 2, "restore_crop": 32, "lr": 1e-3, "warmup": 2,
    "threads": 1, "log_every": 2, "checkpoint_every": 2, "default_steps": 3,
    "unet": {"nf": 32, "ch_mult": [1, 1, 2, 2]},
    "data": {"window": [64, 80], "p_procedural": 0.5, "photos": ["camera", "coins"]},
}


@pytest.fixture(scope="module")
def tiny_vlmir(tmp_path_factory):
    from vlmir.training.train_vlmir import train_align, train_restorer

    root = tmp_path_factory.mktemp("vlmir")
    train_align(dict(TINY_ALIGN), root / "align", progress=False)
    cfg = {**TINY_RESTORER, "aligner": str(root / "align" / "final")}
    logs = train_restorer(cfg, root / "restorer", progress=False)
    return root, cfg, logs


def test_tiny_two_stage_training_and_exact_resume(tiny_vlmir):
    from vlmir.pipelines.vlmir import load_vlmir
    from vlmir.training.train_vlmir import train_restorer

    root, cfg, logs = tiny_vlmir
    final = root / "restorer" / "final"
    assert (final / "pipeline.json").is_file() and (final / "aligner" / "lora" / "adapter_model.safetensors").is_file()
    assert math.isfinite(logs["loss"]) and logs["steps"] == 4
    # a run killed after its step-2 checkpoint and resumed ends with the same UNet as the straight run
    from vlmir.training.common import load_checkpoint, save_checkpoint

    half = root / "half"
    train_restorer({**cfg, "steps": 2, "checkpoint_every": 2}, half, progress=False)
    state = load_checkpoint(half / "checkpoint.pt")
    assert state["step"] == 2
    train_restorer(cfg, half, resume=True, progress=False)
    a = load_vlmir(final).unet.state_dict()
    b = load_vlmir(half / "final").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    del save_checkpoint


def test_tiny_pipeline_restores_classifies_and_switches_context(tiny_vlmir):
    from vlmir.pipelines.vlmir import VLMIRClassifier, load_vlmir

    root, _, _ = tiny_vlmir
    pipe = load_vlmir(root / "restorer" / "final")
    assert pipe.random_weights  # a random base CLIP is labelled
    x = torch.rand(1, 3, 40, 52)
    y = pipe.restore(x, seed=3)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert torch.equal(pipe.restore(x, seed=3), y)  # seeded
    assert pipe.last_caption.startswith("a photo")
    probs = VLMIRClassifier(pipe).classify(x)
    assert set(probs) == set(pipe.aligner.degradation_names) and abs(sum(probs.values()) - 1) < 1e-5
    single = load_vlmir(root / "restorer" / "final", context_mode="single")
    assert not single.use_captions
    assert (single.restore(x, seed=3) - y).abs().max() > 1e-4  # the context matters
    with pytest.raises(ValueError, match="context_mode"):
        load_vlmir(root / "restorer" / "final", context_mode="triple")


def test_cli_restore_model_vlmir_writes_same_size_pngs(tiny_vlmir, tmp_path):
    from PIL import Image

    root, _, _ = tiny_vlmir
    imgs = []
    for i, size in enumerate(((40, 30), (57, 45))):
        p = tmp_path / f"in{i}.png"
        Image.fromarray((np.random.default_rng(i).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(p)
        imgs.append(p)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "vlmir", "restore", *map(str, imgs), "--out-dir", str(out), "--model",
                          "vlmir", "--weights-dir", str(root / "restorer" / "final"), "--steps", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    for p, size in zip(imgs, ((40, 30), (57, 45)), strict=True):
        assert Image.open(out / f"{p.stem}.png").size == size


def test_registry_lists_vlmir_models():
    from vlmir.registry import get_spec, list_models

    assert "vlmir" in list_models(task="restorer") and "vlmir-classifier" in list_models(task="classifier")
    assert get_spec("vlmir").extra["diffusion"]


def test_ablation_plan_shares_stage_one_and_restricts_types(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.vlmir_ablation import merge, plan

    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}}) == {"a": {"b": 1, "c": 5}, "d": 3}
    cfg = json.loads((ROOT / "benchmarks" / "vlmir_ablation.json").read_text())
    runs = plan(cfg, tmp_path)
    assert len(runs) == len(cfg["settings"]) * len(cfg["variants"])
    by = {(r["setting"], r["variant"]): r for r in runs}
    full, single = by[("universal", "VLMIR")], by[("universal", "single-token")]
    assert full["align_dir"] == single["align_dir"] and full["restorer_dir"] != single["restorer_dir"]
    assert by[("universal", "w/o LoRA")]["align"]["model"]["lora_rank"] == 0
    assert by[("universal", "w/o predictor")]["align"]["model"]["predictor"] is False
    assert single["restorer"]["context_mode"] == "single"
    assert by[("universal", "w/o captions")]["restorer"]["use_captions"] is False
    assert full["restorer"]["steps"] == cfg["restorer_steps"] and full["align"]["steps"] == cfg["align_steps"]
    noisy = by[("noisy", "VLMIR")]["restorer"]["data"]
    assert noisy["p_mixture"] == 0.0 and noisy["type_weights"]["noisy"] == 1.0
    assert sum(noisy["type_weights"].values()) == 1.0
    assert "type_weights" not in full["restorer"]["data"]


@pytest.mark.slow  # builds the full ViT-B-32 (150M parameters): about a minute on two cores
def test_paper_scale_configs_build_on_random_weights_and_fail_fast_offline(tmp_path):
    from vlmir.training.common import load_config
    from vlmir.training.train_vlmir import train_align

    cfg = load_config(ROOT / "vlmir" / "training" / "configs" / "vlmir_align_vitb32.json")
    rcfg = load_config(ROOT / "vlmir" / "training" / "configs" / "vlmir_restorer_vitb32.json")
    assert cfg["model"]["clip_model"] == "ViT-B-32" and rcfg["unet"]["ch_mult"] == [1, 2, 4, 8]
    m = build_aligner({**cfg["model"], "base": "random"})
    assert m.embed_dim == 512 and m.image_size == 224 and m.context_length == 77
    adapted = [n for n, _ in m.peft.named_modules() if n.endswith(("c_fc", "c_proj")) and hasattr(_, "lora_A")]
    assert len(adapted) == 2 * 12 + 2 * 12  # both MLP linears of the 12 image and 12 text blocks
    with torch.no_grad():
        out = m(torch.rand(1, 3, 180, 240))  # resized and centre-cropped to 224
    assert out["degradation"].shape == (1, 512)
    with pytest.raises(FileNotFoundError, match="open_clip_model.safetensors"):
        train_align({**cfg, "steps": 1}, tmp_path / "run", progress=False)


def test_sample_prediction_starts_at_the_identity(tiny_vlmir, tmp_path):
    from vlmir.pipelines.vlmir import load_vlmir
    from vlmir.schedulers.irsde import IRSDEScheduler
    from vlmir.training.train_vlmir import train_restorer

    s = IRSDEScheduler(max_sigma=50, T=100)
    x0, mu, n = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 70])
    xt = s.add_noise(x0, n, t, mu=mu)
    assert torch.allclose(s.noise_from_sample(x0, t, xt, mu), n, atol=1e-4)
    assert torch.allclose(s.pred_original_sample(s.noise_from_sample(x0[1:], 70, xt[1:], mu[1:]), 70, xt[1:], mu[1:]),
                          x0[1:], atol=1e-5)
    root, cfg, _ = tiny_vlmir
    train_restorer({**cfg, "prediction": "sample", "steps": 0}, tmp_path / "r", progress=False)
    pipe = load_vlmir(tmp_path / "r" / "final")
    assert pipe.prediction == "sample"
    x = torch.rand(1, 3, 40, 52)
    assert (pipe.restore(x, steps=5, seed=1) - x).abs().max().item() <= 1e-4  # x0_hat = mu: the input comes back
    with pytest.raises(ValueError, match="prediction"):
        train_restorer({**cfg, "prediction": "velocity"}, tmp_path / "bad", progress=False)


def test_ablation_setting_overrides_its_stage_two_budget(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.vlmir_ablation import plan

    cfg = json.loads((ROOT / "benchmarks" / "vlmir_ablation.json").read_text())
    cfg["settings"] = {"universal": {}, "rainy": {"type": "rainy", "restorer_steps": 7}}
    runs = plan(cfg, tmp_path)
    steps = {(r["setting"], r["variant"]): r["restorer"]["steps"] for r in runs}
    assert set(v for (s, _), v in steps.items() if s == "rainy") == {7}
    assert set(v for (s, _), v in steps.items() if s == "universal") == {cfg["restorer_steps"]}


def test_ablation_tables_keep_variants_whose_names_have_slashes(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.vlmir_ablation import folder_name, score_setting, ship_table
    from vlmir.io import save_image

    assert folder_name("w/o LoRA") == "wo LoRA" and folder_name("single-token") == "single-token"
    with pytest.raises(ValueError, match="results folder"):
        folder_name("gt")
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (2, 16, 16, 3))
    noise = {"VLMIR": 0.01, "w/o LoRA": 0.05, "w/o captions": 0.2}
    d = tmp_path / "dataset"
    for method, sigma in {"gt": 0.0, **noise}.items():
        for i, img in enumerate(gt):
            out = np.clip(img + rng.normal(0, sigma, img.shape), 0, 1) if sigma else img
            folder = "gt" if method == "gt" else folder_name(method)
            save_image(torch.from_numpy(out).permute(2, 0, 1).float(), d / folder / "noisy" / f"{i}.png")
    scores = score_setting(d, tmp_path / "out", list(noise), "psnr")
    psnr = scores[scores.metric == "psnr"].groupby("method")["score"].mean()
    assert set(psnr.index) == set(noise)  # the "w/o" rows are not lost to nested folders
    assert psnr["VLMIR"] > psnr["w/o LoRA"] > psnr["w/o captions"]
    assert "| w/o LoRA |" in (tmp_path / "out" / "table.md").read_text()
    import eval.reference as er

    er_dir = er.REFERENCE_DIR
    try:
        er.REFERENCE_DIR = tmp_path / "ref"
        er.REFERENCE_DIR.mkdir()
        import pandas as pd

        shipped = pd.read_csv(ship_table(tmp_path / "out" / "scores.csv", "abl"))
    finally:
        er.REFERENCE_DIR = er_dir
    assert set(shipped.method) == set(noise) and set(shipped.category) == {"noisy", "Overall"}


def test_make_dataset_captions_with_a_vlm(tmp_path):
    from PIL import Image

    from vlmir.vlm.tiny import save_tiny_llava

    vlm = save_tiny_llava(tmp_path / "tiny-llava")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(src / "cat.png")
    out = tmp_path / "ds"
    res = subprocess.run([sys.executable, "-m", "vlmir", "make-dataset", "--src", str(src), "--out", str(out),
                          "--size", "32", "--caption-vlm", str(vlm)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "meta.jsonl").read_text().splitlines()[0])
    assert m["caption_source"] == str(vlm) and isinstance(m["lq_caption"], str) and ":" not in m["lq_caption"]
    assert len(CaptionCache(out / "captions.jsonl")) == 2  # the HQ and the LQ image
    bad = subprocess.run([sys.executable, "-m", "vlmir", "make-dataset", "--src", str(src), "--out", str(out),
                          "--caption-vlm", str(vlm), "--caption-model", str(vlm)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "not both" in bad.stderr
