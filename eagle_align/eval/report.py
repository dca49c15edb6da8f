"""Evaluation outputs: metrics.json, predictions.jsonl and report.md.

Published grounding numbers move with the prompt and the pixel limits, so every report carries the settings
and library versions that produced it next to the numbers.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from eagle_align.eval.scoring import UI_TYPES

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.md"


def versions() -> dict[str, str | None]:
    """Versions of the packages that decide what the numbers mean."""
    result: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("eagle-align", "torch", "transformers", "peft", "qwen-vl-utils"):
        try:
            result[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            result[package] = None
    return result


def write_predictions(records: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """Lines of a predictions.jsonl file; a malformed line fails with its line number."""
    path = Path(path)
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _text_icon_table(table: dict[str, dict], label: str) -> list[str]:
    lines = [f"| {label} | text | icon | all | n |", "|---|---:|---:|---:|---:|"]
    for name, row in table.items():
        cells = " | ".join(_pct(row[t]) for t in (*UI_TYPES, "all"))
        lines.append(f"| {'**average**' if name == 'average' else name} | {cells} | {row['n']} |")
    return lines


def _attribution_lines(attribution: dict) -> list[str]:
    names = [k for k in attribution["overall"] if k != "n"]
    lines = ["| subset | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for subset in ("overall", "correct", "incorrect"):
        row = attribution.get(subset)
        if row:
            lines.append(f"| {subset} | {row['n']} | " + " | ".join(_num(row.get(k)) for k in names) + " |")
    if attribution.get("settings"):  # which attribution the point game measured, and where that came from
        used = ", ".join(f"{k}={v}" for k, v in attribution["settings"].items())
        overrides = ", ".join(f"{k}={v}" for k, v in (attribution.get("overrides") or {}).items())
        lines += ["", f"Attribution settings: {used} ({attribution.get('source', 'unknown source')}"
                  + (f"; overridden: {overrides}" if overrides else "") + ")."]
    return lines


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def headline(metrics: dict) -> str:
    """The one-sentence result, saying what the accuracy is over: how many samples, and how many of them
    are misses of which kind (missing prediction, wrong format, out of range).

    Under `scored_subset` (scoring-only mode, `--score-subset`) the accuracy is over the predicted samples
    only, and the sentence says so with the total.
    """
    n = metrics["n"]
    accuracy = f"click accuracy {_pct(metrics['click_accuracy'])}%"
    notes = []
    if metrics.get("scored_subset"):
        total = metrics.get("examples", n)
        missing = metrics.get("missing_predictions", 0)
        scope = f"on {n} of {_count(total, 'sample')}"
        notes.append(f"{missing} missing, scored as a subset")
    else:
        scope = f"on {_count(n, 'sample')}"
        if metrics.get("missing"):
            notes.append(f"{_count(metrics['missing'], 'missing prediction')} scored as misses")
    notes.append(f"{metrics['wrong_format']} wrong format")
    if metrics.get("out_of_range"):
        notes.append(f"{metrics['out_of_range']} out of range")
    return f"{accuracy} {scope} ({', '.join(notes)})"


def render_report(metrics: dict) -> str:
    """Markdown report: headline numbers, benchmark tables, breakdowns, attribution and settings."""
    lines = [
        "# Evaluation report",
        "",
        f"**{headline(metrics)}**",
        "",
        "| samples | click accuracy (%) | hits | wrong format | out of range | missing | mean distance (0–1000) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {metrics['n']} | {_pct(metrics['click_accuracy'])} | {metrics['hits']} | {metrics['wrong_format']} "
        f"| {metrics.get('out_of_range', 0)} | {metrics.get('missing', 0)} | {_num(metrics['mean_distance'])} |",
    ]
    if metrics.get("scored_subset"):
        lines += ["", f"Scored as a subset: {metrics.get('missing_predictions', 0)} of {metrics.get('examples')} "
                  "examples have no prediction and are left out of every number below."]
    titles = {"screenspot": ("ScreenSpot table (accuracy %)", "platform"),
              "screenspot_pro": ("ScreenSpot-Pro table (accuracy %)", "group")}
    for name, table in metrics.get("tables", {}).items():
        title, label = titles[name]
        lines += ["", f"## {title}", "", *_text_icon_table(table, label)]
    for field, groups in metrics.get("breakdown", {}).items():
        lines += ["", f"## By {field}", "", f"| {field} | n | accuracy (%) | wrong format | out of range | missing "
                  "| mean distance |", "|---|---:|---:|---:|---:|---:|---:|"]
        for value, row in groups.items():
            lines.append(f"| {value} | {row['n']} | {_pct(row['click_accuracy'])} | {row['wrong_format']} "
                         f"| {row.get('out_of_range', 0)} | {row.get('missing', 0)} | {_num(row['mean_distance'])} |")
    if metrics.get("attribution"):
        lines += ["", "## Attribution (model's own answer as target)", "", *_attribution_lines(metrics["attribution"])]
    if metrics.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in metrics["plots"].items()]
    lines += ["", "## Settings", "", "```json", json.dumps(metrics.get("settings", {}), indent=2), "```"]
    lines += ["", "## Versions", "", "```json", json.dumps(metrics.get("versions", {}), indent=2), "```", ""]
    return "\n".join(lines)


def write_report(metrics: dict, records: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, predictions.jsonl and report.md into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / METRICS_FILE,
        "predictions": write_predictions(records, out / PREDICTIONS_FILE),
        "report": out / REPORT_FILE,
    }
    paths["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    paths["report"].write_text(render_report(metrics))
    return paths
