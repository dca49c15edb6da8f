"""Branch-and-bound for the greedy step's best region: the `bounded` search strategy.

A greedy step picks argmax over candidates v of F(S ∪ {v}), F(T) = a·P(x_T) + b·(1 − P(x_¬T)). Scoring every
candidate costs 2 forwards each. Here candidates are scored in groups first. If P is monotone in the kept set
(keeping more never lowers P(x_T), so removing more never raises P(x_¬T)), then for every v in a group G ⊇ C ∋ v

    F(S ∪ {v}) ≤ a·P(x_{S∪C}) + b·(1 − P(x_¬(S∪G))),

so a group's insertion, and its own or an ancestor's deletion (0 if none is measured), bound all its
members' scores. The search measures insertions first (the one forward that tells where the evidence is),
dives along the highest bound to one region and scores it, then refines every group whose bound still beats
that region: first its deletion (which often prunes it whole), then its children's insertions. It stops once
no open group's bound exceeds the best region found; every member of a pruned group is provably no better,
so the answer equals exact's whenever P is monotone (additive set functions included). A forward budget per
step bounds the worst case: once spent, the regions of every open group are scored flat, which stays exact.

The groups follow the box: the on-box regions (the box covers ≥ box_overlap of them) form one group,
so a sample whose evidence is the target settles with no off-box region scored alone. The off-box side
starts as its two spatial halves, not as one union: a union of the whole rest of the screen mixes every
competing element (distractors next to the shortcut), and real models score such a mix below the shortcut
alone, breaking the bound (measured on partly shortcut-trained tiny Qwen3-VL models: testing the off-box
union whole lost 10 % of the gate decisions at 16 SLIC regions on the first 40 screens, its halves none). Below, groups halve along
their wider axis of region centroids down to `leaf_size` regions. Real models are only roughly monotone:
benchmarks/fidelity_bench.py measures how often the decisions agree with `exact`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import torch

DEFAULT_LEAF_SIZE = 2
DEFAULT_STEP_BUDGET: int | None = None
# Groups on the best region's side of the box that could beat it by at most this much of Z = a + b are not
# opened: separating such near-ties cost flat screens (where the image hardly moves P) up to 59 forwards at
# N = 64. Near-ties across the box are always separated: they decide the deviation gate (on the demo's
# orange-distractor fidelity set, pruning them too lost 6 of 72 gate decisions at N = 64).
DEFAULT_TIE_TOLERANCE = 0.0025


@dataclass
class RegionGroup:
    """A node of the group hierarchy: its member regions, its children (none for a single region), and
    `on_box`: True / False when every member is on / off the box, None for a mixed group (or no box)."""

    members: tuple[int, ...]
    children: list[RegionGroup] = field(default_factory=list)
    on_box: bool | None = None


def build_hierarchy(
    n_regions: int,
    on_box: Sequence[bool] | None = None,
    centroids: torch.Tensor | None = None,
    leaf_size: int = DEFAULT_LEAF_SIZE,
) -> RegionGroup:
    """Root group over all regions: the on-box ones as one group beside the two halves of the off-box ones
    (when both exist), each halved spatially below.

    `centroids` float [R, 2] (row, col) orders the halves; without it regions split by index (raster order
    for grid partitions). Groups of at most `leaf_size` regions split into single regions.
    """
    if leaf_size < 1:
        raise ValueError(f"leaf_size={leaf_size} must be at least 1")
    if on_box is not None and len(on_box) != n_regions:
        raise ValueError(f"on_box has {len(on_box)} flags for {n_regions} regions")
    if centroids is None:
        centroids = torch.stack([torch.arange(n_regions).float(), torch.zeros(n_regions)], 1)
    everything = tuple(range(n_regions))
    if on_box is None:
        return _spatial_tree(everything, centroids, leaf_size)
    inside = tuple(v for v in everything if on_box[v])
    off_box = tuple(v for v in everything if not on_box[v])
    if not inside or not off_box:
        return _spatial_tree(everything, centroids, leaf_size)
    outside = _spatial_tree(off_box, centroids, leaf_size, on_box=False)
    # The off-box side enters as its halves: its union mixes every competing element of the screen.
    return RegionGroup(
        everything, [_spatial_tree(inside, centroids, leaf_size, on_box=True), *(outside.children or [outside])]
    )


def _spatial_tree(
    members: tuple[int, ...], centroids: torch.Tensor, leaf_size: int, on_box: bool | None = None
) -> RegionGroup:
    """Halve along the axis where the members' centroids spread most, until `leaf_size` regions remain."""
    if len(members) == 1:
        return RegionGroup(members, on_box=on_box)
    if len(members) <= leaf_size:
        return RegionGroup(members, [RegionGroup((v,), on_box=on_box) for v in members], on_box)
    points = centroids[list(members)]
    axis = int((points.max(0).values - points.min(0).values).argmax())
    order = sorted(members, key=lambda v: (float(centroids[v, axis]), float(centroids[v, 1 - axis]), v))
    half = len(order) // 2
    return RegionGroup(
        members, [_spatial_tree(tuple(order[:half]), centroids, leaf_size, on_box),
                  _spatial_tree(tuple(order[half:]), centroids, leaf_size, on_box)], on_box
    )


def region_centroids(cell_masks: torch.Tensor) -> torch.Tensor:
    """float [R, 2]: mean (row, col) of each region's cells."""
    masks = cell_masks.float()
    rows = torch.arange(masks.shape[1]).float().view(1, -1, 1)
    cols = torch.arange(masks.shape[2]).float().view(1, 1, -1)
    sizes = masks.flatten(1).sum(1)
    return torch.stack([(masks * rows).flatten(1).sum(1) / sizes, (masks * cols).flatten(1).sum(1) / sizes], 1)


class MemoProb:
    """Region-set probabilities cached by set, for a search coroutine: `probs = yield from memo(sets)`.

    A set asked again (a region's insertion after a spent budget, P(x) or P(x_∅) at the end, a set two greedy
    steps share) costs no forward; only unseen sets are passed on to `ask` (a counting coroutine of the same
    shape, `eagle_align.attribution.search`), whose `forwards` counts the sets that reached the model.
    """

    def __init__(self, ask: Callable[[torch.Tensor], Generator[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.ask, self.cache = ask, {}

    @property
    def forwards(self) -> int:
        return self.ask.forwards

    def __call__(self, region_sets: torch.Tensor) -> Generator[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = [bytes(row.tolist()) for row in region_sets.bool()]
        new = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if new:
            rows = torch.tensor([list(k) for k in new], dtype=torch.bool)
            values = yield from self.ask(rows)
            for key, value in zip(new, values.tolist()):
                self.cache[key] = value
        return torch.tensor([self.cache[k] for k in keys])


@dataclass
class BoundedStep:
    """The greedy step's answer: the region, F(S ∪ {v}) and the two probabilities behind it."""

    region: int
    score: float
    insertion: float
    deletion: float


@dataclass
class _Open:
    """A group under consideration in one step, with what is known of F(S ∪ G).

    `high` bounds P(x_{S∪G}) from above and `low` bounds P(x_¬(S∪G)) from below: measured values, or the
    parent's bounds (valid for every subgroup when P is monotone) until measured.
    """

    group: RegionGroup
    free: tuple[int, ...]
    high: float
    low: float
    measured_low: bool = False

    def bound(self, a: float, b: float) -> float:
        return a * self.high + b * (1 - self.low)


def bounded_best(
    prob: MemoProb,
    selected: torch.Tensor,
    root: RegionGroup,
    insertion_weight: float,
    deletion_weight: float,
    budget: int | None = DEFAULT_STEP_BUDGET,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Generator[torch.Tensor, torch.Tensor, BoundedStep]:
    """argmax over v ∉ `selected` of F(selected ∪ {v}) by best-first branch-and-bound over `root`'s groups.

    A coroutine, like the search that runs it: `step = yield from bounded_best(memo, ...)`, where `memo` is a
    `MemoProb`; the region sets it yields are answered with their probabilities.

    Order of work (module docstring): insertions of the top groups in one batch; a dive along the highest
    bound, one batch of children's insertions per level, to one region and its deletion; then, while an open
    group's bound beats the best region, that group's deletion or, once measured, its children's insertions.
    Exact whenever P is monotone in the kept set, up to `tie_tolerance`: a group on the best region's side
    of the prior is not opened unless its bound beats the best region by more than tie_tolerance·(a + b), so
    the answer's score is within that of the exhaustive best, and its side (the deviation gate) is exact's. Once `budget` forwards are spent in this step (None: no limit), the regions of every
    open group are scored flat instead.
    """
    a, b = insertion_weight, deletion_weight
    start = prob.forwards
    best: tuple[float, int, float, float] | None = None  # (score, region, insertion, deletion)
    best_side: bool | None = None  # the best region's side of the box
    heap: list[tuple[float, int, _Open]] = []
    parked: list[tuple[float, int, _Open]] = []  # near-ties on the best region's side, not opened
    pushed = 0

    def free_of(group: RegionGroup) -> tuple[int, ...]:
        return tuple(v for v in group.members if not selected[v])

    def kept(node: _Open, insertion: bool) -> torch.Tensor:
        keep = selected.clone()
        keep[list(node.free)] = True
        return keep if insertion else ~keep

    def measure(nodes: list[_Open], insertion: bool) -> Generator[torch.Tensor, torch.Tensor, None]:
        """One batched request for one side (insertion or deletion) of every node."""
        if not nodes:
            return
        values = (yield from prob(torch.stack([kept(node, insertion) for node in nodes]))).tolist()
        for node, value in zip(nodes, values):
            if insertion:
                node.high = value
            else:
                node.low, node.measured_low = value, True

    def settle(node: _Open) -> None:
        """A single region with both forwards is a candidate answer; anything else goes (back) on the heap."""
        nonlocal best, best_side, pushed
        if len(node.free) == 1 and node.measured_low:
            value = node.bound(a, b)
            if best is None or value > best[0] or (value == best[0] and node.free[0] < best[1]):
                best = (value, node.free[0], node.high, node.low)
                if node.group.on_box != best_side:
                    best_side = node.group.on_box
                    for entry in parked:  # near-ties set aside for the old side are near-ties across sides now
                        heapq.heappush(heap, entry)
                    parked.clear()
            return
        pushed += 1
        heapq.heappush(heap, (-node.bound(a, b), pushed, node))

    def children(node: _Open) -> list[_Open]:
        """The node's live children (a child left with one live child is that child), inheriting its bounds."""
        out = []
        for child in node.group.children:
            while len(free_of(child)) > 0 and len(child.children) > 0:
                live = [c for c in child.children if free_of(c)]
                if len(live) != 1:
                    break
                child = live[0]
            if free_of(child):
                out.append(_Open(child, free_of(child), node.high, node.low))
        return out

    top = _Open(root, free_of(root), 1.0, 0.0)
    while len(top.free) > 1 and len(children(top)) == 1:
        top = children(top)[0]
    level = children(top) if len(top.free) > 1 else [top]
    yield from measure(level, insertion=True)
    # Dive along the highest bound to one region first: pruning needs a best region to compare against.
    while True:
        node = max(level, key=lambda n: n.bound(a, b))
        for other in level:
            if other is not node:
                settle(other)
        if len(node.free) == 1:
            break
        level = children(node)
        yield from measure(level, insertion=True)
    if not node.measured_low:
        yield from measure([node], insertion=False)
    settle(node)
    margin = tie_tolerance * (a + b)
    while heap and -heap[0][0] > best[0]:
        if -heap[0][0] <= best[0] + margin and heap[0][2].group.on_box == best_side:
            parked.append(heapq.heappop(heap))
            continue
        if budget is not None and prob.forwards - start >= budget:
            regions = sorted({v for _, _, node in heap for v in node.free})
            heap.clear()
            flat = [_Open(RegionGroup((v,)), (v,), 1.0, 0.0) for v in regions]
            yield from measure(flat, insertion=True)
            yield from measure(flat, insertion=False)
            for node in flat:
                settle(node)
            break
        _, _, node = heapq.heappop(heap)
        if not node.measured_low:
            yield from measure([node], insertion=False)
            settle(node)
        else:
            refined = children(node)
            yield from measure(refined, insertion=True)
            for child in refined:
                settle(child)
    return BoundedStep(region=best[1], score=best[0], insertion=best[2], deletion=best[3])
