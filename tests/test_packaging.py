"""The wheel: it carries the recipes, finds them by name, and `eagle-align demo --quick` runs from it outside the
checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from eagle_align.errors import UsageError
from eagle_align.recipes import RECIPES_DIR, copy_recipe, list_recipes, recipe_path

REPO = Path(__file__).resolve().parents[1]


def test_recipes_resolve_by_name_and_copy_with_their_deepspeed_json(tmp_path):
    assert recipe_path("qwen2_5_vl_3b_lora") == RECIPES_DIR / "train" / "qwen2_5_vl_3b_lora.yaml"
    assert recipe_path("train/tiny_synthetic_cpu.yaml", "train") == RECIPES_DIR / "train" / "tiny_synthetic_cpu.yaml"
    assert set(list_recipes("accelerate")) >= {"single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"}
    own = tmp_path / "mine.yaml"
    own.write_text("model_name_or_path: x\n")
    assert recipe_path(own) == own  # a path wins over a name
    with pytest.raises(UsageError, match="no recipe file or shipped recipe named 'qwen9'"):
        recipe_path("qwen9")
    config, json_file = copy_recipe("deepspeed_zero3", tmp_path / "cfg")
    assert json_file.read_text() == (RECIPES_DIR / "deepspeed" / "zero3.json").read_text()
    assert f"deepspeed_config_file: {json_file.resolve()}" in config.read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True)
    return next(out.glob("eagle_align-*.whl"))


@pytest.mark.slow
def test_wheel_contains_every_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("train", "accelerate", "deepspeed"):
        for path in list_recipes(kind).values():
            assert f"eagle_align/recipes/{kind}/{path.name}" in names
    assert "eagle_align/recipes/README.md" in names


@pytest.mark.slow
def test_demo_quick_runs_from_a_wheel_install_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}  # the wheel's package before the checkout's
    where = subprocess.run([sys.executable, "-c", "import eagle_align; print(eagle_align.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site))
    run = subprocess.run([sys.executable, "-m", "eagle_align.cli", "demo", "--quick", "--out", str(work / "demo")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "demo" / "report.md").is_file()
