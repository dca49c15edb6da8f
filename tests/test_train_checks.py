"""What a training run does with settings that used to be silent no-ops or noise: eval data without an
eval_strategy is evaluated once at the end, and the console carries no library notices that concern nothing
the run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from eagle_align.data import generate_synthetic

CLI = Path(sys.executable).parent / "eagle-align"


def test_eval_data_without_eval_strategy_is_evaluated_once_and_the_console_is_quiet(tiny_checkpoints, tmp_path):
    data = generate_synthetic(tmp_path / "synth", 4, seed=0)
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model_name_or_path=tiny_checkpoints["qwen2_vl"], dtype="float32", train_data=str(data),
        eval_data=str(data), alignment=False, output_dir=str(out), max_steps=1, per_device_train_batch_size=2,
        save_strategy="no", report_to="none", dataloader_num_workers=0)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EAGLE_ALIGN_DEBUG", None)
    result = subprocess.run([str(CLI), "train", str(recipe)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluated the eval data once, after training (eval_loss " in result.stdout
    assert "set eval_strategy: steps and eval_steps" in result.stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("eval_loss" in entry for entry in history) == 1
    console = result.stdout + result.stderr
    assert "Setting accelerator to CPU" not in console  # DeepSpeed, imported by libraries, unused here
    assert "super().__init__(loader)" not in console and "pin_memory" not in console  # no accelerator: no pinning
