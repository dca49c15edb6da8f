"""Evaluation: click accuracy on GUI grounding benchmarks, attribution reasonability, reports and plots."""

from eagle_align.eval.harness import (
    attribute_predictions,
    evaluate,
    predict,
    summarize_attribution,
    write_plots,
)
from eagle_align.eval.report import read_predictions, render_report, write_predictions, write_report
from eagle_align.eval.scoring import (
    breakdowns,
    centre_distance,
    group_table,
    point_in_box,
    score_predictions,
    score_records,
    score_sample,
    screenspot_table,
    summarize,
)

__all__ = [
    "ClickEvalCallback",
    "attribute_predictions",
    "breakdowns",
    "centre_distance",
    "evaluate",
    "group_table",
    "point_in_box",
    "predict",
    "read_predictions",
    "render_report",
    "score_predictions",
    "score_records",
    "score_sample",
    "screenspot_table",
    "summarize",
    "summarize_attribution",
    "write_plots",
    "write_predictions",
    "write_report",
]


def __getattr__(name: str):
    # The callback needs transformers; import it only when asked for, so scoring stays light.
    if name == "ClickEvalCallback":
        from eagle_align.eval.callback import ClickEvalCallback

        return ClickEvalCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
