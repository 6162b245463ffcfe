"""Training code of the embedded models on tiny configs: losses decrease, checkpoints resume exactly, CLI, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmir.models.encoder import DegradationAwareEncoder
from vlmir.models.image_stats import N_BASIC_STATS, N_IMAGE_STATS
from vlmir.models.rater import VisibilityHead
from vlmir.models.restorer import ConditionalRestorer
from vlmir.training.common import load_config
from vlmir.training.data import CLASS_NAMES, HELDOUT_PHOTOS, TRAIN_PHOTOS, DataConfig, PairSampler
from vlmir.training.train_encoder import encoder_losses
from vlmir.training.train_rater import rater_losses, severity_score, soft_levels, two_hot_levels
from vlmir.training.train_restorer import restorer_losses

TINY_ENCODER = dict(embed_dim=32, image_size=64, vision_width=8, vision_head_width=16, text_width=16, text_heads=2,
                    text_layers=1, context_length=8)
TINY_DATA = dict(crop=64, window=[64, 96], p_procedural=0.3)


def _encoder_cfg(steps: int) -> dict:
    return {"kind": "encoder", "seed": 3, "steps": steps, "batch_size": 4, "lr": 0.002, "warmup": 1, "threads": 1,
            "log_every": 1, "checkpoint_every": 2, "model": TINY_ENCODER, "data": TINY_DATA}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: much faster than two on this shared CPU; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return PairSampler(DataConfig(**TINY_DATA), seed=0).sample(6)


def test_sampler_is_reproducible_and_labels_are_consistent():
    a = PairSampler(DataConfig(**TINY_DATA), seed=5).sample(5)
    b = PairSampler(DataConfig(**TINY_DATA), seed=5).sample(5)
    assert torch.equal(a["lq"], b["lq"]) and a["types"] == b["types"]
    assert a["lq"].shape == (5, 3, 64, 64) and 0 <= a["lq"].min() and a["lq"].max() <= 1
    assert torch.allclose(a["target"].sum(1), torch.ones(5))
    for t, tgt, sev, vis in zip(a["types"], a["target"], a["severity"], a["visibility"], strict=True):
        if not t:
            assert tgt[CLASS_NAMES.index("clear")] == 1 and sev == 0 and vis == 5
        else:
            assert {CLASS_NAMES[i] for i in torch.nonzero(tgt).flatten().tolist()} == set(t)
            assert vis == 5 - min(int(sev), 4)


def test_heldout_photos_are_not_training_photos():
    assert not set(HELDOUT_PHOTOS) & set(TRAIN_PHOTOS)
    with pytest.raises(ValueError, match="held-out"):
        DataConfig(photos=("chelsea",))


def test_type_weights_reach_the_sampler():
    only_blur = {t: 0.0 for t in CLASS_NAMES if t not in ("motion-blurry", "clear")}
    b = PairSampler(DataConfig(**{**TINY_DATA, "p_clean": 0.0, "type_weights": only_blur}), seed=1).sample(6)
    assert all(t == ["motion-blurry"] for t in b["types"])
    with pytest.raises(ValueError, match="unknown degradation"):
        DataConfig(type_weights={"blur": 2})


def _fit(model, loss_fn, steps=12, lr=3e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_encoder_loss_decreases(batch):
    torch.manual_seed(0)
    model = DegradationAwareEncoder(**TINY_ENCODER)
    losses = _fit(model, lambda: encoder_losses(model, batch))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_restorer_loss_decreases(batch):
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64)
    losses = _fit(net, lambda: restorer_losses(net, enc, batch, crop=48), steps=15)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses


def test_restorer_optimal_gate_target(batch):
    """``gate_target="optimal"``: the gate's target is the residual's least-squares scale, 0 for clean inputs."""
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64)
    clean_batch = dict(batch, lq=batch["clean"], severity=torch.zeros_like(batch["severity"]))
    _, logs = restorer_losses(net, enc, clean_batch, crop=48, gate_target="optimal")
    gate = net.gate_value(torch.cat([torch.nn.functional.normalize(t, dim=-1) for t in (
        enc.forward_features(batch["clean"])["content"], enc.forward_features(batch["clean"])["degradation"])], -1))
    expected = -torch.log(1 - gate).mean().item()  # BCE against target 0
    assert logs["gate_bce"] == pytest.approx(expected, rel=1e-4)
    losses = _fit(net, lambda: restorer_losses(net, enc, batch, crop=48, gate_target="optimal"), steps=15)
    assert np.isfinite(losses).all()
    with pytest.raises(ValueError, match="gate_target"):
        restorer_losses(net, enc, batch, gate_target="always")


def test_restorer_psnr_pixel_loss(batch):
    """``pixel_loss="psnr"``: the loss is minus the batch's mean PSNR in dB (NAFNet's PSNR loss) for a network
    without a gate, and it falls when trained; an unknown name is refused."""
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64, gate=False)
    loss, logs = restorer_losses(net, enc, batch, crop=48, pixel_loss="psnr")
    from vlmir.training.train_restorer import condition

    o = (batch["lq"].shape[-1] - 48) // 2
    sl = (..., slice(o, o + 48), slice(o, o + 48))
    with torch.no_grad():
        out = net(batch["lq"][sl], condition(enc, batch["lq"]))
    mse = (out - batch["clean"][sl]).pow(2).flatten(1).mean(1)
    assert loss.item() == pytest.approx(-(10 * torch.log10(1 / (mse + 1e-8))).mean().item(), rel=1e-4)
    losses = _fit(net, lambda: restorer_losses(net, enc, batch, crop=48, pixel_loss="psnr"), steps=15)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    with pytest.raises(ValueError, match="pixel_loss"):
        restorer_losses(net, enc, batch, pixel_loss="l2")


def test_restorer_without_gate_and_fine_tuned_from_a_gated_one(batch, tmp_path):
    """``gate=False``: g = 1, so the output is ``x + m (p - x) + R`` exactly, there is no gate loss, and such a
    network starts from a gated one's weights with ``init_skip: ["gate"]`` (everything else bit-identical)."""
    from safetensors.torch import load_file

    from vlmir.training.common import export_weights
    from vlmir.training.train_restorer import train

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    kw = dict(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64, prior=True)
    net = ConditionalRestorer(**kw, gate=False)
    assert net.gate is None and "gate.weight" not in net.state_dict() and net.config["gate"] is False
    cond = torch.randn(2, 64)
    assert torch.equal(net.gate_value(cond), torch.ones(2))
    with torch.no_grad():
        net.ending.weight.zero_()
        net.ending.bias.zero_()
        net.ending.bias[12:] = 50.0  # m = 1, R = 0: the output is the prior itself, ungated
    x, p = batch["lq"][:2, :, :48, :48], batch["clean"][:2, :, :48, :48]
    assert torch.allclose(net(x, cond, p), p, atol=1e-5)
    _, logs = restorer_losses(net, enc, batch, crop=48, prior_true_p=1.0)
    assert logs["gate_bce"] == 0.0 and logs["loss"] == pytest.approx(logs["l1"])
    # fine-tune a gated network into an ungated one
    enc_dir = tmp_path / "enc"
    export_weights(enc_dir, model=enc, model_config=enc.config, train_config={"kind": "encoder"})
    gated = ConditionalRestorer(**kw)
    export_weights(tmp_path / "gated", model=gated, model_config=gated.config, train_config={"kind": "restorer"})
    model_cfg = {k: v for k, v in kw.items() if k != "cond_dim"}
    cfg = {"kind": "restorer", "encoder": str(enc_dir), "init_from": str(tmp_path / "gated"), "steps": 1,
           "batch_size": 2, "restore_crop": 32, "lr": 0.0, "warmup": 1, "threads": 1, "data": TINY_DATA,
           "model": dict(model_cfg, gate=False)}
    train(dict(cfg, init_skip=["gate"]), tmp_path / "open", progress=False)
    a = load_file(str(tmp_path / "gated" / "model.safetensors"))
    b = load_file(str(tmp_path / "open" / "final" / "model.safetensors"))
    assert set(a) - set(b) == {"gate.weight", "gate.bias"} and all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="unexpected"):
        train(cfg, tmp_path / "bad", progress=False)


def test_restorer_with_classical_prior_learns_and_trust_mask_works(batch):
    """``prior=True``: the classical restoration enters as a second input; loss decreases; with the trust mask
    saturated and no residual the output is ``x + g * (p - x)``, and the gate still closes on a clean input."""
    from vlmir.models.restorer import classical_prior
    from vlmir.training.train_restorer import prior_types

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64, prior=True)
    losses = _fit(net, lambda: restorer_losses(net, enc, batch, crop=48, prior_true_p=1.0), steps=15)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    _, logs = restorer_losses(net, enc, batch, crop=48, prior_true_p=1.0)
    assert "prior_gain" in logs and np.isfinite(logs["prior_gain"])
    # the trust-mask path, exactly: zero the residual channels, saturate the mask
    with torch.no_grad():
        net.ending.weight.zero_()
        net.ending.bias.zero_()
        net.ending.bias[12:] = 50.0  # mask logits (4 sub-pixels) -> m = 1
    x, p = batch["lq"][:2, :, :48, :48], batch["clean"][:2, :, :48, :48]
    cond = torch.randn(2, 64)
    out, gate = net(x, cond, p, return_gate=True)
    assert torch.allclose(out, x + gate[:, None, None, None] * (p - x), atol=1e-5)
    with pytest.raises(ValueError, match="prior"):
        net(x, cond)
    with pytest.raises(ValueError, match="prior"):
        ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=64)(x, cond, p)
    # classical_prior: identity for clear/None, the classical method otherwise
    pri = classical_prior(x, ["clear", "low-light"])
    assert torch.equal(pri[0], x[0].clamp(0, 1))
    assert pri[1].mean() > x[1].mean()  # low-light enhancement brightens
    # prior types: p_true=1 picks a true type (prediction for clean samples), p_true=0 always the prediction
    g = torch.Generator().manual_seed(0)
    assert prior_types([["noisy"], [], ["hazy", "rainy"]], ["clear"] * 3, 1.0, g)[:2] == ["noisy", "clear"]
    assert prior_types([["noisy"], ["hazy"]], ["rainy", "snowy"], 0.0, g) == ["rainy", "snowy"]
    # p_wrong=1: never a true type and never clear, for degraded and clean samples alike
    names = ["motion-blurry", "hazy", "noisy", "rainy", "clear"]
    truth = [["noisy"], [], ["hazy", "rainy"]] * 20
    wrong = prior_types(truth, ["noisy"] * 60, 0.0, g, p_wrong=1.0, names=names)
    assert all(w not in t and w != "clear" for w, t in zip(wrong, truth, strict=True))
    assert set(wrong[2::3]) == {"motion-blurry", "noisy"} and len(set(wrong[1::3])) == 4  # uniform over the rest
    mixed = prior_types(truth, ["clear"] * 60, 0.5, g, p_wrong=0.3, names=names)
    n_wrong = sum(w not in t and w != "clear" for w, t in zip(mixed, truth, strict=True))
    assert 5 <= n_wrong <= 35 and mixed.count("clear") >= 5
    with pytest.raises(ValueError, match="p_wrong"):
        prior_types(truth, ["clear"] * 60, 0.8, g, p_wrong=0.3, names=names)
    with pytest.raises(ValueError, match="names"):
        prior_types(truth, ["clear"] * 60, 0.0, g, p_wrong=0.3)


def test_rater_soft_levels_and_loss_decreases(batch):
    t = soft_levels(torch.tensor([1.0, 3.0, 5.0]), smoothing=0.2)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert torch.allclose(t[0], torch.tensor([0.8, 0.2, 0, 0, 0]))
    assert torch.allclose(t[1], torch.tensor([0, 0.1, 0.8, 0.1, 0]))
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    head = VisibilityHead(feature_dim=2 * 32 + len(CLASS_NAMES) + enc.pooled_dim, dropout=0.0)
    losses = _fit(head, lambda: rater_losses(head, enc, batch), steps=20, lr=1e-2)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses


def test_image_statistics_track_their_degradations():
    """Each classical statistic moves the way its degradation pushes it, on a held-out photo."""
    from vlmir.degradations import degrade
    from vlmir.models.rater import N_IMAGE_STATS, image_statistics
    from vlmir.training.data import heldout_image

    img = heldout_image("coffee", 128)

    def stats(a):
        return image_statistics(torch.from_numpy(a.transpose(2, 0, 1).copy())[None])[0]

    base = stats(img)
    assert base.shape == (N_IMAGE_STATS,) and torch.isfinite(base).all()
    idx = {"mean": 0, "dark": 5, "sat": 6, "sigma": 9, "block": 10, "black": 12}
    assert stats(degrade(img, "noisy", 4, seed=0)[0])[idx["sigma"]] > base[idx["sigma"]] + 0.5  # log sigma
    assert stats(degrade(img, "jpeg-compressed", 4, seed=0)[0])[idx["block"]] > base[idx["block"]] + 0.05
    hazy = stats(degrade(img, "hazy", 4, seed=0)[0])
    assert hazy[idx["dark"]] > base[idx["dark"]] + 0.1 and hazy[idx["sat"]] < base[idx["sat"]]
    dark = stats(degrade(img, "low-light", 4, seed=0)[0])
    assert dark[idx["mean"]] < 0.5 * base[idx["mean"]] and dark[idx["black"]] > base[idx["black"]]
    with pytest.raises(ValueError, match="sides"):
        image_statistics(torch.rand(1, 3, 8, 8))


def test_structure_statistics_track_their_degradations():
    """The structure statistics (after the basic ones) move the way their degradations push them, on held-out
    photos: more small bright structures under snow and rain, fewer and softer edges under motion blur, white flat
    holes when uncompleted, darker regions turning bluer under a cast shadow."""
    from vlmir.degradations import degrade
    from vlmir.models.image_stats import N_BASIC_STATS, N_STRUCTURE_STATS, structure_statistics
    from vlmir.training.data import heldout_image

    idx = {"log_top": 0, "softness": 9, "chroma_corr": 11, "white_flat": 12}
    for photo in ("coffee", "chelsea"):
        img = heldout_image(photo, 192)

        def stats(a):
            return structure_statistics(torch.from_numpy(a.transpose(2, 0, 1).copy())[None])[0]

        base = stats(img)
        assert base.shape == (N_STRUCTURE_STATS,) and torch.isfinite(base).all()
        for weather in ("snowy", "rainy"):
            assert stats(degrade(img, weather, 3, seed=0)[0])[idx["log_top"]] > base[idx["log_top"]] + 0.3, weather
        blur = stats(degrade(img, "motion-blurry", 3, seed=0)[0])
        assert blur[idx["softness"]] > base[idx["softness"]] + 0.2 and blur[idx["log_top"]] < base[idx["log_top"]] - 0.5
        assert stats(degrade(img, "uncompleted", 3, seed=0)[0])[idx["white_flat"]] > base[idx["white_flat"]] + 0.05
        assert stats(degrade(img, "shadowed", 4, seed=0)[0])[idx["chroma_corr"]] < base[idx["chroma_corr"]] - 0.02
    flat = structure_statistics(torch.full((2, 3, 32, 32), 0.5))
    assert torch.isfinite(flat).all(), "a constant image must give finite statistics"
    assert N_BASIC_STATS + N_STRUCTURE_STATS == N_IMAGE_STATS


def test_encoder_with_image_statistics(batch):
    """``image_stats=True``: zero-initialised, so the degradation embedding starts as the plain controller's; the
    statistics branch learns (its last layer gets gradients) and ``embed`` averages the stats over the views."""
    torch.manual_seed(0)
    plain = DegradationAwareEncoder(**TINY_ENCODER).eval()
    torch.manual_seed(0)
    withs = DegradationAwareEncoder(**TINY_ENCODER, image_stats=True, stats_set="full").eval()
    withs.load_state_dict(plain.state_dict(), strict=False)
    x = batch["lq"][:3]
    a, b = plain.forward_features(x), withs.forward_features(x)
    assert torch.allclose(a["degradation"], b["degradation"], atol=1e-6) and b["stats"].shape == (3, N_IMAGE_STATS)
    withs.train()
    loss, _ = encoder_losses(withs, batch)
    loss.backward()
    assert withs.stats_proj[-1].weight.grad.abs().sum() > 0
    withs.eval()
    e = withs.embed(torch.rand(1, 3, 100, 150))
    assert e["stats"].shape == (1, N_IMAGE_STATS) and e["logits"].shape == (1, len(CLASS_NAMES))
    basic = DegradationAwareEncoder(**TINY_ENCODER, image_stats=True).eval()  # the default set
    assert basic.n_stats == N_BASIC_STATS and basic.forward_features(x)["stats"].shape == (3, N_BASIC_STATS)
    assert torch.equal(basic.forward_features(x)["stats"], b["stats"][:, :N_BASIC_STATS])
    with pytest.raises(ValueError, match="stats_set"):
        DegradationAwareEncoder(**TINY_ENCODER, image_stats=True, stats_set="many")


def test_rater_with_image_statistics_learns(batch):
    from vlmir.models.rater import N_IMAGE_STATS

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    dim = 2 * 32 + len(CLASS_NAMES) + enc.pooled_dim + N_IMAGE_STATS
    head = VisibilityHead(feature_dim=dim, dropout=0.0, image_stats=True)
    losses = _fit(head, lambda: rater_losses(head, enc, batch), steps=20, lr=1e-2)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    with pytest.raises(ValueError, match="image statistics"):
        VisibilityHead(feature_dim=N_IMAGE_STATS, image_stats=True)


def test_rater_rank_loss_orders_clean_above_degraded(batch):
    """``rank_weight``: the hinge is zero once the clean crop outscores its degraded crop by the margin, and
    training on it alone drives it down."""
    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    head = VisibilityHead(feature_dim=2 * 32 + len(CLASS_NAMES) + enc.pooled_dim, dropout=0.0)
    _, logs0 = rater_losses(head, enc, batch, rank_weight=1.0)
    assert logs0["rank"] > 0
    losses = _fit(head, lambda: rater_losses(head, enc, batch, smoothing=0.2, score_weight=0.0, rank_weight=5.0),
                  steps=25, lr=1e-2)
    _, logs = rater_losses(head, enc, batch, rank_weight=1.0)
    assert logs["rank"] < 0.5 * logs0["rank"], (logs0, logs, losses[-3:])
    _, plain = rater_losses(head, enc, batch)
    assert "rank" not in plain


def test_encoder_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from vlmir.training.train_encoder import train

    straight = train(_encoder_cfg(4), tmp_path / "a", progress=False)
    train(_encoder_cfg(2), tmp_path / "b", progress=False)
    resumed = train(_encoder_cfg(4), tmp_path / "b", resume=True, progress=False)
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()
    assert resumed["steps"] == straight["steps"] == 4
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < 1e-5
    cfg = json.loads((tmp_path / "a" / "final" / "config.json").read_text())
    assert cfg["embed_dim"] == 32 and cfg["architecture"] == "DegradationAwareEncoder"


def test_encoder_statistics_fine_tune_keeps_the_towers(tmp_path):
    """``init_from`` + ``init_skip`` + ``train_only``: a basic-statistics encoder gets a fresh full statistics
    branch; after training, every tower tensor (weights and batch-norm running statistics) is unchanged, so the
    content embedding is the same, and the branch has learnt (no longer zero)."""
    from safetensors.torch import load_file

    from vlmir.training.train_encoder import train

    base_cfg = _encoder_cfg(2)
    base_cfg["model"] = {**base_cfg["model"], "image_stats": True, "stats_set": "basic"}
    train(base_cfg, tmp_path / "base", progress=False)
    cfg = _encoder_cfg(3)
    cfg["model"] = {**cfg["model"], "image_stats": True, "stats_set": "full"}
    cfg.update(init_from=str(tmp_path / "base" / "final"), init_skip=["stats_proj"], train_only=["stats_proj"],
               loss={"content_weight": 0.0})
    train(cfg, tmp_path / "tuned", progress=False)
    a = load_file(str(tmp_path / "base" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "tuned" / "final" / "model.safetensors"))
    towers = [k for k in b if not k.startswith("stats_proj")]
    assert towers and all(torch.equal(a[k], b[k]) for k in towers)
    assert b["stats_proj.1.weight"].shape[1] == N_IMAGE_STATS and b["stats_proj.3.weight"].abs().sum() > 0
    log = (tmp_path / "tuned" / "train.log").read_text()
    assert "initialised from" in log and "training only stats_proj" in log
    bad = dict(cfg, init_skip=[])
    with pytest.raises(ValueError, match="shapes differ"):
        train(bad, tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="matches no parameter"):
        train(dict(cfg, train_only=["nothing"]), tmp_path / "bad2", progress=False)


def test_rater_feature_bank_trains_and_resumes_exactly(tmp_path):
    """``feature_bank``: features of N samples are computed once and batches drawn from them; the loss falls
    over the steps, and a run resumed halfway (the bank loaded from the run folder) ends where a straight one
    does. A bank file is reused only by a run whose fingerprint matches (same encoder, N, seed, data)."""
    from safetensors.torch import load_file

    from vlmir.training.train_encoder import train as train_encoder
    from vlmir.training.train_rater import train

    train_encoder(_encoder_cfg(1), tmp_path / "enc", export=tmp_path / "encw", progress=False)

    def cfg(steps):
        return {"kind": "rater", "encoder": str(tmp_path / "encw"), "steps": steps, "batch_size": 8, "lr": 1e-2,
                "warmup": 1, "threads": 1, "log_every": 1, "checkpoint_every": 2, "feature_bank": 24,
                "rank_weight": 1.0, "model": {"hidden": 32, "dropout": 0.0, "image_stats": True}, "data": TINY_DATA}

    assert train(cfg(30), tmp_path / "long", progress=False)["steps"] == 30
    log = (tmp_path / "long" / "train.log").read_text()
    assert "feature bank: 24 samples" in log
    losses = [float(line.split("loss=")[1].split()[0]) for line in log.splitlines() if " loss=" in line]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses
    # 2 steps then resumed to 4 (with warm-up 1 the learning rates of steps 0 and 1 do not depend on the total)
    train(cfg(4), tmp_path / "a", progress=False)
    train(cfg(2), tmp_path / "b", progress=False)
    train(cfg(4), tmp_path / "b", resume=True, progress=False)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
    assert "feature bank loaded from" in (tmp_path / "b" / "train.log").read_text()
    # another run given that bank file: loaded when it matches; rebuilt, the given file left alone, when not
    bank_file = str(tmp_path / "long" / "feature_bank.pt")
    train(dict(cfg(2), feature_bank_file=bank_file), tmp_path / "c", progress=False)
    assert "feature bank loaded from" in (tmp_path / "c" / "train.log").read_text()
    train(dict(cfg(2), data=dict(TINY_DATA, p_clean=0.5)), tmp_path / "d", progress=False)  # another bank
    other_bank = tmp_path / "d" / "feature_bank.pt"
    before = other_bank.read_bytes()
    train(dict(cfg(2), feature_bank_file=str(other_bank)), tmp_path / "e", progress=False)
    assert "made differently (fingerprint); rebuilding" in (tmp_path / "e" / "train.log").read_text()
    assert other_bank.read_bytes() == before and (tmp_path / "e" / "feature_bank.pt").is_file()


def test_rater_photo_bank_matches_inference_features(tmp_path):
    """``bank_images: "photos"``: each bank row is the rater's input for a whole photo as
    ``EmbeddedRater.rate`` builds it (view-averaged features and statistics), with its clean version; the head
    trains on it; the bank's fingerprint differs from a crop bank's, so neither is reused for the other."""
    from vlmir.models.embedded import load_encoder
    from vlmir.models.rater import rater_features
    from vlmir.training.train_encoder import train as train_encoder
    from vlmir.training.train_rater import photo_feature_bank, train

    train_encoder(_encoder_cfg(1), tmp_path / "enc", export=tmp_path / "encw", progress=False)
    enc, _ = load_encoder(tmp_path / "encw", allow_random=False)
    head = VisibilityHead(feature_dim=2 * 32 + len(CLASS_NAMES) + enc.pooled_dim, hidden=16)
    cfg = DataConfig(**{**TINY_DATA, "p_procedural": 0.0})
    bank = photo_feature_bank(head, enc, PairSampler(cfg, seed=4), 3, (80, 100), "cpu", progress=False)
    item = PairSampler(cfg, seed=4).sample_photos(1, (80, 100))[0]
    with torch.no_grad():
        f = enc.embed(torch.from_numpy(item["lq"].transpose(2, 0, 1).copy())[None])
        g = enc.embed(torch.from_numpy(item["clean"].transpose(2, 0, 1).copy())[None])
    assert torch.allclose(bank["features"][0], rater_features(f)[0], atol=1e-5)
    assert torch.allclose(bank["features_clean"][0], rater_features(g)[0], atol=1e-5)
    assert bank["severity"][0] == item["severity"] and bank["visibility"][0] == item["visibility"]
    run = {"kind": "rater", "encoder": str(tmp_path / "encw"), "steps": 3, "batch_size": 4, "lr": 1e-2,
           "warmup": 1, "threads": 1, "log_every": 1, "checkpoint_every": 2, "feature_bank": 6,
           "bank_images": "photos", "bank_short_sides": [80, 100], "rank_weight": 1.0,
           "model": {"hidden": 16, "dropout": 0.0}, "data": TINY_DATA}
    assert train(run, tmp_path / "p", progress=False)["steps"] == 3
    assert "feature bank: 6 samples" in (tmp_path / "p" / "train.log").read_text()
    train(dict(run, bank_images="crops", feature_bank_file=str(tmp_path / "p" / "feature_bank.pt")),
          tmp_path / "q", progress=False)
    assert "made differently (fingerprint); rebuilding" in (tmp_path / "q" / "train.log").read_text()
    with pytest.raises(ValueError, match="bank_images"):
        train(dict(run, bank_images="tiles"), tmp_path / "r", progress=False)

def test_rater_severity_target():
    """``target: severity``: r* = 5 - 4c/5 keeps severities 4 and 5 apart (the engine's levels merge them), as a
    two-hot distribution whose mean is r*; a head trained towards it scores each severity step lower."""
    r = severity_score(torch.tensor([0, 1, 4, 5]))
    assert torch.allclose(r, torch.tensor([5.0, 4.2, 1.8, 1.0]))
    t = two_hot_levels(r, smoothing=0.0)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert torch.allclose(t @ torch.arange(1.0, 6.0), r)
    assert torch.allclose(t[1], torch.tensor([0, 0, 0, 0.8, 0.2]))
    ts = two_hot_levels(r, smoothing=0.2)
    assert torch.allclose(ts.sum(1), torch.ones(4)) and bool((ts[2] > 0).sum() == 3)
    # a bank batch: features separable by severity; the trained score orders all six severities
    torch.manual_seed(0)
    sev = torch.arange(6).repeat(20)
    feats = torch.nn.functional.one_hot(sev, 6).float() + 0.05 * torch.randn(120, 6)
    batch = {"features": feats, "features_clean": feats[sev == 0][:1].expand(120, 6), "severity": sev,
             "visibility": 5.0 - sev.clamp(max=4).float()}
    head = VisibilityHead(feature_dim=6, hidden=16, dropout=0.0)
    _fit(head, lambda: rater_losses(head, None, batch, target="severity", score_weight=1.0), steps=300, lr=1e-2)
    with torch.no_grad():
        score = VisibilityHead.score(head(torch.eye(6)))
    assert bool((score[1:] < score[:-1] - 0.3).all()), score
    with pytest.raises(ValueError, match="unknown rater target"):
        rater_losses(head, None, batch, target="nope")


def test_train_command_restorer_and_rater(tmp_path):
    from vlmir.commands import main
    from vlmir.models.embedded import build_rater, build_restorer

    enc_dir = tmp_path / "enc"
    cfg = tmp_path / "enc.json"
    cfg.write_text(json.dumps(_encoder_cfg(1)))
    assert main(["train", "encoder", "--config", str(cfg), "--out", str(tmp_path / "re"), "--export", str(enc_dir),
                 "--no-progress"]) == 0
    rcfg = {"kind": "restorer", "encoder": str(enc_dir), "steps": 2, "batch_size": 2, "restore_crop": 32,
            "threads": 1, "model": {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]},
            "data": TINY_DATA}
    (tmp_path / "r.json").write_text(json.dumps(rcfg))
    assert main(["train", "restorer", "--config", str(tmp_path / "r.json"), "--out", str(tmp_path / "rr"),
                 "--no-progress"]) == 0
    qcfg = {"kind": "rater", "encoder": str(enc_dir), "steps": 2, "batch_size": 4, "threads": 1, "data": TINY_DATA}
    (tmp_path / "q.yaml").write_text(json.dumps(qcfg))  # JSON is valid YAML
    assert main(["train", "rater", "--config", str(tmp_path / "q.yaml"), "--out", str(tmp_path / "rq"),
                 "--no-progress"]) == 0
    restorer = build_restorer(path=tmp_path / "rr" / "final", encoder_path=enc_dir)
    assert restorer.random_weights is False
    x = torch.rand(1, 3, 70, 90)
    assert restorer.restore(x).shape == x.shape
    rating = build_rater(path=tmp_path / "rq" / "final", encoder_path=enc_dir).rate(x)
    assert 1 <= rating["score"] <= 5 and abs(sum(rating["probs"].values()) - 1) < 1e-5


def test_config_errors(tmp_path):
    from vlmir.commands import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "painter"}))
    with pytest.raises(ValueError, match="kind"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.json")
    good = tmp_path / "enc.json"
    good.write_text(json.dumps(_encoder_cfg(1)))
    assert main(["train", "rater", "--config", str(good)]) == 1  # kind mismatch is reported, exit code 1


def test_shipped_configs_parse(tmp_path):
    """One staged config per embedded model (its whole recipe); every stage builds its data and model config,
    and each stage after the first starts from the one before it."""
    from pathlib import Path

    from vlmir.training.pipeline import expand_stages

    root = Path(__file__).resolve().parent.parent / "vlmir" / "training" / "configs"
    for kind in ("encoder", "restorer", "rater"):
        cfg = load_config(root / f"{kind}.json")
        assert cfg["kind"] == kind and "stages" in cfg
        stages = expand_stages(cfg, tmp_path)
        assert "init_from" not in stages[0][1]  # from scratch
        for (prev, _), (name, stage) in zip(stages, stages[1:], strict=False):
            assert stage["init_from"] == str(tmp_path / prev / "final"), name
    files = sorted(root.glob("*.json")) + sorted((root / "experiments").glob("*.json"))
    for path in files:
        cfg = load_config(path)
        assert path.stem.startswith(cfg["kind"].replace("-", "_")), path.name
        for _, stage in expand_stages(cfg, tmp_path) if "stages" in cfg else [("", cfg)]:
            DataConfig(**{"crop": 128, **stage["data"]})
            if cfg["kind"] == "restorer":
                ConditionalRestorer(**stage["model"])
            if cfg["kind"] == "encoder":
                DegradationAwareEncoder(**stage["model"])



def test_restorer_recipe_stages_load_the_stage_before(tmp_path):
    """Each stage of the restorer recipe builds a network that its ``init_from`` stage's network loads into (with
    the stage's ``init_skip``), as :func:`~vlmir.training.common.init_from` checks when the stage starts: a stage
    whose model block lost a key of the one before (``gate: false``, say) fails here, not an hour into the run."""
    import logging
    from pathlib import Path

    from safetensors.torch import save_file

    from vlmir.training.common import init_from
    from vlmir.training.pipeline import expand_stages

    root = Path(__file__).resolve().parent.parent / "vlmir" / "training" / "configs"
    stages = expand_stages(load_config(root / "restorer.json"), tmp_path)
    for (_, before), (name, stage) in zip(stages, stages[1:], strict=False):
        src = tmp_path / f"{name}-init.safetensors"
        save_file(ConditionalRestorer(**before["model"]).state_dict(), str(src))
        init_from(ConditionalRestorer(**stage["model"]), {**stage, "init_from": str(src)}, logging.getLogger(name))

def test_model_card_states_data_command_and_numbers(tmp_path):
    from vlmir.training.card import write_card
    from vlmir.training.common import export_weights

    head = VisibilityHead(feature_dim=8)
    export_weights(tmp_path, model=head, model_config=head.config, train_config={"kind": "rater", "steps": 7},
                   metrics={"train": {"steps": 7, "wall_s": 120.0, "loss": 0.5}})
    val = {"rater": {"spearman_severity_r": -0.9, "spearman_severity_r_clean_2_3": -0.8,
                     "clean_above_severity4": 0.97, "mean_r_by_severity": {"0": 4.8, "4": 1.3}, "n_images": 153}}
    text = write_card(tmp_path, "rater", val, command="python -m vlmir train rater --config X").read_text()
    assert "trained from scratch on 18 photos" in text.lower() and "not a general-purpose model" in text
    assert "python -m vlmir train rater --config X" in text and "-0.900" in text and "97.0%" in text
    assert "steps: 7" in text and "2.0 min" in text and "chelsea" in text


def test_view_head_starts_as_the_mean_of_views_and_fits():
    """A fresh ViewHead returns the views' averaged cosine logits exactly; fitted on summaries where only the max
    over views carries the label (a degradation seen in one view), it learns what the mean of views misses."""
    from vlmir.models.encoder import ViewHead
    from vlmir.training.view_head import fit, top1

    enc = DegradationAwareEncoder(**TINY_ENCODER, image_stats=True, view_head=True).eval()
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        e = enc.embed(x)
    assert torch.allclose(e["type_logits"], e["logits"], atol=1e-6)
    k, d = len(CLASS_NAMES), 32
    head = ViewHead(k, d, 0)
    g = torch.Generator().manual_seed(0)
    n = 400
    label = torch.randint(0, k, (n,), generator=g)
    base = torch.randn(n, k, generator=g) * 0.1  # uninformative averaged logits
    z = torch.randn(n, head.in_dim, generator=g)
    z[torch.arange(n), k + label] += 3.0  # the "max over views" block holds the class
    data = {"z": z, "base": base, "target": F.one_hot(label, k).float()}
    before = top1(head, data)
    assert before["top1"] == before["top1_plain"] < 0.3
    plain_ce = float(torch.sum(-data["target"] * F.log_softmax(base, -1), 1).mean())
    loss = fit(head, data, l2=1.0, iterations=100)
    assert loss < 0.5 * plain_ce and top1(head, data)["top1"] > 0.95
    assert torch.allclose(head.shift, z.mean(0)) and head.linear.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="statistics per view"):
        head.pool(torch.zeros(2, k), torch.zeros(2, d), torch.zeros(2, 5))


def test_view_head_stage_keeps_the_towers_and_round_trips(tmp_path):
    """``steps: 0`` + ``init_from`` + a ``view_head`` block: only the head changes; the exported encoder loads
    with the head and classifies whole images with it."""
    from safetensors.torch import load_file

    from vlmir.models.embedded import load_encoder
    from vlmir.training.train_encoder import train

    base_cfg = _encoder_cfg(1)
    base_cfg["model"] = {**TINY_ENCODER, "image_stats": True}
    train(base_cfg, tmp_path / "base", progress=False)
    cfg = dict(base_cfg, steps=0, init_from=str(tmp_path / "base" / "final"), init_skip=["view_head"],
               train_only=["view_head"], model={**base_cfg["model"], "view_head": True},
               data={**TINY_DATA, "window": [64, 140]},
               view_head={"samples": 36, "folds": 3, "l2": [1.0, 10.0], "iterations": 30, "short_sides": [64, 100]})
    logs = train(cfg, tmp_path / "head", progress=False)
    assert logs["view_head_l2"] in (1.0, 10.0) and logs["view_head_images"] == 36
    assert 0.0 <= logs["view_head_cv_top1"] <= 1.0 and 0.0 <= logs["view_head_cv_top1_plain"] <= 1.0
    a = load_file(str(tmp_path / "base" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "head" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and set(b) - set(a) == {
        "view_head.shift", "view_head.scale", "view_head.linear.weight", "view_head.linear.bias"}
    assert b["view_head.linear.weight"].abs().sum() > 0
    enc, rnd = load_encoder(tmp_path / "head" / "final", allow_random=False)
    assert not rnd and enc.view_head is not None
    with torch.no_grad():
        e = enc.embed(torch.rand(1, 3, 100, 150))
    assert not torch.allclose(e["type_logits"], e["logits"])
    assert "view head: l2" in (tmp_path / "head" / "train.log").read_text()
    from vlmir.training.card import write_card

    card = write_card(tmp_path / "head" / "final", "encoder", {}, command="python -m vlmir train encoder").read_text()
    assert "fits the view head alone on 36 whole training images" in card and "`view_head: true`" in card
    assert "3-fold cross-validation grouped by photo" in card
    with pytest.raises(ValueError, match="folds"):
        train(dict(cfg, view_head={"folds": 1}), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="unknown keys"):
        train(dict(cfg, view_head={"sample": 3}), tmp_path / "bad2", progress=False)
    with pytest.raises(ValueError, match="'photos' or 'windows'"):
        train(dict(cfg, view_head={"images": "crops"}), tmp_path / "bad3", progress=False)


def test_bank_fingerprint_ignores_the_view_head():
    from vlmir.training.train_rater import bank_fingerprint

    torch.manual_seed(0)
    plain = DegradationAwareEncoder(**TINY_ENCODER)
    with_head = DegradationAwareEncoder(**TINY_ENCODER, view_head=True)
    with_head.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        with_head.view_head.linear.weight.fill_(0.5)
    a, b = (bank_fingerprint(e, 8, 0, TINY_DATA, False) for e in (plain, with_head))
    assert a == b
    with torch.no_grad():
        with_head.controller.attnpool.c_proj.bias.add_(1.0)
    assert bank_fingerprint(with_head, 8, 0, TINY_DATA, False) != a


def test_p_highlights_over_exposes_some_photos():
    """``p_highlights``: over-exposed photos (clipped natural whites, seen clean); 0 draws exactly as before."""
    base = {**TINY_DATA, "p_procedural": 0.0, "p_clean": 1.0}
    plain = PairSampler(DataConfig(**base), seed=5).sample_photos(12, (64,))
    same = PairSampler(DataConfig(**base, p_highlights=0.0), seed=5).sample_photos(12, (64,))
    assert all(np.array_equal(a["lq"], b["lq"]) for a, b in zip(plain, same, strict=True))
    bright = PairSampler(DataConfig(**base, p_highlights=1.0), seed=5).sample_photos(12, (64,))
    def clipped(items):  # mean share of pixels white in every channel
        return np.mean([float((x["lq"].min(2) >= 0.999).mean()) for x in items])

    assert clipped(bright) > clipped(plain) + 0.02
    assert all(x["types"] == [] for x in bright)  # clean: the whites are not holes
    with pytest.raises(ValueError, match="p_highlights"):
        DataConfig(p_highlights=1.5)

def test_photo_folds_keep_each_photo_in_one_fold():
    from vlmir.training.view_head import photo_folds

    photos = ["a", "b", "c", "a", "procedural", "b", "d", "procedural", "c"]
    fold = photo_folds(photos, 2, seed=0).tolist()
    for name in "abcd":
        assert len({f for f, p in zip(fold, photos, strict=True) if p == name}) == 1
    assert set(fold) == {0, 1} and fold == photo_folds(photos, 2, seed=0).tolist()
    with pytest.raises(ValueError, match="at least as many photos"):
        photo_folds(["a", "b"], 3, seed=0)


def test_whole_photo_and_window_samples():
    """``sample_photos``: whole photos at the asked short sides (aspect kept), degraded as a whole;
    ``sample_images``: uncropped square windows; both reproducible from the seed, with soft class targets."""
    cfg = DataConfig(**{**TINY_DATA, "p_procedural": 0.0, "p_mixture": 0.0})
    a = PairSampler(cfg, seed=2).sample_photos(8, short_sides=(80, 120))
    b = PairSampler(cfg, seed=2).sample_photos(8, short_sides=(80, 120))
    assert all(np.array_equal(x["lq"], y["lq"]) for x, y in zip(a, b, strict=True))
    assert {min(x["lq"].shape[:2]) for x in a} <= {80, 120} and any(max(x["lq"].shape[:2]) > 120 for x in a)
    for x in a:
        assert x["lq"].dtype == np.float32 and 0 <= x["lq"].min() and x["lq"].max() <= 1
        names = [CLASS_NAMES[i] for i in np.flatnonzero(x["target"])]
        assert names == (x["types"] or ["clear"]) and abs(x["target"].sum() - 1) < 1e-6
        assert x["photo"] in TRAIN_PHOTOS
    w = PairSampler(cfg, seed=2).sample_images(4)
    assert all(x["lq"].shape[0] == x["lq"].shape[1] and 64 <= x["lq"].shape[0] <= 96 for x in w)
    assert all(x["photo"] in TRAIN_PHOTOS for x in w)
    with pytest.raises(ValueError, match="short_sides"):
        PairSampler(cfg, seed=2).sample_photos(1, short_sides=())


def test_hole_statistics_tell_filled_holes_from_clipped_whites():
    """A white box cut into a mid-grey scene has a hard edge (big luminance drop next to it); an over-exposed
    region fades into bright surroundings (small drop); no white at all gives the floor values."""
    from vlmir.models.image_stats import N_HOLE_STATS, hole_statistics

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    scene = (0.3 + 0.2 * xx).expand(3, 64, 64).clone()
    holed = scene.clone()
    holed[:, 20:36, 20:36] = 1.0
    glare = (1.35 - 0.5 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2).sqrt() * 3).clamp(0, 1).expand(3, 64, 64)
    s = hole_statistics(torch.stack([scene, holed, glare]))
    assert s.shape == (3, N_HOLE_STATS)
    assert s[0].tolist() == pytest.approx([np.log(1e-4), np.log(1e-4), 0.0], abs=1e-6)
    assert s[1, 0] == pytest.approx(np.log(16 * 16 / 64**2 + 1e-4), abs=1e-4)
    assert s[1, 1] == pytest.approx(np.log(68 / 64**2 + 1e-4), abs=1e-4)  # the 18 x 18 - 16 x 16 ring
    assert 0.5 < s[1, 2] < 0.7 and s[2, 2] < 0.05 and s[2, 0] > s[1, 0] and s[2, 1] == pytest.approx(np.log(1e-4))


def test_view_head_reads_hole_statistics():
    """``view_head_holes``: the head's summary grows by the pooled hole statistics, an unfitted head is still the
    plain classifier, a summary without them is refused, and the option needs a view head."""
    from vlmir.models.image_stats import N_HOLE_STATS, hole_statistics

    plain = DegradationAwareEncoder(**TINY_ENCODER, image_stats=True, view_head=True)
    enc = DegradationAwareEncoder(**TINY_ENCODER, image_stats=True, view_head=True, view_head_holes=True).eval()
    assert enc.view_head.in_dim == plain.view_head.in_dim + 3 * N_HOLE_STATS and enc.config["view_head_holes"]
    x = torch.rand(1, 3, 96, 160)
    x[..., 10:40, 10:60] = 1.0
    with torch.no_grad():
        e = enc.embed(x)
        views = enc.views(x)
        f = enc.forward_features(views)
        z = enc.view_head.pool(enc.degradation_logits(f["degradation"]), f["degradation"], f["stats"],
                               enc.view_holes(views))
    assert torch.allclose(e["type_logits"], e["logits"], atol=1e-6)
    h = hole_statistics(views)
    k, s = len(CLASS_NAMES), enc.n_stats
    assert torch.allclose(z[3 * k + 3 * s : 3 * k + 3 * s + 3 * N_HOLE_STATS], torch.cat([h.mean(0), h.amax(0), h.amin(0)]))
    with pytest.raises(ValueError, match="hole statistics per view"):
        enc.view_head.pool(torch.zeros(2, k), torch.zeros(2, 32), torch.zeros(2, s))
    assert plain.view_holes(views) is None
    with pytest.raises(ValueError, match="needs view_head"):
        DegradationAwareEncoder(**TINY_ENCODER, view_head_holes=True)


def test_ring_filter_is_an_isotropic_convolution():
    from vlmir.models.restorer import RingFilter

    ring = RingFilter(2)
    x = torch.rand(2, 3, 20, 24)
    assert torch.allclose(ring(x), x, atol=1e-6)  # the identity until fitted
    ring.weights.copy_(torch.tensor([0.5, 0.1, -0.025]))
    k = ring.kernel()
    assert k.shape == (5, 5) and torch.allclose(k, k.t()) and torch.allclose(k, k.flip(0))
    # round(|offset|): 1 for (0, 1) and (1, 1); 2 for (0, 2), (1, 2) and (2, 2) (2.83 > R + 0.5 is left out)
    assert k[2, 2] == 0.5 and k[2, 3] == k[3, 3] == pytest.approx(0.1) and k[2, 4] == k[3, 4] == pytest.approx(-0.025)
    assert k[4, 4] == 0.0
    ref = F.conv2d(F.pad(x.reshape(6, 1, 20, 24), (2, 2, 2, 2), mode="reflect"), k[None, None]).reshape(2, 3, 20, 24)
    assert torch.allclose(ring(x), ref, atol=1e-6)
    resp = ring.ring_responses(x)
    assert resp.shape == (2, 3, 3, 20, 24)
    assert torch.allclose((resp * ring.weights.view(1, 1, 3, 1, 1)).sum(2), ref, atol=1e-6)
    assert ring(torch.rand(1, 3, 2, 9)).shape == (1, 3, 2, 9)  # too small to reflect: replicated borders
    with pytest.raises(ValueError, match="radius"):
        RingFilter(0)


def test_deblur_stage_is_fitted_and_weighted_by_the_blur_probability(tmp_path):
    """The ``deblur`` block fits the ring filter on the network's outputs for blurred photos (least squares: it
    lowers their error) and changes nothing else; the embedded restorer applies it with weight p(motion-blurry),
    1 or 0 for a given type, and not at all for a network without one."""
    from safetensors.torch import load_file

    from vlmir.models.embedded import EmbeddedRestorer, load_encoder, load_restorer
    from vlmir.models.restorer import classical_prior
    from vlmir.training.common import export_weights
    from vlmir.training.train_restorer import train

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    enc_dir = tmp_path / "enc"
    export_weights(enc_dir, model=enc, model_config=enc.config, train_config={"kind": "encoder"})
    kw = dict(width=8, enc_blocks=[1], middle_blocks=1, dec_blocks=[1], prior=True, gate=False)
    cfg = {"kind": "restorer", "encoder": str(enc_dir), "steps": 1, "batch_size": 2, "restore_crop": 32,
           "lr": 0.0, "warmup": 1, "threads": 1, "data": TINY_DATA, "model": kw}
    train(cfg, tmp_path / "base", progress=False)
    dcfg = dict(cfg, steps=0, init_from=str(tmp_path / "base" / "final"), init_skip=["deblur"],
                model=dict(kw, deblur_radius=3),
                deblur={"images": 4, "short_sides": [64, 80], "pixels": 800, "severities": [3, 4]})
    logs = train(dcfg, tmp_path / "deblur", progress=False)
    assert logs["deblur_images"] == 4 and logs["deblur_psnr_after"] >= logs["deblur_psnr_before"] - 1e-3
    a = load_file(str(tmp_path / "base" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "deblur" / "final" / "model.safetensors"))
    assert set(b) - set(a) == {"deblur.weights"} and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(b["deblur.weights"], torch.tensor([1.0, 0, 0, 0]))
    assert "deblur: ring weights" in (tmp_path / "deblur" / "train.log").read_text()
    net, _ = load_restorer(tmp_path / "deblur" / "final", allow_random=False)
    encoder, _ = load_encoder(enc_dir, allow_random=False)
    r = EmbeddedRestorer(encoder, net, random_weights=False)
    assert r.deblur_weight(0.3, None) == 0.3 and r.deblur_weight(0.3, "motion-blurry") == 1.0
    assert r.deblur_weight(0.3, "hazy") == 0.0
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        cond = r.condition(x)
        raw = {t: r._pass(x, cond, classical_prior(x, [t])) for t in ("hazy", "motion-blurry")}
    assert torch.allclose(r.restore(x, degradation="hazy"), raw["hazy"], atol=1e-6)  # weight 0
    blur = raw["motion-blurry"]
    assert torch.allclose(r.restore(x, degradation="motion-blurry"), net.deblur(blur).clamp(0, 1), atol=1e-5)
    assert not torch.allclose(net.deblur(blur), blur, atol=1e-3)
    with pytest.raises(ValueError, match="unknown degradation"):
        r.restore(x, degradation="foggy")
    plain, _ = load_restorer(tmp_path / "base" / "final", allow_random=False)
    assert EmbeddedRestorer(encoder, plain, random_weights=False).deblur_weight(0.9, "motion-blurry") == 0.0
    with pytest.raises(ValueError, match="deblur_radius"):
        train(dict(cfg, steps=0, deblur={"images": 1}), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="unknown keys"):
        train(dict(dcfg, deblur={"image": 1}), tmp_path / "bad2", progress=False)


def test_type_calibration_and_tilted_levels():
    """``r' = sum_t q_t (a_t + b_t r)``, the identity at first; the tilted levels keep their shape (KL-closest)
    and take the calibrated mean exactly."""
    from vlmir.models.rater import TypeCalibration, tilt_to_mean

    cal = TypeCalibration(3)
    r = torch.tensor([1.5, 3.0, 4.5])
    q = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    assert torch.allclose(cal(r, q), r)
    cal.a.copy_(torch.tensor([1.0, -1.0, 0.0]))
    cal.b.copy_(torch.tensor([0.5, 1.0, 2.0]))
    expect = torch.tensor([1.0 + 0.75, 0.5 * (1 + 1.5) + 0.5 * (-1 + 3.0), 0.2 * 3.25 + 0.3 * 3.5 + 0.5 * 9.0])
    assert torch.allclose(cal(r, q), expect.clamp(1, 5))
    with pytest.raises(ValueError, match="type probabilities"):
        cal(r, q[:, :2])
    p = torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1], [0.0, 0.0, 0.1, 0.3, 0.6]])
    levels = torch.arange(1, 6).float()
    for target in ([2.0, 4.8], [3.0, 1.2]):
        t = tilt_to_mean(p, torch.tensor(target))
        assert torch.allclose((t * levels).sum(-1), torch.tensor(target), atol=1e-4)
        assert torch.allclose(t.sum(-1), torch.ones(2)) and (t >= 0).all()
    same = tilt_to_mean(p[:1], (p[:1] * levels).sum(-1))
    assert torch.allclose(same, p[:1], atol=1e-5)
    t = tilt_to_mean(p[:1], torch.tensor([2.0]))  # exponential tilting: p_i exp(beta i) / Z
    ratio = (t / p[:1]).log()
    assert torch.allclose(ratio[0, 1:] - ratio[0, :-1], (ratio[0, 1] - ratio[0, 0]).expand(4), atol=1e-4)


def test_rater_calibration_fit_and_stage(tmp_path):
    """``fit_ab`` recovers a known per-type map; the ``calibration`` block fits it on a trained head, changes
    nothing else, and the embedded rater reports the calibrated score with levels whose mean is that score."""
    from safetensors.torch import load_file

    from vlmir.models.embedded import EmbeddedRater, build_rater, load_encoder
    from vlmir.training.common import export_weights
    from vlmir.training.rater_calibration import fit_ab
    from vlmir.training.train_rater import train

    g = torch.Generator().manual_seed(0)
    q = F.one_hot(torch.randint(0, 3, (300,), generator=g), 3).float()
    r = 1 + 4 * torch.rand(300, generator=g)
    a0, b0 = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 1.5, 0.5])
    a, b = fit_ab(r, q, (q * (a0 + b0 * r[:, None])).sum(-1), ridge=0.0)
    assert torch.allclose(a, a0, atol=1e-4) and torch.allclose(b, b0, atol=1e-4)
    a, b = fit_ab(r, q, (q * (a0 + b0 * r[:, None])).sum(-1), ridge=1e6)  # a huge ridge keeps the identity
    assert torch.allclose(a, torch.zeros(3), atol=1e-3) and torch.allclose(b, torch.ones(3), atol=1e-3)

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    enc_dir = tmp_path / "enc"
    export_weights(enc_dir, model=enc, model_config=enc.config, train_config={"kind": "encoder"})
    base = {"kind": "rater", "encoder": str(enc_dir), "steps": 2, "batch_size": 4, "threads": 1, "data": TINY_DATA,
            "model": {"hidden": 16}}
    train(base, tmp_path / "base", progress=False)
    cfg = dict(base, steps=0, init_from=str(tmp_path / "base" / "final"), init_skip=["calibration"],
               model={"hidden": 16, "type_calibration": len(CLASS_NAMES)},
               calibration={"samples": 16, "folds": 2, "ridge": [0.01, 1.0], "short_sides": [64, 80]})
    logs = train(cfg, tmp_path / "cal", progress=False)
    assert logs["calibration_ridge"] in (0.01, 1.0) and logs["calibration_images"] == 16
    assert -1.0 <= logs["calibration_cv_spearman"] <= 1.0
    a_, b_ = load_file(str(tmp_path / "base" / "final" / "model.safetensors")), load_file(
        str(tmp_path / "cal" / "final" / "model.safetensors"))
    assert set(b_) - set(a_) == {"calibration.a", "calibration.b"} and all(torch.equal(a_[k], b_[k]) for k in a_)
    assert not torch.equal(b_["calibration.b"], torch.ones(len(CLASS_NAMES)))
    rater = build_rater(path=tmp_path / "cal" / "final", encoder_path=enc_dir)
    x = torch.rand(1, 3, 70, 90)
    out = rater.rate(x)
    probs = [out["probs"][w] for w in ("bad", "poor", "fair", "good", "excellent")]
    assert sum(i * p for i, p in enumerate(probs, 1)) == pytest.approx(out["score"], abs=1e-4)
    from vlmir.models.rater import image_rater_inputs

    with torch.no_grad():
        feats, qx = image_rater_inputs(rater.encoder, x, False)
        raw = rater.head.score(rater.head(feats))
        expect = float(rater.head.calibration(raw, qx)[0])
    assert out["score"] == pytest.approx(expect, abs=1e-3)
    plain = build_rater(path=tmp_path / "base" / "final", encoder_path=enc_dir).rate(x)
    assert plain["score"] == pytest.approx(float(raw[0]), abs=1e-5)
    other, _ = load_encoder(enc_dir, allow_random=False)
    other.degradation_names = other.degradation_names[:5]
    with pytest.raises(ValueError, match="type calibration covers"):
        EmbeddedRater(other, rater.head, random_weights=False)
    with pytest.raises(ValueError, match="type_calibration"):
        train(dict(base, steps=0, calibration={"samples": 4}), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="unknown keys"):
        train(dict(cfg, calibration={"sample": 4}), tmp_path / "bad2", progress=False)


def test_eval_rater_reports_each_type_ordering_and_scale():
    """The rater validation's per-type breakdown, on a score whose values the test recomputes (mean brightness)."""
    from vlmir.degradations import degrade
    from vlmir.io import from_numpy
    from vlmir.training.data import heldout_image
    from vlmir.training.evaluate import eval_rater

    def rate(x):
        return {"score": float(x.mean())}

    out = eval_rater(rate, photos=("chelsea",), severities=(1, 3), short_side=64)
    assert out["n_images"] == 1 + 10 * 2
    by = out["by_type"]
    assert len(by) == 10 and set(by["low-light"]["mean_r_by_severity"]) == {"0", "1", "3"}
    clean = heldout_image("chelsea", 64)
    expect = [float(from_numpy(clean).mean())] + [float(from_numpy(degrade(clean, "low-light", s, seed=0)[0]).mean())
                                                 for s in (1, 3)]
    got = by["low-light"]["mean_r_by_severity"]
    assert [got["0"], got["1"], got["3"]] == pytest.approx(expect, rel=1e-6)
    assert by["low-light"]["spearman"] == pytest.approx(-1.0)  # darker with each severity
    # the pooled numbers are the ones the cards quote, unchanged by the breakdown
    assert out["mean_r_by_severity"]["0"] == pytest.approx(expect[0], rel=1e-6)
