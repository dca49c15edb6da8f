"""Action formats: exact renderings, render→parse round trips on real resized sizes, wrong formats, answers off
the image."""

from __future__ import annotations

import random
import re

import pytest
from PIL import Image

from eagle_align.answer_formats import (
    ACTION_FORMATS,
    clamp_point,
    get_action_format,
    point_in_image,
)
from eagle_align.families import FAMILIES, load_processor
from eagle_align.families.registry import default_action_format


@pytest.fixture(scope="module")
def processors(tiny_checkpoints):
    return {name: load_processor(path) for name, path in tiny_checkpoints.items()}


def _resized(processor, size):
    """(W, H) the real processor resizes an image of `size` to: image_grid_thw[1:] · patch."""
    grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
    patch = processor.image_processor.patch_size
    return int(grid[2]) * patch, int(grid[1]) * patch


def test_registry_has_required_formats_and_family_defaults():
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "pyautogui", "agentcpm"} <= set(ACTION_FORMATS)
    for name, family in FAMILIES.items():
        assert default_action_format(name).name == family.default_action_format
    assert default_action_format("qwen2_5_vl").space == "resized"
    with pytest.raises(ValueError, match="action_format='nope'"):
        get_action_format("nope")


def test_exact_renderings():
    image, resized = (1000, 500), (504, 252)
    point = (250.0, 125.0)
    assert get_action_format("qwen2_vl").render(point, image, resized) == "<|box_start|>(250,250)<|box_end|>"
    assert get_action_format("qwen2_5_vl").render(point, image, resized) == '{"action": "click", "coordinate": [126, 63]}'
    assert get_action_format("qwen3_vl").render(point, image, resized) == '{"action": "click", "coordinate": [250, 250]}'
    assert get_action_format("pyautogui").render(point, image, resized) == "pyautogui.click(x=0.250, y=0.250)"
    assert get_action_format("agentcpm").render(point, image, resized) == '{"POINT":[250,250]}'
    # Relative [0, 1000) grids never emit 1000 at the right/bottom edge.
    assert get_action_format("qwen2_vl").render((1000, 500), image, resized) == "<|box_start|>(999,999)<|box_end|>"


@pytest.mark.parametrize("fmt_name", sorted(ACTION_FORMATS))
def test_round_trip_within_one_grid_unit(fmt_name, family, processors):
    fmt = get_action_format(fmt_name)
    rng = random.Random(f"{fmt_name}-{family}")
    for _ in range(15):
        width, height = rng.randint(120, 2600), rng.randint(120, 2600)
        while width == height:
            height = rng.randint(120, 2600)
        resized = _resized(processors[family], (width, height))
        unit_x, unit_y = fmt.unit((width, height), resized)
        for _ in range(5):
            point = (rng.uniform(0, width), rng.uniform(0, height))
            text = fmt.render(point, (width, height), resized)
            parsed = fmt.parse(text, (width, height), resized)
            assert parsed is not None, text
            assert abs(parsed[0] - point[0]) <= unit_x + 1e-6, (text, point, parsed, resized)
            assert abs(parsed[1] - point[1]) <= unit_y + 1e-6, (text, point, parsed, resized)
            spans = fmt.coordinate_spans(text)
            assert len(spans) == 2
            numbers = [text[s:e] for s, e in spans]
            assert all(re.fullmatch(r"\d+(\.\d+)?", n) for n in numbers), numbers
            # The spans are the numbers the parser read: re-reading them gives the same point.
            assert numbers == re.findall(r"\d+(?:\.\d+)?", text[spans[0][0] : spans[1][1]])


@pytest.mark.parametrize("fmt_name", sorted(ACTION_FORMATS))
def test_wrong_format_parses_to_none(fmt_name):
    fmt = get_action_format(fmt_name)
    for text in ("I cannot find it.", "", "click somewhere near 12"):
        assert fmt.parse(text, (800, 600), (812, 588)) is None
        assert fmt.coordinate_spans(text) == []


def test_formats_do_not_accept_each_others_syntax():
    image, resized = (800, 600), (812, 588)
    assert get_action_format("agentcpm").parse('{"action": "click", "coordinate": [1, 2]}', image, resized) is None
    assert get_action_format("qwen3_vl").parse('{"POINT":[1,2]}', image, resized) is None
    assert get_action_format("pyautogui").parse("<|box_start|>(1,2)<|box_end|>", image, resized) is None


def test_out_of_range_answers_are_read_as_written_and_flagged_off_the_image():
    image, resized = (800, 600), (812, 588)
    answers = {("qwen2_5_vl", '{"coordinate": [5000, -20]}'): (5000 * 800 / 812, -20 * 600 / 588),
               ("agentcpm", '{"POINT":[1200,500]}'): (960.0, 300.0),
               ("pyautogui", "pyautogui.click(x=1.7, y=0.5)"): (1360.0, 300.0)}
    for (name, text), expected in answers.items():
        point = get_action_format(name).parse(text, image, resized)
        assert point == pytest.approx(expected), name  # not clamped onto the edge
        assert not point_in_image(point, image)
    # The last pixel of the resized view and the 1000 of a 0-1000 grid are the image's edge: in range.
    assert point_in_image(get_action_format("qwen2_5_vl").parse('{"coordinate": [812, 588]}', image, resized), image)
    assert point_in_image(get_action_format("agentcpm").parse('{"POINT":[1000,0]}', image, resized), image)
    assert not point_in_image((800.01, 10), image) and not point_in_image((-0.01, 10), image)
    assert clamp_point((-3, 900), image) == (0.0, 600.0)
    # Rendering a point outside the image clamps (ground truth never becomes a coordinate beyond the grid).
    assert get_action_format("qwen2_5_vl").render((900, 700), image, resized) == (
        '{"action": "click", "coordinate": [811, 587]}'
    )


def test_parse_tolerates_decoding_and_boxes():
    image, resized = (1000, 800), (1008, 812)
    qwen2 = get_action_format("qwen2_vl")
    # skip_special_tokens drops the box tokens: the bare tuple still parses.
    assert qwen2.parse("(500,250)", image, resized) == (500.0, 200.0)
    # A box answer parses as its centre, and its four numbers are the coordinate spans.
    text = "<|box_start|>(100,100),(300,500)<|box_end|>"
    assert qwen2.parse(text, image, resized) == (200.0, 240.0)
    assert [text[s:e] for s, e in qwen2.coordinate_spans(text)] == ["100", "100", "300", "500"]
    qwen25 = get_action_format("qwen2_5_vl")
    wrapped = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [504, 406]}}'
    assert qwen25.parse(wrapped, image, resized) == pytest.approx((500.0, 400.0), abs=1e-9)
    assert qwen25.parse('{"bbox_2d": [0, 0, 1008, 812]}', image, resized) == pytest.approx((500.0, 400.0))
    assert get_action_format("pyautogui").parse("pyautogui.click(0.25, 0.5)", image, resized) == (250.0, 400.0)


def test_console_points_are_pixels_to_a_tenth():
    from eagle_align.answer_formats import format_point

    assert format_point((286.75324675324674, 140.0)) == "(286.8, 140.0)"
    assert format_point(None) == "none"
