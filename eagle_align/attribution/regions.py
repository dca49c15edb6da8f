"""Partitions of the merged-cell grid into the sub-regions V = {v_1..v_N} the attribution ranks.

Regions are unions of merged cells (one LLM image token each, patch·merge pixels of the resized screenshot)
because that is the finest unit that can be masked by overwriting pixel_values rows, and because the target
box is rasterised on the same grid: prior consistency is then an exact count of cells, not an approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

REGION_METHODS = ("grid", "slic")


@dataclass
class RegionPartition:
    """Every cell of a `grid_hw` = (rows, cols) grid belongs to exactly one of the `n_regions` masks."""

    cell_masks: torch.Tensor  # bool [R, rows, cols]
    grid_hw: tuple[int, int]
    method: str

    def __post_init__(self) -> None:
        self.cell_masks = self.cell_masks.bool()
        self.grid_hw = (int(self.grid_hw[0]), int(self.grid_hw[1]))
        if self.cell_masks.dim() != 3 or tuple(self.cell_masks.shape[1:]) != self.grid_hw:
            raise ValueError(f"cell_masks shape {tuple(self.cell_masks.shape)} does not match grid_hw {self.grid_hw}")
        counts = self.cell_masks.sum(0)
        if not bool((counts == 1).all()):
            raise ValueError("RegionPartition: every cell must belong to exactly one region")
        if bool((self.cell_masks.flatten(1).sum(1) == 0).any()):
            raise ValueError("RegionPartition: empty region")

    @property
    def n_regions(self) -> int:
        return int(self.cell_masks.shape[0])

    @property
    def areas(self) -> torch.Tensor:
        """Share of the screenshot each region covers (cells are equal-sized), float [R], sums to 1."""
        sizes = self.cell_masks.flatten(1).sum(1).float()
        return sizes / sizes.sum()

    @property
    def region_of_cell(self) -> torch.Tensor:
        """long [rows, cols]: index of the region holding each cell."""
        return self.cell_masks.long().argmax(0)

    def cells_of(self, region_sets: torch.Tensor) -> torch.Tensor:
        """Bool [B, R] region selections -> Bool [B, rows, cols] cell masks (the union of the chosen regions)."""
        region_sets = torch.as_tensor(region_sets, device=self.cell_masks.device)
        if region_sets.dim() == 1:
            region_sets = region_sets.unsqueeze(0)
        if region_sets.shape[-1] != self.n_regions:
            raise ValueError(f"region_sets has {region_sets.shape[-1]} columns, partition has {self.n_regions} regions")
        flat = region_sets.float() @ self.cell_masks.flatten(1).float()
        return (flat > 0).view(-1, *self.grid_hw)

    def coverage(self, box_mask: torch.Tensor) -> torch.Tensor:
        """|v ∩ B| / |v| per region, float [R]: the share of each region covered by the target box.

        `on_box` thresholds it: the one definition of "on-box" used by attribution metrics, the bounded search,
        alignment example building and evaluation alike.
        """
        box = torch.as_tensor(box_mask, device=self.cell_masks.device).bool()
        if tuple(box.shape) != self.grid_hw:
            raise ValueError(f"box_mask shape {tuple(box.shape)} does not match grid_hw {self.grid_hw}")
        masks = self.cell_masks.flatten(1)
        return (masks & box.flatten()).sum(1).float() / masks.sum(1).float()

    def on_box(self, box_mask: torch.Tensor, box_overlap: float) -> torch.Tensor:
        """Bool [R]: the regions the box covers by at least ``box_overlap`` (|v ∩ B| / |v|)."""
        return self.coverage(box_mask) >= box_overlap


def _split_points(length: int, parts: int) -> list[int]:
    """Boundaries splitting `length` cells into `parts` contiguous runs whose sizes differ by at most one."""
    return [round(i * length / parts) for i in range(parts + 1)]


def _grid_shape(rows: int, cols: int, n_regions: int) -> tuple[int, int]:
    """Blocks per side (nr, nc): count closest to n_regions, then blocks closest to square."""
    best, best_key = (1, 1), None
    for nr in range(1, rows + 1):
        nc = min(cols, max(1, round(n_regions / nr)))
        aspect = abs(math.log((rows / nr) / (cols / nc)))
        key = (abs(nr * nc - n_regions), aspect)
        if best_key is None or key < best_key:
            best, best_key = (nr, nc), key
    return best


def grid_partition(grid_hw: tuple[int, int], n_regions: int) -> RegionPartition:
    """Near-square blocks of whole cells, about `n_regions` of them, in raster order."""
    rows, cols = grid_hw
    nr, nc = _grid_shape(rows, cols, n_regions)
    row_cuts, col_cuts = _split_points(rows, nr), _split_points(cols, nc)
    masks = torch.zeros(nr * nc, rows, cols, dtype=torch.bool)
    for i in range(nr):
        for j in range(nc):
            masks[i * nc + j, row_cuts[i] : row_cuts[i + 1], col_cuts[j] : col_cuts[j + 1]] = True
    return RegionPartition(masks, (rows, cols), "grid")


def _cell_labels(segments: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Majority superpixel label of each cell; `segments` is a pixel label map of shape (rows·s, cols·s)."""
    s_h, s_w = segments.shape[0] // rows, segments.shape[1] // cols
    blocks = segments[: rows * s_h, : cols * s_w].reshape(rows, s_h, cols, s_w).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows, cols, -1)
    labels = np.empty((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            values, counts = np.unique(blocks[r, c], return_counts=True)
            labels[r, c] = values[counts.argmax()]
    return labels


def slic_partition(grid_hw: tuple[int, int], n_regions: int, image, compactness: float = 10.0) -> RegionPartition:
    """Superpixels of the resized screenshot, snapped to cells (each cell joins its majority superpixel).

    SLIC follows colour edges, so regions hug UI elements instead of cutting them; snapping to cells keeps
    them maskable in pixel_values space. Snapping can merge or drop superpixels, so SLIC is re-run with a
    corrected segment count (a few times at most) to land as close to `n_regions` as the image allows,
    preferring at most `n_regions` (the count bounds the search cost).
    """
    from PIL import Image
    from skimage.segmentation import slic

    rows, cols = grid_hw
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    scale = max(1, round(pil.width / cols), round(pil.height / rows))
    if pil.size != (cols * scale, rows * scale):
        pil = pil.resize((cols * scale, rows * scale), Image.BILINEAR)
    pixels = np.asarray(pil)
    target = min(n_regions, rows * cols)
    best_labels, best_key, segments_asked = None, None, target
    for _ in range(5):
        segments = slic(pixels, n_segments=segments_asked, compactness=compactness, start_label=0)
        _, labels = np.unique(_cell_labels(segments, rows, cols), return_inverse=True)
        labels = labels.reshape(rows, cols)
        got = int(labels.max()) + 1
        key = (got > target, abs(got - target))  # never more regions than asked: N bounds the search cost
        if best_key is None or key < best_key:
            best_labels, best_key = labels, key
        if got == target:
            break
        segments_asked = max(1, round(segments_asked * target / got))
    masks = torch.from_numpy(best_labels)[None] == torch.arange(int(best_labels.max()) + 1)[:, None, None]
    return RegionPartition(masks, (rows, cols), "slic")


def make_partition(
    grid_hw: tuple[int, int], n_regions: int = 64, method: str = "grid", image=None
) -> RegionPartition:
    """Partition a (rows, cols) merged-cell grid into about `n_regions` regions.

    `method="slic"` needs `image`, the resized screenshot (PIL image or HxWx3 array) the grid was cut from.
    """
    rows, cols = int(grid_hw[0]), int(grid_hw[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"grid_hw={grid_hw} must be positive")
    if n_regions < 1:
        raise ValueError(f"n_regions={n_regions} must be at least 1")
    if method == "grid":
        return grid_partition((rows, cols), n_regions)
    if method == "slic":
        if image is None:
            raise ValueError("region_method='slic' needs the screenshot (image=...)")
        return slic_partition((rows, cols), n_regions, image)
    raise ValueError(f"region_method={method!r}; choose one of {', '.join(REGION_METHODS)}")
