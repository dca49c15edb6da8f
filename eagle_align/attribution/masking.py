"""Masked screenshot variants built directly in pixel_values space.

For one image with image_grid_thw = [t, gh, gw] the processor emits t·gh·gw rows; merge window k (raster
order over the (gh/m, gw/m) merged grid) owns rows k·m²..k·m²+m²−1 of each temporal frame (docs/conventions.md).
Masking a set of merged cells is therefore a row overwrite with a constant baseline row — no PIL, no
processor, no resampling — which is what makes thousands of masked forwards per explanation affordable.
"""

from __future__ import annotations

import torch

BASELINES = ("black", "mean", "background")


def _geometry(source) -> tuple[tuple[float, ...], tuple[float, ...], int, int, int]:
    """(mean, std, temporal_patch_size, patch_size, merge_size) from a family, its name, a processor or model."""
    from eagle_align.families import ModelFamily, family_of, get_family

    if isinstance(source, str):
        source = get_family(source)
    if isinstance(source, ModelFamily):
        return source.image_mean, source.image_std, source.temporal_patch_size, source.patch_size, source.merge_size
    image_processor = getattr(source, "image_processor", source)
    if hasattr(image_processor, "image_mean") and hasattr(image_processor, "patch_size"):
        ip = image_processor
        return tuple(ip.image_mean), tuple(ip.image_std), ip.temporal_patch_size, ip.patch_size, ip.merge_size
    if hasattr(source, "config"):
        return _geometry(family_of(source))
    raise ValueError(f"baseline_row: cannot read image geometry from {type(source).__name__}")


def _dominant_border_colour(
    pixel_values: torch.Tensor, grid_thw, channels: int, merge: int, mean, std
) -> torch.Tensor:
    """Most frequent colour (normalised, [C]) over the border merged cells of one image.

    GUI screenshots have a flat background that dominates their border; filling masked cells with it keeps
    masked inputs on the manifold of screenshots the model has seen, unlike black.
    """
    t, gh, gw = (int(v) for v in torch.as_tensor(grid_thw).view(-1)[-3:])
    rows, cols = gh // merge, gw // merge
    cells = pixel_values.reshape(t, rows, cols, merge * merge, channels, -1)
    border = torch.zeros(rows, cols, dtype=torch.bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    pixels = cells[:, border].permute(0, 1, 2, 4, 3).reshape(-1, channels).float()
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)
    levels = ((pixels * std_t + mean_t) * 255 / 8).round().long().clamp(0, 32)
    keys = (levels[:, 0] * 33 + levels[:, 1]) * 33 + levels[:, 2]
    values, counts = keys.unique(return_counts=True)
    dominant = keys == values[counts.argmax()]
    return pixels[dominant].mean(0)


def baseline_row(source, kind: str = "black", pixel_values=None, grid_thw=None) -> torch.Tensor:
    """The pixel_values row that replaces a masked patch, float32 [C·T·p·p].

    `black` is −mean/std per channel (what a black pixel normalises to, EAGLE's choice), `mean` is 0 (the
    dataset mean, mid-grey), `background` the screenshot's dominant border colour, which needs the image's
    own `pixel_values` rows and `grid_thw`. `source` is a ModelFamily, family name, processor or model.
    Rows are channel-major, so each channel value repeats over temporal copies and patch pixels.
    """
    mean, std, temporal, patch, merge = _geometry(source)
    per_channel = temporal * patch * patch
    if kind == "black":
        colour = -torch.tensor(mean) / torch.tensor(std)
    elif kind == "mean":
        colour = torch.zeros(len(mean))
    elif kind == "background":
        if pixel_values is None or grid_thw is None:
            raise ValueError("baseline='background' needs the image's pixel_values and grid_thw")
        colour = _dominant_border_colour(pixel_values, grid_thw, len(mean), merge, mean, std)
    else:
        raise ValueError(f"baseline={kind!r}; choose one of {', '.join(BASELINES)}")
    return colour.float().repeat_interleave(per_channel)


def image_row_offsets(image_grid_thw: torch.Tensor) -> list[int]:
    """Start row of every image in a batch's concatenated pixel_values (plus the total at the end)."""
    counts = torch.as_tensor(image_grid_thw).view(-1, 3).prod(-1).tolist()
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + int(count))
    return offsets


def mask_image_rows(
    image_pixel_values: torch.Tensor, grid_thw, keep_cells: torch.Tensor, baseline: torch.Tensor
) -> torch.Tensor:
    """B masked copies of one image's rows, concatenated: [B·t·gh·gw, row_width].

    `keep_cells` is Bool [B, rows, cols] on the merged grid (True = keep the screenshot, False = baseline);
    `baseline` is one row (see `baseline_row`). Works for any image size; the merge size is read from the
    ratio of the patch grid to `keep_cells`.
    """
    t, gh, gw = (int(v) for v in torch.as_tensor(grid_thw).view(-1)[-3:])
    keep_cells = torch.as_tensor(keep_cells, device=image_pixel_values.device).bool()
    if keep_cells.dim() == 2:
        keep_cells = keep_cells.unsqueeze(0)
    n, rows, cols = keep_cells.shape
    if rows == 0 or cols == 0 or gh % rows or gw % cols or gh // rows != gw // cols:
        raise ValueError(f"keep_cells grid {(rows, cols)} does not divide the patch grid {(gh, gw)}")
    window = (gh // rows) * (gw // cols)
    if image_pixel_values.shape[0] != t * gh * gw:
        raise ValueError(f"image has {image_pixel_values.shape[0]} pixel_values rows, grid_thw implies {t * gh * gw}")
    width = image_pixel_values.shape[1]
    baseline = baseline.to(device=image_pixel_values.device, dtype=image_pixel_values.dtype)
    if baseline.numel() != width:
        raise ValueError(f"baseline row has {baseline.numel()} values, pixel_values rows have {width}")
    image = image_pixel_values.view(1, t, rows * cols, window, width)
    keep = keep_cells.view(n, 1, rows * cols, 1, 1)
    return torch.where(keep, image, baseline.view(1, 1, 1, 1, width)).reshape(-1, width)


def pixel_values_to_image(source, image_pixel_values: torch.Tensor, grid_thw):
    """The resized screenshot (PIL RGB, gw·p × gh·p) one image's pixel_values rows encode (first frame).

    Lets SLIC regions and overlays be computed from a collated batch alone, without re-loading the file.
    """
    from PIL import Image

    mean, std, temporal, patch, merge = _geometry(source)
    t, gh, gw = (int(v) for v in torch.as_tensor(grid_thw).view(-1)[-3:])
    rows, cols, channels = gh // merge, gw // merge, len(mean)
    patches = image_pixel_values.detach().float().cpu()[: gh * gw]
    patches = patches.view(rows, cols, merge, merge, channels, temporal, patch, patch)[:, :, :, :, :, 0]
    pixels = patches.permute(0, 2, 5, 1, 3, 6, 4).reshape(gh * patch, gw * patch, channels)
    pixels = (pixels * torch.tensor(std) + torch.tensor(mean)) * 255
    return Image.fromarray(pixels.round().clamp(0, 255).to(torch.uint8).numpy(), "RGB")
