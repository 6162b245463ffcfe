"""The photo catalogue and its three-way split, the independent degradation engine, and the generalisation
benchmark's metrics (benchmarks/generalisation.py)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import generalisation as G
from benchmarks import independent_degradations as ID
from vlmir.training import photos as P
from vlmir.training.data import HELDOUT_PHOTOS, TRAIN_PHOTOS, DataConfig, PairSampler

ROOT = Path(__file__).resolve().parent.parent


def _test_image(side: int = 96) -> np.ndarray:
    return P.photo_image("astronaut", side)


# -- photo catalogue --------------------------------------------------------------------------------------------

def test_catalogue_files_are_on_disk_and_load_as_rgb():
    assert P.missing_photos() == ()  # requirements.txt installs every package the catalogue names
    for name in P.list_photos():
        path = P.photo_file(name)
        assert path.is_file(), name
        img = P.load_photo(name)
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 128, name
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0, name
        assert float(img.std()) > 0.05, name  # real content, not a flat file


def test_grey_photos_load_as_three_equal_channels():
    for name in ("aero", "camera"):  # an .npz array (PyWavelets) and a grey PNG (scikit-image)
        img = P.load_photo(name)
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_old_photo_names_keep_their_files():
    import skimage

    assert P.photo_file("astronaut") == Path(skimage.__file__).parent / "data" / "astronaut.png"
    assert P.photo_file("grace_hopper").name == "grace_hopper.jpg"


def test_splits_are_disjoint_deterministic_and_keep_the_old_meaning():
    names = [p.name for p in P.CATALOGUE]
    assert len(names) == len(set(names))
    split = {s: set(P.list_photos(s)) for s in P.SPLITS}
    assert P.list_photos("report") == P.list_photos("report")
    assert not split["train"] & split["select"] and not split["train"] & split["report"]
    assert not split["select"] & split["report"]
    assert split["train"] | split["select"] | split["report"] == set(P.list_photos())
    assert set(TRAIN_PHOTOS) <= split["train"]
    assert set(HELDOUT_PHOTOS) <= split["select"]
    assert not split["report"] & set(TRAIN_PHOTOS)
    assert len(split["report"]) >= 10
    assert {P.get_photo(n).distribution for n in split["report"]} >= {"gradio", "pyiqa"}
    assert P.photo_split("lion") == "report" and P.photo_split("chelsea") == "select"


def test_catalogue_rejects_unknown_names_and_splits():
    with pytest.raises(ValueError, match="'nope'"):
        P.get_photo("nope")
    with pytest.raises(ValueError, match="'test'"):
        P.list_photos("test")
    with pytest.raises(ValueError, match="short_side"):
        P.resize_short_side(_test_image(), 4)


def test_resize_short_side_keeps_aspect():
    img = P.photo_image("coffee", 100)  # 600 x 400 photo
    assert img.shape == (100, 150, 3)
    assert P.photo_image("tower", 128).shape == (204, 128, 3)  # 377 x 600, portrait


def test_training_config_takes_new_train_photos_and_refuses_select_and_report():
    cfg = DataConfig(crop=32, window=(48, 64), photos=("aero", "groot"), p_procedural=0.0)
    batch = PairSampler(cfg, seed=0).sample(2)
    assert batch["clean"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="lion"):
        DataConfig(photos=("astronaut", "lion"))
    with pytest.raises(ValueError, match="ascent"):
        DataConfig(photos=("ascent",))
    with pytest.raises(ValueError, match="no_such_photo"):
        DataConfig(photos=("no_such_photo",))


# -- the independent engine -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ID.TYPES)
def test_independent_engine_is_seeded_and_keeps_shape_and_range(kind):
    img = _test_image(80)[:, :72]  # not square
    a = ID.degrade(img, kind, 3, seed=5)
    assert a.shape == img.shape and a.dtype == np.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert np.array_equal(a, ID.degrade(img, kind, 3, seed=5))
    assert not np.array_equal(a, ID.degrade(img, kind, 3, seed=6))
    assert float(np.abs(a - img).mean()) > 0.005


@pytest.mark.parametrize("kind", ID.TYPES)
def test_independent_engine_grows_with_severity(kind):
    img = _test_image(96)
    change = [float(np.abs(ID.degrade(img, kind, s, seed=1) - img).mean()) for s in ID.SEVERITIES]
    assert all(b > a for a, b in zip(change, change[1:], strict=False)), change


def test_independent_engine_rejects_bad_input():
    img = _test_image(32)
    with pytest.raises(ValueError, match="'raindrop'"):
        ID.degrade(img, "raindrop", 2, seed=0)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity"):
            ID.degrade(img, "hazy", bad, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ID.degrade(img, "hazy", 2, seed=-1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ID.degrade(img * 2, "noisy", 2, seed=0)
    with pytest.raises(ValueError, match="H, W, 3"):
        ID.degrade(img[..., 0], "noisy", 2, seed=0)


def test_independent_engine_differs_from_ours():
    img = _test_image(96)
    for kind in ID.TYPES:
        mine = G.degrade_with("independent", img, kind, 3, 0)
        ours = G.degrade_with("ours", img, kind, 3, 0)
        assert float(np.abs(mine - ours).mean()) > 0.01, kind
    with pytest.raises(ValueError, match="'theirs'"):
        G.degrade_with("theirs", img, "hazy", 3, 0)


def test_validation_code_stays_out_of_the_package():
    # the independent engine imports nothing of vlmir, and nothing in vlmir imports benchmarks
    code = "import sys; import benchmarks.independent_degradations; print(sorted(m for m in sys.modules if m.startswith('vlmir')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    pattern = re.compile(r"^\s*(from|import)\s+benchmarks\b", re.M)
    assert not [p for p in (ROOT / "vlmir").rglob("*.py") if pattern.search(p.read_text())]


# -- benchmark metrics ------------------------------------------------------------------------------------------

def test_classifier_metrics_on_a_hand_case():
    true = ["hazy", "hazy", "noisy", "rainy"]
    m = G.classifier_metrics(true, ["hazy"] * 4)  # always "hazy": top-1 is the share of hazy images
    assert m["top1"] == pytest.approx(0.5)
    assert m["top1_per_type"] == {"hazy": 1.0, "noisy": 0.0, "rainy": 0.0}
    assert m["confusion"]["noisy"] == {"hazy": 1}
    m = G.classifier_metrics(true, ["hazy", "clear", "noisy", "raindrop"])  # other labels are wrong
    assert m["top1"] == pytest.approx(0.5) and m["top1_per_type"]["hazy"] == 0.5 and m["top1_min_type"] == 0.0
    with pytest.raises(ValueError):
        G.classifier_metrics(["hazy"], [])


def test_restorer_metrics_on_a_hand_case():
    rows = [{"photo": "a", "type": "hazy", "severity": 2, "psnr_in": 20.0, "psnr_out": 26.0},
            {"photo": "b", "type": "hazy", "severity": 3, "psnr_in": 18.0, "psnr_out": 20.0},
            {"photo": "a", "type": "noisy", "severity": 2, "psnr_in": 25.0, "psnr_out": 24.0}]
    m = G.restorer_metrics(rows, [40.0, 30.0])
    assert m["mean_gain_db"] == pytest.approx(7 / 3)
    assert m["per_type"]["hazy"]["gain_db"] == pytest.approx(4.0)
    assert m["per_type"]["hazy"]["min_gain_db"] == pytest.approx(2.0)
    assert m["min_type_gain_db"] == pytest.approx(-1.0)
    assert m["worst_image"] == {"photo": "a", "type": "noisy", "severity": 2, "gain_db": -1.0}
    assert m["clean_psnr_db"] == pytest.approx(35.0) and m["clean_psnr_min_db"] == pytest.approx(30.0)


def test_rater_metrics_on_a_hand_case():
    rows = [{"photo": p, "type": "clear", "severity": 0, "score": 5.0} for p in "ab"]
    rows += [{"photo": p, "type": t, "severity": s, "score": 5.0 - s * 0.7}
             for p in "ab" for t in ("hazy", "noisy") for s in (1, 2, 3, 4, 5)]
    m = G.rater_metrics(rows)
    assert m["spearman"] == pytest.approx(-1.0)
    assert m["clean_above_severity4"] == 1.0
    assert m["spearman_per_type"]["hazy"] == pytest.approx(-1.0)
    assert m["mean_r_by_severity"]["0"] == 5.0
    rows[0]["score"] = 1.0  # photo a's clean image now scores below its severity-4 images
    assert G.rater_metrics(rows)["clean_above_severity4"] == 0.5


class _Identity:
    def restore(self, x, **_):
        return x.clone()


class _AlwaysHazy:
    def classify(self, x):
        return {"hazy": 0.6, "noisy": 0.4}


def test_evaluate_with_hand_made_models():
    m = G.evaluate(restorer=_Identity(), classifier=_AlwaysHazy(), rater=None, engine="independent",
                   split="report", limit=1, short_side=64)
    assert m["photos"] == [P.list_photos("report")[0]]
    assert m["classifier"]["top1"] == pytest.approx(1 / 7)
    assert m["classifier"]["top1_per_type"]["hazy"] == 1.0 and m["classifier"]["clear_share"] == 0.0
    r = m["restorer"]
    assert r["mean_gain_db"] == pytest.approx(0.0) and r["n_images"] == 14
    assert r["clean_psnr_db"] == 100.0 and r["clean_psnr_min_photo"] == m["photos"][0]
    assert all(v["ssim_in"] == pytest.approx(v["ssim_out"]) for v in r["per_type"].values())
    assert m["targets"]["restorer.mean_gain_db"]["met"] is False
    assert "rater" not in m
    with pytest.raises(ValueError, match="restore"):
        G.evaluate(restorer=object(), classifier=None, rater=None, limit=1)
    with pytest.raises(ValueError, match="limit"):
        G.evaluate(restorer=None, classifier=None, rater=None, limit=0)


def test_case_seeds_are_fixed():
    assert G.case_seed("lion", "hazy") == G.case_seed("lion", "hazy")
    assert G.case_seed("lion", "hazy") != G.case_seed("lion", "noisy")
    _, a = G.build_cases("ours", ["lion"], severities=(2,), short_side=48)
    _, b = G.build_cases("ours", ["lion"], severities=(2,), short_side=48)
    assert len(a) == 7 and all(np.array_equal(x["lq"], y["lq"]) for x, y in zip(a, b, strict=True))


def test_command_line_writes_json(tmp_path, capsys):
    out = tmp_path / "g.json"
    rc = G.main(["--engine", "independent", "--limit", "1", "--restorer", "none", "--rater", "none",
                 "--classifier", "none", "--reference", "--no-ssim", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["independent"]
    ref = res["reference"]  # the classical restorer given the true type
    assert ref["n_images"] == 14 and set(ref["per_type"]) == set(ID.TYPES)
    assert ref["clean_psnr_db"] == 100.0  # 'clear' is the identity
    assert ref["per_type"]["hazy"]["gain_db"] > 1.0  # the dark channel prior removes haze
    assert "reference (classical given the true type)" in capsys.readouterr().out


def test_randomised_engine_is_ours_randomised(tmp_path, capsys):
    from vlmir.degradations import degrade

    img = P.photo_image("lion", 48)
    seed = G.case_seed("lion", "snowy")
    rnd = G.degrade_with("randomised", img, "snowy", 2, seed)
    np.testing.assert_array_equal(rnd, degrade(img, "snowy", 2, seed=seed, randomise=True)[0])
    assert not np.array_equal(rnd, G.degrade_with("ours", img, "snowy", 2, seed))
    # --encoder-weights builds the embedded classifier on that folder (here: the shipped one, copied)
    import shutil

    from vlmir.models.embedded import ENCODER_DIR, RESTORER_DIR

    enc, net = tmp_path / "enc", tmp_path / "net"
    shutil.copytree(ENCODER_DIR, enc)
    shutil.copytree(RESTORER_DIR, net)
    out = tmp_path / "g.json"
    assert G.main(["--engine", "randomised", "--limit", "1", "--restorer", "embedded", "--rater", "none",
                   "--no-reference", "--no-ssim", "--encoder-weights", str(enc), "--restorer-weights", str(net),
                   "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res) == ["randomised"] and res["randomised"]["classifier"]["n_images"] == 14
    # the same weights from other folders give the registry models' numbers
    same = G.evaluate("embedded", "embedded-classifier", None, engine="randomised", limit=1, with_ssim=False)
    assert res["randomised"]["restorer"]["mean_gain_db"] == pytest.approx(same["restorer"]["mean_gain_db"], abs=1e-6)
    assert res["randomised"]["classifier"]["top1"] == same["classifier"]["top1"]


# -- add-on ablation (benchmarks/addons.py) ----------------------------------------------------------------------

def test_addon_rule_on_hand_cases():
    from benchmarks.addons import loss_of_switching_off as loss

    assert loss("classifier", {"top1": 0.80}, {"top1": 0.78}) == (pytest.approx(0.02), True)
    assert loss("classifier", {"top1": 0.80}, {"top1": 0.795})[1] is False
    assert loss("classifier", {"top1": 0.80}, {"top1": 0.85}) == (pytest.approx(-0.05), False)  # off is better
    r = {"mean_gain_db": 3.0, "worst_image_gain_db": -1.0}
    assert loss("restorer", r, {"mean_gain_db": 2.99, "worst_image_gain_db": -1.0})[1] is False
    assert loss("restorer", r, {"mean_gain_db": 2.94, "worst_image_gain_db": -1.0})[1] is True
    assert loss("restorer", r, {"mean_gain_db": 3.1, "worst_image_gain_db": -1.4})[1] is True  # the worst image
    # the rater's Spearman is better when more negative: off at -0.70 against -0.75 shipped loses 0.05
    assert loss("rater", {"spearman": -0.75}, {"spearman": -0.70}) == (pytest.approx(0.05), True)
    assert loss("rater", {"spearman": -0.75}, {"spearman": -0.755})[1] is False


def test_addon_switches_change_the_shipped_models():
    """Each switch really changes its model: the output changes where the add-on acts."""
    import torch

    from benchmarks.addons import VARIANTS, build
    from vlmir.degradations import degrade
    from vlmir.io import from_numpy

    torch.manual_seed(0)
    img = _test_image(128)
    blurred = from_numpy(degrade(img, "motion-blurry", 3, seed=1)[0])
    switches = {f"{part}/{name}": fn for part, vs in VARIANTS.items() for name, fn in vs if fn is not None}
    assert set(switches) == {"classifier/no view_head", "restorer/no deblur", "restorer/no flip_ensemble",
                             "restorer/view-head types", "restorer/no deblur, no flip_ensemble"}
    shipped = build("classifier", None).classify(blurred)
    plain = build("classifier", switches["classifier/no view_head"]).classify(blurred)
    assert max(abs(shipped[k] - plain[k]) for k in shipped) > 1e-4
    restorer = build("restorer", None)
    assert restorer.types == "views"  # the shipped restorer decides from the plain mean of views
    y = restorer.restore(blurred)
    for name in ("no deblur", "no flip_ensemble", "no deblur, no flip_ensemble"):
        y_off = build("restorer", switches[f"restorer/{name}"]).restore(blurred)
        assert float((y - y_off).abs().max()) > 1e-4, name
    other = build("restorer", switches["restorer/view-head types"])
    p_views, p_head = restorer.type_probabilities(blurred), other.type_probabilities(blurred)
    assert max(abs(p_views[k] - p_head[k]) for k in p_views) > 1e-4


# -- rater-guarded restoration (benchmarks/restorer_guard.py) ----------------------------------------------------

def test_guard_choice_and_policy_metrics_on_hand_cases():
    from benchmarks.restorer_guard import choose, policies, policy_metrics, verdict

    s = {"input": 3.0, "restored": 2.8, "second": 3.4}
    assert choose(s, ("restored",), 0.0) == "restored"
    assert choose(s, ("input", "restored"), 0.1) == "input" and choose(s, ("input", "restored"), 0.2) == "restored"
    assert choose(s, ("input", "restored", "second"), 0.5) == "second"
    assert choose(s, ("input", "restored", "second"), 0.6) == "restored"  # not enough above restored
    assert choose({"input": 2.0, "restored": 2.0, "second": 2.0}, ("input", "restored", "second"), 0.0) == "restored"
    assert set(policies()) >= {"plain", "guard-input@0", "guard-all@0.25"}
    rows = [  # a wrong prior (-5 dB) that the rater sees, and a good restore that it rates lower than the input
        {"photo": "a", "type": "snowy", "severity": 2, "psnr_in": 20.0, "psnr_input": 20.0, "psnr_restored": 15.0,
         "psnr_second": 23.0, "r_input": 3.0, "r_restored": 2.0, "r_second": 3.5},
        {"photo": "a", "type": "hazy", "severity": 2, "psnr_in": 20.0, "psnr_input": 20.0, "psnr_restored": 26.0,
         "psnr_second": 21.0, "r_input": 3.2, "r_restored": 3.0, "r_second": 2.0},
        {"photo": "a", "type": "clear", "severity": 0, "psnr_in": 100.0, "psnr_input": 100.0,
         "psnr_restored": 50.0, "psnr_second": 40.0, "r_input": 4.0, "r_restored": 4.5, "r_second": 4.0}]
    plain = policy_metrics(rows, ("restored",), 0.0)
    assert plain["mean_gain_db"] == pytest.approx(0.5) and plain["worst_image_gain_db"] == pytest.approx(-5.0)
    assert plain["clean_psnr_min_db"] == pytest.approx(50.0)
    g = policy_metrics(rows, ("input", "restored", "second"), 0.1)
    assert g["kept"] == {"input": 1, "restored": 1, "second": 1}  # second on snowy, input on hazy (3.2 > 3.1)
    assert g["mean_gain_db"] == pytest.approx((3.0 + 0.0) / 2) and g["worst_image_gain_db"] == pytest.approx(0.0)
    res = {e: {"plain": plain, "guard-all@0.1": g} for e in ("randomised", "ours")}
    assert verdict(res) == {"passing": ["guard-all@0.1"], "chosen": "guard-all@0.1"}
    worse = dict(g, mean_gain_db=plain["mean_gain_db"] - 0.2)  # more than 0.1 dB lower on randomised
    assert verdict({"randomised": {"plain": plain, "g": worse}, "ours": {"plain": plain, "g": g}})["chosen"] is None


# -- wrong-type stress test (benchmarks/restorer_wrong_prior.py) -------------------------------------------------

class _PriorEcho:
    """A restorer stand-in: blind it returns the clean photo (a perfect restore); with a forced prior type it
    returns the input unchanged, except that the ``hazy`` prior halves the image (a wrong prior that hurts)."""

    def __init__(self, clean):
        self.clean = clean

    def restore(self, x, prior_type=None):
        import torch

        if prior_type is None:
            for img in self.clean.values():
                if tuple(img.shape[:2]) == tuple(x.shape[-2:]):
                    return torch.from_numpy(img).permute(2, 0, 1)[None]
        return x * 0.5 if prior_type == "hazy" else x


def test_wrong_prior_scores_and_rule_on_a_hand_case():
    from benchmarks.restorer_wrong_prior import score, verdict

    clean, cases = G.build_cases("ours", ["astronaut"], severities=(2,), short_side=48,
                                 types=("noisy", "hazy"))
    s = score(_PriorEcho(clean), clean, cases, types=("noisy", "hazy"))
    assert s["blind"]["clean_psnr_min_db"] == 100.0 and s["blind"]["worst_image_gain_db"] > 0
    # the only wrong priors: hazy for the noisy image (halved: below its input), noisy for the hazy one (identity)
    assert s["wrong"]["images"] == 2 and s["wrong"]["worst_image"]["prior"] == "hazy"
    assert s["wrong"]["worst_image_gain_db"] < -3.0
    assert s["wrong"]["clean_psnr_min_db"] < 15.0  # a clean photo halved by the hazy prior
    pp = s["wrong"]["per_prior"]
    assert set(pp) == {"noisy", "hazy"} and pp["hazy"]["images"] == pp["noisy"]["images"] == 1
    assert pp["hazy"]["worst_image_gain_db"] == s["wrong"]["worst_image_gain_db"] < pp["noisy"]["mean_gain_db"]
    assert abs(pp["noisy"]["mean_gain_db"]) < 1e-6  # the noisy prior echoes the hazy image: no change
    ship = {e: s for e in ("randomised", "ours")}
    better = {"blind": dict(s["blind"]), "wrong": dict(s["wrong"], worst_image_gain_db=-1.0)}
    v = verdict(ship, {"randomised": better, "ours": s})
    assert v["passes"] and v["wrong_worst_rise_db"]["ours"] == 0.0
    costly = {"blind": dict(s["blind"], mean_gain_db=s["blind"]["mean_gain_db"] - 0.2), "wrong": better["wrong"]}
    v = verdict(ship, {"randomised": costly, "ours": better})
    assert not v["passes"] and v["checks"] == {"wrong_worst_rises": True, "blind_mean_kept": False,
                                               "blind_worst_kept": True, "clean_kept": True}
