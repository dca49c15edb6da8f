"""method_comparison/: every config is one self-contained recipe the library loads, the LoRA rows differ only in
their method, the evaluation seeds run only on frozen settings, the tables are made from the result files alone
(failures and missing rows shown), the placebo reproduces SFT exactly, and the library does not depend on the
folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eagle_align import demo
from eagle_align.train import load_config, parse_config, valid_keys

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "method_comparison"
CONFIGS = sorted((FOLDER / "configs").glob("*.yaml"))
DEMO_RECIPE = REPO / "eagle_align" / "recipes" / "train" / "tiny_synthetic_cpu.yaml"
LORA_ROWS = ("sft_lora", "box_crop_lora", "default_lora", "backoff_lora", "paper_lora", "placebo_lora")
GRPO_ROWS = ("grpo_task_lora", "grpo_aligned_lora")
LORA_CANDIDATES = ("lambda_8_lora",)  # development candidates for the default method, not suite rows
CEILING_ROWS = ("cue_free_lora",)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"method_comparison_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through the module's entry
    spec.loader.exec_module(module)
    return module


run_script = _script("run")


def test_the_reference_configs_and_the_experiments_are_there():
    names = {path.stem for path in CONFIGS}
    assert {"default", "sft", "paper", *LORA_ROWS} <= names
    assert len(names) >= 43  # the 3 from-scratch references, 35 experiments and the 5 LoRA rows
    assert not (REPO / "eagle_align" / "recipes" / "experiments").exists()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_is_self_contained(config):
    assert "base" not in (yaml.safe_load(config.read_text()) or {})
    row = run_script.read_row_config(str(config))
    parsed = parse_config(load_config(None, row.recipe))  # every key known and every value of the right type
    assert parsed[0].model_name_or_path and parsed[1].train_data


def test_reference_configs_are_the_demo_recipe():
    demo_recipe = load_config(DEMO_RECIPE)
    assert load_config(FOLDER / "configs" / "default.yaml") == demo_recipe
    sft = load_config(FOLDER / "configs" / "sft.yaml")
    assert sft == {**demo_recipe, "alignment": False}
    paper = load_config(FOLDER / "configs" / "paper.yaml")
    assert paper == {**demo_recipe, "preset": "paper"}


def test_experiments_are_the_demo_recipe_plus_their_own_keys():
    demo_recipe = load_config(DEMO_RECIPE)
    for path in CONFIGS:
        if path.stem in ("default", "sft", "paper", *LORA_ROWS, *GRPO_ROWS, *LORA_CANDIDATES, *CEILING_ROWS):
            continue
        config = load_config(path)
        # Of the demo's own keys, only the schedule may differ (a row keeps the steps it was measured with).
        assert {k for k, v in demo_recipe.items() if config.get(k) != v} <= {"align_start_step", "max_steps"}, path.name
        assert config != demo_recipe, f"{path.name} changes nothing"


def test_lora_candidates_are_default_lora_plus_their_own_keys():
    default = run_script.read_row_config("default_lora")
    for name in LORA_CANDIDATES:
        candidate = run_script.read_row_config(name)
        assert candidate.benchmark == default.benchmark and candidate.recipe != default.recipe
        assert {k for k, v in default.recipe.items() if candidate.recipe.get(k) != v} <= {"lambda_deviation"}


def test_the_cue_free_ceiling_trains_sft_lora_on_the_same_screens_without_a_cue(tmp_path):
    sft, ceiling = run_script.read_row_config("sft_lora"), run_script.read_row_config("cue_free_lora")
    assert ceiling.recipe == sft.recipe and ceiling.benchmark == {**sft.benchmark, "train_cue_fraction": 0.0}
    splits = run_script.shortcut_splits(tmp_path, 0, "qwen3_vl", "adjacent", True, ceiling.benchmark)
    with_cue = run_script.shortcut_splits(tmp_path, 0, "qwen3_vl", "adjacent", True, sft.benchmark)
    records = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in splits.items()}
    assert not any(r["extra"]["cue_bbox"] for r in records["train"] + records["iid"])
    assert all(r["extra"]["cue_on"] == "distractor" for r in records["shifted"])
    assert all(json.loads(line)["extra"]["cue_on"] == "target" for line in with_cue["train"].read_text().splitlines())
    assert all("teal" in r["instruction"] for r in records["train"])
    with pytest.raises(SystemExit, match="benchmark setting.s. cue_fraction unknown; choose from .*train_cue_fraction"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(run_script.config_file("sft_lora").read_text().replace(
            "benchmark: {", "benchmark: {cue_fraction: 0.5, "))
        run_script.read_row_config(str(bad))


def test_lora_rows_differ_from_sft_lora_only_in_their_method():
    rows = {name: run_script.read_row_config(name) for name in LORA_ROWS}
    sft = rows["sft_lora"]
    assert sft.lora and sft.recipe["alignment"] is False and sft.benchmark  # the data every LoRA row shares
    # The fine-tuning target is one the base was not trained to click, and every training target shows it.
    assert sft.benchmark["target_colour"] != "red" and not sft.benchmark.get("unmarked_train_fraction")
    assert all(row.benchmark == sft.benchmark and row.trainer == "sft" for row in rows.values())
    assert rows["default_lora"].recipe == {**sft.recipe, "alignment": True}
    assert rows["backoff_lora"].recipe == {**rows["default_lora"].recipe, "max_align_every": 40}
    assert rows["paper_lora"].recipe == {**sft.recipe, "alignment": True, "preset": "paper"}
    assert rows["placebo_lora"].recipe == {**rows["default_lora"].recipe, "lambda_deviation": 0.0}
    assert rows["box_crop_lora"].recipe == {
        **sft.recipe, "augment": {"kind": "box_crop", "probability": 0.5, "scale": [0.5, 1.5]}}


def test_grpo_rows_start_from_sft_and_differ_only_in_alignment():
    task, aligned = (run_script.read_row_config(name) for name in GRPO_ROWS)
    sft = run_script.read_row_config("sft_lora")
    assert task.trainer == aligned.trainer == "grpo" and task.init_from == aligned.init_from == "sft_lora"
    assert task.benchmark == aligned.benchmark == sft.benchmark  # the data SFT took the cue on
    assert task.recipe["alignment"] is False and aligned.recipe == {**task.recipe, "alignment": True}
    suite = [row.config for row in run_script.load_suite().rows]
    assert suite.index("sft_lora") < suite.index("grpo_task_lora") < suite.index("grpo_aligned_lora")


def test_the_suite_names_its_rows_seeds_and_kinds():
    suite = run_script.load_suite()
    configs = [row.config for row in suite.rows]
    assert set(LORA_ROWS) | set(GRPO_ROWS) | set(CEILING_ROWS) | {"sft", "default"} == set(configs)
    assert all(row.sft in configs for row in suite.rows)
    assert suite.seeds == {"dev": [0, 1, 2], "eval": [10, 11, 12, 13, 14]}
    assert suite.shortcuts[0] == "adjacent" and "position_prior" in suite.shortcuts
    for name in configs:
        run_script.config_file(name)  # exists
    run_script.check_kinds(suite.shortcuts)  # every kind one the library draws
    with pytest.raises(SystemExit, match="shortcut kind.s. titel_bar unknown; eagle_align draws adjacent"):
        run_script.check_kinds(["adjacent", "titel_bar"])


def test_runner_names_an_unknown_config_and_records_versions():
    assert run_script.config_file("default") == FOLDER / "configs" / "default.yaml"
    with pytest.raises(SystemExit, match="no config 'nope': choose from .*default"):
        run_script.config_file("nope")
    versions = run_script.package_versions()
    assert {"torch", "transformers", "peft", "accelerate", "eagle_align"} <= set(versions)
    assert versions["eagle_align"]


def test_rows_the_library_cannot_run_yet_are_named(tmp_path, monkeypatch):
    sft = run_script.read_row_config("sft_lora")
    assert run_script.missing_features(sft, "adjacent") == []
    monkeypatch.setattr(run_script, "shortcut_keyword_available", lambda: False)
    assert "title_bar" in " ".join(run_script.missing_features(sft, "title_bar"))
    grpo = tmp_path / "grpo_from_sft.yaml"
    grpo.write_text(yaml.safe_dump({**yaml.safe_load((FOLDER / "configs" / "sft_lora.yaml").read_text()),
                                    "trainer": "grpo", "init_from": "sft_lora"}))
    row = run_script.read_row_config(str(grpo))
    # trainer is the library's recipe key (passed on); init_from and benchmark are the runner's (removed).
    assert row.trainer == "grpo" and row.recipe["trainer"] == "grpo" and row.init_from == "sft_lora"
    assert "init_from" not in row.recipe and "benchmark" not in row.recipe
    assert run_script.missing_features(row, "adjacent") == ([] if importlib.util.find_spec("trl") else
                                                           ['trainer grpo needs TRL (pip install "eagle-align[grpo]")'])
    row.recipe["trainer"] = "ppo"
    assert run_script.missing_features(row, "adjacent") == ["trainer 'ppo' (this eagle_align trains with sft, grpo)"]
    box_crop = run_script.read_row_config("box_crop_lora")
    assert bool(run_script.missing_features(box_crop, "adjacent")) == ("augment" not in valid_keys())


def test_init_from_must_name_a_row_run_before_it(tmp_path):
    grpo = tmp_path / "grpo_from_sft.yaml"
    grpo.write_text("init_from: sft_lora\n")
    rows = {"grpo_from_sft": run_script.read_row_config(str(grpo)), "sft_lora": run_script.read_row_config("sft_lora")}
    with pytest.raises(SystemExit, match="init_from 'sft_lora' must be a config run before it"):
        run_script.check_init_order(rows)
    run_script.check_init_order(dict(reversed(rows.items())))


def test_evaluation_seeds_run_only_on_frozen_settings(tmp_path, monkeypatch):
    frozen = tmp_path / "FROZEN"
    monkeypatch.setattr(run_script, "FROZEN", frozen)
    suite = run_script.load_suite()
    with pytest.raises(SystemExit, match="FROZEN is missing: choose settings on the development seeds"):
        run_script.main(["--suite", "eval", "--results", str(tmp_path / "results")])
    settings = run_script.write_frozen(suite)
    assert run_script.check_frozen(suite) == settings
    lines = frozen.read_text().splitlines()
    assert any(line.endswith("  method_comparison/configs/placebo_lora.yaml") for line in lines)
    assert any(line.endswith("  method_comparison/pretrain_base.yaml") for line in lines)
    # A config edited after freezing: the evaluation suite refuses and names it.
    frozen.write_text("\n".join("0" * 64 + line[64:] if line.endswith("sft_lora.yaml") else line
                                for line in lines) + "\n")
    with pytest.raises(SystemExit, match=r"settings changed since they were frozen \(method_comparison/configs/"
                                         r"sft_lora.yaml\)"):
        run_script.main(["--suite", "eval", "--results", str(tmp_path / "results")])
    # Evaluation seeds never run outside the frozen suite, and the suite runs as it is.
    with pytest.raises(SystemExit, match=r"seeds \[10\] are evaluation seeds"):
        run_script.main(["--configs", "sft_lora", "--seeds", "0", "10"])
    with pytest.raises(SystemExit, match="--suite eval runs the frozen suite as it is"):
        run_script.main(["--suite", "eval", "--quick"])


def test_evaluation_suite_runs_once_per_freeze(tmp_path, monkeypatch):
    monkeypatch.setattr(run_script, "FROZEN", tmp_path / "FROZEN")
    monkeypatch.setattr(run_script, "missing_features", lambda row, kind: [])
    suite = run_script.load_suite()
    settings = run_script.write_frozen(suite)
    results = tmp_path / "results"
    assert run_script.evaluation_plan(suite, results) == settings
    done = results / "adjacent" / "sft_lora" / "seed12.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"frozen": "an earlier freeze"}))
    assert run_script.evaluation_plan(suite, results) == settings  # a changed freeze reruns every row
    done.write_text(json.dumps({"frozen": settings}))
    assert run_script.evaluation_plan(suite, results) == settings  # the rest of the suite still runs, once
    for row in suite.rows:
        for kind in suite.shortcuts:
            for seed in suite.seeds["eval"]:
                path = results / kind / row.config / f"seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"frozen": settings}))
    with pytest.raises(SystemExit, match="already ran on these frozen settings"):
        run_script.evaluation_plan(suite, results)


def test_a_part_of_the_suite_runs_its_rows_and_kinds_and_a_later_full_run_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(run_script, "FROZEN", tmp_path / "FROZEN")
    monkeypatch.setattr(run_script, "missing_features", lambda row, kind: [])
    suite = run_script.load_suite()
    grpo = suite.part("grpo")
    assert [row.config for row in grpo.rows] == ["sft_lora", *GRPO_ROWS] and grpo.shortcuts == ["adjacent"]
    assert grpo.seeds == suite.seeds and grpo.base_seed == suite.base_seed == 0
    with pytest.raises(SystemExit, match="no part 'nope'"):
        suite.part("nope")
    with pytest.raises(SystemExit, match="use it with --suite"):
        run_script.main(["--part", "grpo"])
    settings = run_script.write_frozen(suite)
    results = tmp_path / "results"
    ran = []
    monkeypatch.setattr(run_script, "run", lambda configs, seeds, kinds, **kw: ran.append((configs, seeds, kinds))
                        or [])
    assert run_script.main(["--suite", "eval", "--part", "grpo", "--results", str(results)]) == 0
    assert ran == [(["sft_lora", *GRPO_ROWS], [10, 11, 12, 13, 14], ["adjacent"])]
    kept = results / "adjacent" / "sft_lora" / "seed10.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"frozen": settings}))
    assert run_script.ran_on(kept, settings) and not run_script.ran_on(kept, "another freeze")


def test_a_row_that_names_its_kinds_runs_and_is_planned_on_those_only(tmp_path, monkeypatch):
    suite_file = tmp_path / "suite.yaml"
    raw = yaml.safe_load(run_script.SUITE.read_text())
    raw["shortcuts"] = ["adjacent", "count"]
    raw["rows"] = [{"config": "sft_lora"}, {"config": "sft", "shortcuts": ["adjacent"]}]
    suite_file.write_text(yaml.safe_dump(raw))
    suite = run_script.load_suite(suite_file)
    assert [row.shortcuts for row in suite.rows] == [None, ("adjacent",)]
    assert run_script.runs_on(suite, "sft_lora", "count") and not run_script.runs_on(suite, "sft", "count")
    assert run_script.runs_on(suite, "paper", "count")  # a config outside the suite runs where it is asked to
    monkeypatch.setattr(run_script, "FROZEN", tmp_path / "FROZEN")
    monkeypatch.setattr(run_script, "SUITE", suite_file)
    monkeypatch.setattr(run_script, "missing_features", lambda row, kind: [])
    settings = run_script.write_frozen(suite)
    results = tmp_path / "results"
    for kind, config in (("adjacent", "sft_lora"), ("count", "sft_lora"), ("adjacent", "sft")):
        for seed in suite.seeds["eval"]:
            path = results / kind / config / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"frozen": settings}))
    with pytest.raises(SystemExit, match="already ran on these frozen settings"):  # nothing planned for sft on count
        run_script.evaluation_plan(suite, results)
    trained = []
    monkeypatch.setattr(run_script, "run_one", lambda row, start, seed, family, quick, splits, out: trained.append(
        (row.name, out.parent.name)) or ({"figures": {}}, run_script.Trained(out, out, row.lora)))
    monkeypatch.setattr(run_script, "shortcut_splits", lambda *args: {})
    monkeypatch.setattr(run_script, "pretrained_base", lambda *args: {
        "model_dir": str(tmp_path), "key_hash": "", "clean_click_pct": {}, "training_seconds": 0})
    monkeypatch.setattr("eagle_align.families.build_tiny_checkpoint", lambda *args, **kwargs: tmp_path)
    run_script.run(["sft_lora", "sft"], [0], ["adjacent", "count"], results=tmp_path / "dev", work=tmp_path / "w",
                   suite_name="dev", suite=suite)
    assert trained == [("sft_lora", "adjacent"), ("sft", "adjacent"), ("sft_lora", "count")]


def _result(config: str, seed: int, figures: dict | None, status: str = "ok", kind: str = "adjacent",
            seconds: float | None = 100.0, **extra) -> dict:
    return {"config": config, "kind": kind, "seed": seed, "status": status, "quick": False, "figures": figures,
            "training_seconds": seconds if figures else None, "steps": 300 if figures else None,
            "versions": {"eagle_align": "0.1.0"}, **extra}


def _figures(iid: float, shifted: float, point_game: float | None, terms: int | None = None) -> dict:
    return {"iid_click_pct": iid, "shifted_click_pct": shifted, "point_game_pct": point_game,
            "deviation_terms": terms}


def test_tables_are_made_from_the_result_files_alone(tmp_path):
    tables = _script("make_tables")
    results = tmp_path / "results"
    rows = [
        _result("sft_lora", 0, _figures(100.0, 37.5, 40.0), reference_sft="sft_lora"),
        _result("sft_lora", 1, _figures(100.0, 50.0, 50.0), seconds=200.0, reference_sft="sft_lora"),
        _result("default_lora", 0, _figures(100.0, 87.5, 81.25, 12), seconds=150.0, reference_sft="sft_lora"),
        _result("default_lora", 1, _figures(100.0, 100.0, 100.0, 7), seconds=500.0, reference_sft="sft_lora"),
        _result("default_lora", 2, None, status="failed", error="RuntimeError: loss is nan\nat step 310",
                reference_sft="sft_lora"),
        _result("default_lora", 10, _figures(100.0, 96.0, 90.0, 5), suite="eval", reference_sft="sft_lora"),
        _result("sft_lora", 10, _figures(100.0, 20.0, 30.0), suite="eval", seconds=50.0, reference_sft="sft_lora"),
        _result("regions_32", 0, _figures(50.0, 25.0, None, 3), quick=True),
        _result("sft_lora", 0, _figures(99.0, 45.0, 40.0), kind="title_bar", reference_sft="sft_lora"),
    ]
    for row in rows:
        path = results / row["kind"] / row["config"] / f"seed{row['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))
    (results / "adjacent" / "broken").mkdir()
    (results / "adjacent" / "broken" / "seed0.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\ntext\n\n{tables.START}\nold table\n{tables.END}\n\nafter\n")

    args = ["--results", str(results), "--readme", str(readme)]
    assert tables.main([*args, "--check"]) == 1
    assert tables.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\ntext\n\n") and text.endswith(f"{tables.END}\n\nafter\n")
    assert "old table" not in text
    adjacent = text[text.index("### Shortcut: adjacent"):text.index("### Shortcut: title_bar")]
    lines = adjacent.splitlines()
    # Suite rows in suite order, each seed on its own row, the ratio to SFT's seconds of the same seed.
    configs = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and not line.startswith("| config")]
    assert configs[:5] == ["sft_lora", "sft_lora", "sft_lora", "cue_free_lora", "box_crop_lora"]
    assert "| sft_lora | 0 | ok | 100.0 | 37.5 | 40.0 | 100.0 | 1.00 | – | 300 | 0.1.0 |" in lines
    assert "| default_lora | 1 | ok | 100.0 | 100.0 | 100.0 | 500.0 | 2.50 | 7 | 300 | 0.1.0 |" in lines
    assert ("| default_lora | 2 | **failed**: RuntimeError: loss is nan at step 310 | – | – | – | – | – | – | – "
            "| 0.1.0 |") in lines
    assert "| box_crop_lora | – | not run | – | – | – | – | – | – | – | – |" in lines
    assert any(line.startswith("| broken | 0 | **failed**: unreadable result file") for line in lines)
    assert "| regions_32 | 0 | ok (quick) | 50.0 | 25.0 | – |" in adjacent
    # Means per phase: successful full-length seeds only; the failed seed counted as run, the quick run not at all.
    assert "| default_lora | dev: 0, 1 | 2 / 3 | 100.0 ± 0.0 | 93.8 ± 8.8 | 90.6 ± 13.3 | 325.0 | 2.00 |" in lines
    assert "| default_lora | eval: 10 | 1 / 1 | 100.0 ± 0.0 | 96.0 ± 0.0 | 90.0 ± 0.0 | 100.0 | 2.00 |" in lines
    assert not any(line.startswith("| regions_32 | dev") for line in lines)
    assert "### Shortcut: position_prior\n\nNot run yet." in text
    assert tables.main([*args, "--check"]) == 0
    # The project README's summary: evaluation means where they exist, else development means, per kind.
    project = tmp_path / "PROJECT.md"
    project.write_text(f"# eagle-align\n\n{tables.PROJECT_START}\n{tables.PROJECT_END}\n")
    assert tables.main([*args, "--project-readme", str(project)]) == 0
    table = [line for line in project.read_text().splitlines() if line.startswith("| ")]
    assert table == ["| method | seeds | adjacent | title_bar | × SFT time |",
                     "| SFT, LoRA | eval:10 | 100.0/20.0/30.0 | – | 1.0× |",
                     "| aligned, LoRA | eval:10 | 100.0/96.0/90.0 | – | 2.0× |"]


def test_the_evaluation_seeds_are_judged_by_the_pass_marks_fixed_before_they_ran():
    tables = _script("make_tables")
    suite = tables.load_suite()
    clicks = {"iid": "a", "shifted": "b"}
    eval_row = {"suite": "eval", "reference_sft": "sft_lora"}
    rows = [
        # adjacent, seed 10: the default gains 19.9 points (one short of 20) and keeps every other mark.
        _result("sft_lora", 10, _figures(100.0, 30.0, 20.0), seconds=100.0, evaluation={"clicks_sha256": clicks},
                **eval_row),
        _result("default_lora", 10, _figures(100.0, 49.9, 85.0), seconds=130.0, **eval_row),
        _result("box_crop_lora", 10, _figures(100.0, 60.0, 30.0), **eval_row),
        _result("placebo_lora", 10, _figures(100.0, 30.0, 20.0), evaluation={"clicks_sha256": clicks}, **eval_row),
        # adjacent, seed 11: every mark met; SFT at or above 80 % asks no gain, only no loss beyond 2 points.
        _result("sft_lora", 11, _figures(100.0, 90.0, 50.0), evaluation={"clicks_sha256": {**clicks, "iid": "c"}},
                **eval_row),
        _result("default_lora", 11, _figures(99.0, 88.3, 80.0), seconds=140.0, **eval_row),
        _result("placebo_lora", 11, _figures(100.0, 30.0, 20.0), evaluation={"clicks_sha256": clicks}, **eval_row),
        # position prior: no off-box evidence, so only "within 2 points of SFT" counts.
        _result("sft_lora", 10, _figures(100.0, 5.0, 10.0), kind="position_prior", **eval_row),
        _result("default_lora", 10, _figures(100.0, 8.0, 10.0), kind="position_prior", **eval_row),
        # a development run is not judged
        _result("default_lora", 0, _figures(100.0, 0.0, 0.0), **{**eval_row, "suite": "dev"}),
    ]
    text = tables.criteria_tables(rows, suite)
    lines = text.splitlines()
    assert "| adjacent | 10 | 100.0/30.0/20.0 | yes | 100.0/49.9/85.0 | gain +19.9 < +20 |" in lines
    assert "| adjacent | 11 | 100.0/90.0/50.0 | **no** | 99.0/88.3/80.0 | none |" in lines
    assert ("| position_prior | 10 | 100.0/5.0/10.0 | yes | 100.0/8.0/10.0 | shifted 8.0 not within 2 of SFT's 5.0 |") in lines
    assert not any(line.startswith("| adjacent | 0 |") for line in lines)
    summary = next(line for line in lines if line.startswith("| adjacent | 10,11 |"))
    cells = [cell.strip() for cell in summary.split("|")[1:-1]]
    # seeds meeting every per-seed mark; means of the default, box-crop and paper preset; the default's time ratio
    assert cells[2:7] == ["11", "69.1 (2)", "60.0 (1)", "–", "1.35"]
    # the placebo clicked as SFT on seed 10 (equal digests); seed 11's digests differ, whatever the figures say
    assert cells[7] == "10: same clicks as SFT; 11: **clicks differ from SFT's**"
    # over the seeds: the mean beats box-crop's and the time is within 1.5×, but the placebo differs
    assert cells[8] == "placebo differs from SFT"
    assert tables.kind_shortfalls("adjacent", [0.0, 10.0], [40.0, 50.0], 2.2, False) == [
        "mean 5.0 < box-crop's 45.0", "time 2.20× > 1.5×"]
    # without off-box evidence the method only has to do no harm: box-crop's mean is no mark there
    assert tables.kind_shortfalls("position_prior", [0.0], [40.0], 1.5, False) == []
    assert tables.shortfalls(rows[1], {"figures": _figures(100.0, 52.0, 0.0)}, "adjacent") == [
        "gain -2.1 < +20", "below SFT by 2.1"]
    assert tables.placebo_verdict({"figures": _figures(100.0, 30.0, 20.0)}, rows[0]) == (
        True, "same figures as SFT (clicks not recorded)")
    # The project README's summary says which seeds a kind covers where it has not run all of the row's.
    summary_rows = tables.project_table(rows, suite).splitlines()
    assert "| SFT, LoRA | eval:10,11 | 100.0/60.0/35.0 | 100.0/5.0/10.0 (seeds 10) | 1.0× |" in summary_rows


def test_the_clicks_digest_sees_answers_only(tmp_path):
    def predictions(name: str, answers: list[str], image: str) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": f"x{i}", "answer": answer, "image": image, "seconds": i * 0.1})
                                + "\n" for i, answer in enumerate(answers)))
        return path

    clicks = ['{"action": "click", "coordinate": [10, 20]}', '{"action": "click", "coordinate": [30, 40]}']
    first = run_script.clicks_digest(predictions("a.jsonl", clicks, "/one/image.png"))
    assert first == run_script.clicks_digest(predictions("b.jsonl", clicks, "/another/image.png"))
    moved = [clicks[0], '{"action": "click", "coordinate": [30, 41]}']
    assert first != run_script.clicks_digest(predictions("c.jsonl", moved, "/one/image.png"))


def test_the_committed_table_matches_the_committed_results():
    tables = _script("make_tables")
    assert tables.main(["--check"]) == 0, "run python method_comparison/make_tables.py"


def test_the_placebo_reproduces_sft_exactly(tmp_path, monkeypatch):
    """Alignment with lambda_deviation 0 attributes (alignment steps, attribution forwards) but adds nothing to
    the gradient: every click on every test screen equals SFT's, answer for answer. Quick base, tiny sizes."""
    monkeypatch.setitem(demo.SIZES, "quick", {
        "train": 64, "iid": 16, "shifted": 16, "attribution_samples": 0,
        "overrides": {"max_steps": 24, "align_start_step": 4, "align_every": 4, "max_aligned_per_step": 2,
                      "per_device_train_batch_size": 8}})
    results = tmp_path / "results"
    written = run_script.run(["sft_lora", "placebo_lora"], [0], ["adjacent"], quick=True, results=results,
                             work=tmp_path / "work")
    sft, placebo = (json.loads(path.read_text()) for path in written)
    assert sft["status"] == placebo["status"] == "ok", (sft.get("traceback"), placebo.get("traceback"))
    assert placebo["trained_config"]["alignment"] is True and placebo["trained_config"]["lambda_deviation"] == 0.0
    assert placebo["alignment_state"]["alignment_steps"] > 0
    assert placebo["alignment_state"]["selected"] > 0 and placebo["alignment_state"]["attribution_forwards"] > 0
    for split in ("iid", "shifted"):
        answers = [[json.loads(line)["answer"] for line in Path(row["evaluation"]["predictions"][split]).open()]
                   for row in (sft, placebo)]
        assert len(answers[0]) == 16 and answers[0] == answers[1], split
    assert sft["evaluation"]["clicks_sha256"] == placebo["evaluation"]["clicks_sha256"]
    assert sft["figures"]["iid_click_pct"] == placebo["figures"]["iid_click_pct"]


def test_the_library_does_not_import_method_comparison():
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "eagle_align").rglob("*.py")
                 if "import method_comparison" in path.read_text() or "from method_comparison" in path.read_text()]
    assert not offenders


@pytest.mark.slow
def test_runner_quick_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(FOLDER / "run.py"), "--configs", "default_lora", "sft", "--seeds", "0", "--quick",
           "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name, aligned, start in (("default_lora", True, "pretrained base"), ("sft", False, "random tiny")):
        row = json.loads((tmp_path / "results" / "adjacent" / name / "seed0.json").read_text())
        assert row["status"] == "ok" and row["seed"] == 0 and row["quick"] is True and row["kind"] == "adjacent"
        assert row["config_file"] == f"method_comparison/configs/{name}.yaml" and row["start"].startswith(start)
        assert row["trained_config"]["alignment"] is aligned and row["trained_config"]["seed"] == 0
        assert row["steps"] == 60 and any(fields.get("max_steps") == 60 for fields in row["resolved_config"].values())
        assert set(row["versions"]) >= {"torch", "transformers", "peft", "accelerate", "eagle_align"}
        assert row["code"]["git_commit"] and row["reference_sft"] == ("sft_lora" if aligned else "sft")
        assert all(0 <= row["figures"][key] <= 100 for key in ("iid_click_pct", "shifted_click_pct"))
        assert row["training_seconds"] > 0 and "--quick" in row["command"]
        assert (row["figures"]["deviation_terms"] is None) == (not aligned)
    base = json.loads((tmp_path / "work" / "base" / "qwen3_vl-seed0-quick" / "base.json").read_text())
    assert base["key"]["quick"] is True and 0 <= base["clean_click_pct"]["all"] <= 100
