"""`eagle-align demo --quick` end to end for both families: report files, keys, and numbers that match the eval
outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eagle_align.cli import build_parser
from eagle_align.commands.demo import _benchmark_of
from eagle_align.demo import (
    FAMILIES,
    MODELS,
    RECIPE,
    SIZES,
    SPLITS,
    format_summary,
    format_table,
    run_demo,
    run_overrides,
    summarize_seeds,
    training_config,
)
from eagle_align.families import get_family
from eagle_align.train import load_config


def _report(sft: tuple, aligned: tuple, seed: int = 0) -> dict:
    keys = ("iid_click_accuracy", "shifted_click_accuracy", "point_game")
    return {"seed": seed, "sft": dict(zip(keys, sft)), "aligned": dict(zip(keys, aligned))}


def test_table_and_seed_summary():
    reports = [_report((1.0, 0.5, 0.25), (1.0, 0.75, None)), _report((0.5, 0.25, 0.75), (1.0, 1.0, 0.5), seed=1)]
    table = format_table(reports[0])
    assert "shifted click %" in table and "  50.0" in table and "  75.0" in table and "–" in table
    summary = summarize_seeds(reports)
    assert summary["sft"]["iid_click_accuracy"] == pytest.approx((0.75, 0.3535534), rel=1e-6)
    assert summary["aligned"]["shifted_click_accuracy"] == pytest.approx((0.875, 0.1767767), rel=1e-6)
    assert summary["aligned"]["point_game"] == (0.5, 0.0)  # a missing value is left out, not counted as 0
    assert summary["seeds"] == [0, 1]
    assert "75.0 ± 35.4" in format_summary(summary) and "87.5 ± 17.7" in format_summary(summary)


def test_full_runs_follow_the_family_schedule_and_quick_runs_do_not():
    assert run_overrides("qwen2_vl", quick=False) == {"max_steps": 600}  # past the SFT loss plateau
    assert run_overrides("qwen3_vl", quick=False) == {}  # the recipe's own steps
    assert load_config(RECIPE)["max_steps"] == 600
    quick = run_overrides("qwen2_vl", quick=True)
    assert quick["max_steps"] == 60 and quick == SIZES["quick"]["overrides"] and quick is not SIZES["quick"]["overrides"]


def test_a_method_comparison_config_is_a_demo_recipe(tmp_path):
    """`eagle-align demo --recipe method_comparison/configs/NAME.yaml` runs that config for both models: the demo
    sets paths, seed, pixels and alignment, the config everything else (here its 300 steps)."""
    recipe = Path(__file__).resolve().parents[1] / "method_comparison" / "configs" / "steps_300.yaml"
    args = build_parser("demo").parse_args(["demo", "--recipe", str(recipe)])
    assert args.recipe == str(recipe)
    for aligned in (False, True):
        config = training_config(Path(args.recipe), tmp_path / "ckpt", tmp_path / "train.jsonl", tmp_path / "out",
                                 seed=4, alignment=aligned, overrides=run_overrides("qwen3_vl", quick=False))
        assert config["max_steps"] == 300 and config["seed"] == 4 and config["alignment"] is aligned
        assert config["model_name_or_path"] == str(tmp_path / "ckpt")


def test_unknown_benchmark_setting_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="benchmark setting.s. empty_slots unknown; choose from cue_colour"):
        run_demo(tmp_path / "demo", benchmark={"empty_slots": 0.5})
    assert not (tmp_path / "demo").exists()


def test_benchmark_option_reads_key_value_pairs_and_names_a_bad_one(tmp_path, capsys):
    from eagle_align.cli import main

    args = build_parser("demo").parse_args(["demo", "--benchmark", "cue_size=16", "unmarked_train_fraction=0.4"])
    assert _benchmark_of(args) == {"cue_size": 16, "unmarked_train_fraction": 0.4}
    assert main(["demo", "--out", str(tmp_path / "d"), "--benchmark", "cue=16"]) == 2
    assert "--benchmark 'cue=16': expected KEY=VALUE with KEY one of cue_colour" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# One family's run replaces benchmark settings from the command line (reruns of earlier data-card tables).
BENCHMARK_FLAGS = {"qwen3_vl": {"empty_train_slot_fraction": 0.5, "decoy_train_fraction": 0.25},
                   "qwen2_5_vl": {"distractor_colour": "red", "distractor_shape": "circle"}}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_quick_demo_end_to_end(tmp_path, family):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    flags = BENCHMARK_FLAGS.get(family, {})
    bench = {**FAMILIES[family], **flags}
    cmd = [sys.executable, "-m", "eagle_align.cli", "demo", "--quick", "--seed", "3", "--family", family,
           "--out", str(out), *(["--benchmark", *[f"{key}={value}" for key, value in flags.items()]] if flags else [])]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"building a tiny {family} checkpoint" in result.stdout
    assert "5/5 evaluating" in result.stdout and "shifted click %" in result.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and report["quick"] is True and report["minutes"] > 0
    assert report["family"] == family
    assert report["settings"]["cue_colour"] == FAMILIES[family]["cue_colour"]
    shifted_record = json.loads((out / "data" / "shifted.jsonl").read_text().splitlines()[0])
    cue = shifted_record["extra"]["cue_bbox"]
    assert cue[2] - cue[0] == (FAMILIES[family]["cue_size"] or 16)  # 16: the preset's own size at difficulty 1
    box = shifted_record["bbox"]
    assert box[2] - box[0] == (FAMILIES[family]["square_size"] or 64)
    assert (report["settings"]["distractor_shape"], report["settings"]["distractor_colour"]) == (
        bench["distractor_shape"], bench["distractor_colour"])
    # Unmarked targets (only the cue marks them) are a training-data setting: every test screen is marked.
    marked = {split: [json.loads(line)["extra"]["target_marked"]
                      for line in (out / "data" / f"{split}.jsonl").read_text().splitlines()]
              for split in ("train", "test", "shifted")}
    assert all(marked["test"]) and all(marked["shifted"])
    assert report["settings"]["unmarked_train_fraction"] == bench["unmarked_train_fraction"]
    assert (not all(marked["train"])) == (bench["unmarked_train_fraction"] > 0)
    # So are empty distractor slots (elimination no longer finds the target): test screens keep every square.
    empty = {split: [json.loads(line)["extra"]["empty_slots"]
                     for line in (out / "data" / f"{split}.jsonl").read_text().splitlines()]
             for split in ("train", "test", "shifted")}
    assert not any(empty["test"]) and not any(empty["shifted"])
    assert report["settings"]["empty_train_slot_fraction"] == bench["empty_train_slot_fraction"]
    assert any(empty["train"]) == (bench["empty_train_slot_fraction"] > 0)
    decoys = {split: [json.loads(line)["extra"]["decoy_slot"] is not None
                      for line in (out / "data" / f"{split}.jsonl").read_text().splitlines()]
              for split in ("train", "test", "shifted")}
    assert not any(decoys["test"]) and not any(decoys["shifted"])
    assert report["settings"]["decoy_train_fraction"] == bench["decoy_train_fraction"]
    assert any(decoys["train"]) == (bench["decoy_train_fraction"] > 0)
    assert (out / "report.md").read_text().startswith("# eagle-align demo")
    assert (out / "attribution_comparison.png").stat().st_size > 10_000
    for name in MODELS:
        for split in SPLITS:
            metrics = json.loads((out / "eval" / name / split / "metrics.json").read_text())
            assert report[name][f"{split}_click_accuracy"] == metrics["click_accuracy"]
            predictions = (out / "eval" / name / split / "predictions.jsonl").read_text().splitlines()
            assert len(predictions) == report["settings"][f"{split}_examples"]
        shifted = json.loads((out / "eval" / name / "shifted" / "metrics.json").read_text())
        assert report[name]["point_game"] == shifted["attribution"]["overall"]["point_game"]
        assert shifted["attribution"]["settings"]["baseline"] == "background"
    assert report["settings"]["point_game_attribution"] == shifted["attribution"]["settings"]
    assert "64-region grid, baseline `background`" in (out / "report.md").read_text()
    # Same seed, data order and step count: both runs' losses are identical until alignment starts.
    start = report["settings"]["overrides"]["align_start_step"]
    sft_curve, aligned_curve = report["sft"]["loss_curve"], report["aligned"]["loss_curve"]
    assert [step for step, _ in sft_curve] == [step for step, _ in aligned_curve]
    before = [i for i, (step, _) in enumerate(sft_curve) if step <= start]
    assert before and all(sft_curve[i] == aligned_curve[i] for i in before)
    assert sft_curve[-1][0] == aligned_curve[-1][0] == report["settings"]["max_steps"]
    configs = {name: yaml.safe_load((out / name / "eagle_align_config.yaml").read_text()) for name in MODELS}
    differing = {k for k in configs["sft"].keys() | configs["aligned"].keys() if configs["sft"].get(k) != configs["aligned"].get(k)}
    assert differing == {"alignment", "output_dir"} and configs["aligned"]["alignment"] is True
    assert configs["aligned"]["action_format"] == get_family(family).default_action_format
    assert configs["aligned"]["min_pixels"] == configs["aligned"]["max_pixels"] == FAMILIES[family]["pixels"]
    assert report["aligned"]["alignment"]["alignment_steps"] > 0
    # Training time of each model's training loop, and what alignment costs on top of SFT.
    minutes = {name: report[name]["training_minutes"] for name in MODELS}
    assert 0 < minutes["sft"] < report["minutes"] and 0 < minutes["aligned"] < report["minutes"]
    assert report["training_overhead_ratio"] == pytest.approx(minutes["aligned"] / minutes["sft"])
    assert f"training_overhead_ratio {report['training_overhead_ratio']:.2f}" in (out / "report.md").read_text()
    assert Path(report["sft"]["eval_dirs"]["iid"]).is_dir()
