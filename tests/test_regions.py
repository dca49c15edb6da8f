"""Region partitions of the merged-cell grid: exact cover, region counts, SLIC snapping, prior coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.attribution import RegionPartition, make_partition
from eagle_align.families import get_family, load_processor

SIZES = [(300, 200), (200, 310), (320, 96), (90, 250)]


def _grid_of(processor, family_name: str, size: tuple[int, int]) -> tuple[tuple[int, int], Image.Image]:
    """Merged grid the processor gives a screenshot of `size`, and that screenshot with some structure."""
    rng = np.random.RandomState(sum(size))
    pixels = np.full((size[1], size[0], 3), 235, dtype=np.uint8)
    for _ in range(6):
        x, y = rng.randint(0, size[0] - 20), rng.randint(0, size[1] - 20)
        pixels[y : y + 20, x : x + 30] = rng.randint(0, 255, 3)
    image = Image.fromarray(pixels)
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    merge = get_family(family_name).merge_size
    return (int(grid[1]) // merge, int(grid[2]) // merge), image


@pytest.mark.parametrize("method", ["grid", "slic"])
@pytest.mark.parametrize("n_regions", [64, 10, 7])
def test_partition_covers_every_cell_once(tiny_checkpoints, family, method, n_regions):
    processor = load_processor(tiny_checkpoints[family])
    for size in SIZES:
        grid_hw, image = _grid_of(processor, family, size)
        assert grid_hw[0] != grid_hw[1], "sizes are chosen to give non-square grids"
        partition = make_partition(grid_hw, n_regions, method, image=image)
        assert partition.grid_hw == grid_hw and partition.method == method
        assert torch.equal(partition.cell_masks.sum(0), torch.ones(grid_hw, dtype=torch.long))
        assert (partition.cell_masks.flatten(1).sum(1) > 0).all()
        cells = grid_hw[0] * grid_hw[1]
        target = min(n_regions, cells)
        assert target / 3 <= partition.n_regions <= target
        assert abs(float(partition.areas.sum()) - 1.0) < 1e-6


def test_grid_region_counts_and_shapes():
    single = make_partition((8, 8), 64)
    assert single.n_regions == 64 and torch.equal(single.region_of_cell, torch.arange(64).view(8, 8))
    assert make_partition((16, 12), 64).n_regions == 64
    blocks = make_partition((8, 8), 16)
    assert blocks.n_regions == 16
    assert set(blocks.cell_masks.flatten(1).sum(1).tolist()) == {4}
    # More regions asked than cells: every cell becomes its own region.
    assert make_partition((3, 5), 64).n_regions == 15


def test_slic_regions_follow_the_screenshot():
    pixels = np.zeros((8 * 28, 12 * 28, 3), dtype=np.uint8)
    pixels[:, : 4 * 28] = (250, 40, 40)
    pixels[:, 4 * 28 :] = (30, 30, 220)
    partition = make_partition((8, 12), 6, "slic", image=Image.fromarray(pixels))
    left = torch.zeros(8, 12, dtype=torch.bool)
    left[:, :4] = True
    for mask in partition.cell_masks:
        assert not (mask & left).any() or not (mask & ~left).any(), "a superpixel crosses the colour edge"
    assert 2 <= partition.n_regions <= 8


def test_coverage_and_cells_of():
    partition = make_partition((4, 4), 4)  # four 2x2 blocks
    prior = torch.zeros(4, 4, dtype=torch.bool)
    prior[0, 0] = prior[0, 1] = prior[1, 1] = True
    prior[3, 3] = True
    assert partition.coverage(prior).tolist() == [0.75, 0.0, 0.0, 0.25]
    cells = partition.cells_of(torch.tensor([[True, False, False, True], [False, False, False, False]]))
    assert cells.shape == (2, 4, 4)
    assert int(cells[0].sum()) == 8 and bool(cells[0, 0, 0]) and bool(cells[0, 3, 3]) and not cells[1].any()
    with pytest.raises(ValueError, match="box_mask shape"):
        partition.coverage(torch.zeros(3, 4, dtype=torch.bool))


def test_invalid_partitions_and_options_are_refused():
    overlapping = torch.ones(2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="exactly one region"):
        RegionPartition(overlapping, (2, 2), "grid")
    with pytest.raises(ValueError, match="region_method='slic' needs"):
        make_partition((4, 4), 4, "slic")
    with pytest.raises(ValueError, match="region_method='voronoi'"):
        make_partition((4, 4), 4, "voronoi")
