"""Masking in pixel_values space equals re-processing a pixel-masked screenshot, for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.attribution import baseline_row, mask_image_rows, pixel_values_to_image
from eagle_align.attribution.masking import image_row_offsets
from eagle_align.families import get_family, load_processor

BACKGROUND = (200, 220, 240)


def _screenshot(rows: int, cols: int, factor: int, seed: int) -> Image.Image:
    """A screenshot of exactly the resized size (no resampling by the processor): flat border, busy inside."""
    rng = np.random.RandomState(seed)
    pixels = np.empty((rows * factor, cols * factor, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    inner = pixels[factor // 2 : -factor // 2, factor // 2 : -factor // 2]
    inner[:] = rng.randint(0, 256, inner.shape)
    return Image.fromarray(pixels)


def _painted(image: Image.Image, keep: torch.Tensor, factor: int, colour: tuple[int, int, int]) -> Image.Image:
    pixels = np.asarray(image).copy()
    for r, c in (~keep).nonzero().tolist():
        pixels[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor] = colour
    return Image.fromarray(pixels)


def _pixel_values(processor, images):
    out = processor.image_processor(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("kind,colour", [("black", (0, 0, 0)), ("background", BACKGROUND)])
def test_masking_equals_reprocessing_a_masked_image(tiny_checkpoints, family, kind, colour):
    spec = get_family(family)
    processor = load_processor(tiny_checkpoints[family])
    # Two images of different sizes in one batch: the second one is masked, its rows found by offset.
    images = [_screenshot(3, 5, spec.factor, seed=1), _screenshot(5, 4, spec.factor, seed=2)]
    pixel_values, grids = _pixel_values(processor, images)
    assert pixel_values.shape[1] == spec.row_width
    offsets = image_row_offsets(grids)
    rows_of_second = pixel_values[offsets[1] : offsets[2]]
    assert tuple(grids[1, 1:] // spec.merge_size) == (5, 4), "processor resampled the screenshot"

    generator = torch.Generator().manual_seed(0)
    keep = torch.rand(3, 5, 4, generator=generator) > 0.5
    baseline = baseline_row(processor, kind, rows_of_second, grids[1])
    masked = mask_image_rows(rows_of_second, grids[1], keep, baseline)
    assert masked.shape == (3 * rows_of_second.shape[0], spec.row_width)
    expected = torch.cat([_pixel_values(processor, [_painted(images[1], k, spec.factor, colour)])[0] for k in keep])
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=0)
    # The family object gives the same baseline as its processor.
    torch.testing.assert_close(baseline_row(spec, kind, rows_of_second, grids[1]), baseline)


def test_mean_baseline_is_zero_and_kept_rows_are_untouched(tiny_checkpoints):
    spec = get_family("qwen2_5_vl")
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"])
    pixel_values, grids = _pixel_values(processor, [_screenshot(4, 3, spec.factor, seed=3)])
    keep = torch.zeros(4, 3, dtype=torch.bool)
    keep[1, 2] = True
    masked = mask_image_rows(pixel_values, grids[0], keep, baseline_row(spec, "mean"))
    window = spec.merge_size**2
    cell = 1 * 3 + 2  # raster index of the kept merged cell
    kept_rows = slice(cell * window, (cell + 1) * window)
    assert torch.equal(masked[kept_rows], pixel_values[kept_rows])
    others = torch.ones(masked.shape[0], dtype=torch.bool)
    others[kept_rows] = False
    assert torch.equal(masked[others], torch.zeros_like(masked[others]))
    black = baseline_row("qwen2_5_vl", "black")
    assert black.shape == (spec.row_width,) and float(black[0]) == pytest.approx(-spec.image_mean[0] / spec.image_std[0])


def test_pixel_values_round_trip_to_the_resized_screenshot(tiny_checkpoints, family):
    spec = get_family(family)
    processor = load_processor(tiny_checkpoints[family])
    image = _screenshot(3, 4, spec.factor, seed=4)
    pixel_values, grids = _pixel_values(processor, [image])
    recovered = pixel_values_to_image(processor, pixel_values, grids[0])
    assert recovered.size == image.size
    assert np.abs(np.asarray(recovered, dtype=int) - np.asarray(image, dtype=int)).max() <= 1


def test_bad_masking_inputs_are_refused(tiny_checkpoints):
    spec = get_family("qwen3_vl")
    processor = load_processor(tiny_checkpoints["qwen3_vl"])
    pixel_values, grids = _pixel_values(processor, [_screenshot(3, 4, spec.factor, seed=5)])
    with pytest.raises(ValueError, match="does not divide"):
        mask_image_rows(pixel_values, grids[0], torch.ones(1, 4, 4, dtype=torch.bool), baseline_row(spec))
    with pytest.raises(ValueError, match="baseline='sepia'"):
        baseline_row(spec, "sepia")
    with pytest.raises(ValueError, match="needs the image's pixel_values"):
        baseline_row(spec, "background")
