"""Bad input on the command line: one line `eagle-align <command>: <message>`, exit status 2, no traceback.

None of these needs a model: options, recipes and data are checked before any weights load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_checks import fails_in_one_line as _fails

from eagle_align.cli import main
from eagle_align.data import DataError, generate_synthetic
from eagle_align.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "eagle-align"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Four synthetic training records (train.jsonl + images/)."""
    return generate_synthetic(tmp_path_factory.mktemp("synth"), 4, seed=0)


def _recipe(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys))
    return path




def test_train_misspelled_key_names_the_closest_key_without_listing_all(synth, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path="Qwen/Qwen2-VL-2B-Instruct", train_data=str(synth))
    err = _fails(["train", str(recipe), "--lerning_rate", "1e-3"], capsys, "unknown config key 'lerning_rate'",
                 "did you mean learning_rate")
    assert len(err) < 300  # not the ~200 valid keys


def test_train_missing_recipe_and_yaml_syntax_error_name_the_file(tmp_path, capsys):
    _fails(["train", str(tmp_path / "nowhere.yaml")], capsys, f"training config {tmp_path / 'nowhere.yaml'} does not exist")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_name_or_path: x\ntrain_data: [a, b\nmax_steps: 3\n")
    err = _fails(["train", str(broken)], capsys, f"{broken}:", "invalid YAML")
    assert "<unicode string>" not in err
    _fails(["train", str(_recipe(tmp_path / "ok.yaml", model_name_or_path="m", train_data="t")), "--lora_targets",
            "[a"], capsys, "--lora_targets '[a': not a YAML value")


def test_train_missing_local_model_fails_at_once(synth, tmp_path, capsys):
    for model in (str(tmp_path / "no-such-model"), "my-model", "outputs/run/checkpoint-5"):
        recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=model, train_data=str(synth), report_to="none",
                         output_dir=str(tmp_path / "out"))
        _fails(["train", str(recipe)], capsys, f"model {model}: no such folder", "namespace/name")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(adapter), train_data=str(synth), report_to="none",
                     output_dir=str(tmp_path / "out"))
    _fails(["train", str(recipe)], capsys, "has no config.json", "LoRA adapter")


def test_options_are_checked_before_any_model_loads(synth, tmp_path, capsys):
    # The model folder is empty: loading it would fail with another message, so these come first.
    empty = tmp_path / "empty-model"
    empty.mkdir()
    base = dict(model_name_or_path=str(empty), train_data=str(synth), report_to="none", output_dir=str(tmp_path / "o"))
    for key, value, words in (("action_format", "qwen4_vl", "action_format='qwen4_vl' is not registered"),
                              ("on_error", "ignore", "on_error='ignore'"),
                              ("finetuning", "qlora", "finetuning='qlora'"),
                              ("loss_variant", "quadratic", "loss_variant='quadratic'"),
                              ("click_eval", True, "click_eval: true needs eval_data"),
                              ("train_data", str(tmp_path / "nothing.jsonl"), "nothing.jsonl: no such file")):
        recipe = _recipe(tmp_path / "r.yaml", **{**base, key: value})
        _fails(["train", str(recipe)], capsys, words)
    _fails(["eval", "--model", str(empty), "--data", str(synth), "--out", str(tmp_path / "e"), "--action-format",
            "bogus"], capsys, "action_format='bogus' is not registered")
    _fails(["eval", "--model", str(empty), "--data", str(synth), "--out", str(tmp_path / "e"), "--batch-size", "0"],
           capsys, "--batch-size must be positive")


def test_eval_and_merge_missing_paths(tmp_path, capsys):
    _fails(["eval", "--model", "Qwen/Qwen2-VL-2B-Instruct", "--data", "/nonexistent", "--out", str(tmp_path)], capsys,
           "/nonexistent: no such file or directory")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    _fails(["merge", "--base", str(tmp_path / "base"), "--adapter", str(adapter), "--out", str(tmp_path / "m")],
           capsys, f"model {tmp_path / 'base'}: no such folder")
    # A folder with only a config: the family is known, and the missing adapter fails before any weights load.
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    missing = tmp_path / "no-adapter"
    _fails(["merge", "--base", str(tmp_path / "base"), "--adapter", str(missing), "--out", str(tmp_path / "m")],
           capsys, f"adapter {missing}: no such folder")
    data = generate_synthetic(tmp_path / "data", 1, seed=0)
    _fails(["eval", "--model", str(tmp_path / "base"), "--adapter", str(missing), "--data", str(data), "--out",
            str(tmp_path / "e")], capsys, f"adapter {missing}: no such folder")
    explain = ["explain", "--model", str(tmp_path / "base"), "--instruction", "x", "--out", str(tmp_path / "x")]
    _fails([*explain, "--image", str(tmp_path / "nowhere.png")], capsys, "nowhere.png: no such file")
    _fails([*explain, "--image", str(tmp_path)], capsys, "a directory, not an image file")
    image = data.parent / "images" / "train_00000.png"
    _fails([*explain, "--image", str(image), "--action-format", "bogus"], capsys, "action_format='bogus'")


def test_data_errors_name_the_record(synth, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(["data", "validate", str(empty)], capsys, f"{empty}: no records")
    (tmp_path / "shots").mkdir()
    folder_image = tmp_path / "folder_image.jsonl"
    folder_image.write_text(json.dumps({"image": "shots", "instruction": "x", "bbox": [0, 0, 4, 4]}) + "\n")
    assert main(["data", "validate", str(folder_image)]) == 1  # a problem of one record: listed, status 1
    out = capsys.readouterr().out
    assert "folder_image.jsonl:1 (id=folder_image:0): image path" in out and "is a directory" in out
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path="Qwen/Qwen2-VL-2B-Instruct", train_data=str(folder_image))
    _fails(["train", str(recipe)], capsys, "folder_image.jsonl:1", "is a directory, not an image file")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="does not exist"):
        main(["train", str(tmp_path / "nowhere.yaml"), "--debug"])
    monkeypatch.setenv("EAGLE_ALIGN_DEBUG", "1")
    with pytest.raises(DataError, match="no such file"):
        main(["data", "validate", str(tmp_path / "nothing")])


@pytest.mark.parametrize("argv, words", [
    (["train", "{dir}/nowhere.yaml"], "does not exist"),
    (["train", str(REPO / "eagle_align" / "recipes" / "train" / "qwen2_vl_2b_lora.yaml"), "--lerning_rate", "1e-3"],
     "did you mean learning_rate"),
], ids=["missing-recipe", "misspelled-key"])
def test_installed_command_exits_2_with_one_line(argv, words, tmp_path):
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EAGLE_ALIGN_DEBUG", None)
    result = subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()  # libraries may print a notice of their own first
    start = next(i for i, line in enumerate(lines) if line.startswith("eagle-align train: "))
    assert words in result.stderr and len(lines) - start <= 2 and "Traceback" not in result.stderr


def test_error_reraised_by_a_dataloader_worker_is_one_line():
    from torch._utils import ExceptionWrapper

    from eagle_align.cli import describe_error

    try:
        raise DataError("example 'cut-1': cannot load image 'cut.png': image file is truncated")
    except DataError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapper.reraise()
    assert "Original Traceback" in str(info.value)
    assert describe_error(info.value) == "example 'cut-1': cannot load image 'cut.png': image file is truncated"
    hinted = UsageError("unknown config key 'x'", hint="did you mean y?")
    assert describe_error(hinted) == "unknown config key 'x'\n  hint: did you mean y?"


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any model weights fails the test: the checks under test must come first."""
    from transformers import AutoModelForImageTextToText

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the bad input was reported")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)


def _train_recipe(path: Path, model: str, synth: Path, out: Path, **keys) -> Path:
    return _recipe(path, model_name_or_path=model, train_data=str(synth), report_to="none", output_dir=str(out),
                   **keys)


@pytest.mark.parametrize("override, words", [
    (["--lora_r", "0"], "lora_r=0 must be a rank of at least 1"),
    (["--lora_alpha", "0"], "lora_alpha=0 must be positive"),
    (["--lora_dropout", "1.5"], "lora_dropout=1.5 must be in [0, 1)"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size=0 must be at least 1"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps=0 must be at least 1"),
    (["--max_steps", "-3"], "max_steps=-3 must be a positive number of steps, or -1"),
    (["--max_steps", "0"], "max_steps=0 must be a positive number of steps"),
    (["--min_pixels", "65536", "--max_pixels", "3136"], "min_pixels=65536 exceeds max_pixels=3136"),
    (["--max_pixels", "-5"], "max_pixels=-5 must be a positive number of pixels"),
    (["--loss_chunk_size", "3"], "loss_chunk_size=3"),
    (["--resume_from_checkpoint", "true"], "resume_from_checkpoint: true, but"),
    (["--resume_from_checkpoint", "{dir}/nowhere"], "resume_from_checkpoint='{dir}/nowhere': no such checkpoint"),
    (["--trainer", "ppo"], "trainer='ppo'; choose one of sft, grpo"),
    (["--trainer", "grpo", "--bf16", "false", "--rewards", "[click_in_bbox]"], "reward 'click_in_bbox' is not one"),
    (["--trainer", "grpo", "--bf16", "false", "--reward_weights", "[0.8, 0.1, 0.1]"],
     "reward_weights has 3 values for 2 rewards (click_in_box, answer_format)"),
], ids=lambda v: " ".join(v[:2] + v[-2:-1]) if isinstance(v, list) else None)
def test_train_options_fail_on_their_value_alone(override, words, synth, tmp_path, capsys):
    # The model folder is empty: these must be reported before anything tries to read it.
    empty = tmp_path / "empty-model"
    empty.mkdir()
    recipe = _train_recipe(tmp_path / "r.yaml", str(empty), synth, tmp_path / "out")
    override = [v.replace("{dir}", str(tmp_path)) for v in override]
    _fails(["train", str(recipe), *override], capsys, words.replace("{dir}", str(tmp_path)))


@pytest.mark.parametrize("override, words", [
    (["--lora_targets", "vision_tower"], "lora_targets: 'vision_tower' matches no layer of the model"),
    (["--lora_targets", "q_proj,layers"], "lora_targets: 'layers' matches only modules LoRA cannot wrap"),
    (["--min_pixels", "100", "--max_pixels", "200"], "max_pixels=200 is below 3136"),
    (["--max_pixels", "2000"], "max_pixels=2000 is below 3136"),
], ids=["targets", "targets-not-layers", "pixels-below-a-cell", "max-below-the-checkpoint-min"])
def test_train_options_checked_against_the_family_before_weights_load(override, words, synth, tiny_checkpoints,
                                                                      tmp_path, capsys, no_weights):
    recipe = _train_recipe(tmp_path / "r.yaml", tiny_checkpoints["qwen2_vl"], synth, tmp_path / "out")
    err = _fails(["train", str(recipe), *override], capsys, words)
    assert "height and width" not in err and "cannot load image" not in err
    assert not (tmp_path / "out").exists()


def test_resume_true_is_accepted_and_means_the_latest_checkpoint(synth, tmp_path):
    from eagle_align.train import parse_config

    out = tmp_path / "out"
    for step in (5, 20, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    config = dict(model_name_or_path="m", train_data=str(synth), output_dir=str(out), report_to="none",
                  resume_from_checkpoint=True)
    training_args = parse_config(config)[-1]
    assert training_args.resume_from_checkpoint == str(out / "checkpoint-20")
    assert parse_config({**config, "resume_from_checkpoint": False})[-1].resume_from_checkpoint is None


def test_eval_pixel_limits_fail_before_data_or_weights(synth, tiny_checkpoints, tmp_path, capsys, no_weights):
    base = ["eval", "--data", str(synth), "--out", str(tmp_path / "e")]
    _fails([*base, "--model", str(tmp_path / "no-model"), "--min-pixels", "65536", "--max-pixels", "3136"], capsys,
           "--min-pixels 65536 exceeds --max-pixels 3136")
    _fails([*base, "--model", tiny_checkpoints["qwen3_vl"], "--min-pixels", "100", "--max-pixels", "200"], capsys,
           "max_pixels=200 is below 4096", "32×32")


@pytest.fixture(scope="module")
def adapter_of_the_tiny_qwen2(tiny_checkpoints, tmp_path_factory) -> Path:
    from eagle_align.families import load_model_and_processor
    from eagle_align.families.lora import apply_lora

    model, _ = load_model_and_processor(tiny_checkpoints["qwen2_vl"], dtype="float32")
    out = tmp_path_factory.mktemp("adapter")
    apply_lora(model, r=4, alpha=8, dropout=0.0).save_pretrained(out)
    return out


def test_adapter_folder_and_its_base_are_checked_before_loading(adapter_of_the_tiny_qwen2, tiny_checkpoints, synth,
                                                               tmp_path, capsys, no_weights):
    from eagle_align.families import build_tiny_checkpoint

    base = tiny_checkpoints["qwen2_vl"]
    run = ["eval", "--data", str(synth), "--out", str(tmp_path / "e")]
    # A model folder given as the adapter: it has config.json, not adapter_config.json.
    _fails([*run, "--model", base, "--adapter", base], capsys, "has no adapter_config.json, so it is not a LoRA "
           "adapter", "pass it as the model")
    (tmp_path / "stray").mkdir()
    _fails([*run, "--model", base, "--adapter", str(tmp_path / "stray")], capsys, "not a LoRA adapter")
    # The same family at another size: the adapter's LoRA shapes do not fit (no wall of size mismatches).
    wider = build_tiny_checkpoint("qwen2_vl", tmp_path / "wider", seed=0, hidden_size=192)
    err = _fails([*run, "--model", str(wider), "--adapter", str(adapter_of_the_tiny_qwen2)], capsys,
                 f"adapter {adapter_of_the_tiny_qwen2} does not fit {wider}", "size 384 in the base, 256 in the adapter",
                 "a base of another size")
    assert "size mismatch" not in err
    merge = ["merge", "--base", str(wider), "--adapter", str(adapter_of_the_tiny_qwen2), "--out", str(tmp_path / "m")]
    _fails(merge, capsys, "does not fit")
