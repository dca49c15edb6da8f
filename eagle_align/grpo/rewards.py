"""Click rewards for GRPO, as functions TRL's `GRPOTrainer` calls (or any trainer passing dataset columns).

Each takes the sampled `completions` and the columns of `eagle_align.grpo.grounding_prompts` rows as keyword
arguments, and returns one reward per completion. The answer is read as the eval harness reads it: parsed
with the row's `action_format` from the coordinate space the model saw (`image_size`, `resized_size`) into
original pixels, never clamped (an answer off the image is a miss). A row without a box (a point-only record)
gets `None` from the box rewards, which TRL leaves out of the reward (NaN) instead of scoring it 0.

Pass them by name in a recipe (`rewards: [click_in_box, answer_format]`) or as functions to the trainer;
`REWARDS` lists the names. They need no TRL import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from eagle_align.answer_formats import ActionFormat, get_action_format, point_in_image
from eagle_align.errors import UsageError
from eagle_align.eval.scoring import judged_point, point_in_box

RewardFunction = Callable[..., list[float | None]]
_SPECIAL = re.compile(r"<\|[^|>]*\|>")  # <|box_start|> and the like: TRL decodes without them


def completion_text(completion: Any) -> str:
    """The answer text of one completion: a string, or TRL's conversational form (a list of messages whose
    content is a string or text blocks)."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(block.get("text", "") for block in content if isinstance(block, dict))
    return "".join(parts)


def parse_click(completion: Any, action_format: str | ActionFormat, image_size: Sequence[float],
                resized_size: Sequence[float]) -> tuple[float, float] | None:
    """The completion's click in original pixels, rounded as eval's verdicts read it (`judged_point`), so a reward
    and the reported click accuracy never disagree; None when it has none or it lies off the image."""
    fmt = get_action_format(action_format)
    size = (int(image_size[0]), int(image_size[1]))
    point = fmt.parse(completion_text(completion), size, (int(resized_size[0]), int(resized_size[1])))
    if point is None or not point_in_image(point, size):
        return None
    return judged_point(point)


def _rows(completions: Sequence[Any], columns: dict[str, Sequence[Any]], box: bool = True) -> list[tuple[Any, ...]]:
    """(completion, action_format, image_size, resized_size, bbox) per row; a missing column fails, naming it
    (without a `bbox` column every box reward would be None, silently)."""
    needed = ("action_format", "image_size", "resized_size") + (("bbox",) if box else ())
    missing = [name for name in needed if name not in columns]
    if missing:
        raise UsageError(f"click rewards need the dataset columns {', '.join(missing)} "
                         "(rows of eagle_align.grpo.grounding_prompts)")
    return list(zip(completions, columns["action_format"], columns["image_size"], columns["resized_size"],
                    columns.get("bbox", [None] * len(completions))))


def _box_reward(completions: Sequence[Any], columns: dict[str, Sequence[Any]],
                score: Callable[[tuple[float, float], Sequence[float], Sequence[float]], float],
                no_click: float = 0.0) -> list[float | None]:
    """`score(point, bbox, image_size)` of each row's click; `no_click` without a click on the image, None for a
    row without a box."""
    rewards: list[float | None] = []
    for completion, fmt, size, resized, bbox in _rows(completions, columns):
        point = None if bbox is None else parse_click(completion, fmt, size, resized)
        rewards.append(None if bbox is None else no_click if point is None else score(point, bbox, size))
    return rewards


def click_in_box(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1 when the click lies inside the target box (edges included), else 0 — the accuracy reward of GUI-R1
    and UI-R1 (arXiv 2504.10458, 2503.21620), and what click accuracy counts."""
    return _box_reward(completions, columns, lambda point, bbox, size: float(point_in_box(point, bbox)))


def click_distance(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1 − (distance from the click to the box centre) / (the image's diagonal), 0 without a click on the image:
    a dense signal toward the target's centre, after SE-GUI's centre-distance reward (arXiv 2505.12370);
    the diagonal normalisation is ours, so the reward reads the same on any screen size."""

    def score(point, bbox, size) -> float:
        cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        return max(0.0, 1.0 - math.hypot(point[0] - cx, point[1] - cy) / math.hypot(size[0], size[1]))

    return _box_reward(completions, columns, score)


def gaussian_point(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """GUI-G²'s Gaussian point reward (arXiv 2507.15846): exp(−½((x − cx)²/σx² + (y − cy)²/σy²)) around the box
    centre, with σ half the box's width and height (GUI-G²'s size-adaptive σ), so a click on the box's edge
    along one axis earns e^−½ ≈ 0.61 and the reward's reach scales with the element. 0 without a click."""

    def score(point, bbox, size) -> float:
        cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        sx, sy = max((bbox[2] - bbox[0]) / 2, 1e-6), max((bbox[3] - bbox[1]) / 2, 1e-6)
        return math.exp(-0.5 * (((point[0] - cx) / sx) ** 2 + ((point[1] - cy) / sy) ** 2))

    return _box_reward(completions, columns, score)


def answer_format(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1 when the completion is exactly one click in the row's answer format, written as the format writes it
    (spacing and decimals) with its coordinates in range (special tokens such as <|box_start|> aside), else 0:
    the format reward of GUI-R1 and UI-R1. Scores every row, with or without a box."""
    rewards: list[float | None] = []
    for completion, fmt_name, size, resized, _ in _rows(completions, columns, box=False):
        fmt = get_action_format(fmt_name)
        text = _SPECIAL.sub("", completion_text(completion)).strip()
        match = fmt.pattern.search(text)
        if match is None:
            rewards.append(0.0)
            continue
        # The numbers as the format writes them (its decimals), so 120.5 in an integer format is not a click in it.
        x, y = (f"{float(match.group(axis)):.{fmt.decimals}f}" for axis in ("x", "y"))
        expected = _SPECIAL.sub("", fmt.template.format(x=x, y=y)).strip()
        point = parse_click(text, fmt, size, resized)
        rewards.append(float(text == expected and point is not None))
    return rewards


REWARDS: dict[str, RewardFunction] = {
    "click_in_box": click_in_box,
    "click_distance": click_distance,
    "gaussian_point": gaussian_point,
    "answer_format": answer_format,
}


def get_reward(name: str | RewardFunction) -> RewardFunction:
    """The reward called `name` (a function passes through)."""
    if callable(name):
        return name
    if name not in REWARDS:
        raise UsageError(f"reward {name!r} is not one of eagle-align's rewards; choose from {', '.join(REWARDS)}",
                         hint="or pass your own function (completions, **columns) -> list[float] in Python")
    return REWARDS[name]
