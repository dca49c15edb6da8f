"""Click metrics: pure functions from (example, predicted point) to the numbers benchmarks publish.

Kept free of models and files so that scoring-only mode, the generation harness and the training callback
all compute exactly the same figures from the same per-sample records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eagle_align.answer_formats import point_in_image

# Fields a breakdown is reported for, in report order. `application`, `group` and `split` live in
# `GroundingExample.extra`; the others are attributes.
BREAKDOWN_FIELDS = ("platform", "ui_type", "application", "group", "source", "split")
SCREENSPOT_PLATFORMS = ("mobile", "desktop", "web")
UI_TYPES = ("text", "icon")

Point = tuple[float, float]


def _field(example: Any, name: str) -> str | None:
    value = getattr(example, name, None)
    if value is None:
        value = (getattr(example, "extra", None) or {}).get(name)
    return None if value is None else str(value)


def point_in_box(point: Sequence[float], bbox: Sequence[float]) -> bool:
    """True when the point lies inside the xyxy box, edges included (the ScreenSpot convention)."""
    x, y = point
    x1, y1, x2, y2 = bbox
    return x1 <= x <= x2 and y1 <= y <= y2


def judged_point(point: Sequence[float]) -> tuple[float, float]:
    """A click rounded to 1/1000 px, as every verdict reads it: the stored point re-scores to the same verdict,
    and float noise from mapping coordinates back (e.g. 98 · 100/140) cannot push an edge-exact click off the box."""
    return round(float(point[0]), 3), round(float(point[1]), 3)


def centre_distance(point: Sequence[float], bbox: Sequence[float], image_size: Sequence[float]) -> float:
    """Distance from the box centre in 0–1000 units of each image side, so screens of any size compare."""
    width, height = image_size
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return math.hypot((point[0] - cx) * 1000.0 / width, (point[1] - cy) * 1000.0 / height)


def score_sample(example: Any, point: Sequence[float] | None, answer: str | None = None,
                 missing: bool = False) -> dict:
    """One per-sample record (a line of predictions.jsonl): the prediction, the box and the verdict.

    `point` is in original-image pixels, or None when the answer could not be parsed (a wrong-format miss).
    A point off the image is an answer outside the model's coordinate range: a miss flagged `out_of_range`,
    its coordinates kept as `raw_point` (never clamped onto the edge, where it could land in a box).
    `missing` marks an example that has no prediction at all: a miss, as benchmark harnesses score it.
    """
    bbox = [float(v) for v in example.bbox]
    image_size = [int(v) for v in example.image_size]
    record: dict[str, Any] = {"id": str(example.id), "instruction": example.instruction}
    if isinstance(example.image, str):
        record["image"] = example.image
    record.update(image_size=image_size, bbox=bbox)
    for name in BREAKDOWN_FIELDS:
        record[name] = _field(example, name)
    if answer is not None:
        record["answer"] = answer
    miss = {"point": None, "hit": False, "distance": None}
    if missing:
        record.update(miss, wrong_format=False, out_of_range=False, missing=True)
    elif point is None:
        record.update(miss, wrong_format=True, out_of_range=False, missing=False)
    elif not point_in_image(point, image_size):
        raw = [round(float(v), 3) for v in point]
        record.update(miss, wrong_format=False, out_of_range=True, missing=False, raw_point=raw)
    else:
        x, y = judged_point(point)
        record.update(
            point=[x, y],
            hit=point_in_box((x, y), bbox),
            distance=round(centre_distance((x, y), bbox, image_size), 4),
            wrong_format=False,
            out_of_range=False,
            missing=False,
        )
    return record


def missing_record(example: Any) -> dict:
    """The record of an example without a prediction: scored as a miss."""
    return score_sample(example, None, missing=True)


def score_records(
    examples: Sequence[Any], predictions: Mapping[str, Point | None] | Sequence[Point | None]
) -> list[dict]:
    """Per-sample records for `examples`; `predictions` is aligned with them or maps example id -> point
    (then an example without an entry is a missing prediction: a miss, flagged `missing`)."""
    if isinstance(predictions, Mapping):
        return [score_sample(ex, predictions[ex.id]) if ex.id in predictions else missing_record(ex)
                for ex in examples]
    if len(predictions) != len(examples):
        raise ValueError(f"predictions has {len(predictions)} entries for {len(examples)} examples")
    return [score_sample(ex, p) for ex, p in zip(examples, predictions)]


def _summary(records: Sequence[dict]) -> dict:
    hits = sum(bool(r["hit"]) for r in records)
    distances = [r["distance"] for r in records if r["distance"] is not None]
    return {
        "n": len(records),
        "hits": hits,
        "click_accuracy": hits / len(records) if records else 0.0,
        "wrong_format": sum(bool(r["wrong_format"]) for r in records),
        "out_of_range": sum(bool(r.get("out_of_range")) for r in records),
        "missing": sum(bool(r.get("missing")) for r in records),
        "mean_distance": sum(distances) / len(distances) if distances else None,
    }


def _group_by(records: Iterable[dict], key) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        value = key(record)
        if value is not None:
            groups.setdefault(value, []).append(record)
    return groups


def breakdowns(records: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """Summary per value of every field the data defines (platform, ui_type, source, application, ...).

    A field that only repeats an earlier one (ScreenSpot's split is its platform, ScreenSpot-Pro's source is
    its application) is left out.
    """
    result: dict[str, dict[str, dict]] = {}
    for name in BREAKDOWN_FIELDS:
        if any(all(r.get(name) == r.get(kept) for r in records) for kept in result):
            continue
        groups = _group_by(records, lambda r, name=name: r.get(name))
        if groups:
            result[name] = {value: _summary(group) for value, group in sorted(groups.items())}
    return result


def _text_icon_row(records: Sequence[dict]) -> dict[str, float | None]:
    by_type = _group_by(records, lambda r: (r.get("ui_type") or "").lower() or None)
    row: dict[str, float | None] = {
        t: _summary(by_type[t])["click_accuracy"] if t in by_type else None for t in UI_TYPES
    }
    row["all"] = _summary(records)["click_accuracy"]
    row["n"] = len(records)
    return row


def screenspot_table(records: Sequence[dict]) -> dict[str, dict] | None:
    """ScreenSpot's published table: accuracy per platform (mobile / desktop / web) × text / icon.

    Returned only when every record has one of those platforms and a text/icon type, i.e. when the data is
    laid out like ScreenSpot; `average` is over samples, the way the benchmark's own scripts average.
    """
    platforms = {(r.get("platform") or "").lower() for r in records}
    types = {(r.get("ui_type") or "").lower() for r in records}
    if not records or not platforms <= set(SCREENSPOT_PLATFORMS) or not types <= set(UI_TYPES):
        return None
    by_platform = _group_by(records, lambda r: r["platform"].lower())
    table = {p: _text_icon_row(by_platform[p]) for p in SCREENSPOT_PLATFORMS if p in by_platform}
    table["average"] = _text_icon_row(records)
    return table


def group_table(records: Sequence[dict]) -> dict[str, dict] | None:
    """ScreenSpot-Pro's published table: accuracy per application group (Dev, Creative, CAD, ...) × text / icon.

    Returned only when every record names its group, as ScreenSpot-Pro annotations do.
    """
    if not records or any(r.get("group") is None for r in records):
        return None
    by_group = _group_by(records, lambda r: r["group"])
    table = {g: _text_icon_row(by_group[g]) for g in sorted(by_group)}
    table["average"] = _text_icon_row(records)
    return table


def summarize(records: Sequence[dict]) -> dict:
    """Metrics of a list of per-sample records: the top-level numbers, breakdowns and benchmark tables.

    Computed from the records alone, so metrics.json can always be re-derived from predictions.jsonl.
    """
    metrics = _summary(records)
    metrics["breakdown"] = breakdowns(records)
    tables = {"screenspot": screenspot_table(records), "screenspot_pro": group_table(records)}
    metrics["tables"] = {name: table for name, table in tables.items() if table is not None}
    return metrics


def score_predictions(
    examples: Sequence[Any], predictions: Mapping[str, Point | None] | Sequence[Point | None]
) -> dict:
    """Metrics for predicted clicks (original pixels; None = unparseable answer) on `examples`."""
    return summarize(score_records(examples, predictions))
