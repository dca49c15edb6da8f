"""The formats GUI data usually comes in, read into eagle-align records, and the JSONL writer of `data convert`.

LLaMA-Factory / ShareGPT records keep the target inside the assistant's answer, in some model's action syntax
and coordinate space; that is why reading them needs the action format the answers were written in (it cannot
be guessed: Qwen2.5-VL and Qwen3-VL share a syntax but not a space). Tables with other column names are mapped
onto eagle-align's field names with `columns`, never guessed from the names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from eagle_align.answer_formats import ActionFormat, get_action_format
from eagle_align.data.schema import DataError, GroundingExample
from eagle_align.errors import UsageError

# The fields a column mapping may fill: eagle-align's own, plus the two of a ShareGPT record.
COLUMN_TARGETS = ("image", "instruction", "bbox", "point", "image_size", "platform", "ui_type", "source", "id",
                  "messages", "images")
_TURN_KEYS = ("messages", "conversations")
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_NUM = r"-?\d+(?:\.\d+)?"
# Qwen2.5-VL's grounding answers also name points this way; read wherever the answer syntax is JSON.
_POINT_2D = re.compile(rf'"point_2d"\s*:\s*\[\s*(?P<x>{_NUM})\s*,\s*(?P<y>{_NUM})\s*\]')


def check_columns(columns, option: str = "columns") -> dict[str, str] | None:
    """`columns` as {eagle-align field: source column}; UsageError naming `option` when it is not one."""
    if columns is None:
        return None
    if isinstance(columns, str):
        # Command line: "image=screenshot,instruction=query".
        pairs = [part.split("=", 1) for part in columns.split(",") if part.strip()]
        if not pairs or any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
            raise UsageError(f"{option}={columns!r}: write FIELD=COLUMN pairs separated by commas, "
                             "e.g. image=screenshot,instruction=query")
        columns = {field.strip(): column.strip() for field, column in pairs}
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise UsageError(f"{option}={columns!r} must map eagle-align field names to column names, "
                         "e.g. {image: screenshot, instruction: query}")
    unknown = [key for key in columns if key not in COLUMN_TARGETS]
    if unknown:
        raise UsageError(f"{option}: {', '.join(map(repr, unknown))} is not a field to map; "
                         f"choose among {', '.join(COLUMN_TARGETS)}")
    return dict(columns)


def map_columns(record: dict, columns: dict[str, str] | None) -> dict:
    """The record with each mapped source column renamed to its eagle-align field (other keys kept)."""
    if not columns:
        return record
    missing = [f"{column!r} (for {field})" for field, column in columns.items() if column not in record]
    if missing:
        raise DataError(f"no column {', '.join(missing)} named by columns=; this record has "
                        f"{', '.join(sorted(map(str, record)))}")
    sources = set(columns.values())
    mapped = {key: value for key, value in record.items() if key not in sources}
    mapped.update({field: record[column] for field, column in columns.items()})
    return mapped


def is_conversation(record) -> bool:
    """True for a LLaMA-Factory / ShareGPT record (its turns under `messages` or `conversations`)."""
    return isinstance(record, dict) and any(isinstance(record.get(key), list) for key in _TURN_KEYS)


def answer_unit(fmt: ActionFormat) -> str:
    """The bbox_format unit ('px', 'norm', '1000') the format's answers are written in.

    Qwen2.5-VL answers in pixels of the image the model saw after resizing; imported training data is read as
    pixels of the original image, the convention of the datasets written for it (their screenshots are stored
    at the size the answers were computed for).
    """
    if fmt.space == "resized":
        return "px"
    if fmt.space == "relative" and fmt.scale == 1000:
        return "1000"
    if fmt.space == "relative" and fmt.scale == 1:
        return "norm"
    raise UsageError(f"action_format={fmt.name!r}: answers in a {fmt.space} space of scale {fmt.scale} cannot be "
                     "imported")


def _text_of(content) -> tuple[str, int]:
    """(text, images) of one turn's content: a string, or a list of OpenAI-style parts."""
    if isinstance(content, str):
        return content, content.count("<image>")
    if isinstance(content, list):
        texts, images = [], 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                images += 1
            else:
                raise DataError(f"turn content part {part!r} is neither text nor image")
        text = "".join(texts)
        return text, images + text.count("<image>")
    raise DataError(f"turn content must be text, got {type(content).__name__}")


def parse_answer(answer: str, fmt: ActionFormat) -> tuple[list[float] | None, list[float] | None]:
    """(box, point) written in `answer` with `fmt`'s syntax, in `fmt`'s coordinate units; None where absent."""
    box = point = None
    rest = answer
    if fmt.box_pattern is not None and (match := fmt.box_pattern.search(answer)):
        box = [float(match.group(name)) for name in ("x1", "y1", "x2", "y2")]
        rest = answer[: match.start()] + " " * (match.end() - match.start()) + answer[match.end():]
    patterns = [fmt.pattern] + ([_POINT_2D] if fmt.pattern.pattern.startswith('"') else [])
    for pattern in patterns:
        if match := pattern.search(rest):
            point = [float(match.group("x")), float(match.group("y"))]
            break
    return box, point


def conversation_fields(record: dict, fmt: ActionFormat | None) -> tuple[dict, str]:
    """Canonical fields of one ShareGPT record (image still unresolved) and the unit of its answer's numbers.

    One screenshot, one user turn and one assistant answer per record: a multi-step trajectory has no single
    target and is refused rather than cut.
    """
    if fmt is None:
        raise DataError("a LLaMA-Factory / ShareGPT record needs the action format its answers are written in; "
                        "pass action_format= (recipe: data_action_format, command line: --action-format)")
    turns = next(record[key] for key in _TURN_KEYS if isinstance(record.get(key), list))
    texts: dict[str, list[str]] = {"user": [], "assistant": [], "system": []}
    image_marks = 0
    for turn in turns:
        if not isinstance(turn, dict):
            raise DataError(f"turn {turn!r} is not an object")
        role = turn.get("role", turn.get("from"))
        if role not in _ROLES:
            raise DataError(f"turn role {role!r} is not supported; use user/assistant (or human/gpt) and system")
        text, images = _text_of(turn.get("content", turn.get("value")))
        image_marks += images
        texts[_ROLES[role]].append(text)
    if len(texts["user"]) != 1 or len(texts["assistant"]) != 1:
        raise DataError(f"has {len(texts['user'])} user and {len(texts['assistant'])} assistant turns; one "
                        "instruction and one answer per record are supported")
    images = record.get("images", record.get("image"))
    images = [images] if isinstance(images, (str, dict)) else images
    if not isinstance(images, list) or len(images) != 1:
        raise DataError(f"needs exactly one screenshot in `images`, got {images!r}")
    if image_marks > 1:
        raise DataError(f"the user turn holds {image_marks} <image> marks; one screenshot per record is supported")
    instruction = texts["user"][0].replace("<image>", "").strip()
    answer = texts["assistant"][0]
    box, point = parse_answer(answer, fmt)
    if record.get("bbox") is not None:
        box = record["bbox"]  # a separate box field: the target's box, with the answer's click
    elif box is None and point is None:
        raise DataError(f"no click or box in the answer {answer[:80]!r} read as action_format={fmt.name!r}")
    extra = {key: value for key, value in record.items()
             if key not in (*_TURN_KEYS, "images", "image", "bbox", "point", "image_size", "id", "platform",
                            "ui_type", "source", "extra")}
    if texts["system"]:
        extra["system"] = texts["system"][0]
    fields = dict(
        image=images[0],
        image_size=record.get("image_size"),
        instruction=instruction,
        bbox=box,
        point=point,
        platform=record.get("platform"),
        ui_type=record.get("ui_type"),
        source=record.get("source"),
        id=record.get("id"),
        extra={**(record.get("extra") or {}), **extra},
    )
    return fields, answer_unit(fmt)


def resolve_action_format(name) -> ActionFormat | None:
    """The ActionFormat for `name` (None passes through), checked before any file is read."""
    return None if name is None else get_action_format(name)


def write_jsonl(examples: list[GroundingExample], out: str | Path) -> Path:
    """Write `examples` as eagle-align JSONL at `out`; images held in memory go to `<out stem>_images/`.

    Every record states `"bbox_format": "xyxy"`: its numbers are pixels whatever their size, so reading the
    file again never depends on guessing (a file of small boxes on large screens is otherwise refused).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_dir = out.parent / f"{out.stem}_images"
    lines = []
    for index, example in enumerate(examples):
        image = example.image
        if not isinstance(image, str):
            image_dir.mkdir(exist_ok=True)
            path = image_dir / f"{index:06d}.png"
            (image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")).save(path)
            image = str(path)
        image_path = Path(image).resolve()
        try:
            image = os.path.relpath(image_path, out.parent.resolve())
        except ValueError:  # another drive (Windows)
            image = str(image_path)
        record = {
            "image": image,
            "image_size": list(example.image_size),
            "instruction": example.instruction,
            "bbox": None if example.bbox is None else [float(v) for v in example.bbox],
            "point": None if example.point is None else [float(v) for v in example.point],
            "bbox_format": "xyxy",
            "platform": example.platform,
            "ui_type": example.ui_type,
            "source": example.source,
            "id": example.id,
            "extra": example.extra,
        }
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
