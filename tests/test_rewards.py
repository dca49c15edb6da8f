"""The GRPO click rewards on hand-built answers in every action format: hits, edges, misses, answers off the image
or in the wrong form, rows without a box, TRL's completion forms, lookup by name; and agreement with the eval
harness's verdict, so a reward and the click accuracy a run reports can never disagree. No model, no TRL."""

from __future__ import annotations

import math
import random

import pytest

from eagle_align.answer_formats import ACTION_FORMATS, ActionFormat
from eagle_align.data.schema import GroundingExample
from eagle_align.errors import UsageError
from eagle_align.eval.scoring import score_sample
from eagle_align.grpo.rewards import (
    REWARDS,
    answer_format,
    click_distance,
    click_in_box,
    gaussian_point,
    get_reward,
)

# The resized size differs from the image's, so pixels of the resized screen (qwen2_5_vl) and relative grids read
# the same answer differently.
IMAGE_SIZE = (300, 200)
RESIZED_SIZE = (280, 196)
# Edges and centre lie on every format's grid at these sizes (15 px = 14 resized px across, 50 px = 49 down).
BOX = (90.0, 50.0, 150.0, 150.0)
CENTRE = (120.0, 100.0)
HALF_WIDTH, HALF_HEIGHT = 30.0, 50.0  # the Gaussian's σ per axis
BOX_REWARDS = (click_in_box, click_distance, gaussian_point)
FORMATS = sorted(ACTION_FORMATS)

# A box at the image's right edge and, per format, a click written beyond the format's x range at the box's
# height: clamped onto the edge it would hit, but it lies off the image, so it is a miss.
EDGE_BOX = (240.0, 50.0, 300.0, 150.0)
BEYOND_RANGE = {
    "qwen2_vl": "<|box_start|>(1500,500)<|box_end|>",
    "qwen2_5_vl": '{"action": "click", "coordinate": [420, 98]}',
    "qwen3_vl": '{"action": "click", "coordinate": [1500, 500]}',
    "pyautogui": "pyautogui.click(x=1.500, y=0.500)",
    "agentcpm": '{"POINT":[1500,500]}',
}
# The box BOX written as a box answer, in the formats that read one (parsed as its centre, CENTRE).
BOX_ANSWERS = {
    "qwen2_vl": "<|box_start|>(300,250),(500,750)<|box_end|>",
    "qwen2_5_vl": '{"action": "click", "bbox_2d": [84, 49, 140, 147]}',
    "qwen3_vl": '{"action": "click", "bbox_2d": [300, 250, 500, 750]}',
}


def render(fmt_name: str, point: tuple[float, float]) -> str:
    """The answer the SFT collator would write for a click at `point` (original pixels)."""
    return ACTION_FORMATS[fmt_name].render(point, IMAGE_SIZE, RESIZED_SIZE)


def columns(fmt_name: str, bboxes: list) -> dict[str, list]:
    """The reward columns of `grounding_prompts` rows, one per box."""
    n = len(bboxes)
    return {"action_format": [fmt_name] * n, "image_size": [list(IMAGE_SIZE)] * n,
            "resized_size": [list(RESIZED_SIZE)] * n, "bbox": [None if b is None else list(b) for b in bboxes]}


def score(reward, fmt_name: str, completion, bbox=BOX) -> float | None:
    return reward([completion], **columns(fmt_name, [bbox]))[0]


def rounding(fmt_name: str) -> tuple[float, float]:
    """How far (px, per axis) a rendered click may lie from the point it renders: one step of the format's grid."""
    return ACTION_FORMATS[fmt_name].unit(IMAGE_SIZE, RESIZED_SIZE)


# ------------------------------------------------------------------------------------------------ click_in_box
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_click_in_box_counts_inside_and_edges_as_hits(fmt_name):
    inside = [CENTRE, (100.0, 60.0), (140.0, 140.0)]
    edges = [(90.0, 100.0), (150.0, 100.0), (120.0, 50.0), (120.0, 150.0), (90.0, 50.0), (150.0, 150.0)]
    for point in inside + edges:
        assert score(click_in_box, fmt_name, render(fmt_name, point)) == 1.0, (point, render(fmt_name, point))


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_click_in_box_misses_outside_off_image_and_without_a_click(fmt_name):
    for point in [(165.0, 100.0), (120.0, 165.0), (60.0, 30.0), (280.0, 190.0), (0.0, 0.0)]:
        assert score(click_in_box, fmt_name, render(fmt_name, point)) == 0.0, point
    # Beyond the format's range, to the right of a box at the image's edge: off the image, never clamped into it.
    assert score(click_in_box, fmt_name, BEYOND_RANGE[fmt_name], EDGE_BOX) == 0.0
    # The same box is hit by a click rendered on the image's edge, so the miss above is the range, not the box.
    assert score(click_in_box, fmt_name, render(fmt_name, (298.0, 100.0)), EDGE_BOX) == 1.0
    for text in ("", "click the OK button", "(120, 100"):
        assert score(click_in_box, fmt_name, text) == 0.0, text


# ---------------------------------------------------------------------------------------------- gaussian_point
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_gaussian_point_is_one_at_the_centre_and_e_to_minus_half_on_an_edge(fmt_name):
    ux, uy = rounding(fmt_name)
    # A rendered click lies within one grid step of its point on each axis: that bounds the reward from below.
    at_centre = score(gaussian_point, fmt_name, render(fmt_name, CENTRE))
    assert math.exp(-0.5 * ((ux / HALF_WIDTH) ** 2 + (uy / HALF_HEIGHT) ** 2)) <= at_centre <= 1.0
    for edge, off_axis_step, sigma in (((150.0, 100.0), uy, HALF_HEIGHT), ((120.0, 50.0), ux, HALF_WIDTH)):
        on_edge = score(gaussian_point, fmt_name, render(fmt_name, edge))
        lowest = math.exp(-0.5) * math.exp(-0.5 * (off_axis_step / sigma) ** 2) - 1e-9
        assert on_edge == pytest.approx(math.exp(-0.5), abs=1e-3), edge
        assert lowest <= on_edge <= math.exp(-0.5) + 1e-9, edge


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_gaussian_point_and_click_distance_fall_with_distance_from_the_centre(fmt_name):
    walk = [CENTRE, (135.0, 100.0), (150.0, 100.0), (180.0, 120.0), (240.0, 160.0), (290.0, 195.0)]
    for reward in (gaussian_point, click_distance):
        values = [score(reward, fmt_name, render(fmt_name, point)) for point in walk]
        assert all(a > b for a, b in zip(values, values[1:])), (reward.__name__, values)
        assert all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_click_distance_is_one_at_the_centre(fmt_name):
    ux, uy = rounding(fmt_name)
    at_centre = score(click_distance, fmt_name, render(fmt_name, CENTRE))
    assert 1.0 - math.hypot(ux, uy) / math.hypot(*IMAGE_SIZE) <= at_centre <= 1.0
    far = score(click_distance, fmt_name, render(fmt_name, (290.0, 195.0)))
    assert far < 0.5  # the far corner: about 0.55 of the diagonal away
    assert far == pytest.approx(1 - math.hypot(170, 95) / math.hypot(*IMAGE_SIZE), abs=0.01)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("reward", [gaussian_point, click_distance])
def test_dense_rewards_are_zero_without_a_click_on_the_image(fmt_name, reward):
    for text in ("", "I cannot find it", BEYOND_RANGE[fmt_name]):
        assert score(reward, fmt_name, text, EDGE_BOX) == 0.0, text


# ----------------------------------------------------------------------------------------------- answer_format
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_answer_format_is_one_for_exactly_the_rendered_answer(fmt_name):
    for point in (CENTRE, (150.0, 50.0), (10.0, 190.0), (0.0, 0.0), IMAGE_SIZE):  # in the box or not: format only
        answer = render(fmt_name, point)
        assert score(answer_format, fmt_name, answer) == 1.0, answer
        assert score(answer_format, fmt_name, f"  {answer}\n") == 1.0  # surrounding whitespace is not text


def test_answer_format_reads_qwen2_vl_with_or_without_its_box_tokens():
    """TRL decodes completions without special tokens, so <|box_start|> is usually gone by the time rewards
    read them; a decode that keeps them scores the same."""
    with_tokens = render("qwen2_vl", CENTRE)
    assert with_tokens == "<|box_start|>(400,500)<|box_end|>"
    for text in (with_tokens, "(400,500)", "<|box_start|>(400,500)"):
        assert score(answer_format, "qwen2_vl", text) == 1.0, text
        assert score(click_in_box, "qwen2_vl", text) == 1.0, text


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_answer_format_is_zero_for_extra_text_garbage_two_clicks_and_out_of_range(fmt_name):
    answer = render(fmt_name, CENTRE)
    for text in (f"The button is here: {answer}", f"{answer} Done.", answer + answer, "", "click OK", "{}",
                 BEYOND_RANGE[fmt_name]):
        assert score(answer_format, fmt_name, text) == 0.0, text


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_answer_format_is_zero_for_negative_coordinates(fmt_name):
    template = ACTION_FORMATS[fmt_name].template
    y = {"qwen2_5_vl": "98", "pyautogui": "0.500"}.get(fmt_name, "500")
    negative = template.format(x="-1", y=y)
    assert score(answer_format, fmt_name, negative) == 0.0
    assert score(click_in_box, fmt_name, negative) == 0.0


def test_answer_format_asks_for_the_rendered_spelling_not_just_a_parseable_click():
    """The parsers accept other spacing and pyautogui's positional arguments; the format reward wants the text
    the SFT collator writes (its template around the numbers), so GRPO keeps the answer SFT taught."""
    loose = {"qwen2_5_vl": '{"action":"click","coordinate":[112,98]}',
             "qwen3_vl": '{"action": "click", "coordinate": [400,500]}',
             "pyautogui": "pyautogui.click(0.400, 0.500)",
             "agentcpm": '{"POINT": [400, 500]}',
             "qwen2_vl": "(400, 500)"}
    for fmt_name, text in loose.items():
        assert score(click_in_box, fmt_name, text) == 1.0, text  # eval reads it ...
        assert score(answer_format, fmt_name, text) == 0.0, text  # ... but it is not the format


@pytest.mark.parametrize("fmt_name", sorted(BOX_ANSWERS))
def test_a_box_answer_is_a_hit_by_its_centre_but_not_the_point_format(fmt_name):
    """Eval scores a box answer by its centre, and so does click_in_box (one verdict); the format reward asks
    for the point answer the collator renders, so it gives the box 0."""
    text = BOX_ANSWERS[fmt_name]
    assert ACTION_FORMATS[fmt_name].parse(text, IMAGE_SIZE, RESIZED_SIZE) == pytest.approx(CENTRE)
    assert score(click_in_box, fmt_name, text) == 1.0
    assert score(gaussian_point, fmt_name, text) == pytest.approx(1.0)
    assert score(answer_format, fmt_name, text) == 0.0


# ------------------------------------------------------------------------------------- rows, forms and columns
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_rows_without_a_box_get_none_from_box_rewards_and_a_format_score(fmt_name):
    answer = render(fmt_name, CENTRE)
    cols = columns(fmt_name, [BOX, None])
    for reward in BOX_REWARDS:
        first, second = reward([answer, answer], **cols)
        assert first is not None and first > 0.5 and second is None, reward.__name__
    assert answer_format([answer, answer], **cols) == [1.0, 1.0]
    assert answer_format(["no click", answer], **cols) == [0.0, 1.0]


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_trl_conversational_and_content_block_completions_read_as_text(fmt_name):
    answer = render(fmt_name, CENTRE)
    half = len(answer) // 2
    forms = [
        answer,
        [{"role": "assistant", "content": answer}],
        [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        [{"role": "assistant", "content": [{"type": "text", "text": answer[:half]},
                                           {"type": "text", "text": answer[half:]}]}],
    ]
    for reward in (*BOX_REWARDS, answer_format):
        values = reward(forms, **columns(fmt_name, [BOX] * len(forms)))
        assert values == [values[0]] * len(forms) and values[0] > 0.9, (reward.__name__, values)


def test_rewards_ignore_the_other_keywords_trl_passes():
    answer = render("qwen3_vl", CENTRE)
    trl_extras = dict(prompts=[[{"role": "user", "content": "click OK"}]], completion_ids=[[1, 2, 3]],
                      trainer_state=object(), log_extra=print, log_metric=print, point=[list(CENTRE)],
                      example_index=[0], image=[None])
    for reward in (*BOX_REWARDS, answer_format):
        assert reward([answer], **columns("qwen3_vl", [BOX]), **trl_extras)[0] > 0.9, reward.__name__


@pytest.mark.parametrize("missing", ["action_format", "image_size", "resized_size"])
def test_a_missing_column_is_a_one_line_usage_error(missing):
    cols = columns("qwen3_vl", [BOX])
    del cols[missing]
    for reward in (*BOX_REWARDS, answer_format):
        with pytest.raises(UsageError, match=missing) as raised:
            reward([render("qwen3_vl", CENTRE)], **cols)
        assert "\n" not in str(raised.value) and "grounding_prompts" in str(raised.value)


def test_box_rewards_need_the_bbox_column_and_the_format_reward_does_not():
    cols = columns("qwen3_vl", [BOX])
    del cols["bbox"]
    answer = render("qwen3_vl", CENTRE)
    for reward in BOX_REWARDS:  # without the column every reward would be None, silently
        with pytest.raises(UsageError, match="bbox"):
            reward([answer], **cols)
    assert answer_format([answer], **cols) == [1.0]


@pytest.mark.parametrize(("fmt_name", "written"), [
    ("qwen3_vl", '{"action": "click", "coordinate": [120.5, 375]}'),  # decimals in an integer format
    ("pyautogui", "pyautogui.click(x=0.4, y=0.500)"),  # fewer decimals than the format writes
])
def test_the_format_reward_wants_numbers_written_as_the_format_writes_them(fmt_name, written):
    assert answer_format([written], **columns(fmt_name, [BOX])) == [0.0]


def test_get_reward_by_name_or_function_and_unknown_names_list_the_choices():
    assert set(REWARDS) == {"click_in_box", "click_distance", "gaussian_point", "answer_format"}
    for name, reward in REWARDS.items():
        assert get_reward(name) is reward and reward.__name__ == name

    def mine(completions, **columns):
        return [0.0] * len(completions)

    assert get_reward(mine) is mine and get_reward(click_in_box) is click_in_box
    with pytest.raises(UsageError) as raised:
        get_reward("click_in_bbox")
    message = str(raised.value)
    assert "'click_in_bbox'" in message and all(name in message for name in REWARDS)


# ------------------------------------------------------------------------------ the same verdict as evaluation
def _eval_verdict(fmt: ActionFormat, answer: str, bbox: tuple[float, ...]) -> dict:
    """What `eagle-align eval` records for this answer: the harness parses it, then scores it."""
    example = GroundingExample(image="screen.png", image_size=IMAGE_SIZE, instruction="click", bbox=bbox, id="0")
    return score_sample(example, fmt.parse(answer, IMAGE_SIZE, RESIZED_SIZE), answer)


def _agreement_cases(fmt_name: str) -> list[tuple[str, tuple[float, ...]]]:
    """Answers against boxes: clicks rendered on every edge, inside, just outside, off the image and in no
    format, over boxes at many offsets (so float noise when mapping back, e.g. 0.14 · 300 = 42.00000000000001,
    gets its chances)."""
    rng = random.Random(fmt_name)
    cases = []
    for left in range(0, 300, 7):
        top = rng.randint(0, 150)
        bbox = (float(left), float(top), float(min(left + rng.randint(5, 60), 300)), float(min(top + 43, 200)))
        x1, y1, x2, y2 = bbox
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        points = [(x1, cy), (x2, cy), (cx, y1), (cx, y2), (cx, cy), (x1 - 2, cy), (x2 + 2, cy), (cx, y2 + 2)]
        cases += [(render(fmt_name, point), bbox) for point in points]
        cases += [(BEYOND_RANGE[fmt_name], bbox), ("no click", bbox)]
    return cases


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_rewards_give_the_eval_harness_verdict_for_the_same_answer(fmt_name):
    """click_in_box is 1 exactly when eval counts a hit; click_distance is 0 exactly when eval finds no click on
    the image (wrong format or out of range), and the Gaussian is 0 then too."""
    fmt = ACTION_FORMATS[fmt_name]
    disagreements = []
    for answer, bbox in _agreement_cases(fmt_name):
        verdict = _eval_verdict(fmt, answer, bbox)
        no_click = verdict["wrong_format"] or verdict["out_of_range"]
        hit = score(click_in_box, fmt_name, answer, bbox)
        gaussian, distance = (score(reward, fmt_name, answer, bbox) for reward in (gaussian_point, click_distance))
        # (The Gaussian may underflow to 0 far from a small box, so only its no-click zero is checked.)
        dense_agrees = (distance == 0.0) == no_click and (gaussian == 0.0 or not no_click)
        if hit != float(verdict["hit"]) or not dense_agrees:
            disagreements.append((answer, bbox, verdict["point"], verdict["hit"], hit))
    assert not disagreements, f"{len(disagreements)} disagreements, e.g. {disagreements[:3]}"
