"""Heatmap overlay of an attribution on its screenshot (used by explain, eval reports and the demo).

The heatmap is drawn per merged cell (nearest-neighbour, no smoothing), because cells are what the search
actually ranked; blurring would suggest a resolution the method does not have.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from eagle_align.attribution.search import Attribution

BOX_COLOUR = (40, 220, 60)
CLICK_COLOUR = (255, 40, 200)
REGION_COLOUR = (0, 200, 255)


def _heat(attribution: Attribution, size: tuple[int, int]) -> np.ndarray:
    """Importance per pixel in [0, 1], shape (H, W), relative to the least important cell.

    Singleton scores are positive almost everywhere (any region alone gives the answer some support), so
    scaling by the peak alone would tint the whole screenshot; the floor is subtracted first.
    """
    cells = attribution.cell_importance().clamp_min(0).numpy().astype(np.float32)
    cells = cells - float(cells.min())
    peak = float(cells.max())
    if peak > 0:
        cells = cells / peak
    return np.asarray(Image.fromarray(cells, mode="F").resize(size, Image.NEAREST))


def _outline(draw: ImageDraw.ImageDraw, cells: np.ndarray, cell_w: float, cell_h: float, width: int) -> None:
    """Draw the boundary of a set of cells (edges between a member cell and a non-member or the border)."""
    rows, cols = cells.shape
    for r, c in zip(*np.nonzero(cells)):
        x0, y0, x1, y1 = c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h
        if r == 0 or not cells[r - 1, c]:
            draw.line([(x0, y0), (x1, y0)], fill=REGION_COLOUR, width=width)
        if r == rows - 1 or not cells[r + 1, c]:
            draw.line([(x0, y1), (x1, y1)], fill=REGION_COLOUR, width=width)
        if c == 0 or not cells[r, c - 1]:
            draw.line([(x0, y0), (x0, y1)], fill=REGION_COLOUR, width=width)
        if c == cols - 1 or not cells[r, c + 1]:
            draw.line([(x1, y0), (x1, y1)], fill=REGION_COLOUR, width=width)


def render_overlay(
    image: Image.Image,
    attribution: Attribution,
    bbox: tuple[float, float, float, float] | None = None,
    click: tuple[float, float] | None = None,
    top_k: int = 3,
    alpha: float = 0.6,
) -> Image.Image:
    """The screenshot with the importance heatmap, the top-k regions outlined and numbered, the target box
    (green) and the predicted click (magenta) — `bbox` and `click` in the pixels of `image`.

    The attribution grid is stretched over the whole image, so `image` may be the original screenshot or
    the resized one the model saw.
    """
    from matplotlib import colormaps

    if attribution.partition is None:
        raise ValueError("render_overlay needs the attribution's partition (use attribute_sample)")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = _heat(attribution, image.size)
    colours = colormaps["inferno"](heat)[..., :3] * 255
    weight = (alpha * heat)[..., None]
    out = Image.fromarray((base * (1 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    rows, cols = attribution.partition.grid_hw
    cell_w, cell_h = image.width / cols, image.height / rows
    line = max(1, round(min(image.size) / 160))
    masks = attribution.partition.cell_masks.numpy()
    for rank, region in enumerate(attribution.ranking[:top_k], start=1):
        _outline(draw, masks[region], cell_w, cell_h, line)
        r, c = np.argwhere(masks[region])[0]
        draw.text((c * cell_w + 2 * line, r * cell_h + line), str(rank), fill=REGION_COLOUR)
    if bbox is not None:
        draw.rectangle([float(v) for v in bbox], outline=BOX_COLOUR, width=line + 1)
    if click is not None:
        x, y = click
        radius = 3 * line + 3
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=CLICK_COLOUR, width=line + 1)
        draw.line([(x - 2 * radius, y), (x + 2 * radius, y)], fill=CLICK_COLOUR, width=line)
        draw.line([(x, y - 2 * radius), (x, y + 2 * radius)], fill=CLICK_COLOUR, width=line)
    return out


def with_title(image: Image.Image, lines: list[str], background=(255, 255, 255), colour=(20, 20, 20)) -> Image.Image:
    """`image` below a title band holding `lines`, each wrapped to the image width (so a saved explanation
    says what it explains: instruction, answer, P(x), whether the click is in the box)."""
    from PIL import ImageFont

    size = max(11, min(18, image.width // 40))
    font = ImageFont.load_default(size=size)
    measure = ImageDraw.Draw(image)
    margin, wrapped = size // 2, []
    for line in lines:
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and measure.textlength(trial, font=font) > image.width - 2 * margin:
                wrapped.append(current)
                current = word
            else:
                current = trial
        wrapped.append(current)
    line_height = round(size * 1.3)
    band = 2 * margin + line_height * len(wrapped)
    out = Image.new("RGB", (image.width, image.height + band), background)
    out.paste(image.convert("RGB"), (0, band))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(wrapped):
        draw.text((margin, margin + i * line_height), text, fill=colour, font=font)
    return out
