"""method_comparison/: every config is one self-contained recipe the library loads, the table is made from the
result files alone (failures shown like successes), and the library does not depend on the folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eagle_align.train import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "method_comparison"
CONFIGS = sorted((FOLDER / "configs").glob("*.yaml"))
DEMO_RECIPE = REPO / "eagle_align" / "recipes" / "train" / "tiny_synthetic_cpu.yaml"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"method_comparison_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_configs_and_the_experiments_are_there():
    names = {path.stem for path in CONFIGS}
    assert {"default", "sft", "paper"} <= names
    assert len(names) >= 38  # the three references and the 35 experiments moved from recipes/experiments
    assert not (REPO / "eagle_align" / "recipes" / "experiments").exists()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_is_self_contained(config):
    assert "base" not in (yaml.safe_load(config.read_text()) or {})
    parsed = parse_config(load_config(config))  # every key known and every value of the right type
    assert parsed[0].model_name_or_path and parsed[1].train_data


def test_reference_configs_are_the_demo_recipe():
    demo = load_config(DEMO_RECIPE)
    assert load_config(FOLDER / "configs" / "default.yaml") == demo
    sft = load_config(FOLDER / "configs" / "sft.yaml")
    assert sft == {**demo, "alignment": False}
    paper = load_config(FOLDER / "configs" / "paper.yaml")
    assert paper == {**demo, "preset": "paper"}


def test_experiments_are_the_demo_recipe_plus_their_own_keys():
    demo = load_config(DEMO_RECIPE)
    for path in CONFIGS:
        if path.stem in ("default", "sft", "paper"):
            continue
        config = load_config(path)
        # Of the demo's own keys, only the schedule may differ (a row keeps the steps it was measured with).
        assert {k for k, v in demo.items() if config.get(k) != v} <= {"align_start_step", "max_steps"}, path.name
        assert config != demo, f"{path.name} changes nothing"


def test_the_library_does_not_import_method_comparison():
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "eagle_align").rglob("*.py")
                 if "import method_comparison" in path.read_text() or "from method_comparison" in path.read_text()]
    assert not offenders


def test_runner_names_an_unknown_config_and_records_versions():
    run = _script("run")
    assert run.config_file("default") == FOLDER / "configs" / "default.yaml"
    with pytest.raises(SystemExit, match="no config 'nope': choose from .*default"):
        run.config_file("nope")
    versions = run.package_versions()
    assert {"torch", "transformers", "peft", "accelerate", "eagle_align"} <= set(versions)
    assert versions["eagle_align"]


def _result(config: str, seed: int, figures: dict | None, status: str = "ok", **extra) -> dict:
    return {"config": config, "seed": seed, "status": status, "quick": False, "figures": figures,
            "training_seconds": 301.5 if figures else None, "steps": 600 if figures else None,
            "versions": {"eagle_align": "0.1.0"}, **extra}


def test_tables_are_made_from_the_result_files_alone(tmp_path):
    tables = _script("make_tables")
    results = tmp_path / "results"
    rows = [
        _result("default", 0, {"iid_click_pct": 100.0, "shifted_click_pct": 87.5, "point_game_pct": 81.25,
                               "deviation_terms": 12}),
        _result("default", 1, {"iid_click_pct": 100.0, "shifted_click_pct": 100.0, "point_game_pct": 100.0,
                               "deviation_terms": 7}),
        _result("default", 2, None, status="failed", error="RuntimeError: loss is nan\nat step 310"),
        _result("sft", 0, {"iid_click_pct": 100.0, "shifted_click_pct": 0.0, "point_game_pct": 0.0,
                           "deviation_terms": None}),
        _result("regions_32", 0, {"iid_click_pct": 50.0, "shifted_click_pct": 25.0, "point_game_pct": None,
                                  "deviation_terms": 3}, quick=True),
    ]
    for row in rows:
        path = results / row["config"] / f"seed{row['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))
    (results / "broken").mkdir()
    (results / "broken" / "seed0.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\ntext\n\n{tables.START}\nold table\n{tables.END}\n\nafter\n")

    assert tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\ntext\n\n") and text.endswith(f"{tables.END}\n\nafter\n")
    assert "old table" not in text
    lines = text.splitlines()
    # Reference rows first (sft, default), then the experiments; every seed on its own row.
    configs = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "seed" not in line
               and "seeds" not in line]
    assert configs[:4] == ["sft", "default", "default", "default"]
    assert "| default | 0 | ok | 100.0 | 87.5 | 81.2 | 12 | 301.5 | 600 | 0.1.0 |" in lines
    assert "| default | 2 | **failed**: RuntimeError: loss is nan at step 310 | – | – | – | – | – | – | 0.1.0 |" in lines
    assert any(line.startswith("| broken | 0 | **failed**: unreadable result file") for line in lines)
    assert "| regions_32 | 0 | ok (quick) | 50.0 | 25.0 | – | 3 |" in text
    # Means: successful full-length seeds only; the failed seed is counted as run, the quick run not at all.
    assert "| default | 0, 1 (2 / 3) | 100.0 ± 0.0 | 93.8 ± 8.8 | 90.6 ± 13.3 |" in lines
    assert not any(line.startswith("| regions_32 | 0 (") for line in lines)
    assert tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    # The project README's small table: the reference configs' full-length runs, per seed, failures as rows.
    project = tmp_path / "PROJECT.md"
    project.write_text(f"# eagle-align\n\n{tables.PROJECT_START}\n{tables.PROJECT_END}\n")
    assert tables.main(["--results", str(results), "--readme", str(readme), "--project-readme", str(project)]) == 0
    table = [line for line in project.read_text().splitlines() if line.startswith("| ")]
    assert table[1:] == ["| SFT | 0 | 100.0 | 0.0 | 0.0 |", "| prior-aligned (default) | 0 | 100.0 | 87.5 | 81.2 |",
                         "| prior-aligned (default) | 1 | 100.0 | 100.0 | 100.0 |",
                         "| prior-aligned (default) | 2 | failed: RuntimeError: loss is nan at step 310 | | |"]


def test_the_committed_table_matches_the_committed_results():
    tables = _script("make_tables")
    assert tables.main(["--check"]) == 0, "run python method_comparison/make_tables.py"


@pytest.mark.slow
def test_runner_quick_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(FOLDER / "run.py"), "--configs", "default", "sft", "--seeds", "0", "--quick",
           "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name, aligned in (("default", True), ("sft", False)):
        row = json.loads((tmp_path / "results" / name / "seed0.json").read_text())
        assert row["status"] == "ok" and row["seed"] == 0 and row["quick"] is True
        assert row["config_file"] == f"method_comparison/configs/{name}.yaml"
        assert row["trained_config"]["alignment"] is aligned and row["trained_config"]["seed"] == 0
        assert row["steps"] == 60 and any(fields.get("max_steps") == 60 for fields in row["resolved_config"].values())
        assert set(row["versions"]) >= {"torch", "transformers", "peft", "accelerate", "eagle_align"}
        assert all(0 <= row["figures"][key] <= 100 for key in ("iid_click_pct", "shifted_click_pct"))
        assert row["training_seconds"] > 0 and "--quick" in row["command"]
        assert (row["figures"]["deviation_terms"] is None) == (not aligned)
