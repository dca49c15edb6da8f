"""The one record type every loader produces, and the checks that make a record trustworthy.

A grounding example is only useful if its box really lies on its image: a box outside the image, an empty
box or a missing file would silently teach or score the wrong click. Validation therefore runs on every
record, and its errors name where the record came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from eagle_align.errors import UsageError

# Boxes may overhang the image by this many pixels (annotation rounding); they are clipped, not rejected.
EDGE_TOLERANCE_PX = 2.0


class DataError(UsageError):
    """A data problem; the message names the file and line/record and what is wrong."""


@dataclass
class GroundingExample:
    """One screenshot, one instruction, one target box (xyxy, original pixels) and the click point.

    `bbox` is None for a point-only record (a click with no box): such an example trains as plain SFT, since
    alignment and click accuracy both need the target's box.
    """

    image: str | Image.Image
    image_size: tuple[int, int]
    instruction: str
    bbox: tuple[float, float, float, float] | None
    point: tuple[float, float] | None = None
    platform: str | None = None
    ui_type: str | None = None
    source: str | None = None
    id: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.point is None and _is_box(self.bbox):
            x1, y1, x2, y2 = self.bbox
            self.point = ((x1 + x2) / 2, (y1 + y2) / 2)


def _is_box(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_image_size(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """(W, H) of an image file, from its header only (cheap) or, with `decode`, after decoding every pixel,
    which also catches truncated and corrupt files. DataError if the file is missing, a folder or not an image.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"image path {path} is a directory, not an image file")
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return img.size
    except Exception as exc:  # PIL raises several types for unreadable files
        raise DataError(f"cannot {'decode' if decode else 'read'} image {path}: {exc}") from exc


def validate_example(example: GroundingExample, where: str, check_file: bool = True) -> GroundingExample:
    """Check types, image, size, box and point; clip a box overhanging by ≤ EDGE_TOLERANCE_PX. Returns the example.

    A record needs a box or a point (point-only records have `bbox` None); a point must lie in its box.

    `where` (e.g. "data/train.jsonl:12 (id=abc)") prefixes every error message.
    """
    if not isinstance(example.instruction, str) or not example.instruction.strip():
        raise DataError(f"{where}: instruction must be a non-empty string, got {example.instruction!r}")
    if not isinstance(example.id, str) or not example.id:
        raise DataError(f"{where}: id must be a non-empty string, got {example.id!r}")
    for name in ("platform", "ui_type", "source"):
        value = getattr(example, name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {name} must be a string or null, got {value!r}")
    size = example.image_size
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) and v > 0 for v in size)):
        raise DataError(f"{where}: image_size must be [W, H] with positive numbers, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if isinstance(example.image, Image.Image):
        actual = example.image.size
    elif isinstance(example.image, (str, Path)):
        try:
            actual = read_image_size(example.image) if check_file else size
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        example.image = str(example.image)
    else:
        raise DataError(f"{where}: image must be a path or a PIL image, got {type(example.image).__name__}")
    if tuple(actual) != size:
        raise DataError(f"{where}: image_size {list(size)} does not match the image's real size {list(actual)}")
    example.image_size = size
    width, height = size
    tol = EDGE_TOLERANCE_PX
    if example.bbox is None:
        if example.point is None:
            raise DataError(f"{where}: needs a bbox [x1, y1, x2, y2] or a point [x, y]")
    elif not _is_box(example.bbox):
        raise DataError(f"{where}: bbox must be 4 numbers [x1, y1, x2, y2], got {example.bbox!r}")
    else:
        x1, y1, x2, y2 = (float(v) for v in example.bbox)
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: bbox {[x1, y1, x2, y2]} has zero or negative area (xyxy expected)")
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DataError(f"{where}: bbox {[x1, y1, x2, y2]} lies outside the {width}x{height} image")
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: bbox has no area inside the {width}x{height} image")
        example.bbox = (x1, y1, x2, y2)
        if example.point is None:
            example.point = ((x1 + x2) / 2, (y1 + y2) / 2)
    if not (isinstance(example.point, (list, tuple)) and len(example.point) == 2
            and all(_is_number(v) for v in example.point)):
        raise DataError(f"{where}: point must be [x, y] numbers, got {example.point!r}")
    px, py = (float(v) for v in example.point)
    if not (-tol <= px <= width + tol and -tol <= py <= height + tol):
        raise DataError(f"{where}: point {[px, py]} lies outside the {width}x{height} image")
    if example.bbox is not None:
        x1, y1, x2, y2 = example.bbox
        # The click must hit its own target: a point off its box teaches one place and scores another.
        if not (x1 - tol <= px <= x2 + tol and y1 - tol <= py <= y2 + tol):
            raise DataError(f"{where}: point {[px, py]} lies outside its bbox {[x1, y1, x2, y2]}")
    example.point = (px, py)
    if not isinstance(example.extra, dict):
        raise DataError(f"{where}: extra must be a dict, got {type(example.extra).__name__}")
    return example


class ExampleSet(list):
    """A list of validated examples plus what the loader refused (`problems`) and how many (`skipped`)."""

    def __init__(self, examples=(), problems: list[str] | None = None, skipped: int = 0):
        super().__init__(examples)
        self.problems: list[str] = list(problems or [])
        self.skipped = skipped

    @property
    def point_only(self) -> int:
        """How many examples have a click point but no box (trained as plain SFT, no alignment)."""
        return sum(1 for ex in self if ex.bbox is None)

    def by_split(self) -> dict[str, int]:
        """Example count per `extra["split"]` (None → "all")."""
        counts: dict[str, int] = {}
        for ex in self:
            key = str(ex.extra.get("split") or "all")
            counts[key] = counts.get(key, 0) + 1
        return counts
