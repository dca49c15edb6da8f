"""Generation harness end to end on tiny real checkpoints: batching, outputs, attribution, CLI, callback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from eagle_align.answer_formats import get_action_format
from eagle_align.attribution import AttributionSettings
from eagle_align.cli import main
from eagle_align.data import GroundingCollator, GroundingExample, image_for_processor, load_examples
from eagle_align.eval import read_predictions, summarize
from eagle_align.eval.callback import ClickEvalCallback
from eagle_align.eval.harness import evaluate, predict
from eagle_align.families import load_model_and_processor

# The tiny model is taught one constant answer, (50, 70) in Qwen2-VL's relative [0, 1000) grid, so which
# boxes it hits is known: (10, 7) px on the 200×100 ScreenSpot screens, (20, 21) px on the 400×300 Pro ones.
ANSWER_REL = (0.05, 0.07)
# instruction, platform, ui_type, bbox [x, y, w, h]; hit when the box holds (10, 7)
SCREENSPOT = [
    ("open the menu", "mobile", "icon", [0, 0, 30, 20], True),
    ("tap the title", "mobile", "text", [100, 40, 60, 30], False),
    ("close the dialog", "desktop", "icon", [5, 2, 40, 40], True),
    ("read the status bar", "desktop", "text", [20, 70, 120, 25], False),
    ("go back", "web", "icon", [10, 7, 20, 20], True),  # the click lands exactly on the box's corner
    ("search the site", "web", "text", [120, 10, 70, 20], False),
]
# instruction, application, group, ui_type, bbox [x1, y1, x2, y2]; hit when the box holds (20, 21)
PRO = [
    ("open the file tree", "vscode", "Dev", "icon", [0, 0, 60, 60], True),
    ("run the build", "vscode", "Dev", "text", [200, 10, 300, 40], False),
    ("select the brush", "photoshop", "Creative", "icon", [10, 10, 30, 30], True),
    ("export the layer", "photoshop", "Creative", "text", [100, 200, 380, 290], False),
]


def write_screenspot(root: Path) -> Path:
    by_platform: dict[str, list[dict]] = {}
    for i, (instruction, platform, ui_type, bbox, _) in enumerate(SCREENSPOT):
        (root / "screenspot_imgs").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (200, 100), (40 * i, 200 - 30 * i, 90)).save(root / "screenspot_imgs" / f"s{i}.png")
        by_platform.setdefault(platform, []).append({"img_filename": f"s{i}.png", "instruction": instruction,
                                                     "bbox": bbox, "data_type": ui_type, "data_source": "synthetic"})
    for platform, records in by_platform.items():
        (root / f"screenspot_{platform}.json").write_text(json.dumps(records))
    return root


def write_screenspot_pro(root: Path) -> Path:
    by_app: dict[str, list[dict]] = {}
    for i, (instruction, app, group, ui_type, bbox, _) in enumerate(PRO):
        (root / "images" / app).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (400, 300), (60 * i, 90, 220 - 50 * i)).save(root / "images" / app / f"p{i}.png")
        by_app.setdefault(app, []).append({
            "img_filename": f"{app}/p{i}.png", "bbox": bbox, "instruction": instruction, "img_size": [400, 300],
            "ui_type": ui_type, "platform": "windows", "application": app, "group": group})
    (root / "annotations").mkdir(parents=True)
    for app, records in by_app.items():
        (root / "annotations" / f"{app}.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    return {"screenspot": write_screenspot(root / "screenspot"), "pro": write_screenspot_pro(root / "pro")}


@pytest.fixture(scope="module")
def trained(tiny_checkpoints, benchmarks, tmp_path_factory):
    """A tiny Qwen2-VL taught to answer the constant click on the benchmark screens; saved for the CLI."""
    torch.manual_seed(0)
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_vl"], dtype="float32")
    examples = [ex for source in benchmarks.values() for ex in load_examples(source)]
    for ex in examples:
        ex.point = (ANSWER_REL[0] * ex.image_size[0], ANSWER_REL[1] * ex.image_size[1])
    batch = GroundingCollator(processor, "qwen2_vl")(examples)
    batch.pop("meta")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(100):  # about 40 steps; stop once the answer is memorised
        loss = model(**batch).loss
        if loss.item() < 0.01:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out = tmp_path_factory.mktemp("trained")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return model, processor, out


def _mixed_examples(folder: Path) -> list[GroundingExample]:
    """Screens of different sizes, so prompts differ in length and the batch is left-padded."""
    examples = []
    for i, size in enumerate([(200, 100), (96, 160), (300, 180), (120, 120)]):
        path = folder / f"m{i}.png"
        Image.new("RGB", size, (30 * i, 120, 200 - 40 * i)).save(path)
        examples.append(GroundingExample(image=str(path), image_size=size, bbox=(1, 1, 20, 20), id=f"m{i}",
                                         instruction=f"click the button number {i}" + " please" * i))
    return examples


def test_batched_generation_equals_unbatched(tiny_checkpoints, family, tmp_path):
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    fmt = get_action_format(family)
    examples = _mixed_examples(tmp_path)
    batch = GroundingCollator(processor, fmt, inference=True)(examples)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the fixture must need left padding"
    batched, _ = predict(model, processor, examples, fmt, batch_size=4, max_new_tokens=12, progress=False)
    single, _ = predict(model, processor, examples, fmt, batch_size=1, max_new_tokens=12, progress=False)
    assert [r["answer"] for r in batched] == [r["answer"] for r in single]
    # Independent reference: the processor's own single-sample output (3-D positions from mm_token_type_ids).
    collator = GroundingCollator(processor, fmt, inference=True)
    for example, record in zip(examples, batched):
        text = processor.apply_chat_template(collator.messages(example), tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image_for_processor(example, processor)], return_tensors="pt")
        assert "mm_token_type_ids" in inputs
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
        end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        tokens = tokens[: tokens.index(end)] if end in tokens else tokens
        assert record["answer"] == processor.tokenizer.decode(tokens, skip_special_tokens=False)
    assert any(r["answer"] for r in single)


def test_predict_clicks_where_taught(trained, benchmarks):
    model, processor, _ = trained
    examples = load_examples(benchmarks["screenspot"])
    records, preview = predict(model, processor, examples, get_action_format("qwen2_vl"), batch_size=4,
                               progress=False)
    expected = {row[0]: row[-1] for row in SCREENSPOT}
    assert all(r["point"] == [10.0, 7.0] for r in records), [r["answer"] for r in records]
    assert {r["instruction"]: r["hit"] for r in records} == expected
    assert all(r["resized_size"] == [196, 112] for r in records)
    assert "<|image_pad|>×28" in preview and examples[0].instruction in preview


def _check_outputs(out: Path, n: int, attribution: bool) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == metrics["n"] == n
    recomputed = json.loads(json.dumps(summarize(records)))
    for key in ("n", "hits", "click_accuracy", "wrong_format", "mean_distance", "breakdown", "tables"):
        assert metrics[key] == recomputed[key], key
    assert {"settings", "versions"} <= set(metrics)
    assert metrics["settings"]["action_format"] == "qwen2_vl"
    assert {"min_pixels", "max_pixels", "system_prompt", "prompt"} <= set(metrics["settings"])
    assert "# Evaluation report" in (out / "report.md").read_text()
    for name in ("accuracy.png", "examples.png"):
        with Image.open(out / name) as image:
            image.load()
    if attribution:
        summary = metrics["attribution"]
        assert summary["overall"]["n"] == summary["correct"]["n"] + summary["incorrect"]["n"] > 0
        assert 0.0 <= summary["overall"]["point_game"] <= 1.0
        assert 0.0 <= summary["overall"]["box_hit@k"] <= 1.0
        assert summary["overall"]["insertion_auc"] is not None and summary["overall"]["deletion_auc"] is not None
    return metrics


def test_cli_end_to_end_screenspot_and_pro(trained, benchmarks, tmp_path):
    _, _, model_dir = trained
    out = tmp_path / "ss"
    assert main(["eval", "--model", str(model_dir), "--data", str(benchmarks["screenspot"]), "--out", str(out),
                 "--batch-size", "4", "--attribution-samples", "3", "--n-regions", "8", "--dtype", "float32"]) == 0
    metrics = _check_outputs(out, len(SCREENSPOT), attribution=True)
    assert metrics["hits"] == sum(row[-1] for row in SCREENSPOT)
    assert set(metrics["tables"]["screenspot"]) == {"mobile", "desktop", "web", "average"}
    assert metrics["attribution"]["requested"] == 3

    out = tmp_path / "pro"
    assert main(["eval", "--model", str(model_dir), "--data", str(benchmarks["pro"]), "--out", str(out),
                 "--limit", "3", "--dtype", "float32"]) == 0
    metrics = _check_outputs(out, 3, attribution=False)
    assert metrics["hits"] == sum(row[-1] for row in PRO[:3])
    assert set(metrics["tables"]["screenspot_pro"]) == {"Dev", "Creative", "average"}


def test_evaluate_attribution_split_by_correctness(trained, benchmarks, tmp_path):
    model, processor, _ = trained
    examples = load_examples(benchmarks["pro"])
    metrics = evaluate(model, processor, examples, batch_size=2, attribution_samples=4, out_dir=tmp_path,
                       attribution={"n_regions": 6, "region_method": "grid", "search": "exact"}, progress=False)
    summary = _check_outputs(tmp_path, len(PRO), attribution=True)["attribution"]
    assert metrics["attribution"] == summary
    assert summary["correct"]["n"] == 2 and summary["incorrect"]["n"] == 2
    # No record on the model: the library defaults, with the two overrides, ranking every region.
    assert summary["settings"] == {**AttributionSettings().to_dict(), "n_regions": 6, "region_method": "grid",
                                   "search": "exact", "max_regions": None}
    assert summary["source"] == "library defaults" and summary["complete_ranking"] is True
    assert summary["overrides"] == {"n_regions": 6, "region_method": "grid", "search": "exact"}


def test_callback_logs_during_training(trained, benchmarks, tmp_path):
    from eagle_align.trainer import PriorAlignedConfig, PriorAlignedTrainer

    base, processor, _ = trained
    model = copy.deepcopy(base)
    examples = load_examples(benchmarks["screenspot"])
    args = PriorAlignedConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3,
                              learning_rate=1e-9, eval_steps=1, logging_steps=1, report_to=[], use_cpu=True,
                              save_strategy="no", disable_tqdm=True, alignment=False)
    trainer = PriorAlignedTrainer(model=model, args=args, train_dataset=examples, processing_class=processor,
                                  data_collator=GroundingCollator(processor, "qwen2_vl"))
    callback = ClickEvalCallback(examples, processor, "qwen2_vl", limit=4, attribution_samples=1,
                                 attribution=AttributionSettings(n_regions=4, region_method="grid")).attach(trainer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval/click_accuracy" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert logged[0]["eval/click_accuracy"] == pytest.approx(sum(row[-1] for row in SCREENSPOT[:4]) / 4)
    assert logged[0]["eval/point_game"] in (0.0, 1.0)
    assert len(callback.history) == 2 and model.training

    args.eval_steps = None
    with pytest.raises(ValueError, match="set eval_steps"):
        callback.on_train_begin(args, trainer.state, trainer.control)


def test_cli_loads_adapter(trained, benchmarks, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, processor, model_dir = trained
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(base), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    examples = load_examples(benchmarks["screenspot"])[:3]
    expected, _ = predict(peft_model, processor, examples, get_action_format("qwen2_vl"), progress=False)
    assert any(r["answer"] != "<|box_start|>(50,70)<|box_end|>" for r in expected), "the adapter must matter"

    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--adapter", str(tmp_path / "adapter"), "--data",
                 str(benchmarks["screenspot"]), "--out", str(out), "--limit", "3", "--dtype", "float32",
                 "--no-plots"]) == 0
    records = read_predictions(out / "predictions.jsonl")
    assert [r["answer"] for r in records] == [r["answer"] for r in expected]
    assert json.loads((out / "metrics.json").read_text())["settings"]["adapter"] == str(tmp_path / "adapter")


def test_cli_attributes_with_the_adapters_recorded_settings_and_a_flag_overrides_one(trained, benchmarks, tmp_path):
    from peft import LoraConfig, get_peft_model

    from eagle_align.families import pixel_limits
    from eagle_align.families.space import COORDINATE_SPACE_FILE, CoordinateSpace

    base, processor, model_dir = trained
    adapter = tmp_path / "adapter"
    get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    recorded = AttributionSettings(n_regions=4, region_method="grid", baseline="black", search="exact")
    CoordinateSpace("qwen2_vl", "qwen2_vl", *pixel_limits(processor), attribution=recorded.to_dict()).save(adapter)
    common = ["eval", "--model", str(model_dir), "--adapter", str(adapter), "--data", str(benchmarks["screenspot"]),
              "--limit", "2", "--attribution-samples", "2", "--dtype", "float32", "--no-plots"]

    assert main([*common, "--out", str(tmp_path / "recorded")]) == 0
    summary = json.loads((tmp_path / "recorded" / "metrics.json").read_text())["attribution"]
    assert summary["settings"] == {**recorded.to_dict(), "max_regions": None}  # every region ranked
    assert summary["source"] == f"recorded in {adapter / COORDINATE_SPACE_FILE}" and summary["overrides"] == {}
    # Exact search over 4 regions, complete: 2·(4 + 3 + 2 + 1) forwards per sample.
    assert summary["overall"]["n"] == 2 and summary["overall"]["forwards"] == 20
    report = (tmp_path / "recorded" / "report.md").read_text()
    assert "Attribution settings: n_regions=4, region_method=grid, baseline=black, search=exact" in report
    assert f"(recorded in {adapter / COORDINATE_SPACE_FILE})" in report

    assert main([*common, "--out", str(tmp_path / "flag"), "--n-regions", "2"]) == 0
    summary = json.loads((tmp_path / "flag" / "metrics.json").read_text())["attribution"]
    assert summary["overrides"] == {"n_regions": 2}
    assert summary["settings"] == {**recorded.to_dict(), "max_regions": None, "n_regions": 2}
    assert summary["overall"]["forwards"] == 2 * (2 + 1)
    assert "; overridden: n_regions=2)" in (tmp_path / "flag" / "report.md").read_text()


def test_cli_names_an_invalid_attribution_flag_before_loading(benchmarks, tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(benchmarks["screenspot"]),
                 "--out", str(tmp_path / "out"), "--attribution-samples", "1", "--box-overlap", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--box-overlap: box_overlap=1.5 must lie in [0, 1]" in err and "Traceback" not in err


def test_attribution_that_skips_samples_says_why(trained, benchmarks, tmp_path, capsys):
    _, _, model_dir = trained
    out = tmp_path / "wrong"
    # The model answers "(50,70)" (Qwen2-VL syntax); read as pyautogui calls, every answer is in the wrong format.
    assert main(["eval", "--model", str(model_dir), "--data", str(benchmarks["screenspot"]), "--out", str(out),
                 "--action-format", "pyautogui", "--attribution-samples", "3", "--n-regions", "8", "--dtype",
                 "float32", "--no-plots"]) == 0
    console = capsys.readouterr().out
    assert "click accuracy 0.00% on 6 samples (6 wrong format)" in console
    assert "attribution: 0 of 3 samples (3 answers in the wrong format: nothing to attribute)" in console
    summary = json.loads((out / "metrics.json").read_text())["attribution"]
    assert (summary["skipped"], summary["skipped_wrong_format"], summary["skipped_out_of_range"]) == (3, 3, 0)


def test_attribution_line_names_out_of_range_answers():
    from eagle_align.commands.eval import attribution_line

    summary = {"requested": 4, "overall": {"n": 1}, "skipped_wrong_format": 1, "skipped_out_of_range": 2}
    assert attribution_line(summary) == ("attribution: 1 of 4 samples (1 answer in the wrong format, 2 answers out "
                                         "of range: nothing to attribute)")
    assert attribution_line({"requested": 2, "overall": {"n": 2}}) == "attribution: 2 of 2 samples"
