"""Evaluation figures: accuracy per split, and example screenshots with box, click and attribution heatmap.

Uses matplotlib's Agg backend so plots render on headless training nodes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

# Fields with more values than this are left out of the bar chart (their numbers stay in report.md).
MAX_BARS = 30


def plot_accuracy(metrics: dict, path: str | Path) -> Path:
    """Bar chart of click accuracy per value of each breakdown field (one panel per field) plus overall."""
    panels = [("overall", {"all": metrics})]
    panels += [(f, groups) for f, groups in metrics.get("breakdown", {}).items() if len(groups) <= MAX_BARS]
    heights = [max(1.2, 0.32 * len(groups) + 0.8) for _, groups in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, sum(heights)), height_ratios=heights, squeeze=False)
    for ax, (field, groups) in zip(axes[:, 0], panels):
        names = list(groups)
        values = [100 * groups[n]["click_accuracy"] for n in names]
        bars = ax.barh(range(len(names)), values, color="#4C72B0")
        ax.set_yticks(range(len(names)), [f"{n} (n={groups[n]['n']})" for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_title(field, fontsize=9, loc="left")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    axes[-1, 0].set_xlabel("click accuracy (%)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def open_image(example: Any) -> Image.Image:
    """The example's screenshot at its original size, RGB."""
    if isinstance(example.image, Image.Image):
        return example.image.convert("RGB")
    with Image.open(example.image) as handle:
        return handle.convert("RGB")


def _scale(values: Sequence[float], image: Image.Image, image_size: Sequence[float]) -> list[float]:
    sx, sy = image.width / image_size[0], image.height / image_size[1]
    return [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(values)]


def overlay(image: Image.Image, record: dict, attribution: Any = None) -> Image.Image:
    """The screenshot with the target box (green), the predicted click (red) and, if given, the heatmap.

    `image` may be the original or the resized screenshot: box and click (original pixels in `record`) are
    scaled to it. The heatmap is drawn by the attribution engine's own overlay helper.
    """
    image = image.convert("RGB")
    bbox = _scale(record["bbox"], image, record["image_size"])
    click = _scale(record["point"], image, record["image_size"]) if record.get("point") else None
    if attribution is not None:
        from eagle_align.attribution import render_overlay

        return render_overlay(image, attribution, bbox=bbox, click=click)
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    width = max(2, round(min(image.size) / 150))
    draw.rectangle(bbox, outline=(0, 200, 0), width=width)
    if click is not None:
        r = 3 * width
        draw.ellipse([click[0] - r, click[1] - r, click[0] + r, click[1] + r], outline=(230, 0, 0), width=width)
    return drawn


def pick_examples(records: Sequence[dict], n_hits: int = 4, n_misses: int = 4, prefer: Sequence[int] = ()) -> list[int]:
    """Indices of some hits and some misses, preferring `prefer` (e.g. samples that have an attribution)."""
    order = list(prefer) + [i for i in range(len(records)) if i not in set(prefer)]
    hits = [i for i in order if records[i]["hit"]][:n_hits]
    misses = [i for i in order if not records[i]["hit"]][:n_misses]
    return hits + misses


def verdict_of(record: dict) -> str:
    """HIT, or the kind of miss: no prediction, unparseable answer, answer off the image, or a plain miss."""
    if record["hit"]:
        return "HIT"
    for flag, name in (("missing", "MISSING"), ("wrong_format", "WRONG FORMAT"), ("out_of_range", "OUT OF RANGE")):
        if record.get(flag):
            return name
    return "MISS"


def plot_examples(panels: Sequence[tuple[Image.Image, dict]], path: str | Path, columns: int = 4) -> Path:
    """Grid of overlay images, each titled with hit/miss, id and the instruction."""
    rows = max(1, -(-len(panels) // columns))
    cols = max(1, min(columns, len(panels)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, record) in zip(axes.ravel(), panels):
        ax.imshow(image)
        verdict = verdict_of(record)
        title = f"{verdict} · {record['id']}\n" + textwrap.shorten(record.get("instruction") or "", 60)
        ax.set_title(title, fontsize=7, color="green" if record["hit"] else "red")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
