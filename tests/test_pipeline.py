"""Staged configs (one config, one command per shipped model): merging, references, errors, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlmir.training.pipeline import expand_stages, run_pipeline

TINY_ENCODER = dict(embed_dim=32, image_size=64, vision_width=8, vision_head_width=16, text_width=16, text_heads=2,
                    text_layers=1, context_length=8, image_stats=True, stats_set="basic")
TINY_DATA = dict(crop=64, window=[64, 96], p_procedural=0.3)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _staged() -> dict:
    return {"kind": "encoder", "seed": 3, "batch_size": 4, "lr": 0.002, "warmup": 1, "threads": 1, "log_every": 1,
            "checkpoint_every": 2, "model": TINY_ENCODER, "data": TINY_DATA,
            "stages": [{"name": "towers", "steps": 2},
                       {"name": "stats", "steps": 1, "seed": 4, "init_from": "@towers", "init_skip": ["stats_proj"],
                        "train_only": ["stats_proj"], "model": {"stats_set": "full"},
                        "loss": {"content_weight": 0.0}}]}


def test_stages_merge_mappings_and_resolve_references(tmp_path):
    stages = expand_stages(_staged(), tmp_path)
    assert [n for n, _ in stages] == ["towers", "stats"]
    towers, stats = stages[0][1], stages[1][1]
    assert "stages" not in towers and towers["kind"] == "encoder" and towers["steps"] == 2 and towers["seed"] == 3
    assert stats["init_from"] == str(tmp_path / "towers" / "final") and stats["seed"] == 4
    # a mapping updates the top level's key by key: one model option changed, the rest kept
    assert stats["model"] == {**TINY_ENCODER, "stats_set": "full"} and towers["model"] == TINY_ENCODER
    assert stats["data"] == TINY_DATA and stats["loss"] == {"content_weight": 0.0} and "loss" not in towers


@pytest.mark.parametrize("stages, match", [
    ([], "non-empty"),
    (["towers"], "mapping"),
    ([{"steps": 1}], "name"),
    ([{"name": "1st"}], "name"),
    ([{"name": "a"}, {"name": "a"}], "repeated"),
    ([{"name": "final"}], "reserved"),
    ([{"name": "a", "kind": "rater"}], "kind"),
    ([{"name": "a", "init_from": "@b"}, {"name": "b"}], "not an earlier stage"),
])
def test_stage_errors_name_the_problem(tmp_path, stages, match):
    with pytest.raises(ValueError, match=match):
        expand_stages({"kind": "encoder", "stages": stages}, tmp_path)


def test_pipeline_trains_every_stage_exports_the_last_and_resume_skips_finished_ones(tmp_path):
    from safetensors.torch import load_file

    from vlmir.commands import main

    cfg_path = tmp_path / "encoder.json"
    cfg_path.write_text(json.dumps(_staged()))
    out, export = tmp_path / "run", tmp_path / "export"
    assert main(["train", "encoder", "--config", str(cfg_path), "--out", str(out), "--export", str(export),
                 "--no-progress"]) == 0
    towers = load_file(str(out / "towers" / "final" / "model.safetensors"))
    stats = load_file(str(out / "stats" / "final" / "model.safetensors"))
    # stage 2 started from stage 1 and trained only the statistics branch (now over the full statistics)
    assert towers["stats_proj.1.weight"].shape != stats["stats_proj.1.weight"].shape
    kept = [k for k in towers if not k.startswith("stats_proj")]
    assert kept and all(torch.equal(towers[k], stats[k]) for k in kept)
    last = (out / "stats" / "final" / "model.safetensors").read_bytes()
    for folder in (out / "final", export):
        assert (folder / "model.safetensors").read_bytes() == last
        assert json.loads((folder / "train_config.json").read_text())["stage"] == "stats"
    assert json.loads((out / "pipeline.json").read_text()) == _staged()
    assert json.loads((out / "stats" / "final" / "metrics.json").read_text())["train"]["steps"] == 1

    # --resume: both stages finished from these very configs, so neither trains again
    seen = []
    results = run_pipeline(_staged(), out, lambda *a, **k: seen.append(a) or {}, resume=True, log=lambda m: None)
    assert seen == [] and results == {"towers": {"skipped": True}, "stats": {"skipped": True}}
    # a changed stage config is not "finished": it (and only it) runs again
    changed = _staged()
    changed["stages"][1]["lr"] = 0.001
    results = run_pipeline(changed, out, lambda c, d, **k: seen.append(Path(d).name) or {"ran": True},
                           resume=True, log=lambda m: None)
    assert seen == ["stats"] and results["towers"] == {"skipped": True}


def test_steps_override_sets_training_stages_only(tmp_path):
    cfg = _staged()
    cfg["stages"].append({"name": "fit", "init_from": "@stats", "steps": 0})
    seen = {}

    def fake(c, d, **k):
        seen[c["stage"]] = c["steps"]
        final = Path(d) / "final"
        final.mkdir(parents=True)
        for name in ("model.safetensors", "train_config.json"):
            (final / name).write_text("{}")
        return {}

    run_pipeline(cfg, tmp_path, fake, steps=7, log=lambda m: None)
    assert seen == {"towers": 7, "stats": 7, "fit": 0}
    assert (tmp_path / "final" / "model.safetensors").is_file()
