"""Action formats: how a click target is written as the assistant's answer, and read back.

Ground truth is stored in original-image pixels; each format converts at render time into its own coordinate
space (relative grids or pixels of the resized image the model saw) and maps a model's answer back into
original pixels. The character spans of the coordinate numbers tell the collator which tokens carry the
click decision. Answers are read back as written: a point outside the image is an answer outside the model's
coordinate range, which scoring counts as a miss of its own kind (`point_in_image`), never moved onto the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eagle_align.errors import UsageError

Size = tuple[int, int]
_NUM = r"-?\d+(?:\.\d+)?"


def clamp_point(point_xy: tuple[float, float], image_size: Size) -> tuple[float, float]:
    """Clamp a point into the image (0 ≤ x ≤ W, 0 ≤ y ≤ H): for rendering ground truth, never for answers."""
    width, height = image_size
    return min(max(float(point_xy[0]), 0.0), float(width)), min(max(float(point_xy[1]), 0.0), float(height))


def point_in_image(point_xy: tuple[float, float], image_size: Size) -> bool:
    """True when the point lies on the image, edges included, at the 1/1000 px that scoring rounds to.

    A parsed answer off the image was written outside the format's coordinate range (e.g. a 0–999 answer read
    as pixels of a 308 px wide image): a miss, whatever box lies at the image's edge.
    """
    x, y = (round(float(v), 3) for v in point_xy)
    return 0.0 <= x <= float(image_size[0]) and 0.0 <= y <= float(image_size[1])


def format_point(point_xy: tuple[float, float] | None, decimals: int = 1) -> str:
    """A click for the console, `(286.8, 140.2)`: pixels to a tenth, not float noise like 286.75324675324674."""
    if point_xy is None:
        return "none"
    return "(" + ", ".join(f"{float(v):.{decimals}f}" for v in point_xy) + ")"


@dataclass(frozen=True)
class ActionFormat:
    """One answer syntax plus its coordinate space.

    `space` is "relative" (values are fractions of the image times `scale`) or "resized" (pixels of the
    resized image). `pattern` finds the coordinates: groups x, y for a point, or x1, y1, x2, y2 for a box
    (parsed as its centre) in `box_pattern`.
    """

    name: str
    template: str  # str.format template with {x} and {y}
    space: str
    scale: float
    decimals: int
    max_value: float | None
    pattern: re.Pattern
    box_pattern: re.Pattern | None = None
    description: str = ""

    def _factors(self, image_size: Size, resized_size: Size) -> tuple[float, float]:
        """Original pixels per answer unit, per axis."""
        if self.space == "resized":
            return image_size[0] / resized_size[0], image_size[1] / resized_size[1]
        return image_size[0] / self.scale, image_size[1] / self.scale

    def unit(self, image_size: Size, resized_size: Size) -> tuple[float, float]:
        """Size of one step of this format's grid, in original pixels (x, y): the round-trip tolerance."""
        fx, fy = self._factors(image_size, resized_size)
        step = 10.0**-self.decimals
        return fx * step, fy * step

    def _encode(self, value: float, factor: float, axis_max: float) -> str:
        upper = self.max_value if self.max_value is not None else axis_max
        number = min(max(round(value / factor, self.decimals), 0), upper)
        return f"{number:.{self.decimals}f}" if self.decimals else str(int(number))

    def render(self, point_xy: tuple[float, float], image_size: Size, resized_size: Size) -> str:
        """The answer text for a click at `point_xy` (original pixels) on an image shown at `resized_size`."""
        x, y = clamp_point(point_xy, image_size)
        fx, fy = self._factors(image_size, resized_size)
        # In resized pixels the last valid value is size - 1; relative grids cap at max_value.
        return self.template.format(
            x=self._encode(x, fx, resized_size[0] - 1), y=self._encode(y, fy, resized_size[1] - 1)
        )

    def _match(self, text: str) -> tuple[re.Match, tuple[str, ...]] | None:
        found = []
        for pattern, groups in ((self.box_pattern, ("x1", "y1", "x2", "y2")), (self.pattern, ("x", "y"))):
            if pattern is not None and (m := pattern.search(text)):
                found.append((m.start(), m, groups))
        if not found:
            return None
        _, match, groups = min(found, key=lambda item: item[0])
        return match, groups

    def parse(self, text: str, image_size: Size, resized_size: Size) -> tuple[float, float] | None:
        """First point (or box centre) in `text`, in original pixels as written (not clamped: see
        `point_in_image`); None if there is none."""
        found = self._match(text)
        if found is None:
            return None
        match, groups = found
        values = [float(match.group(g)) for g in groups]
        if len(values) == 4:
            values = [(values[0] + values[2]) / 2, (values[1] + values[3]) / 2]
        fx, fy = self._factors(image_size, resized_size)
        return values[0] * fx, values[1] * fy

    def coordinate_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the coordinate numbers of the first point/box in `text` ([] if none)."""
        found = self._match(text)
        if found is None:
            return []
        match, groups = found
        return [match.span(g) for g in groups]


def _point(prefix: str, sep: str, suffix: str) -> re.Pattern:
    return re.compile(rf"{prefix}(?P<x>{_NUM}){sep}(?P<y>{_NUM}){suffix}")


_JSON_COORD = _point(r'"coordinate"\s*:\s*\[\s*', r"\s*,\s*", r"\s*\]")
_JSON_BOX = re.compile(
    rf'"bbox_2d"\s*:\s*\[\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*,\s*(?P<x2>{_NUM})\s*,\s*(?P<y2>{_NUM})\s*\]'
)
_TUPLE_BOX = re.compile(
    rf"\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*,\s*\(\s*(?P<x2>{_NUM})\s*,\s*(?P<y2>{_NUM})\s*\)"
)

ACTION_FORMATS: dict[str, ActionFormat] = {
    fmt.name: fmt
    for fmt in (
        ActionFormat(
            name="qwen2_vl",
            template="<|box_start|>({x},{y})<|box_end|>",
            space="relative",
            scale=1000,
            decimals=0,
            max_value=999,
            # Box tokens are special and vanish when decoding with skip_special_tokens: not required.
            pattern=_point(r"\(\s*", r"\s*,\s*", r"\s*\)"),
            box_pattern=_TUPLE_BOX,
            description="Qwen2-VL box syntax, integers in [0, 1000) relative to the image",
        ),
        ActionFormat(
            name="qwen2_5_vl",
            template='{{"action": "click", "coordinate": [{x}, {y}]}}',
            space="resized",
            scale=1,
            decimals=0,
            max_value=None,
            pattern=_JSON_COORD,
            box_pattern=_JSON_BOX,
            description="JSON tool call, absolute pixels of the resized image",
        ),
        ActionFormat(
            name="qwen3_vl",
            template='{{"action": "click", "coordinate": [{x}, {y}]}}',
            space="relative",
            scale=1000,
            decimals=0,
            max_value=999,
            pattern=_JSON_COORD,
            box_pattern=_JSON_BOX,
            description="JSON tool call, integers 0-999 relative to the image (value / 1000 · size)",
        ),
        ActionFormat(
            name="pyautogui",
            template="pyautogui.click(x={x}, y={y})",
            space="relative",
            scale=1,
            decimals=3,
            max_value=1,
            pattern=_point(r"click\(\s*(?:x\s*=\s*)?", r"\s*,\s*(?:y\s*=\s*)?", r"\s*\)"),
            description="pyautogui call, fractions 0-1 of the image with 3 decimals",
        ),
        ActionFormat(
            name="agentcpm",
            template='{{"POINT":[{x},{y}]}}',
            space="relative",
            scale=1000,
            decimals=0,
            max_value=1000,
            pattern=_point(r'"POINT"\s*:\s*\[\s*', r"\s*,\s*", r"\s*\]"),
            description="AgentCPM-GUI JSON, integers 0-1000 relative to the image",
        ),
    )
}


def get_action_format(name: str | ActionFormat) -> ActionFormat:
    """The registered format called `name` (an ActionFormat passes through)."""
    if isinstance(name, ActionFormat):
        return name
    if name not in ACTION_FORMATS:
        raise UsageError(f"action_format={name!r} is not registered; choose one of {', '.join(ACTION_FORMATS)}")
    return ACTION_FORMATS[name]
