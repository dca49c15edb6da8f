"""Evaluation: click accuracy on GUI grounding benchmarks, attribution reasonability, reports and plots."""

from eagle_align.eval.report import read_predictions, render_report, write_predictions, write_report
from eagle_align.eval.scoring import (
    breakdowns,
    centre_distance,
    clamp_point,
    group_table,
    point_in_box,
    score_predictions,
    score_records,
    score_sample,
    screenspot_table,
    summarize,
)

__all__ = [
    "breakdowns",
    "centre_distance",
    "clamp_point",
    "group_table",
    "point_in_box",
    "read_predictions",
    "render_report",
    "score_predictions",
    "score_records",
    "score_sample",
    "screenspot_table",
    "summarize",
    "write_predictions",
    "write_report",
]
