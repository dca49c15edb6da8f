"""`eagle-align explain` end to end on a tiny checkpoint (with a LoRA adapter), the overlay, the answer paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.answer_formats import get_action_format
from eagle_align.attribution import AttributionSettings, explain, make_partition, render_overlay
from eagle_align.attribution.explain import _generate, _token_spans
from eagle_align.attribution.overlay import BOX_COLOUR, CLICK_COLOUR, REGION_COLOUR, explanation_figure
from eagle_align.attribution.search import Attribution
from eagle_align.cli import main
from eagle_align.errors import UsageError
from eagle_align.families import load_model_and_processor

ANSWER = '{"action": "click", "coordinate": [250, 400]}'


def _screenshot(path=None) -> Image.Image:
    pixels = np.full((192, 256, 3), 235, dtype=np.uint8)
    pixels[64:112, 48:112] = (220, 30, 30)
    image = Image.fromarray(pixels)
    if path is not None:
        image.save(path)
    return image


def test_explain_cli_with_adapter_writes_png_and_json(tiny_checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    _screenshot(tmp_path / "screen.png")
    code = main([
        "explain", "--model", tiny_checkpoints["qwen3_vl"], "--adapter", str(tmp_path / "adapter"),
        "--image", str(tmp_path / "screen.png"), "--instruction", "click the red square",
        "--bbox", "48", "64", "112", "112", "--answer", ANSWER, "--out", str(tmp_path / "out"),
        "--n-regions", "16", "--region-method", "grid", "--dtype", "float32", "--batch-size", "8",
    ])
    assert code == 0
    overlay = Image.open(tmp_path / "out" / "explanation.png")
    record = json.loads((tmp_path / "out" / "explanation.json").read_text())
    # The screenshot, upscaled to a readable width, under a title band saying what is explained.
    assert overlay.width == 768 and overlay.height > 3 * 192
    assert record["title"][0] == "instruction: click the red square" and record["title"][1] == f"answer: {ANSWER}"
    assert record["title"][2].startswith("P(x) = ") and record["title"][2].endswith("click in box: yes")
    assert f"{record['attribution']['full_prob']:.4f}" in record["title"][2]
    ranking = record["attribution"]["ranking"]
    assert sorted(ranking) == list(range(record["attribution"]["n_regions"])) and len(ranking) == 16
    assert record["answer"] == ANSWER and record["decision_tokens"] == list("250400")
    assert record["click"] == pytest.approx([0.25 * 256, 0.4 * 192], abs=1.0)
    assert record["metrics"]["click_in_box"] is True
    for key in ("insertion_auc", "deletion_auc", "point_game", "box_hit@3"):
        assert key in record["metrics"]
    assert record["attribution"]["forwards"] > 0 and len(record["attribution"]["insertion_probs"]) == 16


def test_explain_generated_answer_and_wrong_format(tiny_checkpoints):
    model, processor = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    image = _screenshot()
    with pytest.raises(UsageError, match="wrong format") as error:
        explain(model, processor, image, "click the red square", answer="no idea", progress=False)
    assert '{"action": "click", "coordinate": [X, Y]}' in str(error.value)  # the answer template to follow
    from eagle_align.data.collator import GroundingCollator
    from eagle_align.data.schema import GroundingExample

    example = GroundingExample(image=image, image_size=image.size, instruction="click the red square",
                               bbox=(0, 0, 256, 192), id="g")
    prompt = GroundingCollator(processor, "qwen3_vl", inference=True)([example])
    tokens = _generate(model, processor, prompt, max_new_tokens=12)
    text, spans = _token_spans(processor.tokenizer, tokens)
    assert "".join(text[s:e] for s, e in spans) == text and len(spans) == len(tokens)
    if get_action_format("qwen3_vl").coordinate_spans(text):
        result = explain(model, processor, image, "click the red square", max_new_tokens=12,
                         attribution={"n_regions": 8, "region_method": "grid"}, progress=False)
        assert result.answer == text
    else:
        with pytest.raises(ValueError, match="wrong format") as error:
            explain(model, processor, image, "click the red square", max_new_tokens=12, progress=False)
        assert repr(text) in str(error.value)


def test_overlay_draws_heatmap_box_click_and_regions():
    partition = make_partition((4, 4), 4)
    attribution = Attribution(ranking=[3, 0], prefix_scores=[2.4, 2.7], insertion_probs=[0.8, 0.9],
                              deletion_probs=[0.2, 0.1], full_prob=1.0, empty_prob=0.0, forwards=10, seconds=0.1,
                              search="exact", n_regions=4, partition=partition)
    image = Image.new("RGB", (160, 120), (128, 128, 128))
    out = render_overlay(image, attribution, bbox=(10, 10, 50, 40), click=(120, 90), top_k=1)
    pixels = np.asarray(out)
    assert out.size == image.size
    assert tuple(pixels[25, 10]) == BOX_COLOUR
    assert tuple(pixels[90, 120]) == CLICK_COLOUR or tuple(pixels[90, 121]) == CLICK_COLOUR
    # Region 3 (bottom-right block, highest gain) is tinted, unranked region 1 (top-right) is untouched,
    # and the top-1 region is outlined along its top edge.
    assert tuple(pixels[20, 150]) == (128, 128, 128)
    assert tuple(pixels[100, 100]) != (128, 128, 128)
    assert tuple(pixels[60, 130]) == REGION_COLOUR
    with pytest.raises(ValueError, match="partition"):
        render_overlay(image, Attribution([0], [1.0], [0.5], [0.5], 1.0, 0.0, 2, 0.0, "exact", 4), top_k=1)
    assert torch.equal(attribution.cell_importance()[3, 3], attribution.cell_importance()[2, 2])

    # The saved figure: upscaled to 768 px (box and click with it), a colour bar from dark to bright below.
    figure = np.asarray(explanation_figure(image, attribution, bbox=(10, 10, 50, 40), click=(120, 90), top_k=1))
    assert figure.shape[1] == 768 and figure.shape[0] > 576
    assert tuple(figure[int(25 * 4.8), int(10 * 4.8)]) == BOX_COLOUR
    margin = 16  # the bar's inset at this width
    bar = figure[576 + margin + 2]
    assert bar[margin + 1].sum() < 60 and bar[768 - margin - 2][0] > 200 and bar[768 - margin - 2][1] > 200
    assert (np.diff(bar[margin + 1 : 768 - margin - 1].astype(int).sum(-1)) >= -3).all()  # dark to bright


@pytest.mark.parametrize("bbox", [(48, 64, 300, 112), (112, 64, 48, 112), (-1, 0, 10, 10), (0, 0, 10, 193)])
def test_explain_refuses_a_box_outside_the_image(tiny_checkpoints, tmp_path, capsys, bbox):
    _screenshot(tmp_path / "screen.png")
    code = main(["explain", "--model", tiny_checkpoints["qwen3_vl"], "--image", str(tmp_path / "screen.png"),
                 "--instruction", "click", "--bbox", *(str(v) for v in bbox), "--answer", ANSWER,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a box inside the 256x192 image" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_explain_cli_wrong_format_answer_shows_the_expected_template(tiny_checkpoints, tmp_path, capsys):
    _screenshot(tmp_path / "screen.png")
    code = main(["explain", "--model", tiny_checkpoints["qwen3_vl"], "--image", str(tmp_path / "screen.png"),
                 "--instruction", "click the red square", "--answer", "the red square", "--dtype", "float32",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ("\neagle-align explain: the answer 'the red square' is in the wrong format for action format "
            "'qwen3_vl'") in "\n" + err and "explain: explain:" not in err
    assert 'expected an answer like {"action": "click", "coordinate": [X, Y]}' in err and "hint:" in err


@pytest.mark.parametrize("instruction", ["", "   ", "click\nthe red square"])
def test_explain_refuses_an_empty_or_multiline_instruction_before_loading(tmp_path, capsys, instruction):
    _screenshot(tmp_path / "screen.png")
    # A model that does not exist: the instruction is refused before anything tries to load it.
    code = main(["explain", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "screen.png"),
                 "--instruction", instruction, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "no-model" not in err
    assert err.startswith("eagle-align explain: --instruction ")
    assert not (tmp_path / "out").exists()


def test_explain_uses_the_adapters_recorded_settings_and_a_flag_overrides_one(tiny_checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    from eagle_align.families import pixel_limits
    from eagle_align.families.space import COORDINATE_SPACE_FILE, CoordinateSpace

    model, processor = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    recorded = AttributionSettings(n_regions=4, region_method="grid", baseline="black", search="exact")
    CoordinateSpace("qwen3_vl", "qwen3_vl", *pixel_limits(processor), attribution=recorded.to_dict()).save(adapter)
    _screenshot(tmp_path / "screen.png")
    common = ["explain", "--model", tiny_checkpoints["qwen3_vl"], "--adapter", str(adapter), "--image",
              str(tmp_path / "screen.png"), "--instruction", "click the red square", "--answer", ANSWER,
              "--bbox", "48", "64", "112", "112", "--dtype", "float32"]

    assert main([*common, "--out", str(tmp_path / "recorded")]) == 0
    record = json.loads((tmp_path / "recorded" / "explanation.json").read_text())
    used = record["attribution_settings"]
    # What training recorded, ranking every region so the curves are complete.
    assert used["settings"] == {**recorded.to_dict(), "max_regions": None}
    assert used["source"] == f"recorded in {adapter / COORDINATE_SPACE_FILE}" and used["overrides"] == {}
    attribution = record["attribution"]
    assert attribution["n_regions"] == 4 and attribution["region_method"] == "grid"
    assert len({cell for row in attribution["region_of_cell"] for cell in row}) == 4
    assert sorted(attribution["ranking"]) == [0, 1, 2, 3] and attribution["search"] == "exact"
    assert attribution["forwards"] == 2 * (4 + 3 + 2 + 1)  # exact, complete: P(x), P(x_∅) from the last step

    assert main([*common, "--out", str(tmp_path / "flag"), "--search", "single_round"]) == 0
    used = json.loads((tmp_path / "flag" / "explanation.json").read_text())["attribution_settings"]
    assert used["overrides"] == {"search": "single_round"}
    assert used["settings"] == {**recorded.to_dict(), "max_regions": None, "search": "single_round"}
