"""Embedded default models: registry, contracts, any-size restore with tiling, and the shipped weights' outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vlmir.constants import DEGRADATIONS
from vlmir.models import embedded
from vlmir.models.embedded import EmbeddedRestorer, build_classifier, build_rater, build_restorer
from vlmir.models.encoder import DEGRADATION_NAMES, DegradationAwareEncoder
from vlmir.models.restorer import ConditionalRestorer
from vlmir.registry import create_model, get_spec, list_models


def _needs(*dirs):
    ok = all((d / "model.safetensors").is_file() for d in dirs)
    return pytest.mark.skipif(not ok, reason="shipped weights not in assets/weights (train them first)")


needs_encoder = _needs(embedded.ENCODER_DIR)
needs_restorer = _needs(embedded.ENCODER_DIR, embedded.RESTORER_DIR)
needs_rater = _needs(embedded.ENCODER_DIR, embedded.RATER_DIR)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registered_as_defaults():
    names = {"embedded": "restorer", "embedded-classifier": "classifier", "embedded-rater": "rater",
             "embedded-encoder": "encoder"}
    for name, task in names.items():
        assert name in list_models(task=task)
        spec = get_spec(name)
        assert spec.task == task and spec.default and spec.source.startswith("assets:")


def test_missing_weights_give_flagged_random_model(tmp_path):
    with pytest.warns(UserWarning, match="RANDOM"):
        clf = build_classifier(path=tmp_path / "nothing")
    assert clf.random_weights is True and clf.name == "embedded-classifier"
    probs = clf.classify(torch.rand(1, 3, 50, 70))
    assert list(probs) == list(DEGRADATION_NAMES) and abs(sum(probs.values()) - 1) < 1e-5
    with pytest.raises(FileNotFoundError, match="weights not found"):
        embedded.load_encoder(tmp_path / "nothing", allow_random=False)


def test_weights_round_trip(tmp_path):
    """A saved folder (config.json + model.safetensors) rebuilds the same network."""
    from vlmir.training.common import export_weights

    torch.manual_seed(1)
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), cond_dim=256)
    torch.nn.init.normal_(net.gate.weight)
    export_weights(tmp_path, model=net, model_config=net.config, train_config={"kind": "restorer"})
    again, rnd = embedded.load_restorer(tmp_path)
    x, e = torch.rand(1, 3, 16, 16), torch.randn(1, 256)
    assert rnd is False and json.loads((tmp_path / "config.json").read_text())["width"] == 8
    assert torch.allclose(net.eval()(x, e), again(x, e), atol=1e-6)


def _identity_restorer() -> EmbeddedRestorer:
    """A restorer whose gate is closed (output = input): tiling and padding must then give the input back."""
    torch.manual_seed(0)
    enc = DegradationAwareEncoder().eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,)).eval()
    torch.nn.init.constant_(net.gate.bias, -40.0)
    return EmbeddedRestorer(enc, net, random_weights=True)


def test_restore_any_size_and_tiles_blend_exactly():
    r = _identity_restorer()
    x = torch.rand(1, 3, 157, 203)
    calls = []
    y = r.restore(x, tile=64, progress=lambda d, t: calls.append((d, t)))
    assert y.shape == x.shape and torch.allclose(y, x, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] == len(calls) > 4
    tiny = torch.rand(1, 3, 9, 13)  # smaller than the network multiple: replicate padding
    assert torch.allclose(r.restore(tiny), tiny, atol=1e-5)


def test_prior_restorer_follows_the_classical_method_of_the_given_type():
    """A prior network whose output is exactly the prior (gate open, mask saturated, no residual) returns the
    classical method of the given type, whole-image or tiled, and rejects an unknown type."""
    from vlmir.models.classical import restore_array

    torch.manual_seed(0)
    enc = DegradationAwareEncoder().eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), prior=True).eval()
    with torch.no_grad():
        net.gate.bias.fill_(40.0)
        net.ending.weight.zero_()
        net.ending.bias.zero_()
        net.ending.bias[12:] = 40.0
    r = EmbeddedRestorer(enc, net, random_weights=True)
    x = torch.rand(1, 3, 96, 128) * 0.3  # dark: the low-light method brightens it
    want = torch.from_numpy(restore_array(x[0].permute(1, 2, 0).numpy(), "low-light")).permute(2, 0, 1)[None]
    y = r.restore(x, degradation="low-light")
    assert torch.allclose(y, want.clamp(0, 1), atol=1e-4)
    assert y.mean() > x.mean() + 0.05
    assert torch.allclose(r.restore(x, degradation="clear"), x, atol=1e-5)
    tiled = r.restore(x, degradation="motion-blurry", tile=64)  # per-tile priors, blended
    assert tiled.shape == x.shape and torch.isfinite(tiled).all()
    with pytest.raises(ValueError, match="unknown degradation"):
        r.restore(x, degradation="foggy")


def test_flip_self_ensemble_averages_the_flipped_passes():
    """``ensemble=2``/``4``: the network's outputs on the flipped image, flipped back and averaged, with one
    conditioning (and prior) for all passes; identity stays exact; bad values are refused."""
    torch.manual_seed(0)
    enc = DegradationAwareEncoder().eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,)).eval()
    torch.nn.init.constant_(net.gate.bias, 2.0)
    r = EmbeddedRestorer(enc, net, random_weights=True)
    x = torch.rand(1, 3, 48, 64)
    cond = r.condition(x)
    with torch.no_grad():
        one = net(x, cond).clamp(0, 1)
        h = net(x.flip(-1), cond).clamp(0, 1).flip(-1)
        v = net(x.flip(-2), cond).clamp(0, 1).flip(-2)
        hv = net(x.flip(-2, -1), cond).clamp(0, 1).flip(-2, -1)
    assert torch.allclose(r.restore(x), one, atol=1e-5)
    assert torch.allclose(r.restore(x, ensemble=2), (one + h) / 2, atol=1e-5)
    assert torch.allclose(r.restore(x, ensemble=4), (one + h + v + hv) / 4, atol=1e-5)
    assert not torch.allclose(one, h, atol=1e-3)  # the passes differ: the average is not a no-op
    r4 = EmbeddedRestorer(enc, net, random_weights=True, ensemble=4)
    assert torch.allclose(r4.restore(x), (one + h + v + hv) / 4, atol=1e-5)
    assert torch.allclose(_identity_restorer().restore(x, ensemble=4), x, atol=1e-5)
    for bad in (3, 0, True, "2"):
        with pytest.raises(ValueError, match="ensemble must be one of"):
            r.restore(x, ensemble=bad)


def test_auto_tiling_above_one_megapixel(monkeypatch):
    r = _identity_restorer()
    monkeypatch.setattr(embedded, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(embedded, "DEFAULT_TILE", 64)
    calls = []
    x = torch.rand(1, 3, 120, 130)
    r.restore(x, progress=lambda d, t: calls.append(t))
    assert calls and calls[0] == 12  # 3 x 4 tiles of 64 px with 32 px overlap on 120 x 130


def test_bad_inputs_raise_value_error():
    r = _identity_restorer()
    with pytest.raises(ValueError, match="1, 3, H, W"):
        r.restore(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="tile"):
        r.restore(torch.rand(1, 3, 32, 32), tile=16)
    with pytest.raises(ValueError, match="8x8"):
        r.restore(torch.rand(1, 3, 4, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        DegradationAwareEncoder(image_size=100)


def test_encoder_views_cover_the_image():
    enc = DegradationAwareEncoder()
    v = enc.views(torch.rand(1, 3, 300, 451))
    assert v.shape == (9, 3, 128, 128)
    assert enc.views(torch.rand(1, 3, 60, 90)).shape == (3, 3, 128, 128)  # upscaled to 128 x 192: one row of 3
    x = torch.rand(1, 3, 128, 128)
    assert torch.equal(enc.views(x), x)


# -- shipped weights -------------------------------------------------------------------------------------------

def _chelsea(short_side: int = 256) -> np.ndarray:
    from vlmir.training.data import heldout_image

    return heldout_image("chelsea", short_side)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


@needs_encoder
def test_shipped_classifier_on_heldout_photo():
    from vlmir.degradations import degrade

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning
        clf = create_model("embedded-classifier")
    assert clf.random_weights is False
    head = clf.encoder.view_head  # the shipped encoder decides an image's type through its fitted view head
    assert head is not None and float(head.linear.weight.detach().abs().sum()) > 0
    img = _chelsea()
    hits = {}
    for t in DEGRADATIONS:
        probs = clf.classify(_t(degrade(img, t, 3, seed=0)[0]))
        hits[t] = max(probs, key=probs.get)
    for t in ("hazy", "low-light", "noisy", "rainy", "snowy", "uncompleted"):  # 100% on the held-out protocol
        assert hits[t] == t, hits
    assert sum(hits[t] == t for t in DEGRADATIONS) >= 9, hits  # the shipped encoder gets all ten on this photo


@needs_restorer
def test_shipped_restorer_improves_psnr_and_keeps_clean():
    from vlmir.degradations import degrade

    r = build_restorer()
    assert r.random_weights is False
    img = _chelsea()
    clean = _t(img)
    # the types the shipped model restores well (its card lists the near-zero ones: blur, jpeg, raindrop, shadowed)
    for t, min_gain in (("hazy", 4.0), ("low-light", 8.0), ("noisy", 3.0), ("rainy", 3.0), ("uncompleted", 8.0)):
        lq = _t(degrade(img, t, 3, seed=0)[0])
        assert _psnr(r.restore(lq), clean) > _psnr(lq, clean) + min_gain, t
    assert _psnr(r.restore(clean), clean) > 35.0  # the bar for leaving clean inputs alone


@needs_restorer
def test_shipped_restorer_rejects_a_wrong_prior_on_a_clean_photo():
    """Trained against wrong priors (``prior_wrong_p``), the trust mask leaves out a classical prior that does
    not fit: given a clean training photo with the hazy or the low-light prior, the output stays close to the
    photo, although the prior alone moves it far away (17-44 dB; the release before this training gave 37-55 dB)."""
    from vlmir.models.classical import restore_array
    from vlmir.training.photos import photo_image

    r = build_restorer()
    for name in ("astronaut", "china"):
        img = photo_image(name, 192)
        clean = _t(img)
        for t in ("hazy", "low-light"):
            prior = _psnr(_t(restore_array(img, t)), clean)
            out = _psnr(r.restore(clean, prior_type=t), clean)
            assert out > 45.0 and out > prior + 10.0, (name, t, prior, out)


@needs_rater
def test_shipped_rater_orders_clean_above_severe():
    from vlmir.degradations import degrade

    rater = build_rater()
    assert rater.random_weights is False
    img = _chelsea()
    clean = rater.rate(_t(img))
    assert set(clean) == {"score", "vlm_vis", "probs"}
    assert list(clean["probs"]) == ["excellent", "good", "fair", "poor", "bad"]
    assert abs(clean["vlm_vis"] - (clean["score"] - 1) / 4) < 1e-6
    for t in DEGRADATIONS:  # the card: clean above severity 4 in 100% of held-out (photo, type) pairs
        bad = rater.rate(_t(degrade(img, t, 4, seed=0)[0]))
        assert clean["score"] > bad["score"], t


# -- the uncertainty fallback (issue 17: never much worse than the input) -----------------------------------------

def test_fallback_weights_and_shrink_by_hand():
    from vlmir.models.embedded import Fallback

    hard = Fallback()
    assert hard.top2_weights(0.5, 0.45) == (1.0, 0.0) and hard.shrink(0.01) == 1.0
    fb = Fallback(soft_min=0.3, lo=0.2, hi=0.6)
    assert fb.top2_weights(0.6, 0.2) == (1.0, 0.0)  # share 0.25 < 0.3: top-1 alone
    w1, w2 = fb.top2_weights(0.5, 0.3)  # share 0.375
    assert w1 == pytest.approx(0.625) and w2 == pytest.approx(0.375)
    assert fb.shrink(0.7) == 1.0 and fb.shrink(0.1) == 0.0 and fb.shrink(0.4) == pytest.approx(0.5)
    plan, c = fb.plan({"noisy": 0.3, "hazy": 0.5, "clear": 0.2})
    assert plan == [("hazy", pytest.approx(0.625)), ("noisy", pytest.approx(0.375))] and c == pytest.approx(0.75)
    assert Fallback(lo=0.5, hi=0.5).shrink(0.49) == 0.0
    assert Fallback.from_config({"soft_min": 0.5, "lo": 0.1, "hi": 0.4, "chosen_on": "select"}) == \
        Fallback(0.5, 0.1, 0.4)
    assert Fallback.from_config(None) == hard
    for bad in ({"soft_min": 0.0}, {"lo": 0.6, "hi": 0.5}, {"hi": 1.5}):
        with pytest.raises(ValueError):
            Fallback(**bad)
    with pytest.raises(ValueError, match="unknown fallback keys"):
        Fallback.from_config({"tau": 0.5})


def _prior_restorer(fallback=None):
    torch.manual_seed(0)
    enc = DegradationAwareEncoder().eval()
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), prior=True).eval()
    return EmbeddedRestorer(enc, net, random_weights=True, fallback=fallback)


def test_fallback_restore_blends_the_top2_outputs_and_moves_to_the_input():
    """A blind restore under a fallback equals the policy applied to the two single-prior outputs, whole-image
    and tiled; at a top probability below ``lo`` it returns the input; a given type bypasses it."""
    from vlmir.models.embedded import Fallback

    r = _prior_restorer()
    x = torch.rand(1, 3, 96, 128) * 0.6
    probs = r.type_probabilities(x)
    top = sorted(probs, key=probs.get, reverse=True)[:2]
    p1, p2 = probs[top[0]], probs[top[1]]
    y1, y2 = (r.restore(x, prior_type=t) for t in top)
    assert torch.equal(r.restore(x), y1)  # default: the hard choice
    fb = Fallback(soft_min=min(1.0, 0.5 * p2 / (p1 + p2)), lo=0.0, hi=min(1.0, 2 * p1))
    w1, w2 = fb.top2_weights(p1, p2)
    c = fb.shrink(p1)
    assert w2 > 0 and 0 < c < 1
    want = (x + c * ((w1 * y1 + w2 * y2) - x)).clamp(0, 1)
    got = r.restore(x, fallback=fb)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - x).abs().mean() < (y1 - x).abs().mean()
    t1, t2 = (r.restore(x, prior_type=t, tile=64) for t in top)  # tiles: the same policy on the tiled outputs
    assert torch.allclose(r.restore(x, fallback=fb, tile=64), x + c * ((w1 * t1 + w2 * t2) - x), atol=1e-5)
    assert torch.equal(r.restore(x, fallback=Fallback(lo=1.0, hi=1.0)), x.clamp(0, 1))  # never sure: identity
    assert torch.equal(r.restore(x, fallback=fb, degradation=top[1]), r.restore(x, degradation=top[1]))
    with pytest.raises(ValueError, match="unknown prior_type"):
        r.restore(x, prior_type="foggy")
    with pytest.raises(ValueError, match="fallback must be"):
        r.restore(x, fallback="soft")


def test_fallback_is_read_from_the_restorer_config(tmp_path):
    from vlmir.models.embedded import Fallback, load_fallback

    assert load_fallback(tmp_path) == Fallback()
    (tmp_path / "config.json").write_text(json.dumps({"width": 8, "fallback": {"soft_min": 0.4, "lo": 0.2, "hi": 0.5}}))
    assert load_fallback(tmp_path) == Fallback(0.4, 0.2, 0.5)
    (tmp_path / "config.json").write_text(json.dumps({"fallback": {"lo": 0.9, "hi": 0.1}}))
    with pytest.raises(ValueError, match="bad fallback entry"):
        load_fallback(tmp_path)


def test_inference_options_are_read_from_the_restorer_config_and_act(tmp_path):
    """The restorer folder's ``inference`` entry sets the type source, flip passes and deblurring stage; each acts:
    "views" decides from the plain mean of the views, deblur false skips the stage."""
    from vlmir.models.embedded import INFERENCE_DEFAULTS, load_inference

    assert load_inference(tmp_path) == INFERENCE_DEFAULTS
    (tmp_path / "config.json").write_text(json.dumps(
        {"inference": {"types": "views", "ensemble": 1, "deblur": False, "chosen_on": "select split"}}))
    assert load_inference(tmp_path) == {"types": "views", "ensemble": 1, "deblur": False}
    for bad, match in (({"types": "plain"}, "types must be"), ({"ensemble": 3}, "ensemble"),
                       ({"deblur": "no"}, "deblur must be"), ({"tau": 1}, "unknown keys")):
        (tmp_path / "config.json").write_text(json.dumps({"inference": bad}))
        with pytest.raises(ValueError, match=match):
            load_inference(tmp_path)

    torch.manual_seed(0)
    enc = DegradationAwareEncoder(view_head=True).eval()
    with torch.no_grad():
        enc.view_head.linear.weight.normal_(0, 2.0)  # a view head that disagrees with the plain mean of views
    net = ConditionalRestorer(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), prior=True,
                              deblur_radius=2).eval()
    with torch.no_grad():
        net.deblur.weights.add_(0.3)
    x = torch.rand(1, 3, 96, 128) * 0.6
    f = enc.embed(x)
    head, plain = EmbeddedRestorer(enc, net, random_weights=True), EmbeddedRestorer(enc, net, random_weights=True,
                                                                                    types="views")
    assert torch.allclose(torch.tensor(list(head.type_probabilities(x).values())), f["type_logits"].softmax(-1)[0])
    assert torch.allclose(torch.tensor(list(plain.type_probabilities(x).values())), f["logits"].softmax(-1)[0])
    assert not torch.allclose(f["type_logits"], f["logits"])
    on = EmbeddedRestorer(enc, net, random_weights=True)
    off = EmbeddedRestorer(enc, net, random_weights=True, deblur=False)
    y_on, y_off = on.restore(x, degradation="motion-blurry"), off.restore(x, degradation="motion-blurry")
    assert float((y_on - y_off).abs().max()) > 1e-4 and off.deblur_weight(1.0, None) == 0.0
    with pytest.raises(ValueError, match="types must be"):
        EmbeddedRestorer(enc, net, random_weights=True, types="plain")
