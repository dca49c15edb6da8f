"""The user's round trip on a tiny checkpoint: train (max_pixels 65536) -> eval / explain / merge read the
coordinate space the adapter recorded, contradicting options are refused, and the run's logs are complete."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from eagle_align.cli import main
from eagle_align.data import GroundingCollator, generate_synthetic, load_examples
from eagle_align.errors import UsageError
from eagle_align.eval import evaluate, read_predictions
from eagle_align.families import (
    coordinate_space_of,
    load_model_and_processor,
    load_processor,
    pixel_limits,
    read_coordinate_space,
)
from eagle_align.families.space import COORDINATE_SPACE_FILE
from eagle_align.hub import merge_adapter, read_card_header
from eagle_align.train import run_training

TRAINED_MAX_PIXELS = 65536
STEPS = 2
EVAL_N = 2  # clicks evaluated, in training and after: the screens the base was taught to answer on


ANSWER = '{"action": "click", "coordinate": [100, 80]}'  # Qwen2.5-VL: pixels of the resized screen


@pytest.fixture(scope="module")
def gui_data(tmp_path_factory) -> str:
    """384 x 288 screens: larger than both 65536 and the tiny base's own max_pixels, so the limit decides the
    resized size (and, for Qwen2.5-VL's absolute-pixel answers, where a click lands)."""
    out = tmp_path_factory.mktemp("gui") / "data"
    return str(generate_synthetic(out, 8, seed=0, preset="gui", layout="web", split="train"))


@pytest.fixture(scope="module")
def answering_base(tiny_checkpoints, gui_data, tmp_path_factory) -> str:
    """The tiny Qwen2.5-VL taught to answer ANSWER (so its clicks parse, like a real base model's), saved with
    its own processor limits (102400 pixels)."""
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32",
                                                max_pixels=TRAINED_MAX_PIXELS)
    examples = list(load_examples(gui_data))[:EVAL_N]  # a constant answer: two screens teach it in ~60 steps
    collator = GroundingCollator(processor, "qwen2_5_vl")
    resized = collator([examples[0]])["meta"][0].resized_size
    for example in examples:  # the point that renders as ANSWER on the trained resize
        example.point = (100 * example.image_size[0] / resized[0], 80 * example.image_size[1] / resized[1])
    batch = collator(examples)
    batch.pop("meta")
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**batch).loss
        if loss.item() < 0.02:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("answering_base")
    model.save_pretrained(out)
    load_processor(tiny_checkpoints["qwen2_5_vl"]).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def trained(answering_base, gui_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run") / "adapter"
    config = dict(
        model_name_or_path=answering_base, base_model_id="Qwen/Qwen2.5-VL-3B-Instruct",
        train_data=gui_data, eval_data=gui_data, output_dir=str(out), dtype="float32",
        min_pixels=4096, max_pixels=TRAINED_MAX_PIXELS, system_prompt="You are a GUI agent.",
        lora_r=4, lora_alpha=8, learning_rate=1e-4, max_steps=STEPS, per_device_train_batch_size=2,
        logging_steps=1, save_strategy="steps", save_steps=1, report_to="tensorboard", bf16=False,
        click_eval=True, click_eval_limit=EVAL_N, eval_steps=STEPS, dataloader_num_workers=0,
        align_every=1, selection="all", max_aligned_per_step=1, n_regions=8, max_regions=2, search="single_round",
    )
    trainer = run_training(config)
    return {"out": out, "trainer": trainer, "base": answering_base, "data": gui_data}


def _in_training_records(out: Path) -> list[dict]:
    return list(read_predictions(out / "click_eval" / f"step-{STEPS}" / "predictions.jsonl"))


def _same_clicks(got: list[dict], expected: list[dict]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert [r["answer"] for r in got] == [r["answer"] for r in expected]
    assert [r["point"] for r in got] == [r["point"] for r in expected]
    assert [r["hit"] for r in got] == [r["hit"] for r in expected]


def test_training_records_the_coordinate_space_everywhere(trained):
    out = trained["out"]
    space = read_coordinate_space(out)
    assert space is not None and space.max_pixels == TRAINED_MAX_PIXELS and space.min_pixels == 4096
    assert (space.family, space.action_format, space.finetuning) == ("qwen2_5_vl", "qwen2_5_vl", "lora")
    assert space.system_prompt == "You are a GUI agent." and space.base_model_id == "Qwen/Qwen2.5-VL-3B-Instruct"
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        assert read_coordinate_space(out / checkpoint) == space
    # Log history and alignment counters beside the final weights, not only in checkpoints.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("align/selected" in entry for entry in history)
    assert any("eval/click_accuracy" in entry for entry in history)
    alignment_state = json.loads((out / "alignment_state.json").read_text())
    assert alignment_state["alignment_steps"] == STEPS == trained["trainer"].alignment_state["alignment_steps"]
    card = (out / "README.md").read_text()
    assert read_card_header(out / "README.md")["library_name"] == "peft"
    assert f"| alignment_steps | {STEPS} |" in card and "max_pixels: 65536" in card


def test_tensorboard_event_files_hold_the_alignment_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((trained["out"] / "runs").rglob("events.out.tfevents.*"))
    assert events, "report_to: tensorboard wrote no event file"
    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    # The Trainer's TensorBoard logger files every training log under train/.
    assert {"train/align/point_game", "train/align/selected", "train/eval/click_accuracy"} <= tags


def test_eval_cli_uses_the_adapters_limits_and_scores_the_trained_clicks(trained, tmp_path):
    expected = _in_training_records(trained["out"])
    assert all(r["resized_size"] != [384, 288] for r in expected)
    code = main(["eval", "--model", trained["base"], "--adapter", str(trained["out"]), "--data", trained["data"],
                 "--limit", str(EVAL_N), "--out", str(tmp_path / "eval"), "--dtype", "float32", "--no-plots"])
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["max_pixels"] == TRAINED_MAX_PIXELS and metrics["settings"]["min_pixels"] == 4096
    assert metrics["settings"]["system_prompt"] == "You are a GUI agent."
    got = list(read_predictions(tmp_path / "eval" / "predictions.jsonl"))
    assert all(r["point"] is not None for r in got)  # the clicks parse, so where they land is what is compared
    assert [r["resized_size"] for r in got] == [r["resized_size"] for r in expected]
    _same_clicks(got, expected)
    history = trained["trainer"].state.log_history
    in_training = next(e["eval/click_accuracy"] for e in reversed(history) if "eval/click_accuracy" in e)
    assert metrics["click_accuracy"] == pytest.approx(in_training)


def test_python_api_reads_the_adapters_coordinate_space(trained, tmp_path):
    model, processor = load_model_and_processor(trained["base"], dtype="float32", adapter=str(trained["out"]))
    assert pixel_limits(processor) == (4096, TRAINED_MAX_PIXELS)
    assert coordinate_space_of(model).action_format == "qwen2_5_vl"
    metrics = evaluate(model, processor, load_examples(trained["data"]), limit=EVAL_N, out_dir=tmp_path, plots=False,
                       progress=False)
    assert metrics["settings"]["system_prompt"] == "You are a GUI agent."
    assert metrics["settings"]["max_pixels"] == TRAINED_MAX_PIXELS
    _same_clicks(list(read_predictions(tmp_path / "predictions.jsonl")), _in_training_records(trained["out"]))
    base, base_processor = load_model_and_processor(trained["base"], dtype="float32")
    assert pixel_limits(base_processor)[1] != TRAINED_MAX_PIXELS and coordinate_space_of(base) is None


def test_contradicting_options_are_refused_unless_forced(trained, tmp_path, caplog, capsys):
    with pytest.raises(UsageError, match="max_pixels 1003520 contradicts max_pixels 65536") as error:
        load_model_and_processor(trained["base"], adapter=str(trained["out"]), max_pixels=1003520)
    assert COORDINATE_SPACE_FILE in str(error.value) and "--force-coordinate-space" in str(error.value)
    out = tmp_path / "forced"
    args = ["eval", "--model", trained["base"], "--adapter", str(trained["out"]), "--data", trained["data"],
            "--limit", str(EVAL_N), "--out", str(out), "--dtype", "float32", "--no-plots", "--max-pixels", "102400"]
    assert main(args) == 2  # one line naming both values, no traceback
    err = capsys.readouterr().err
    assert "eagle-align eval: max_pixels 102400 contradicts max_pixels 65536" in err and "Traceback" not in err
    assert main([*args[:-2], "--action-format", "qwen3_vl"]) == 2
    assert "action_format 'qwen3_vl' contradicts action_format 'qwen2_5_vl'" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--force-coordinate-space"]) == 0
    assert "forced" in caplog.text
    forced = list(read_predictions(out / "predictions.jsonl"))
    expected = _in_training_records(trained["out"])
    # Forced to other limits, the screens are resized differently and the trained clicks are not reproduced:
    # what the refusal protects against.
    assert forced[0]["resized_size"] != expected[0]["resized_size"]
    assert [r["point"] for r in forced] != [r["point"] for r in expected]


def test_merge_keeps_the_limits_and_the_card_and_explain_reads_them(trained, tmp_path):
    merged = tmp_path / "merged"
    report = merge_adapter(trained["base"], trained["out"], merged)
    assert (report["min_pixels"], report["max_pixels"]) == (4096, TRAINED_MAX_PIXELS)
    from transformers import AutoProcessor

    assert pixel_limits(AutoProcessor.from_pretrained(merged)) == (4096, TRAINED_MAX_PIXELS)
    space = read_coordinate_space(merged)
    assert space.merged_from == str(trained["out"]) and space.max_pixels == TRAINED_MAX_PIXELS
    header = read_card_header(merged / "README.md")
    card = (merged / "README.md").read_text()
    assert header["library_name"] == "transformers" and header["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert "merged into" in card and f"| alignment_steps | {STEPS} |" in card and "PeftModel" not in card
    model, processor = load_model_and_processor(str(merged), dtype="float32")
    assert pixel_limits(processor) == (4096, TRAINED_MAX_PIXELS)
    with pytest.raises(UsageError, match="full model weights"):
        load_model_and_processor(trained["base"], adapter=str(merged))

    example = load_examples(trained["data"])[0]
    image = tmp_path / "screen.png"
    Image.open(example.image).save(image)
    answer = '{"action": "click", "coordinate": [100, 80]}'
    common = ["explain", "--image", str(image), "--instruction", example.instruction, "--answer", answer,
              "--n-regions", "8", "--dtype", "float32", "--bbox", *(str(v) for v in example.bbox)]
    for name, source in (("adapter", ["--model", trained["base"], "--adapter", str(trained["out"])]),
                         ("merged", ["--model", str(merged)])):
        assert main([*common, *source, "--out", str(tmp_path / name)]) == 0
    records = [json.loads((tmp_path / name / "explanation.json").read_text()) for name in ("adapter", "merged")]
    trained_size = _in_training_records(trained["out"])[0]["resized_size"]
    assert records[0]["resized_size"] == records[1]["resized_size"] == trained_size
    assert records[0]["click"] == records[1]["click"]
    # Qwen2.5-VL answers in resized pixels: the click maps back through the trained resize.
    assert records[0]["click"] == pytest.approx([100 * 384 / trained_size[0], 80 * 288 / trained_size[1]], abs=0.01)


def test_training_warns_when_action_format_and_family_disagree(tiny_checkpoints, gui_data, tmp_path, caplog):
    config = dict(model_name_or_path=tiny_checkpoints["qwen2_5_vl"], train_data=gui_data, output_dir=str(tmp_path),
                  action_format="qwen3_vl", max_steps=1, per_device_train_batch_size=1, report_to="none",
                  save_strategy="no", dtype="float32", bf16=False, alignment=False, max_pixels=TRAINED_MAX_PIXELS,
                  dataloader_num_workers=0)
    with caplog.at_level(logging.WARNING, logger="eagle_align.train"):
        run_training(config)
    assert "action_format 'qwen3_vl' is not the format qwen2_5_vl was pretrained to answer in" in caplog.text
    assert read_coordinate_space(tmp_path).action_format == "qwen3_vl"
