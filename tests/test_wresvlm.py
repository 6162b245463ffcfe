"""WResVLM training (vlmir.training.wresvlm): losses by hand, the pseudo-label store, EMA, a tiny two-round run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlmir.training import wresvlm as W
from vlmir.training.pseudo_labels import CorruptStoreError, PseudoLabelStore

TINY_ENCODER = dict(embed_dim=32, image_size=64, vision_width=8, vision_head_width=16, text_width=16, text_heads=2,
                    text_layers=1, context_length=12)
TINY_STUDENT = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1], "prior": True}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- losses by hand ---------------------------------------------------------------------------------------------------

def test_wpl_and_prompt_losses_match_hand_computation():
    img = torch.tensor([[2.0, 0.0]])  # E_I(y_hat): unnormalised, cos only sees its direction
    prompts = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, -1.0]])  # t_c, t_r, t_h, t_s
    # cos = (1, 0, -1, 0); L_wpl = -log(e^1 / (e^1 + e^0 + e^-1 + e^0))
    z = math.e + 2 + math.exp(-1)
    assert W.wpl_loss(img, prompts).item() == pytest.approx(-(1 - math.log(z)), abs=1e-6)  # 0.62652
    assert W.wpl_loss(img, prompts).item() == pytest.approx(0.626523, abs=1e-5)
    z2 = math.exp(2) + 2 + math.exp(-2)  # scale s = 2
    assert W.wpl_loss(img, prompts, 2.0).item() == pytest.approx(math.log(z2) - 2, abs=1e-6)
    # stage (a): soft target (0, 0.5, 0.5, 0) (a rain + haze mixture)
    target = W.weather_target(["rainy", "hazy"])[None]
    assert target.tolist() == [[0.0, 0.5, 0.5, 0.0]]
    assert W.prompt_ce_loss(img, prompts, target).item() == pytest.approx(
        -(0.5 * (0 - math.log(z)) + 0.5 * (-1 - math.log(z))), abs=1e-6)
    assert W.weather_target([]).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert W.weather_target(["noisy"]).tolist() == [1.0, 0.0, 0.0, 0.0]  # not a weather: clear


def test_sem_feat_and_l1_losses_match_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # cos 0.7071, 1
    neg = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])  # cos -1, 0
    # L_sem = mean_b -log(e^{c_pos} / (e^{c_pos} + e^{c_neg}))
    expected = (math.log(1 + math.exp(-1 - math.sqrt(0.5))) + math.log(1 + math.exp(0 - 1))) / 2
    assert W.sem_loss(img, pos, neg).item() == pytest.approx(expected, abs=1e-6)
    # L_feat: position 1: (1, 0) vs (0, 1) -> 1 - 0; position 2: (1, 1) vs (2, 2) -> 1 - 1
    g_hat = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
    g_ref = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]]]])
    assert W.feat_loss(g_hat, g_ref).item() == pytest.approx(0.5, abs=1e-6)
    tokens = g_hat.flatten(2).transpose(1, 2)  # (B, N, C) tokens (Depth Anything's encoder)
    assert W.feat_loss(tokens, g_ref.flatten(2).transpose(1, 2)).item() == pytest.approx(0.5, abs=1e-6)
    assert W.l1_loss(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)


def test_ema_update_matches_its_formula():
    torch.manual_seed(0)
    student, teacher = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), None
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    student[1].num_batches_tracked.fill_(7)
    student[1].running_mean.fill_(1.0)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    W.ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * t0[k] + 0.1 * s, atol=1e-7), k
        else:
            assert torch.equal(v, s), k  # integer buffers are copied
    assert teacher[1].running_mean.tolist() == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="momentum"):
        W.ema_update(teacher, student, 1.5)


def test_pseudo_label_choice_by_rating_and_votes():
    cands = {"a": None, "b": None, "c": None}
    ratings = {"a": 3.0, "b": 3.5, "c": 2.0}
    assert W.choose_pseudo_label(cands, ratings) == "b"
    iqa = {"a": {"musiq": 60.0, "niqe": 3.0}, "b": {"musiq": 50.0, "niqe": 6.0}, "c": {"musiq": 40.0, "niqe": 9.0}}
    # r^vlm votes b; MUSIQ (higher better) votes a; NIQE (lower better) votes a -> a wins 2:1
    assert W.choose_pseudo_label(cands, ratings, iqa, {"musiq": False, "niqe": True}) == "a"
    # NIQE read as higher-better votes c: a, b, c one vote each -> the tie goes to the best r^vlm, b
    assert W.choose_pseudo_label(cands, ratings, iqa, {"musiq": False, "niqe": False}) == "b"


def test_weather_sampler_draws_only_rain_haze_snow():
    from vlmir.training.data import DataConfig, PairSampler

    s = PairSampler(DataConfig(crop=64, window=(64, 80), p_procedural=1.0, p_clean=0.0, p_mixture=0.5,
                               type_weights=W.weather_type_weights()), seed=1)
    types = [t for _ in range(30) for t in s.sample_one()["types"]]
    assert set(types) == set(W.WEATHER_TYPES)


# -- the pseudo-label store -------------------------------------------------------------------------------------------

def test_store_replaces_only_when_the_teacher_rates_higher(tmp_path):
    store = PseudoLabelStore(tmp_path / "s")
    a, b, c = torch.full((1, 3, 8, 8), 0.2), torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.9)
    store.add("x.png", source=str(tmp_path / "x.png"), image=a, score=3.0, origin="embedded", d_neg="A rainy street.")
    assert not store.replace_if_better("x.png", image=b, score=2.9, origin="teacher@round1", round=1)
    assert not store.replace_if_better("x.png", image=b, score=3.0, origin="teacher@round1", round=1)  # equal: kept
    assert torch.equal(store.image("x.png"), a[0]) and store.entry("x.png")["origin"] == "embedded"
    assert store.replace_if_better("x.png", image=c, score=3.4, origin="teacher@round2", round=2)
    again = PseudoLabelStore(tmp_path / "s")  # what is on disk
    e = again.entry("x.png")
    assert (e["score"], e["origin"], e["round"], e["rev"], e["d_neg"]) == (3.4, "teacher@round2", 2, 1, "A rainy street.")
    assert torch.equal(again.image("x.png"), c)
    assert len(list((tmp_path / "s" / "labels").iterdir())) == 1  # the replaced label file is gone
    with pytest.raises(ValueError, match="already exists"):
        store.add("x.png", source="x", image=a, score=3.0, origin="o")
    with pytest.raises(ValueError, match="r\\^vlm in \\[1, 5\\]"):
        store.add("y.png", source="y", image=a, score=7.0, origin="o")
    with pytest.raises(ValueError, match="shape"):
        store.add("y.png", source="y", image=torch.zeros(2, 8, 8), score=3.0, origin="o")


def test_store_survives_a_kill_and_resume_without_losing_an_entry(tmp_path, monkeypatch):
    store = PseudoLabelStore(tmp_path / "s")
    a = torch.full((3, 8, 8), 0.25)
    for i in range(3):
        store.add(f"{i}.png", source=f"{i}.png", image=a + i / 10, score=2.0 + i, origin="classical")

    def killed(self):
        raise KeyboardInterrupt("killed between the label file and the index")

    monkeypatch.setattr(PseudoLabelStore, "_write_index", killed)
    with pytest.raises(KeyboardInterrupt):
        store.replace_if_better("1.png", image=torch.ones(3, 8, 8), score=4.5, origin="teacher@round1")
    monkeypatch.undo()
    again = PseudoLabelStore(tmp_path / "s")  # the index still points at the old, complete label
    assert len(again) == 3 and again.entry("1.png")["score"] == 3.0
    assert torch.allclose(again.image("1.png"), a + 0.1)
    assert len(list((tmp_path / "s" / "labels").iterdir())) == 3  # the orphaned new file was removed

    # init_pseudo_labels killed after two images resumes with the third only
    data = {f"u{i}.png": {"path": f"u{i}.png", "image": torch.rand(1, 3, 16, 16)} for i in range(3)}

    class Restorer:
        calls = 0

        def restore(self, x):
            Restorer.calls += 1
            if Restorer.calls == 3:
                raise KeyboardInterrupt
            return x * 0.5

    class Rater:
        def rate(self, x):
            return {"score": 1.0 + 4.0 * float(x.mean())}

    s2 = PseudoLabelStore(tmp_path / "s2")
    with pytest.raises(KeyboardInterrupt):
        W.init_pseudo_labels(s2, data, {"half": Restorer()}, Rater(), None, describe=False)
    assert sorted(PseudoLabelStore(tmp_path / "s2").entries) == ["u0.png", "u1.png"]
    s2 = PseudoLabelStore(tmp_path / "s2")
    assert W.init_pseudo_labels(s2, data, {"half": Restorer()}, Rater(), None, describe=False) == 1
    assert sorted(s2.entries) == ["u0.png", "u1.png", "u2.png"]
    assert s2.entry("u2.png")["score"] == pytest.approx(1 + 4 * float(data["u2.png"]["image"].mean()) * 0.5, abs=1e-5)


def test_store_refuses_a_corrupt_file(tmp_path):
    store = PseudoLabelStore(tmp_path / "s")
    store.add("x.png", source="x.png", image=torch.rand(3, 8, 8), score=3.0, origin="o")
    label = tmp_path / "s" / "labels" / store.entry("x.png")["label"]
    label.write_bytes(label.read_bytes()[:40])  # truncated
    with pytest.raises(CorruptStoreError, match=label.name):
        PseudoLabelStore(tmp_path / "s")
    (tmp_path / "s" / "index.json").write_text('{"version": 1, "entries": {')  # truncated JSON
    with pytest.raises(CorruptStoreError, match="index.json"):
        PseudoLabelStore(tmp_path / "s")
    assert issubclass(CorruptStoreError, ValueError)


# -- feature and CLIP models ------------------------------------------------------------------------------------------

def test_depth_anything_features_from_a_local_tiny_config(tmp_path):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_indices=[1, 2], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                              fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[2, 1])
    DepthAnythingForDepthEstimation(cfg).save_pretrained(tmp_path / "da")
    feats = W.build_feature_model({"model": str(tmp_path / "da"), "size": 56}, encoder=None)
    assert isinstance(feats, W.DepthFeatures) and feats.patch == 14
    x = torch.rand(2, 3, 64, 64)
    g = feats(x)
    assert g.shape == (2, 16, 32)  # (56 / 14)^2 patch tokens of width 32, class token dropped
    assert W.feat_loss(feats(x), g).item() == pytest.approx(0.0, abs=1e-6)
    assert W.feat_loss(feats(x.flip(-1)), g).item() > 1e-3
    with pytest.raises(FileNotFoundError, match="not a folder"):
        W.build_feature_model({"model": str(tmp_path / "missing")}, encoder=None)
    assert W.build_feature_model({"model": "none"}, encoder=None) is None


def test_open_clip_config_and_embedded_clip_encode():
    from vlmir.models.encoder import DegradationAwareEncoder

    clip = W.OpenCLIP.from_config({"config": {
        "embed_dim": 16, "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 32},
        "text_cfg": {"context_length": 16, "width": 32, "heads": 2, "layers": 1}}})
    assert clip.random_weights
    img, txt = clip.encode_image(torch.rand(2, 3, 48, 48)), clip.encode_text(W.PROMPT_TEXTS)
    assert img.shape == (2, 16) and txt.shape == (4, 16)
    assert torch.isfinite(W.wpl_loss(img, txt, clip.logit_scale()))
    with pytest.raises(ValueError, match="pretrained"):
        W.OpenCLIP.from_config({"model": "ViT-B-32"})
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    e = W.EmbeddedCLIP(enc)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(e.encode_image(x), enc.forward_features(x)["degradation"])
    assert e.encode_text(["a clear photo"]).shape == (1, 32)
    with pytest.raises(ValueError, match="embedding"):
        W.EmbeddedCLIP(enc, "pixels")


# -- the loop ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    """A tiny random encoder folder, a small unlabelled folder and a rater on the tiny encoder."""
    from vlmir.models.embedded import build_rater
    from vlmir.models.encoder import DegradationAwareEncoder
    from vlmir.training.common import export_weights

    root = tmp_path_factory.mktemp("wres")
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER)
    export_weights(root / "enc", model=enc, model_config=enc.config, train_config={})
    W.write_engine_split(root / "unlabelled", photos=["astronaut", "rocket"], per_photo=2, seed=0, short_side=72)
    with pytest.warns(UserWarning, match="RANDOM"):
        rater = build_rater(path=root / "no-rater-head", encoder_path=root / "enc")
    return root, rater


class _Identity:
    def restore(self, x):
        return x.clone()


class _Contrast:
    def restore(self, x):
        return ((x - x.mean()) * 1.3 + x.mean()).clamp(0, 1)


def _cfg(root, **kw):
    cfg = {"kind": "wresvlm", "seed": 1, "encoder": str(root / "enc"), "student": {"model": TINY_STUDENT},
           "rounds": 2, "steps_per_round": 2, "batch_size": 2, "unlabelled_batch_size": 2, "lr": 1e-3, "warmup": 1,
           "ema": 0.5, "prompt_steps": 2, "prompt_batch_size": 2, "threads": 1, "log_every": 1,
           "checkpoint_every": 100, "iqa_votes": [], "clip_scale": "clip",
           "data": {"window": [64, 72], "p_procedural": 0.5},
           "unlabelled": {"folder": str(root / "unlabelled"), "short_side": 72}}
    cfg.update(kw)
    return cfg


def test_two_round_tiny_run_and_exact_resume(tiny_parts, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    root, rater = tiny_parts
    cands = {"input": _Identity(), "contrast": _Contrast()}
    res = W.train(_cfg(root), tmp_path / "a", progress=False, rater=rater, restorers=cands)
    rounds = [json.loads(x) for x in (tmp_path / "a" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2] and res["rounds"] == rounds
    assert all(1 <= r["mean_r_vlm_teacher"] <= 5 for r in rounds)
    assert res["random_weights"] and set(res["last"]) == {"loss", "L_sup", "L_ps", "L_wpl", "L_sem", "L_feat"}
    last = res["last"]
    assert last["loss"] == pytest.approx(last["L_sup"] + 0.5 * last["L_ps"] + 0.2 * last["L_wpl"]
                                         + 0.05 * last["L_sem"] + 0.2 * last["L_feat"], rel=1e-5)
    store = PseudoLabelStore(tmp_path / "a" / "pseudo_labels")
    assert len(store) == 4
    for key in store:
        e = store.entry(key)
        assert e["origin"] in ("input", "contrast") or e["origin"].startswith("teacher@round")
        if e["origin"] in ("input", "contrast"):  # the initial choice is the best-rated candidate
            assert e["score"] == pytest.approx(max(e["scores"]["r_vlm[input]"], e["scores"]["r_vlm[contrast]"]))
        assert e["d_neg"].startswith("A photo that looks") and "d_pos" in e
    final = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    assert json.loads((tmp_path / "a" / "final" / "config.json").read_text())["training"] == "wresvlm"
    from vlmir.models.embedded import build_wresvlm_lite

    exported = build_wresvlm_lite(path=tmp_path / "a" / "final", encoder_path=root / "enc")  # the registry builder
    x = torch.rand(1, 3, 70, 90)
    assert exported.restore(x).shape == x.shape and exported.name == "wresvlm-lite"
    with pytest.raises(FileNotFoundError, match="weights not found"):
        build_wresvlm_lite(path=tmp_path / "nothing", encoder_path=root / "enc")

    # killed in the middle of round 2, then resumed: the same teacher, bit for bit
    calls = {"n": 0}
    real = W.ema_update

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(W, "ema_update", dying)
    with pytest.raises(KeyboardInterrupt):
        W.train(_cfg(root), tmp_path / "b", progress=False, rater=rater, restorers=cands)
    monkeypatch.setattr(W, "ema_update", real)
    W.train(_cfg(root), tmp_path / "b", resume=True, progress=False, rater=rater, restorers=cands)
    assert "at step 2" in (tmp_path / "b" / "train.log").read_text()  # resumed, not restarted
    with pytest.raises(ValueError, match="already holds pseudo-labels"):  # a fresh run never reuses them silently
        W.train(_cfg(root), tmp_path / "b", progress=False, rater=rater, restorers=cands)
    resumed = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert final.keys() == resumed.keys()
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    again = [json.loads(x) for x in (tmp_path / "b" / "rounds.jsonl").read_text().splitlines()]
    assert again == [{**r, "wall_s": a["wall_s"]} for r, a in zip(rounds, again, strict=True)]


def test_loss_terms_switch_off_and_refresh_off(tiny_parts, tmp_path):
    root, rater = tiny_parts
    cfg = _cfg(root, rounds=1, weights={"wpl": 0, "sem": 0, "feat": 0}, refresh=False, describe=False)
    res = W.train(cfg, tmp_path / "c", progress=False, rater=rater, restorers={"input": _Identity()})
    assert set(res["last"]) == {"loss", "L_sup", "L_ps"}
    assert res["rounds"][-1]["replaced"] == 0
    store = PseudoLabelStore(tmp_path / "c" / "pseudo_labels")
    assert {store.entry(k)["origin"] for k in store} == {"input"}
    with pytest.raises(ValueError, match="unknown terms"):
        W.train(_cfg(root, weights={"depth": 1.0}), tmp_path / "d", progress=False, rater=rater)
    with pytest.raises(ValueError, match="unknown keys"):
        W.train(_cfg(root, stepz=3), tmp_path / "d", progress=False, rater=rater)


def test_wresvlm_lite_is_a_registry_restorer_that_is_never_random():
    from vlmir.models.embedded import WRESVLM_DIR
    from vlmir.registry import get_spec, list_models

    assert "wresvlm-lite" in list_models(task="restorer")
    ok, why = get_spec("wresvlm-lite").availability()
    shipped = (WRESVLM_DIR / "model.safetensors").is_file()
    assert ok == shipped
    if not shipped:
        assert "python -m vlmir train wresvlm" in why
        return
    from vlmir.registry import create_model

    cfg = json.loads((WRESVLM_DIR / "config.json").read_text())
    assert cfg["training"] == "wresvlm" and cfg["prior"] is True
    r = create_model("wresvlm-lite", task="restorer")
    x = torch.rand(1, 3, 40, 56)
    y = r.restore(x, degradation="rainy")
    assert r.random_weights is False and y.shape == x.shape
    assert (y - create_model("embedded", task="restorer").restore(x, degradation="rainy")).abs().max() > 1e-4


def test_unlabelled_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        W.list_images(tmp_path / "empty")
    x = W.fit_image(torch.rand(1, 3, 100, 150), 60, 8)
    assert x.shape == (1, 3, 56, 88)


def test_train_command_with_a_transformers_vlm_rater(tiny_parts, tmp_path):
    """``python -m vlmir train wresvlm``: a (tiny, random) transformers LLaVA rates and describes the unlabelled
    images; its descriptions are d_neg and their rule-based rewrites d_pos."""
    from vlmir.commands import main
    from vlmir.vlm.tiny import save_tiny_llava
    from vlmir.vlm.weather import remove_weather

    root, _ = tiny_parts
    llava = save_tiny_llava(tmp_path / "llava")
    cfg = _cfg(root, rounds=1, steps_per_round=1, rater=str(llava), init_restorers=["classical"],
               weights={"feat": 0.0})
    (tmp_path / "w.json").write_text(json.dumps(cfg))
    assert main(["train", "wresvlm", "--config", str(tmp_path / "w.json"), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    store = PseudoLabelStore(tmp_path / "run" / "pseudo_labels")
    assert len(store) == 4
    for key in store:
        e = store.entry(key)
        assert e["origin"] == "classical" and 1 <= e["score"] <= 5
        assert not e["d_neg"].startswith("A photo that looks") and e["d_pos"] == remove_weather(e["d_neg"])
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert main(["train", "wresvlm", "--config", str(tmp_path / "w.json"), "--out", str(tmp_path / "run"),
                 "--steps", "-1"]) == 1


def test_losses_on_a_tiny_clip_match_a_hand_computation():
    """L_wpl and L_sem through the tiny embedded CLIP's towers, against the formulas written out with numpy."""
    from vlmir.models.encoder import DegradationAwareEncoder

    torch.manual_seed(3)
    clip = W.EmbeddedCLIP(DegradationAwareEncoder(**TINY_ENCODER).eval())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        img = clip.encode_image(x).double().numpy()
    prompts = clip.encode_text(W.PROMPT_TEXTS)
    texts = clip.encode_text(["A photo that looks clear.", "A photo that looks rainy."])
    s = float(clip.logit_scale())

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    p = prompts.double().numpy()
    wpl = np.mean([-np.log(np.exp(s * cos(i, p[0])) / sum(np.exp(s * cos(i, t)) for t in p)) for i in img])
    pos, neg = texts.double().numpy()
    sem = np.mean([-np.log(np.exp(s * cos(i, pos)) / (np.exp(s * cos(i, pos)) + np.exp(s * cos(i, neg)))) for i in img])
    emb = clip.encode_image(x)
    assert W.wpl_loss(emb, prompts, s).item() == pytest.approx(wpl, rel=1e-4)
    assert W.sem_loss(emb, texts[:1].expand(2, -1), texts[1:].expand(2, -1), s).item() == pytest.approx(sem, rel=1e-4)
    feats = W.EncoderFeatures(clip.encoder)
    g = feats(x)
    assert g.shape == (2, 128, 4, 4)  # layer3 of the tiny content tower: 16 * vision_width channels, S / 16
    gh, gr = feats(x.flip(-1)).detach().double().numpy(), g.detach().double().numpy()
    hand = np.mean([1 - cos(gh[b, :, i, j], gr[b, :, i, j]) for b in range(2) for i in range(4) for j in range(4)])
    assert W.feat_loss(feats(x.flip(-1)), g).item() == pytest.approx(hand, rel=1e-4)


def test_depth_anything_hub_id_offline_names_the_repo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="LiheYoung/depth-anything-small-hf"):
        W.DepthFeatures.from_pretrained("LiheYoung/depth-anything-small-hf")


# -- the weather report set of benchmarks/wresvlm_ablation.py -------------------------------------------------------

def test_weather_report_cases_are_report_photos_in_rain_haze_snow_by_the_independent_engine():
    from benchmarks import generalisation as G
    from benchmarks import independent_degradations as ID
    from benchmarks import wresvlm_ablation as A
    from vlmir.training.photos import photo_split

    clean, cases = A.weather_report_cases(limit=2, short_side=48)
    assert list(clean) == list(G.photo_names("report")[:2])
    assert all(photo_split(p) == "report" for p in clean)
    assert [(c["photo"], c["type"], c["severity"]) for c in cases] == [
        (p, t, s) for p in clean for t in ("rainy", "hazy", "snowy") for s in (2, 3)]
    for c in cases:
        assert c["seed"] == G.case_seed(c["photo"], c["type"])
        want = ID.degrade(clean[c["photo"]], c["type"], c["severity"], c["seed"])
        np.testing.assert_array_equal(c["lq"], want)  # the independent engine, not vlmir.degradations
        assert float(np.abs(c["lq"] - clean[c["photo"]]).mean()) > 0.01
    _, again = A.weather_report_cases(limit=2, short_side=48)
    for a, b in zip(cases, again, strict=True):
        np.testing.assert_array_equal(a["lq"], b["lq"])
    with pytest.raises(ValueError, match="subset"):
        G.build_cases("independent", ["lion"], types=("rainy", "foggy"))


def test_weather_report_split_is_scored_through_eval(tmp_path):
    from benchmarks import wresvlm_ablation as A
    from vlmir.io import load_image
    from vlmir.training.evaluate import psnr

    written = A.write_weather_report_split(tmp_path, limit=1, short_side=32)
    rel = sorted(str(p.relative_to(tmp_path / "Input")) for p in written)
    assert rel == ["Haze/lion_s2.png", "Haze/lion_s3.png", "Rain/lion_s2.png", "Rain/lion_s3.png",
                   "Snow/lion_s2.png", "Snow/lion_s3.png"]
    assert sorted(str(p.relative_to(tmp_path / "GT")) for p in (tmp_path / "GT").rglob("*.png")) == rel

    class Identity:
        def restore(self, x):
            return x

    scores, table = A.evaluate_split(tmp_path, {"identity": Identity()}, tmp_path / "eval", metrics="psnr")
    want = np.mean([psnr(load_image(tmp_path / "Input" / r), load_image(tmp_path / "GT" / r)) for r in rel])
    assert table.loc["Input", ("Overall", "psnr")] == pytest.approx(want, abs=0.05)
    assert table.loc["identity", ("Overall", "psnr")] == pytest.approx(table.loc["Input", ("Overall", "psnr")])
    assert (tmp_path / "eval" / "table.md").is_file() and (tmp_path / "eval" / "table.csv").is_file()
    lines = "\n".join(A.weather_report_lines(scores, table, tmp_path, tmp_path / "eval", metrics="psnr"))
    assert f"| identity | {table.loc['identity', ('Overall', 'psnr')]:.3f} |" in lines
    assert "6 images (Rain 2, Haze 2, Snow 2)" in lines and "| Haze | Rain | Snow | Overall |" in lines
