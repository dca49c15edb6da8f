"""Turn one attribution into the alignment examples the losses train on (docs/method.md).

A ranked region is *on the box* when the target box covers at least ``box_overlap`` of it (coverage, not IoU,
so a small region wholly inside a large box counts). Which examples a sample gives is each loss term's own
decision (`eagle_align.alignment.policies`): the paper's deviation term takes rank 1 when it lies off the box,
its redundancy term every off-box rank r ≥ 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from eagle_align.alignment.losses import best_on_box_gain, normalised_gains
from eagle_align.attribution.metrics import on_box_regions
from eagle_align.attribution.regions import RegionPartition
from eagle_align.attribution.search import Attribution

if TYPE_CHECKING:
    from eagle_align.alignment.policies import LossTerm


@dataclass(frozen=True)
class AlignmentExample:
    """One loss term's input: the region set whose insertion/deletion forwards carry the gradient.

    ``regions`` is {π_1} for a deviation example and the prefix S_r = {π_1..π_r} for a redundancy example;
    ``cells`` (Bool [rows, cols]) replaces the regions for an example that keeps explicit cells (e.g. the box);
    ``prev_p_insert``/``prev_p_delete`` are the attribution's P(x_{S_{r−1}}) and P(x_¬{S_{r−1}}) (redundancy),
    reused under stop-gradient; ``reference_prob`` is a floor a term's loss may read.
    """

    kind: str
    rank: int
    regions: tuple[int, ...]
    prev_p_insert: float | None = None
    prev_p_delete: float | None = None
    reference_prob: float = 0.0
    cells: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class AlignmentExamples:
    """One attributed sample, as the loss terms read it, and the examples they took from it."""

    attribution: Attribution
    box_mask: torch.Tensor  # Bool [rows, cols]: the target box's merged cells
    on_box: list[bool]  # per ranked region: on the box
    gains: torch.Tensor
    best_on_box_gain: float
    full_prob: float  # P(x)
    box_overlap: float
    gain_scale: float  # Z = a + b of the set function the gains are divided by
    box_prob: float | None = None  # P(x_B), the box alone, when a gate or term measured it
    blank_prob: float | None = None  # P(x_∅), everything removed, when a gate or term measured it
    examples: list[AlignmentExample] = field(default_factory=list)

    @property
    def ranking(self) -> list[int]:
        return [int(r) for r in self.attribution.ranking]

    @property
    def insertion_probs(self) -> list[float]:
        return list(self.attribution.insertion_probs)

    @property
    def deletion_probs(self) -> list[float]:
        return list(self.attribution.deletion_probs)

    @property
    def partition(self) -> RegionPartition | None:
        return self.attribution.partition

    def of_kind(self, kind: str) -> list[AlignmentExample]:
        return [e for e in self.examples if e.kind == kind]

    @property
    def deviation(self) -> list[AlignmentExample]:
        return self.of_kind("deviation")

    @property
    def redundancy(self) -> list[AlignmentExample]:
        return self.of_kind("redundancy")

    def keep_cells(self, examples: list[AlignmentExample] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell keep-masks (insertion, deletion), each Bool[E, rows, cols], for ``examples`` (default: all)."""
        if self.partition is None:
            raise ValueError("this AlignmentExamples has no region partition to turn region sets into cells")
        examples = self.examples if examples is None else examples
        sets = torch.zeros(len(examples), self.partition.n_regions, dtype=torch.bool)
        for i, example in enumerate(examples):
            sets[i, list(example.regions)] = True
        cells = self.partition.cells_of(sets)
        for i, example in enumerate(examples):
            if example.cells is not None:
                cells[i] = torch.as_tensor(example.cells, device=cells.device).bool()
        return cells, ~cells


def build_alignment_examples(
    attribution: Attribution,
    box_mask: torch.Tensor,
    terms: Sequence[LossTerm],
    box_overlap: float = 0.15,
    insertion_weight: float = 0.0,
    deletion_weight: float = 1.0,
    full_prob: float | None = None,
    box_prob: float | None = None,
    blank_prob: float | None = None,
) -> AlignmentExamples:
    """One attributed sample and the examples each of ``terms`` takes from it, in the terms' order.

    The weights must be those the attribution's prefix scores were computed with; they set the gain scale
    Z = a + b. ``full_prob`` is P(x) (None: the attribution's); ``box_prob`` / ``blank_prob`` what the gates
    and terms measured (P(x_B), P(x_∅)).
    """
    measured = len(attribution.prefix_scores)
    if measured > len(attribution.ranking) or len(attribution.insertion_probs) != measured:
        raise ValueError(
            f"attribution has {len(attribution.ranking)} ranked regions, {measured} prefix scores and "
            f"{len(attribution.insertion_probs)} insertion probabilities"
        )
    on_box = on_box_regions(attribution, box_mask, box_overlap)
    gains = normalised_gains(attribution.prefix_scores, insertion_weight, deletion_weight)
    sample = AlignmentExamples(
        attribution=attribution,
        box_mask=torch.as_tensor(box_mask).bool(),
        on_box=on_box,
        gains=gains,
        best_on_box_gain=_best_on_box_gain(attribution, gains, on_box, insertion_weight + deletion_weight),
        full_prob=float(attribution.full_prob if full_prob is None else full_prob),
        box_overlap=box_overlap,
        gain_scale=insertion_weight + deletion_weight,
        box_prob=box_prob,
        blank_prob=blank_prob,
    )
    for term in terms:
        sample.examples += term.examples(sample)
    return sample


def _best_on_box_gain(attribution: Attribution, gains: torch.Tensor, on_box: list[bool], z: float) -> float:
    """h of `adaptive_log`, from what the search measured for every ranked region.

    With singleton scores (`single_round`), every ranked region's own gain F({v})/Z is known, while prefixes
    beyond S_1 are only measured when redundancy asks for them; otherwise h is taken over the prefix gains g_r,
    which greedy searches measure for every ranked region.
    """
    if attribution.singleton_scores is not None:
        singles = torch.as_tensor(attribution.singleton_scores, dtype=torch.float64) / z
        return float(best_on_box_gain(singles, on_box[: singles.numel()]))
    return float(best_on_box_gain(gains, on_box[: gains.numel()])) if gains.numel() else 0.0
