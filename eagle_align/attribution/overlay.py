"""Heatmap overlay of an attribution on its screenshot (used by explain, eval reports and the demo).

The heatmap is drawn per merged cell (nearest-neighbour, no smoothing), because cells are what the search
actually ranked; blurring would suggest a resolution the method does not have. `explanation_figure` is the
saved form: upscaled to a readable width, with a colour bar that says what the colours mean.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from eagle_align.attribution.search import Attribution

BOX_COLOUR = (40, 220, 60)
CLICK_COLOUR = (255, 40, 200)
REGION_COLOUR = (0, 200, 255)
COLOUR_MAP = "inferno"
# Screenshots the model saw are often only a few hundred pixels wide; figures are drawn at least this wide.
MIN_FIGURE_WIDTH = 768


def _importance_range(attribution: Attribution) -> tuple[float, float]:
    """The (floor, peak) of the cells' importance that the heatmap's 0 and 1 stand for."""
    cells = attribution.cell_importance().clamp_min(0)
    return float(cells.min()), float(cells.max())


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
        raise ValueError("render_overlay needs the attribution's partition (use RegionAttribution)")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = _heat(attribution, image.size)
    colours = colormaps[COLOUR_MAP](heat)[..., :3] * 255
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


def with_colour_bar(image: Image.Image, attribution: Attribution, background=(255, 255, 255),
                    colour=(20, 20, 20)) -> Image.Image:
    """`image` above a labelled colour bar: what the heatmap's colours stand for, from the least important
    region's normalised gain (left) to the most important one's (right)."""
    from matplotlib import colormaps
    from PIL import ImageFont

    size = max(11, min(18, image.width // 48))
    font = ImageFont.load_default(size=size)
    margin, bar_height = size, max(10, size)
    width = image.width - 2 * margin
    gradient = colormaps[COLOUR_MAP](np.linspace(0.0, 1.0, max(width, 2)))[None, :, :3] * 255
    bar = Image.fromarray(np.repeat(gradient, bar_height, axis=0).round().astype(np.uint8))
    line_height = round(size * 1.3)
    band = margin + bar_height + line_height + margin // 2 + line_height + margin // 2
    out = Image.new("RGB", (image.width, image.height + band), background)
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(bar, (margin, image.height + margin))
    draw = ImageDraw.Draw(out)
    floor, peak = _importance_range(attribution)
    ticks_y = image.height + margin + bar_height + 2
    draw.text((margin, ticks_y), f"{floor:.3g}", fill=colour, font=font)
    right = f"{peak:.3g}"
    draw.text((margin + width - draw.textlength(right, font=font), ticks_y), right, fill=colour, font=font)
    label = ("region importance (normalised gain of F(S) when the region joins the ranking)"
             if attribution.singleton_scores is None else "region importance (normalised singleton score F({v}))")
    label_x = margin + max(0.0, (width - draw.textlength(label, font=font)) / 2)
    draw.text((label_x, ticks_y + line_height), label, fill=colour, font=font)
    return out


def explanation_figure(
    image: Image.Image,
    attribution: Attribution,
    bbox: tuple[float, float, float, float] | None = None,
    click: tuple[float, float] | None = None,
    top_k: int = 3,
    min_width: int = MIN_FIGURE_WIDTH,
) -> Image.Image:
    """The overlay of `render_overlay` drawn at least `min_width` pixels wide (the screenshot upscaled, box
    and click scaled with it), with a colour bar for region importance below it."""
    scale = max(1.0, min_width / image.width)
    if scale > 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        bbox = tuple(v * scale for v in bbox) if bbox is not None else None
        click = (click[0] * scale, click[1] * scale) if click is not None else None
    return with_colour_bar(render_overlay(image, attribution, bbox=bbox, click=click, top_k=top_k), attribution)
