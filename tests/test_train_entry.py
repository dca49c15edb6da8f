"""`eagle-align train`: recipes, overrides, errors, adapters that reload, resume, and the accelerate path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from eagle_align.cli import main
from eagle_align.config import PRESETS, PriorAlignedConfig
from eagle_align.data import generate_synthetic, load_examples
from eagle_align.errors import UsageError
from eagle_align.families import FAMILIES, detect_family
from eagle_align.hub import read_card_header
from eagle_align.recipes import copy_recipe
from eagle_align.train import load_config, load_training_data, parse_config, parse_overrides, run_training

REPO = Path(__file__).resolve().parents[1]
# method_comparison/configs/ are checked in test_method_comparison.py.
RECIPES = sorted((REPO / "eagle_align" / "recipes" / "train").glob("*.yaml"))
REAL_RECIPES = [p for p in RECIPES if not p.name.startswith("tiny_")]


def _family_of(recipe: Path) -> str:
    """Recipes are named after their family (qwen2_5_vl_3b_lora.yaml); the longest matching name wins."""
    return next(f for f in sorted(FAMILIES, key=len, reverse=True) if recipe.name.startswith(f))


@pytest.fixture(scope="module")
def synth_train(tmp_path_factory) -> str:
    """A small shortcut-preset training set (24 samples, 256 px screens)."""
    out = tmp_path_factory.mktemp("synth")
    return str(generate_synthetic(out / "train", 24, seed=0, preset="shortcut", cue_fraction=1.0, split="train"))


def _quick(**extra) -> dict:
    """Overrides that make any recipe a seconds-long CPU run."""
    base = dict(
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        dtype="float32",
        min_pixels=64 * 64,
        max_pixels=256 * 256,
        eval_data=None,
        align_every=1,
        selection="all",
        max_aligned_per_step=1,
        n_regions=8,
        max_regions=2,
        search="single_round",
        dataloader_num_workers=0,
    )
    base.update(extra)
    return base


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    # TrainingArguments refuses bf16 on a machine without a GPU; everything else parses as written.
    config = load_config(recipe, {} if torch.cuda.is_available() else {"bf16": False})
    model_args, data_args, lora_args, training_args = parse_config(config)
    assert model_args.model_name_or_path and data_args.train_data
    if recipe in REAL_RECIPES:
        assert model_args.model_name_or_path.startswith("Qwen/")
        assert model_args.max_pixels and model_args.min_pixels
        if "box_crop" in recipe.name:  # the baseline: SFT with box-guided crops, no alignment
            assert not training_args.alignment and data_args.augment["kind"] == "box_crop"
        else:
            assert training_args.align_every == 5 and training_args.alignment


@pytest.mark.parametrize("recipe", REAL_RECIPES, ids=lambda p: p.name)
def test_real_recipe_dry_run_on_a_tiny_checkpoint(recipe, tiny_checkpoints, synth_train, tmp_path):
    family = _family_of(recipe)
    overrides = _quick(model_name_or_path=tiny_checkpoints[family], train_data=synth_train,
                       output_dir=str(tmp_path / "out"))
    if "grpo" in recipe.name:  # GRPO: no experimental keys; two generations of a few tokens per prompt
        overrides = {k: v for k, v in overrides.items() if k != "selection"}
        overrides.update(num_generations=2, max_completion_length=8, gradient_accumulation_steps=1)
    config = load_config(recipe, overrides)
    quantized = config.get("quantization") == "4bit"
    if quantized:
        pytest.importorskip("bitsandbytes")
    trainer = run_training(config)
    out = tmp_path / "out"
    assert trainer.state.global_step == 2
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
    header = read_card_header(out / "README.md")
    # The recipe's real Hub id is not recorded for a local override: the card must not claim a local path.
    assert "base_model" not in header or not Path(str(header["base_model"])).exists()
    assert detect_family(tiny_checkpoints[family]).name == family
    assert "| preset | none (eagle-align's defaults) |" in (out / "README.md").read_text()  # the card says so
    if quantized:
        assert "Linear4bit" in {type(m).__name__ for m in trainer.model.modules()}


def test_adapter_and_processor_reload_with_same_outputs(tiny_checkpoints, synth_train, tmp_path):
    from peft import PeftModel

    from eagle_align.data import GroundingCollator
    from eagle_align.families import load_model_and_processor

    recipe = REPO / "eagle_align" / "recipes" / "train" / "qwen2_5_vl_3b_lora.yaml"
    config = load_config(
        recipe,
        _quick(
            model_name_or_path=tiny_checkpoints["qwen2_5_vl"],
            base_model_id="Qwen/Qwen2.5-VL-3B-Instruct",
            train_data=synth_train,
            output_dir=str(tmp_path / "out"),
            learning_rate=0.05,
        ),
    )
    trainer = run_training(config)
    out = tmp_path / "out"
    header = read_card_header(out / "README.md")
    assert header["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert header["library_name"] == "peft" and header["pipeline_tag"] == "image-text-to-text"
    assert {"gui-agent", "grounding", "eagle-align"} <= set(header["tags"])
    card = (out / "README.md").read_text()
    assert "qwen2_5_vl" in card and "max_pixels" in card and "align_every" in card

    base, processor = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32")
    reloaded = PeftModel.from_pretrained(base, out).eval()
    from transformers import AutoProcessor

    saved_processor = AutoProcessor.from_pretrained(out)
    assert saved_processor.image_processor.size == trainer.processing_class.image_processor.size
    batch = GroundingCollator(saved_processor, "qwen2_5_vl")(list(load_examples(synth_train))[:2])
    batch.pop("meta")
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_push_to_hub_from_the_training_config(tiny_checkpoints, synth_train, tmp_path, recording_hub):
    recipe = REPO / "eagle_align" / "recipes" / "train" / "qwen2_vl_2b_lora.yaml"
    out = tmp_path / "out"
    config = _quick(
        model_name_or_path=tiny_checkpoints["qwen2_vl"], base_model_id="Qwen/Qwen2-VL-2B-Instruct",
        train_data=synth_train, output_dir=str(out), push_to_hub=True, hub_model_id="me/tiny-gui-adapter",
    )
    run_training(load_config(recipe, config))
    assert recording_hub.repos == ["me/tiny-gui-adapter"]
    local = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert recording_hub.uploaded["me/tiny-gui-adapter"] == local
    assert {"adapter_model.safetensors", "README.md", "eagle_align_config.yaml"} <= set(local)
    with pytest.raises(ValueError, match="hub_model_id"):
        run_training(load_config(recipe, {**config, "hub_model_id": None}))


def _adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def test_resume_reaches_the_same_adapter(tiny_checkpoints, synth_train, tmp_path):
    recipe = REPO / "eagle_align" / "recipes" / "train" / "qwen3_vl_2b_lora.yaml"
    common = _quick(
        model_name_or_path=tiny_checkpoints["qwen3_vl"],
        train_data=synth_train,
        learning_rate=0.02,
        align_every=2,
        save_strategy="steps",
        save_steps=2,
        lr_scheduler_type="constant",  # the interrupted run must follow the same schedule as the straight one
        warmup_steps=0,
    )
    straight = run_training(load_config(recipe, {**common, "max_steps": 4, "output_dir": str(tmp_path / "a")}))
    run_training(load_config(recipe, {**common, "max_steps": 2, "output_dir": str(tmp_path / "b")}))
    first_half = tmp_path / "b" / "checkpoint-2"
    assert first_half.is_dir()
    resumed = run_training(
        load_config(recipe, {**common, "max_steps": 4, "output_dir": str(tmp_path / "b"),
                             "resume_from_checkpoint": str(first_half)})
    )
    assert resumed.state.global_step == straight.state.global_step == 4
    a, b = _adapter_weights(tmp_path / "a"), _adapter_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert straight.alignment_state == resumed.alignment_state


def test_misspelled_key_and_invalid_value_fail_clearly(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": "x", "train_data": "y", "lerning_rate": 1e-4}))
    with pytest.raises(UsageError, match="unknown config key 'lerning_rate'") as info:
        load_config(config)
    assert "did you mean learning_rate" in info.value.hint
    with pytest.raises(ValueError, match="loss_variant"):
        parse_config({"model_name_or_path": "x", "train_data": "y", "loss_variant": "quadratic"})
    with pytest.raises(ValueError, match="train_data"):
        parse_config({"model_name_or_path": "x"})


def test_overrides_parse_as_yaml_scalars():
    assert parse_overrides(["--max_steps", "3", "--bf16=false", "--lora_targets", "language+merger", "--alignment"]) == {
        "max_steps": 3,
        "bf16": False,
        "lora_targets": "language+merger",
        "alignment": True,
    }
    with pytest.raises(ValueError, match="--key value"):
        parse_overrides(["max_steps", "3"])
    # YAML 1.2 scalars: `no` is HF's save strategy, not False; exponent floats are floats.
    assert parse_overrides(["--save_strategy", "no", "--report_to", "none", "--learning_rate", "2e-4",
                            "--lambda_deviation", "5E-1", "--seed", "7", "--eval_data", "null"]) == {
        "save_strategy": "no", "report_to": "none", "learning_rate": 2e-4, "lambda_deviation": 0.5, "seed": 7,
        "eval_data": None,
    }


def test_recipe_yaml_keeps_no_as_a_string_and_reads_exponent_floats(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\ntrain_data: t.jsonl\nsave_strategy: no\nlearning_rate: 1e-4\n"
                      "bf16: false\ngradient_checkpointing: True\n")
    config = load_config(recipe)
    assert config["save_strategy"] == "no" and config["learning_rate"] == 1e-4
    assert config["bf16"] is False and config["gradient_checkpointing"] is True
    training_args = parse_config(config)[3]
    assert training_args.save_strategy == "no" and training_args.learning_rate == 1e-4


def test_recipe_preset_comes_first_and_the_recipes_keys_and_overrides_win(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\ntrain_data: t.jsonl\npreset: paper\nn_regions: 16\nloss_variant: log\n")
    training_args = parse_config(load_config(recipe, {"baseline": "mean"}))[3]
    changed = {"n_regions": 16, "loss_variant": "log", "baseline": "mean"}
    for key, value in PRESETS["paper"].items():
        assert getattr(training_args, key) == changed.get(key, value), key
    assert training_args.preset_description() == "paper (changed: n_regions=16, baseline=mean, loss_variant=log)"


def test_recipe_base_is_read_first_relative_to_the_recipe_and_refuses_loops(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("model_name_or_path: m\ntrain_data: t.jsonl\nmax_steps: 7\n"
                                                  "lambda_deviation: 2.0\n")
    variant = tmp_path / "variant.yaml"
    variant.write_text("base: shared/base.yaml\nlambda_deviation: 4.0\n")
    config = load_config(variant, {"max_steps": 9})
    assert config == {"model_name_or_path": "m", "train_data": "t.jsonl", "max_steps": 9, "lambda_deviation": 4.0}
    (tmp_path / "shared" / "base.yaml").write_text("base: ../variant.yaml\n")
    with pytest.raises(UsageError, match="leads back to itself"):
        load_config(variant)
    variant.write_text("base: missing.yaml\n")
    with pytest.raises(UsageError, match=r"missing.yaml \(the base of .*variant.yaml\) does not exist"):
        load_config(variant)


@pytest.mark.parametrize("recipe", REAL_RECIPES, ids=lambda p: p.name)
def test_real_recipes_run_the_default_method(recipe):
    """The demo's method, not a preset: the recipes set throughput keys only (the box-crop baseline turns
    alignment off and nothing else)."""
    training_args = parse_config(load_config(recipe, {} if torch.cuda.is_available() else {"bf16": False}))[3]
    assert training_args.preset_description() == "none (eagle-align's defaults)"
    defaults = PriorAlignedConfig(output_dir="unused", report_to="none")
    throughput = {"max_aligned_per_step", "attribution_batch_size", "loss_chunk_size"}
    if "box_crop" in recipe.name:
        assert training_args.alignment is False
        throughput.add("alignment")
    assert {k: v for k, v in training_args.method_settings().items() if k not in throughput} == {
        k: v for k, v in defaults.method_settings().items() if k not in throughput}


def _cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tiny_cli_args(tiny_dir: str, train: str, out: Path) -> list[str]:
    return [
        str(REPO / "eagle_align" / "recipes" / "train" / "tiny_synthetic_cpu.yaml"),
        "--model_name_or_path", tiny_dir, "--train_data", train, "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "2", "--align_start_step", "0", "--align_every", "2",
        "--selection", "all", "--max_aligned_per_step", "1", "--min_pixels", "65536", "--max_pixels", "65536",
    ]


@pytest.mark.slow
def test_tiny_recipe_through_the_cli(tiny_checkpoints, synth_train, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "eagle_align.cli", "train", *_tiny_cli_args(tiny_checkpoints["qwen3_vl"], synth_train, out)]
    result = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eagle-align train" in result.stdout and "alignment    on" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "eagle_align_config.yaml").is_file()


@pytest.mark.slow
def test_tiny_recipe_through_accelerate_multi_gpu(tiny_checkpoints, synth_train, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "eagle_align" / "recipes" / "accelerate" / "multi_gpu.yaml"),
        "-m", "eagle_align.train", *_tiny_cli_args(tiny_checkpoints["qwen3_vl"], synth_train, out),
    ]
    result = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("eagle-align train") == 1  # summary from the main process only
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_lora_recipe_under_deepspeed_zero3_saves_a_trained_adapter(tiny_checkpoints, synth_train, tmp_path):
    """The user path for ZeRO-3: a real LoRA recipe (gradient checkpointing on) through `accelerate launch` with
    the shipped ZeRO-3 config, two processes on DeepSpeed's CPU accelerator; the adapter is gathered on save."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "zero3"
    quick = _quick(model_name_or_path=tiny_checkpoints["qwen2_5_vl"], train_data=synth_train, output_dir=str(out),
                   max_steps=3, gradient_checkpointing=True, eval_data="null", search="efficient")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(copy_recipe("deepspeed_zero3", tmp_path / "cfg")[0]), "--num_processes", "2",
        "-m", "eagle_align.train", str(REPO / "eagle_align" / "recipes" / "train" / "qwen2_5_vl_3b_lora.yaml"),
        *[token for key, value in quick.items() for token in (f"--{key}", str(value).lower() if isinstance(value, bool)
                                                             else str(value))],
    ]
    result = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "'align/selected': '2'" in result.stdout + result.stderr  # one sample per rank, every step
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.numel() > 0 for w in weights.values())  # gathered, not empty ZeRO-3 partitions
    assert sum(float(w.abs().sum()) for w in lora_b) > 0  # LoRA B starts at zero: it trained


def _split_dataset(root: Path) -> Path:
    """A DatasetDict folder (save_to_disk) with 3 train and 2 test records."""
    import datasets
    from PIL import Image

    def table(split: str, n: int):
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (64, 48))] * n, "instruction": ["x"] * n, "bbox": [[1, 1, 9, 9]] * n,
             "id": [f"{split}-{i}" for i in range(n)]},
            features=datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                        "bbox": datasets.Sequence(datasets.Value("int32")),
                                        "id": datasets.Value("string")}))

    datasets.DatasetDict({"train": table("train", 3), "test": table("test", 2)}).save_to_disk(str(root))
    return root


def test_dataset_dict_trains_on_its_train_split_unless_told_otherwise(tmp_path):
    source = str(_split_dataset(tmp_path / "dd"))
    data_args = parse_config({"model_name_or_path": "m", "train_data": source})[1]
    train, evaluation = load_training_data(data_args)
    assert [ex.id for ex in train] == ["train-0", "train-1", "train-2"] and evaluation is None
    data_args = parse_config({"model_name_or_path": "m", "train_data": source, "eval_split": "test"})[1]
    train, evaluation = load_training_data(data_args)  # eval from the same source's test split
    assert len(train) == 3 and [ex.id for ex in evaluation] == ["test-0", "test-1"]
    data_args = parse_config({"model_name_or_path": "m", "train_data": source, "train_split": None})[1]
    assert len(load_training_data(data_args)[0]) == 5  # null: every split, when asked for


def _with_truncated_image(synth_train: str, root: Path) -> Path:
    """The synthetic training set plus one record whose PNG stops halfway (its header is intact)."""
    records = [json.loads(line) for line in Path(synth_train).read_text().splitlines()][:5]
    image = Path(synth_train).parent / records[0]["image"]
    root.mkdir(parents=True)
    data = image.read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    for record in records:
        record["image"] = str(Path(synth_train).parent / record["image"])
    records.append({**records[0], "image": str(root / "cut.png"), "id": "cut-1"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "train.jsonl"


def test_image_that_does_not_decode_is_skipped_and_counted_or_stops_naming_it(tiny_checkpoints, synth_train,
                                                                              tmp_path, capsys):
    source = _with_truncated_image(synth_train, tmp_path / "data")
    base = dict(model_name_or_path=tiny_checkpoints["qwen2_vl"], train_data=str(source), alignment=False,
                max_steps=3, per_device_train_batch_size=2, min_pixels=64 * 64, max_pixels=128 * 128,
                dtype="float32", save_strategy="no", report_to="none", use_cpu=True, lora_r=2, logging_steps=1)
    trainer = run_training({**base, "on_error": "skip", "output_dir": str(tmp_path / "skip")})
    assert len(trainer.train_dataset) == 6  # headers all fine: the loader cannot know
    assert len(trainer.skipped_examples) == 1 and "example 'cut-1'" in next(iter(trainer.skipped_examples))
    report = json.loads((tmp_path / "skip" / "data_report.json").read_text())
    assert report["skipped_during_training"] == 1 and "image file is truncated" in report[
        "skipped_during_training_problems"][0]
    assert "skipped 1 example(s) during training" in capsys.readouterr().out

    recipe = tmp_path / "raise.yaml"
    recipe.write_text(yaml.safe_dump({**base, "on_error": "raise", "output_dir": str(tmp_path / "raise")}))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "eagle-align train: example 'cut-1': cannot load image" in err and "Traceback" not in err
