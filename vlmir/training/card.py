"""Model cards for the embedded weights, written from the run's config, training log values and validation metrics.

``python -m vlmir.training.card assets/weights/embedded-encoder --kind encoder --validation val.json`` writes
``MODEL_CARD.md`` next to the weights: what the model is, the data, the exact command, steps, wall time, the
held-out validation numbers (from :mod:`vlmir.training.evaluate`) and the limits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmir.models.image_stats import N_BASIC_STATS, N_IMAGE_STATS
from vlmir.training.data import HELDOUT_PHOTOS, TRAIN_PHOTOS

_WHAT = {
    "encoder": ("embedded-encoder / embedded-classifier",
                "A tiny degradation-aware CLIP in the DA-CLIP design (`vlmir/models/encoder.py`): open_clip "
                "ModifiedResNet content tower + a controller tower of the same config (its stage outputs added to "
                "the content tower through zero-initialised 1x1 convs; its attention pool is the degradation "
                "embedding) + a 2-layer open_clip text tower over the degradation names. Classification = "
                "softmax(s * cos(degradation embedding, text embedding of each name)) over DA-CLIP's ten names "
                "plus `clear`, with s the learned CLIP temperature, averaged over up to nine 128 px crops.{stats}{view}"),
    "restorer": ("embedded (restorer)",
                 "A NAFNet-style U-Net (`vlmir/models/restorer.py`) on a pixel-unshuffled input, FiLM-conditioned "
                 "on the frozen embedded encoder's content and degradation embeddings, predicting a residual{gate}. "
                 "One feed-forward pass (no diffusion); `steps`/`seed` are ignored."
                 "{prior}{deblur}"),
    "rater": ("embedded-rater",
              "A 2-layer MLP (`vlmir/models/rater.py`) on the frozen embedded encoder's features (normalised "
              "content and degradation embeddings, softmax over the names, pooled controller features) giving "
              "probabilities over WResVLM's visibility levels excellent/good/fair/poor/bad and r = sum_i i p_i."
              "{stats}{calib}"),
}

_VIEW = (" An image's type is then read by a linear view head (`view_head: true`, "
         "`vlmir/training/view_head.py`): the view-averaged logits plus W z + b, with z the standardised mean, max "
         "and min over the views of the logits and statistics{holes} and the mean and max of the normalised "
         "degradation embeddings; it is fitted after the towers, on whole training images at the inference "
         "geometry.")
_HOLES = (" and of 3 hole statistics (`view_head_holes: true`, `hole_statistics`: the share of pure-white pixels, "
          "the share of hard-edged pixels next to them and the mean luminance drop across their border; a hole "
          "cut by the engine has a hard edge, a clipped highlight fades out)")
_DEBLUR = (" After the network, a fitted isotropic linear deblurring filter (`deblur_radius: {radius}`, "
           "`RingFilter`: one weight per ring of radius 0-{radius} px, fitted by least squares on the network's "
           "outputs for motion-blurred training photos, `vlmir/training/deblur.py`) is blended in with the "
           "encoder's probability of `motion-blurry`: y + p (ring(y) - y).")
_CALIB = (" The score is then calibrated per degradation type (`type_calibration: {k}`, `TypeCalibration`, "
          "`vlmir/training/rater_calibration.py`): r' = sum_t q_t (a_t + b_t r{term}), with q the encoder's type "
          "probabilities (its view head) and a, b{weights} fitted by least squares on whole training photos against "
          "r* = 5 - 4c/5; the level probabilities are tilted to the calibrated mean (the distribution closest to "
          "the head's in KL divergence with mean r'), so r = sum_i i p_i still holds.{severity}")
_SEVERITY = (" s is the view-averaged score of the head's severity network (`model.severity`, `SeverityNet`, "
             "`vlmir/models/severity.py`): a small CNN trained for severity alone on the engine's crops "
             "(`vlmir/training/train_severity.py`){scale}.")
_SEVERITY_SCALE = (", reading also log2(side / 256) for the short side the views are cut at (`scale: true`; the "
                   "engine sizes blur, streaks, drops and flakes to the image), with crops of raindrops, shadows and "
                   "holes alone trained toward their window's severity times their share of the window's change")
_GATE = {True: " scaled by a gate g(e) in (0, 1) predicted from the embeddings: y = x + g(e) R(x, e)",
         False: ": y = x + R(x, e), with no scalar gate (`gate: false`): the FiLM-conditioned residual itself "
                "returns a clean input unchanged"}
_PRIOR = (" With a prior (`prior: true`, this model), the network also takes the classical baseline's restoration "
          "p of the image for the type the encoder predicts (`vlmir/models/classical.py`) and a per-pixel trust "
          "mask m it predicts: {formula}. It learns where the classical result helps and where to ignore it (a "
          "wrong predicted type, a method that hurts); {clean} still returns a clean input unchanged.")
_RATER_TARGETS = {
    "engine": "the degradation engine's visibility level (5 - min(c, 4) for combined severity c), label-smoothed",
    "severity": "r* = 5 - 4c/5 for combined severity c (clean 5 ... severity 5 1.0) as a two-hot distribution "
                "over the neighbouring levels with mean r*, so severities 4 and 5 stay apart",
}
_BASIC_LIST = ("brightness percentiles, dark channel, saturation, sharpness, noise estimate, JPEG blockiness, "
               "clipped and flat areas")
_STRUCTURE_LIST = ("small bright and dark structures, streak coherence, high-pass skew and kurtosis, large dark "
                   "regions, edge softness, detail-free patches, chromaticity-brightness coupling, white flat holes")


def _stats_list(stats_set: str) -> str:
    """What the statistics of ``stats_set`` (``DegradationAwareEncoder(stats_set=...)``) are, for the cards."""
    if stats_set == "basic":
        return f"{N_BASIC_STATS} classical no-reference statistics (`vlmir/models/image_stats.py`: {_BASIC_LIST})"
    return (f"{N_IMAGE_STATS} classical no-reference statistics (`vlmir/models/image_stats.py`): {N_BASIC_STATS} "
            f"basic ones ({_BASIC_LIST}) and {N_IMAGE_STATS - N_BASIC_STATS} structure ones ({_STRUCTURE_LIST})")


_STATS = {
    "encoder": (" The degradation embedding also receives a zero-initialised MLP projection of {stats_list}, "
                "computed on each crop."),
    "rater": " The head also takes the encoder's {stats_list}, averaged over the same views as the encoder.",
}


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _validation_md(kind: str, val: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if kind == "encoder" and "classifier" in val:
        c = val["classifier"]
        lines += [f"- top-1 over the ten types (severities 2-3, seeds 0-1, {c['n_images'] - 6} images): "
                  f"**{100 * c['top1_ten_types']:.1f}%**; with `clear` (6 clean images): {100 * c['top1_with_clear']:.1f}%; "
                  f"clean images called `clear`: {100 * c['clear_accuracy']:.1f}%", "",
                  "| type | top-1 |", "|---|---|"]
        lines += [f"| {t} | {100 * a:.0f}% |" for t, a in c["per_type"].items()]
    if kind == "restorer" and "restorer" in val:
        r = val["restorer"]
        lines += [f"- mean PSNR gain over the degraded input (severities 2-3, seed 0, {r['n_images']} images): "
                  f"**{r['mean_gain_db']:+.2f} dB**; worst type {r['min_gain_db']:+.2f} dB",
                  f"- clean inputs: PSNR of the output to the input {r['clean_psnr_db']:.1f} dB (min "
                  f"{r['clean_psnr_min_db']:.1f} dB)", "",
                  "| type | PSNR in | PSNR out | gain |", "|---|---|---|---|"]
        lines += [f"| {t} | {v['psnr_in']:.2f} | {v['psnr_out']:.2f} | {v['gain']:+.2f} |" for t, v in r["per_type"].items()]
    if kind == "restorer" and "restorer" in val and "classical_given_type" in val:
        r, c = val["restorer"]["per_type"], val["classical_given_type"]["per_type"]
        wins = sum(r[t]["gain"] > c[t]["gain"] for t in r)
        given = val.get("restorer_given_type")  # the prior restorer given the true type, when measured
        columns = {"this model (blind)" if given else "this model": r}
        if given:
            columns["this model given the true type"] = given["per_type"]
        columns["classical (true type)"] = c
        lines += ["", f"Against the classical baseline given the true type (`--task classical`): mean gain "
                  f"{val['restorer']['mean_gain_db']:+.2f} dB vs {val['classical_given_type']['mean_gain_db']:+.2f} dB; "
                  f"above it on {wins} of {len(r)} types.", "",
                  "| type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += ["| " + " | ".join([t] + [f"{col[t]['gain']:+.2f}" for col in columns.values()]) + " |" for t in r]
        if given:
            lines += ["", f"Given the true type (the prior from that type's classical method; `restore(x, "
                      f"degradation=...)`), the mean gain is {given['mean_gain_db']:+.2f} dB."]
    if kind == "rater" and "rater" in val:
        q = val["rater"]
        lines += [f"- Spearman(severity, r) over clean + the ten types at severities 1-5 ({q['n_images']} images): "
                  f"**{q['spearman_severity_r']:.3f}**; on clean + severities 2-3 only: "
                  f"{q['spearman_severity_r_clean_2_3']:.3f}",
                  f"- clean image scored above the same photo's severity-4 image: "
                  f"**{100 * q['clean_above_severity4']:.1f}%** of (photo, type) pairs",
                  "- mean r by severity (0 = clean): "
                  + ", ".join(f"{k}: {v:.2f}" for k, v in q["mean_r_by_severity"].items())]
    return lines


def _steps_line(cfg: dict[str, Any], train: dict[str, Any]) -> str:
    steps = train.get("steps", cfg.get("steps"))
    if "view_head" in cfg and not steps:  # a run that fits the view head alone, on frozen towers
        vh = cfg["view_head"]
        return (f"- no optimiser steps: the towers are frozen and this run fits the view head alone on "
                f"{train.get('view_head_images', '?')} whole training images (L-BFGS), with the L2 weight "
                f"{_fmt(train.get('view_head_l2', '?'))} chosen among {vh.get('l2')} by {vh.get('folds', 6)}-fold "
                f"cross-validation grouped by photo: balanced top-1 (ten types and `clear`) "
                f"{_fmt(train.get('view_head_cv_balanced', '?'))} against "
                f"{_fmt(train.get('view_head_cv_balanced_plain', '?'))} for the plain mean of views; seed "
                f"{cfg.get('seed', 0)}, {cfg.get('threads', 1)} torch thread(s)")
    if "calibration" in cfg and not steps:  # a run that fits the rater's type calibration (after a severity stage)
        sev = cfg.get("severity")
        first = ("the head's MLP is that of `init_from` ({src}), unchanged; this run trains the severity network "
                 "({n} steps at batch {bs} on a bank of {bank} crop pairs) and then fits the per-type calibration"
                 .format(src=cfg.get("init_from"), n=train.get("severity_steps", "?"), bs=sev.get("batch_size", 48),
                         bank=train.get("severity_bank", "?"))
                 if sev is not None else
                 f"the head is that of `init_from` ({cfg.get('init_from')}), unchanged; this run fits the per-type "
                 "calibration alone")
        return (f"- no optimiser steps: {first} on {train.get('calibration_images', '?')} whole "
                f"training photos, with the ridge {_fmt(train.get('calibration_ridge', '?'))} chosen among "
                f"{cfg['calibration'].get('ridge')} by {cfg['calibration'].get('folds', 6)}-fold cross-validation "
                f"grouped by photo: Spearman(severity, r) {_fmt(train.get('calibration_cv_spearman', '?'))} out of "
                f"fold against {_fmt(train.get('calibration_spearman_before', '?'))} uncalibrated; seed "
                f"{cfg.get('seed', 0)}")
    if "deblur" in cfg and not steps:  # a run that fits the deblurring stage alone on a trained network
        return (f"- no optimiser steps: the network is that of `init_from` ({cfg.get('init_from')}), unchanged; "
                f"this run fits the deblurring filter alone on {train.get('deblur_images', '?')} motion-blurred "
                f"whole training photos (PSNR of the network's outputs on them "
                f"{_fmt(train.get('deblur_psnr_before', '?'))} dB, filtered "
                f"{_fmt(train.get('deblur_psnr_after', '?'))} dB); seed {cfg.get('seed', 0)}")
    return (f"- steps: {steps}, batch size {cfg.get('batch_size')}, AdamW lr {cfg.get('lr')} (cosine, warm-up "
            f"{cfg.get('warmup')}), seed {cfg.get('seed', 0)}, {cfg.get('threads', 1)} torch thread(s)")


def write_card(weights_dir: str | Path, kind: str, validation: dict[str, Any], *, command: str,
               notes: str = "") -> Path:
    """Write ``weights_dir/MODEL_CARD.md`` from its ``train_config.json``/``metrics.json`` and ``validation``."""
    d = Path(weights_dir)
    cfg = json.loads((d / "train_config.json").read_text())
    train = json.loads((d / "metrics.json").read_text()).get("train", {}) if (d / "metrics.json").is_file() else {}
    size_mb = (d / "model.safetensors").stat().st_size / 1e6
    title, what = _WHAT[kind]
    model = cfg.get("model", {})
    stats_set = model.get("stats_set", "basic")
    if kind == "rater" and cfg.get("encoder"):  # the head takes whatever set its encoder computes
        enc_cfg = Path(cfg["encoder"]) / "config.json"
        if enc_cfg.is_file():
            stats_set = json.loads(enc_cfg.read_text()).get("stats_set", "basic")
    stats = _STATS.get(kind, "").format(stats_list=_stats_list(stats_set)) if model.get("image_stats") else ""
    gated = bool(model.get("gate", True))
    formula = "y = x + g(e) (m (p - x) + R(x, p, e))" if gated else "y = x + m (p - x) + R(x, p, e)"
    prior = _PRIOR.format(formula=formula, clean="the gate" if gated else "the conditioning")
    view = _VIEW.format(holes=_HOLES if model.get("view_head_holes") else "") if model.get("view_head") else ""
    deblur = _DEBLUR.format(radius=model["deblur_radius"]) if model.get("deblur_radius") else ""
    sev = model.get("severity") is not None
    calib = (_CALIB.format(k=model["type_calibration"], term=" + c_t s" if sev else "", weights=", c" if sev else "",
                           severity=_SEVERITY.format(
                               scale=_SEVERITY_SCALE if model["severity"].get("scale") else "") if sev else "")
             if model.get("type_calibration") else "")
    what = what.format(prior=prior if model.get("prior") else "", stats=stats, gate=_GATE[gated], view=view,
                       deblur=deblur, calib=calib)
    dtype = cfg.get("export_dtype", "float32")
    n_photos = len(cfg.get("data", {}).get("photos", TRAIN_PHOTOS))
    lines = [
        f"# {title}", "",
        f"**Trained from scratch on {n_photos} photos (plus procedural shapes) on two shared CPU cores; not a "
        "general-purpose model.** It is a small default that runs offline in about a second; for real "
        "restoration use DA-CLIP or another pretrained model from the registry.", "",
        "## Model", "", what, "",
        f"- weights: `model.safetensors` ({size_mb:.1f} MB, {dtype}), constructor config: `config.json`, "
        "training config: `train_config.json`",
        "- licence: Apache-2.0 (our code and training); training photos from scikit-image, scikit-learn and "
        "matplotlib sample data (see their licences)", "",
        "## Training data", "",
        f"- photos: {', '.join(cfg.get('data', {}).get('photos', TRAIN_PHOTOS))} (scikit-image `skimage/data`, "
        "scikit-learn `china`/`flower`); grey ones tinted; random rescale, window, flip, colour jitter; "
        f"{int(100 * cfg.get('data', {}).get('p_procedural', 0.1))}% procedural content",
        "- degraded on the fly by `vlmir.degradations` (ten DA-CLIP types, severities 1-5, "
        f"{int(100 * cfg.get('data', {}).get('p_mixture', 0.2))}% two-type mixtures, "
        f"{int(100 * cfg.get('data', {}).get('p_clean', 0.12))}% clean)",
        f"- held out (never seen in training): {', '.join(HELDOUT_PHOTOS)}", "",
        "## Training run", "",
        f"- command: `{command}`",
        _steps_line(cfg, train),
        f"- wall time: {train.get('wall_s', float('nan')) / 60:.1f} min on a shared 2-core CPU",
        "- last logged training values: " + ", ".join(f"{k} {_fmt(v)}" for k, v in train.items()
                                                    if k not in ("steps", "wall_s")),
    ]
    if kind == "rater":
        lines.append("- target: " + _RATER_TARGETS.get(cfg.get("target", "engine"), str(cfg.get("target"))))
    if notes:
        lines += ["", notes]
    lines += ["", "## Validation (held-out photos)", "",
              "Protocol (`python -m vlmir.training.evaluate`): the held-out photos resized to short side 256, "
              "degraded with each type at fixed seeds.", ""]
    lines += _validation_md(kind, validation) or ["(not measured)"]
    lines += ["", "## Limits", "",
              "- Tiny capacity and minutes of CPU training: it knows the synthetic degradations of "
              "`vlmir.degradations` on a few photos, not real-world photos; numbers on other data will be lower.",
              "- Types are recognised from 128 px crops at native resolution; very large or very small images are "
              "rescaled for the encoder only.", ""]
    path = d / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlmir.training.card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights_dir")
    ap.add_argument("--kind", required=True, choices=tuple(_WHAT))
    ap.add_argument("--validation", required=True, help="metrics JSON from vlmir.training.evaluate")
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--notes", default="")
    args = ap.parse_args(argv)
    val = json.loads(Path(args.validation).read_text())
    print(write_card(args.weights_dir, args.kind, val, command=args.command, notes=args.notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
