"""The README's Python quickstart, run as written (tiny model, small screens): the folder it saves is what
`eagle-align train` writes, and `eval --adapter` on it uses the coordinate space it was trained in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eagle_align.cli import main
from eagle_align.data import generate_synthetic

README = Path(__file__).resolve().parent.parent / "README.md"
TRAINED_MAX_PIXELS = 65536  # below the tiny checkpoint's own processor limit (102400), so the record decides


def quickstart() -> str:
    """The first Python block after the README's Quickstart heading."""
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def saved(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    data = generate_synthetic(root / "data", 4, seed=0, preset="gui", layout="web", split="train")
    code = quickstart()
    for old, new in (('"Qwen/Qwen2.5-VL-3B-Instruct"', repr(tiny_checkpoints["qwen2_5_vl"])),
                     ('dtype="bfloat16"', 'dtype="float32"'), ("max_pixels=1003520", f"max_pixels={TRAINED_MAX_PIXELS}"),
                     ('"data/train.jsonl"', repr(str(data))), ('output_dir="out"', f"output_dir={str(root / 'out')!r}"),
                     ("per_device_train_batch_size=2", "per_device_train_batch_size=2, max_steps=2, align_every=1, "
                      "use_cpu=True, report_to='none', save_strategy='no'")):
        assert old in code, f"the README quickstart no longer contains {old}"
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return root, namespace["trainer"], data


def test_quickstart_saves_what_the_train_command_saves(saved):
    root, trainer, _ = saved
    out = root / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "eagle_align.json", "README.md",
                 "alignment_state.json", "processor_config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "eagle_align.json").read_text())
    assert (record["family"], record["action_format"], record["max_pixels"]) == ("qwen2_5_vl", "qwen2_5_vl",
                                                                                 TRAINED_MAX_PIXELS)
    assert record["finetuning"] == "lora"
    assert record["attribution"] == trainer.args.attribution_settings().to_dict()
    card = (out / "README.md").read_text()
    assert "65536" in card and "lambda_deviation" in card  # eagle-align's card, not PEFT's blank template
    assert json.loads((out / "alignment_state.json").read_text())["alignment_steps"] == 2


def test_eval_on_the_quickstart_adapter_uses_its_pixel_limits(saved, tiny_checkpoints, capsys):
    root, _, data = saved
    code = main(["eval", "--model", tiny_checkpoints["qwen2_5_vl"], "--adapter", str(root / "out"), "--data",
                 str(data), "--limit", "2", "--max-new-tokens", "8", "--no-plots", "--out", str(root / "eval")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["coordinate_space"] == "recorded"
    assert metrics["settings"]["max_pixels"] == TRAINED_MAX_PIXELS
