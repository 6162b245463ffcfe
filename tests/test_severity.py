"""The rater's severity network: the model, its training stage, and its term in the type calibration."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from vlmir.models.encoder import DegradationAwareEncoder
from vlmir.models.rater import TypeCalibration, VisibilityHead
from vlmir.models.severity import SeverityNet
from vlmir.training.data import CLASS_NAMES, DataConfig, PairSampler
from vlmir.training.train_severity import LOCAL_TYPES, crop_bank, severity_losses, train_severity

TINY_ENCODER = dict(embed_dim=32, image_size=64, vision_width=8, vision_head_width=16, text_width=16, text_heads=2,
                    text_layers=1, context_length=8)
TINY_DATA = dict(crop=64, window=[64, 96], p_procedural=0.3)
TINY_NET = {"widths": [4, 8, 8], "hidden": 8}
LOG = logging.getLogger("test_severity")


def test_severity_net_scores_each_crop_and_checks_its_input():
    torch.manual_seed(0)
    net = SeverityNet(**TINY_NET).eval()
    x = torch.rand(3, 3, 64, 80)
    s = net(x)
    assert s.shape == (3,) and torch.isfinite(s).all()
    assert torch.allclose(net(x[1:2]), s[1:2], atol=1e-5)  # a crop's score does not depend on its batch
    assert net.config == {"widths": [4, 8, 8], "hidden": 8, "scale": False}
    with pytest.raises(ValueError, match="crops"):
        net(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="widths"):
        SeverityNet(widths=[8])


def test_severity_net_with_scale_reads_the_image_side():
    torch.manual_seed(0)
    net = SeverityNet(**TINY_NET, scale=True).eval()
    assert net.config["scale"] is True
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="side"):
        net(x)
    with pytest.raises(ValueError, match="positive"):
        net(x, side=0.0)
    with torch.no_grad():
        net.head[1].weight[:, -1] = 1.0  # make the side's input matter for certain
        small, large = net(x, side=160.0), net(x, side=400.0)
        per_crop = net(x, side=torch.tensor([160.0, 400.0]))
    assert not torch.allclose(small, large, atol=1e-3)
    assert torch.allclose(per_crop, torch.stack([small[0], large[1]]), atol=1e-5)


def test_image_severity_gives_a_scale_net_the_side_the_views_were_cut_at():
    from vlmir.models.rater import image_severity

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    assert [enc.view_side(*hw) for hw in ((50, 90), (100, 120), (300, 400))] == [64, 100, 256]
    net = SeverityNet(**TINY_NET, scale=True).eval()
    with torch.no_grad():
        net.head[1].weight[:, -1] = 1.0
        for h, w in ((50, 90), (100, 120), (300, 400)):
            x = torch.rand(1, 3, h, w)
            views = enc.views(x)
            assert min(views.shape[-2:]) == 64
            expect = net(views, side=float(enc.view_side(h, w))).mean()
            assert torch.allclose(image_severity(net, enc, x), expect.reshape(1), atol=1e-6)
        plain = SeverityNet(**TINY_NET).eval()  # a network without the side: the views alone
        x = torch.rand(1, 3, 100, 120)
        assert torch.allclose(image_severity(plain, enc, x), plain(enc.views(x)).mean().reshape(1), atol=1e-6)


def test_sampler_reports_each_crops_window_and_share_of_the_change():
    batch = PairSampler(DataConfig(**{**TINY_DATA, "p_clean": 0.3}), seed=3).sample(24)
    assert batch["window"].shape == (24,) and ((batch["window"] >= 64) & (batch["window"] <= 96)).all()
    clean = batch["severity"] == 0
    assert clean.any() and (batch["share"][clean] == 1).all()
    # a crop as large as its window holds all of the change
    whole = PairSampler(DataConfig(crop=64, window=[64, 64], p_clean=0.0, p_procedural=0.3), seed=3).sample(6)
    assert torch.allclose(whole["share"], torch.ones(6), atol=1e-5)
    # the new fields are as reproducible from the seed as the crops
    again = PairSampler(DataConfig(**{**TINY_DATA, "p_clean": 0.3}), seed=3).sample(24)
    assert torch.equal(batch["lq"], again["lq"]) and torch.equal(batch["share"], again["share"])


def test_crop_severity_scales_only_by_the_share_capped():
    from vlmir.training.train_severity import MAX_SHARE, crop_severity

    sev = torch.tensor([0, 2, 4, 3, 5])
    share = torch.tensor([1.0, 0.0, 0.5, 3.0, 1.0])
    assert MAX_SHARE == 2.0
    assert torch.equal(crop_severity(sev, share), torch.tensor([0.0, 0.0, 2.0, 5.0, 5.0]))


def test_crop_bank_is_the_same_for_any_number_of_workers():
    one = crop_bank(TINY_DATA, 40, seed=5, workers=1, progress=False)
    two = crop_bank(TINY_DATA, 40, seed=5, workers=2, progress=False)
    assert one["lq"].shape == (40, 3, 64, 64) and one["lq"].dtype == torch.uint8
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one["severity"].min() >= 0 and one["severity"].max() <= 5
    clean = one["severity"] == 0
    assert torch.equal(one["lq"][clean], one["clean"][clean])  # clean pairs are the same crop twice
    assert not torch.equal(one["lq"][~clean], one["clean"][~clean])
    assert set(one) == {"lq", "clean", "severity", "window", "share"}
    # the share is kept for crops of the local types alone, else 1
    batch = PairSampler(DataConfig(**TINY_DATA), seed=5).sample(40)
    local = torch.tensor([bool(t) and all(n in LOCAL_TYPES for n in t) for t in batch["types"]])
    assert local.any() and (batch["share"][~local & (batch["severity"] > 0)] != 1).any()
    expect = torch.where(local, batch["share"], torch.ones(40))
    assert torch.equal(one["share"], expect) and torch.equal(one["window"], batch["window"].to(torch.int16))


def test_severity_losses_values():
    """Huber fit to r* = 5 - 0.8 c, the clean crops' fit to 5, and the hinge, on a net with a known output."""

    class Fixed(torch.nn.Module):  # scores: the mean pixel value * 5
        def forward(self, x):
            return x.mean((1, 2, 3)) * 5

    lq = torch.full((2, 3, 16, 16), 0.5)
    clean = torch.full((2, 3, 16, 16), 0.8)
    sev = torch.tensor([0, 2])
    loss, logs = severity_losses(Fixed(), lq, clean, sev, clean_weight=0.5, rank_weight=1.0, rank_margin=1.0)
    # s_lq = 2.5, targets 5 and 3.4: Huber(2.5) = 2.0, Huber(0.9) = 0.405; s_clean = 4: Huber(1) = 0.5
    # hinge on the degraded pair: relu(1.0 * 2 - (4 - 2.5)) = 0.5
    expect = (2.0 + 0.405) / 2 + 0.5 * 0.5 + 0.5
    assert loss.item() == pytest.approx(expect, abs=1e-5)
    assert logs["severity_rank"] == pytest.approx(0.5)


def test_train_severity_lowers_the_loss_and_resumes_exactly(tmp_path):
    cfg = {"seed": 1, "data": TINY_DATA, "log_every": 100,
           "severity": {"steps": 40, "batch_size": 16, "lr": 0.01, "warmup": 2, "bank": 64, "bank_workers": 1,
                        "checkpoint_every": 20}}
    torch.manual_seed(0)
    net = SeverityNet(**TINY_NET)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    (tmp_path / "a").mkdir()
    logs = train_severity(net, cfg, tmp_path / "a", LOG, device=torch.device("cpu"), progress=False)
    bank = torch.load(tmp_path / "a" / "severity_bank.pt", weights_only=True)["bank"]

    def bank_loss(model):
        model.eval()
        with torch.no_grad():
            return severity_losses(model, bank["lq"].float() / 255, bank["clean"].float() / 255, bank["severity"],
                                   clean_weight=0.5, rank_weight=1.0, rank_margin=0.3)[0].item()

    fresh = SeverityNet(**TINY_NET)
    fresh.load_state_dict(start)
    assert bank_loss(net) < 0.85 * bank_loss(fresh)  # measured: 1.77 against 2.51
    assert logs["severity_steps"] == 40 and logs["severity_bank"] == 64
    # a run killed after its checkpoint at step 20, then resumed, ends with the same weights
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "severity_bank.pt").write_bytes((tmp_path / "a" / "severity_bank.pt").read_bytes())
    _run_until(cfg, tmp_path / "b", 20)
    assert torch.load(tmp_path / "b" / "severity_checkpoint.pt", weights_only=True)["step"] == 20
    resumed = SeverityNet(**TINY_NET)
    train_severity(resumed, cfg, tmp_path / "b", LOG, device=torch.device("cpu"), resume=True, progress=False)
    for k, v in net.state_dict().items():
        assert torch.allclose(resumed.state_dict()[k].float(), v.float(), atol=1e-6), k


def _run_until(cfg: dict, out_dir, steps: int) -> None:
    """Start ``cfg``'s run in ``out_dir`` and interrupt it before step ``steps`` (as a killed run: its last
    checkpoint stays behind)."""
    import vlmir.training.train_severity as ts

    torch.manual_seed(0)
    net = SeverityNet(**TINY_NET)
    real = ts.cosine_lr

    def stop_at(step, total, base, warmup):
        if step >= steps:
            raise KeyboardInterrupt
        return real(step, total, base, warmup)

    ts.cosine_lr = stop_at
    try:
        with pytest.raises(KeyboardInterrupt):
            train_severity(net, cfg, out_dir, LOG, device=torch.device("cpu"), progress=False)
    finally:
        ts.cosine_lr = real


def test_calibration_with_a_severity_term():
    from vlmir.models.rater import calibrated_score
    from vlmir.training.rater_calibration import fit_ab

    cal = TypeCalibration(2, severity=True)
    r, s = torch.tensor([2.0, 4.0]), torch.tensor([3.0, 1.0])
    q = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    assert torch.allclose(cal(r, q, s), r)  # the identity at first
    cal.a.copy_(torch.tensor([0.5, -1.0]))
    cal.b.copy_(torch.tensor([1.0, 0.5]))
    cal.c.copy_(torch.tensor([0.2, 1.0]))
    expect = torch.tensor([0.5 + 2.0 + 0.6, 0.25 * (0.5 + 4.0 + 0.2) + 0.75 * (-1.0 + 2.0 + 1.0)])
    assert torch.allclose(cal(r, q, s), expect.clamp(1, 5))
    with pytest.raises(ValueError, match="severity"):
        cal(r, q)
    with pytest.raises(ValueError, match="severity"):
        TypeCalibration(2)(r, q, s)
    assert "c" not in TypeCalibration(2).state_dict()  # heads without the term load as before

    g = torch.Generator().manual_seed(0)
    q = F.one_hot(torch.randint(0, 3, (300,), generator=g), 3).float()
    r, s = 1 + 4 * torch.rand(300, generator=g), 1 + 4 * torch.rand(300, generator=g)
    w0 = (torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.0, 0.4, -0.3]))
    target = calibrated_score(r, q, *w0, s=s)
    inside = (target > 1) & (target < 5)  # the score is clamped to [1, 5]; fit where the map is linear
    w = fit_ab(r[inside], q[inside], (q * (w0[0] + w0[1] * r[:, None] + w0[2] * s[:, None])).sum(-1)[inside], 0.0,
               s[inside])
    assert len(w) == 3 and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(w, w0, strict=True))


def test_rater_run_trains_the_severity_net_and_the_rater_uses_it(tmp_path):
    from safetensors.torch import load_file

    from vlmir.models.embedded import build_rater
    from vlmir.models.rater import image_rater_inputs, image_severity
    from vlmir.training.common import export_weights
    from vlmir.training.train_rater import train

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(**TINY_ENCODER).eval()
    enc_dir = tmp_path / "enc"
    export_weights(enc_dir, model=enc, model_config=enc.config, train_config={"kind": "encoder"})
    cfg = {"kind": "rater", "encoder": str(enc_dir), "steps": 2, "batch_size": 4, "threads": 1, "data": TINY_DATA,
           "model": {"hidden": 16, "type_calibration": len(CLASS_NAMES), "severity": {**TINY_NET, "scale": True}},
           "severity": {"steps": 6, "batch_size": 8, "bank": 24, "bank_workers": 1, "warmup": 1},
           "calibration": {"samples": 16, "folds": 2, "ridge": [0.01, 1.0], "short_sides": [64, 80]}}
    logs = train(cfg, tmp_path / "run", progress=False)
    assert logs["severity_steps"] == 6 and logs["calibration_images"] == 16
    state = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert "calibration.c" in state and any(k.startswith("severity.") for k in state)
    kept = torch.load(tmp_path / "run" / "calibration_data.pt", weights_only=False)
    assert kept["r"].shape == kept["s"].shape == (16,) and kept["q"].shape == (16, len(CLASS_NAMES))
    assert len(kept["photos"]) == 16 and kept["severity"].min() >= 0 and kept["folds"].shape == (16,)
    rater = build_rater(path=tmp_path / "run" / "final", encoder_path=enc_dir)
    assert rater.head.severity is not None and not rater.head.severity.training and rater.head.severity.scale
    x = torch.rand(1, 3, 70, 90)
    out = rater.rate(x)
    with torch.no_grad():
        feats, q = image_rater_inputs(rater.encoder, x, False)
        raw = rater.head.score(rater.head(feats))
        s = image_severity(rater.head.severity, rater.encoder, x)
        expect = float(rater.head.calibration(raw, q, s)[0])
    assert out["score"] == pytest.approx(expect, abs=1e-3)
    from vlmir.training.card import write_card

    card = write_card(tmp_path / "run" / "final", "rater", {}, command="python -m vlmir train rater").read_text()
    assert "r' = sum_t q_t (a_t + b_t r + c_t s)" in card and "`SeverityNet`" in card and "log2(side / 256)" in card
    with pytest.raises(ValueError, match="type_calibration"):
        VisibilityHead(feature_dim=10, severity={})
    with pytest.raises(ValueError, match="model.severity"):
        train({**cfg, "model": {"hidden": 16, "type_calibration": len(CLASS_NAMES)}}, tmp_path / "bad",
              progress=False)
