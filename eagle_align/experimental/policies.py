"""Experimental loss terms: the near-tie deviation gate and the necessity term (docs/method.md)."""

from __future__ import annotations

import torch

from eagle_align.alignment.examples import AlignmentExample, AlignmentExamples
from eagle_align.alignment.losses import necessity_loss
from eagle_align.alignment.policies import ChunkProbs, DeviationTerm, LossTerm

# When a sample gets its necessity term: always, only once its target ranks first (deviation gate closed), or
# only when its box alone holds evidence beyond a blank screen's.
NECESSITY_GATES = ("always", "target_first", "box_evidence")
# What a necessity example removes: the target box's cells, or every region the deviation gate reads as on-box.
NECESSITY_REMOVALS = ("box", "on_box_regions")
NECESSITY_FLOORS = ("blank", "zero")


class NearTieDeviationTerm(DeviationTerm):
    """The deviation term for every off-box region whose singleton score F({v})/(a+b) is within ``margin`` of
    the best (needs `search=single_round`): a cue exactly as sufficient as the target ranks second by a hair and
    never fires the paper's rank-1 gate."""

    def __init__(self, weight: float, variant: str = "log", margin: float = 0.0, beta: float = 2.0) -> None:
        super().__init__(weight, variant, beta)
        if not margin >= 0:
            raise ValueError(f"deviation_margin={margin} must be ≥ 0")
        self.margin = margin

    def examples(self, sample: AlignmentExamples) -> list[AlignmentExample]:
        attribution = sample.attribution
        if self.weight <= 0 or not attribution.ranking:
            return []
        if attribution.singleton_scores is None:
            raise ValueError("deviation_margin needs singleton scores: use search='single_round'")
        z = sample.gain_scale
        best = attribution.singleton_scores[0]
        return [
            AlignmentExample("deviation", rank, (sample.ranking[rank - 1],))
            for rank, score in enumerate(attribution.singleton_scores, start=1)
            if (best - score) / z <= self.margin and not sample.on_box[rank - 1]
        ]


class NecessityTerm(LossTerm):
    """Lower P(x_¬B), the click with the whole box removed, down to a floor: what a cue beside the target still
    explains once the deviation gate has closed. ``floor="blank"`` stops at P(x_∅) (a model answering from its
    prior has no shortcut outside the box), ``"zero"`` pushes all the way."""

    kind = "necessity"
    reads_insertion = False

    def __init__(self, weight: float, variant: str = "log", floor: str = "blank", gate: str = "always",
                 removes: str = "box", box_evidence_share: float = 0.5) -> None:
        super().__init__(weight, variant)
        for name, value, allowed in (("necessity_floor", floor, NECESSITY_FLOORS),
                                     ("necessity_gate", gate, NECESSITY_GATES),
                                     ("necessity_removes", removes, NECESSITY_REMOVALS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {allowed}")
        self.floor, self.gate, self.removes, self.box_evidence_share = floor, gate, removes, box_evidence_share
        self.measures = frozenset(({"blank"} if floor == "blank" or gate == "box_evidence" else set())
                                  | ({"box"} if gate == "box_evidence" else set()))

    def removed_cells(self, sample: AlignmentExamples) -> torch.Tensor:
        """Bool [rows, cols]: the box's cells, or every region the box covers by at least box_overlap."""
        if self.removes == "box":
            return sample.box_mask
        partition = sample.partition
        if partition is None:
            raise ValueError("necessity_removes='on_box_regions' needs the attribution's region partition")
        return partition.cells_of(partition.on_box(sample.box_mask, sample.box_overlap))[0]

    def _gate_open(self, sample: AlignmentExamples) -> bool:
        if self.gate == "target_first":
            return bool(sample.on_box) and sample.on_box[0]
        if self.gate == "box_evidence":
            full, box, blank = sample.full_prob, sample.box_prob, sample.blank_prob
            if box is None or blank is None:
                raise ValueError("necessity_gate 'box_evidence' needs P(x_B) (box_prob) and P(x_∅) (blank_prob)")
            return full > blank and box - blank >= self.box_evidence_share * (full - blank)
        return True

    def examples(self, sample: AlignmentExamples) -> list[AlignmentExample]:
        if self.weight <= 0:
            return []
        cells = self.removed_cells(sample)
        if not bool(cells.any()) or bool(cells.all()) or not self._gate_open(sample):
            return []
        floor = float(sample.blank_prob or 0.0) if self.floor == "blank" else 0.0
        return [AlignmentExample("necessity", 0, (), reference_prob=floor, cells=cells)]

    def loss(self, probs: ChunkProbs) -> torch.Tensor:
        floor = probs.tensor([e.reference_prob for e in probs.chunk])
        return necessity_loss(probs.p_delete, self.variant, reference=floor)
