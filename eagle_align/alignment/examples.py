"""Turn one attribution into the alignment examples the losses train on (docs/method.md).

A ranked region is *on-prior* when the target box covers at least ``prior_overlap`` of it (coverage, not IoU,
so a small region wholly inside a large box counts). Rank 1 off-prior gives a deviation example; every
off-prior rank r >= 2 gives a redundancy example, independently of rank 1.

Beyond the paper, ``deviation_margin`` widens the deviation gate to near-ties. A shortcut that is exactly as
sufficient as the target (a cue that always sits next to it in training) ranks second by a hair and is never
rank 1. The paper's gate then never fires, and the redundancy term cannot remove it either: it acts on the
prefix {target, cue}. With a margin, every off-prior region whose singleton score F({v})/Z lies within the
margin of the best one gets a deviation example of its own.

Also beyond the paper, ``necessity`` adds one example per sample that removes the whole target box (its cells,
not its regions: a region may hold the cue and a corner of the box). Its loss lowers P(x_¬B), what the rest of
the screen alone still explains of the click, down to ``blank_prob`` when given: P(x_∅), what a screen with
everything removed still gives (the model's prior), below which nothing outside the box is explaining it.

Two gates (`gate_samples`) decide which samples give examples at all. The box gate (``min_box_sufficiency``)
keeps a sample only if the box alone, everything else removed, keeps that share of the click (P(x_B) ≥ m·P(x)):
every term pushes the click's reliance into the box, and a box that holds no evidence of its own (an element
only its context tells apart from its neighbours, or a wrong box) has nowhere to take it. The blank gate
(``max_blank_share``) leaves out clicks a blank screen gives as well (P(x_∅) ≥ m·P(x)): they rest on nothing
in the screen. Both probabilities measure the model as much as the data, and the step's batch tells which one
failed: a gate that fails for the step's samples taken together (their summed probabilities) is about the
model. A model that has stopped looking at the boxes (it follows a shortcut) fails the box gate on every
sample, and is exactly what alignment is for, so the box gate then leaves out none; a model that does not look
at the screen at all (a loss plateau) fails the blank gate as a whole, and the whole step is left out, while a
blank screen that gives one sample's click (the model's default answer) says nothing about the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from eagle_align.alignment.losses import best_on_prior_gain, normalised_gains
from eagle_align.attribution.metrics import on_prior_regions
from eagle_align.attribution.regions import RegionPartition
from eagle_align.attribution.search import Attribution

GATE_SCOPES = ("step", "sample")  # what a gate's failure is read off: the step's sums, or each sample alone
# When a sample gets its necessity term: always, only once its target ranks first (deviation gate closed), or
# only when its box alone holds evidence beyond a blank screen's.
NECESSITY_GATES = ("always", "target_first", "box_evidence")
# What a necessity example removes: the target box's cells, or every region the deviation gate reads as on-prior.
NECESSITY_REMOVALS = ("box", "on_prior_regions")


@dataclass(frozen=True)
class AlignmentExample:
    """One loss term: the region set whose insertion/deletion forwards carry the gradient.

    ``regions`` is {π_1} for a deviation example and the prefix S_r = {π_1..π_r} for a redundancy example;
    a necessity example has none (rank 0): its set is `AlignmentExamples.necessity_cells`;
    ``prev_p_insert``/``prev_p_delete`` are the attribution's P(x_{S_{r−1}}) and P(x_¬{S_{r−1}}) (redundancy
    only), reused under stop-gradient instead of re-running those forwards; ``reference_prob`` is the floor
    of a necessity example's P(x_¬B) (P(x_∅), or 0).
    """

    kind: str
    rank: int
    regions: tuple[int, ...]
    prev_p_insert: float | None = None
    prev_p_delete: float | None = None
    reference_prob: float = 0.0


@dataclass
class AlignmentExamples:
    """Everything the trainer needs from one attributed sample."""

    ranking: list[int]
    on_prior: list[bool]
    gains: torch.Tensor
    best_on_prior_gain: float
    full_prob: float
    examples: list[AlignmentExample] = field(default_factory=list)
    partition: RegionPartition | None = None
    necessity_cells: torch.Tensor | None = None  # Bool [rows, cols]: what a necessity example removes (if any)
    box_prob: float | None = None  # P(x_B), the box alone, when the sufficiency gate measured it
    blank_prob: float | None = None  # P(x_∅), everything removed, when the necessity floor measured it
    box_sufficient: bool = True  # False: the box gate dropped every example of this sample
    screen_used: bool = True  # False: the blank gate dropped the sample (the model clicks without the screen)

    @property
    def deviation(self) -> list[AlignmentExample]:
        return [e for e in self.examples if e.kind == "deviation"]

    @property
    def redundancy(self) -> list[AlignmentExample]:
        return [e for e in self.examples if e.kind == "redundancy"]

    @property
    def necessity(self) -> list[AlignmentExample]:
        return [e for e in self.examples if e.kind == "necessity"]

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
            if example.kind == "necessity":
                cells[i] = torch.as_tensor(self.necessity_cells, device=cells.device).bool()
        return cells, ~cells


def build_alignment_examples(
    attribution: Attribution,
    prior_mask: torch.Tensor,
    prior_overlap: float = 0.15,
    insertion_weight: float = 2.0,
    deletion_weight: float = 1.0,
    deviation_margin: float | None = None,
    necessity: bool = False,
    necessity_gate: str = "always",
    necessity_removes: str = "box",
    box_evidence_share: float = 0.5,
    full_prob: float | None = None,
    box_prob: float | None = None,
    blank_prob: float | None = None,
    box_sufficient: bool = True,
    screen_used: bool = True,
) -> AlignmentExamples:
    """Gate an attribution into deviation / redundancy examples.

    The weights must be those the attribution's prefix scores were computed with; they set the gain scale
    Z = a + b. A redundancy example at rank r needs the measured prefix S_{r−1}; a `single_round` ranking
    measures only S_1 (see `evaluate_prefixes` to measure the rest), so ranks beyond the measured prefixes + 1
    give none. ``deviation_margin`` (None: the paper's rank-1 gate) needs the singleton scores of a
    `single_round` ranking. ``necessity`` adds the sample's necessity example (the box removed) whenever the box
    covers some cells but not all, with ``blank_prob`` (P(x_∅); None: 0) as the floor of its loss; it removes the
    box's cells (``necessity_removes="box"``) or every region of the partition the box covers by at least
    ``prior_overlap`` (``"on_prior_regions"``: what the deviation gate counts as the target, so evidence that
    shares a region with the box is left to it, as it is by the deviation gate);
    ``necessity_gate="target_first"`` adds it only when rank 1 is on-prior (the deviation gate closed);
    ``"box_evidence"`` only when the box alone keeps ``box_evidence_share`` of what the screen adds over a blank
    one, P(x_B) − P(x_∅) ≥ share · (P(x) − P(x_∅)) (needs ``box_prob`` and ``blank_prob``; ``full_prob``, P(x),
    None: the attribution's).
    ``box_sufficient`` / ``screen_used`` are the gates' verdicts (`gate_samples`); either False leaves the
    sample without examples. ``box_prob`` (P(x_B)) is kept for the record.
    """
    ranking = [int(r) for r in attribution.ranking]
    on_prior = on_prior_regions(attribution, prior_mask, prior_overlap)
    gains = normalised_gains(attribution.prefix_scores, insertion_weight, deletion_weight)
    measured = gains.numel()
    if measured > len(ranking) or len(attribution.insertion_probs) != measured:
        raise ValueError(
            f"attribution has {len(ranking)} ranked regions, {measured} prefix scores and "
            f"{len(attribution.insertion_probs)} insertion probabilities"
        )
    examples = [
        AlignmentExample("deviation", rank, (ranking[rank - 1],))
        for rank in _deviation_ranks(attribution, on_prior, deviation_margin, insertion_weight + deletion_weight)
    ]
    for rank in range(2, min(len(ranking), measured + 1) + 1):
        if not on_prior[rank - 1]:
            examples.append(
                AlignmentExample(
                    "redundancy",
                    rank,
                    tuple(ranking[:rank]),
                    prev_p_insert=float(attribution.insertion_probs[rank - 2]),
                    prev_p_delete=float(attribution.deletion_probs[rank - 2]),
                )
            )
    if necessity_gate not in NECESSITY_GATES:
        raise ValueError(f"necessity_gate {necessity_gate!r} is not one of {NECESSITY_GATES}")
    necessity_cells = (_necessity_cells(attribution.partition, torch.as_tensor(prior_mask).bool(), prior_overlap,
                                        necessity_removes) if necessity else None)
    if (necessity_cells is not None and bool(necessity_cells.any()) and not bool(necessity_cells.all())
            and _necessity_gate_open(necessity_gate, on_prior, full_prob if full_prob is not None
                                     else float(attribution.full_prob), box_prob, blank_prob, box_evidence_share)):
        examples.append(AlignmentExample("necessity", 0, (), reference_prob=float(blank_prob or 0.0)))
    if not (box_sufficient and screen_used):
        examples = []
    return AlignmentExamples(
        ranking=ranking,
        on_prior=on_prior,
        gains=gains,
        best_on_prior_gain=_best_on_prior_gain(attribution, gains, on_prior, insertion_weight + deletion_weight),
        full_prob=float(attribution.full_prob),
        examples=examples,
        partition=attribution.partition,
        necessity_cells=necessity_cells,
        box_prob=box_prob,
        blank_prob=blank_prob,
        box_sufficient=box_sufficient,
        screen_used=screen_used,
    )


def _necessity_cells(partition: RegionPartition | None, prior_cells: torch.Tensor, prior_overlap: float,
                     removes: str) -> torch.Tensor:
    """Bool [rows, cols]: the cells a necessity example removes (see `build_alignment_examples`)."""
    if removes not in NECESSITY_REMOVALS:
        raise ValueError(f"necessity_removes {removes!r} is not one of {NECESSITY_REMOVALS}")
    if removes == "box":
        return prior_cells
    if partition is None:
        raise ValueError("necessity_removes='on_prior_regions' needs the attribution's region partition")
    return partition.cells_of(partition.on_prior(prior_cells, prior_overlap))[0]


def _necessity_gate_open(gate: str, on_prior: list[bool], full_prob: float, box_prob: float | None,
                         blank_prob: float | None, box_evidence_share: float) -> bool:
    """Whether `necessity_gate` gives this sample its necessity example (see `build_alignment_examples`)."""
    if gate == "target_first":
        return bool(on_prior) and on_prior[0]
    if gate == "box_evidence":
        if box_prob is None or blank_prob is None:
            raise ValueError("necessity_gate 'box_evidence' needs P(x_B) (box_prob) and P(x_∅) (blank_prob)")
        return full_prob > blank_prob and box_prob - blank_prob >= box_evidence_share * (full_prob - blank_prob)
    return True


class GateVerdict(NamedTuple):
    """What the two gates say of one sample; it gives alignment examples only if both first fields are True."""

    box_sufficient: bool
    screen_used: bool
    shortcut_box: bool = False  # its box alone loses the click, kept because the whole step's boxes do


def gate_samples(
    full_probs: Sequence[float],
    box_probs: Sequence[float | None] | None = None,
    blank_probs: Sequence[float | None] | None = None,
    min_box_sufficiency: float | None = None,
    max_blank_share: float | None = None,
    box_scope: str = "step",
    blank_scope: str = "step",
    step_totals: tuple[float, float, float] | None = None,
) -> list[GateVerdict]:
    """The box and blank gates' verdicts for each sample.

    Sample i fails the box gate when P_i(x_B) < min_box_sufficiency · P_i(x), the blank gate when
    P_i(x_∅) ≥ max_blank_share · P_i(x); a gate set to None passes everything. A gate whose scope is "sample"
    gives those verdicts. With scope "step" the same test on the step's sums ΣP(x_B) or ΣP(x_∅) against ΣP(x)
    decides what a failure means (module docstring): the box gate keeps every sample when the step fails it as
    a whole, and otherwise leaves out the samples that fail it; the blank gate leaves out every sample when the
    step fails it, and none otherwise. ``step_totals`` = (ΣP(x), ΣP(x_B), ΣP(x_∅)) over the whole step (every
    micro-batch and rank, a gate's entry 0 when it is off); None: the sums of the samples given.
    """
    for scope in (box_scope, blank_scope):
        if scope not in GATE_SCOPES:
            raise ValueError(f"gate scope {scope!r} is not one of {GATE_SCOPES}")
    count = len(full_probs)
    if min_box_sufficiency is None and max_blank_share is None:
        return [GateVerdict(True, True)] * count
    gates = (("min_box_sufficiency", min_box_sufficiency, box_probs, "P(x_B) of the box alone"),
             ("max_blank_share", max_blank_share, blank_probs, "P(x_∅) of a blank screen"))
    for option, value, measured, needed in gates:
        if value is not None and (measured is None or len(measured) != count or None in measured):
            raise ValueError(f"{option} needs {needed} for each of the {count} samples")
    if any(not math.isfinite(p) for p in full_probs):
        raise ValueError("the gates need P(x) of every sample (the attribution did not measure it)")
    box_ok = [True] * count if min_box_sufficiency is None else [
        b >= min_box_sufficiency * p for b, p in zip(box_probs, full_probs)]
    screen_ok = [True] * count if max_blank_share is None else [
        e < max_blank_share * p for e, p in zip(blank_probs, full_probs)]
    shortcut = [False] * count
    if count:
        full, box, blank = step_totals or step_gate_totals(full_probs, box_probs, blank_probs)
        if box_scope == "step" and min_box_sufficiency is not None and box < min_box_sufficiency * full:
            # The model, not the boxes, fails: it is what alignment is for.
            box_ok, shortcut = [True] * count, [not ok for ok in box_ok]
        if blank_scope == "step" and max_blank_share is not None:
            screen_ok = [blank < max_blank_share * full] * count
    return [GateVerdict(*v) for v in zip(box_ok, screen_ok, shortcut)]


def step_gate_totals(
    full_probs: Sequence[float], box_probs: Sequence[float | None] | None, blank_probs: Sequence[float | None] | None
) -> tuple[float, float, float]:
    """(ΣP(x), ΣP(x_B), ΣP(x_∅)) of the samples given (unmeasured entries count 0): `gate_samples`' step sums."""
    return (float(sum(full_probs)), float(sum(b or 0.0 for b in box_probs or ())),
            float(sum(e or 0.0 for e in blank_probs or ())))


def _best_on_prior_gain(attribution: Attribution, gains: torch.Tensor, on_prior: list[bool], z: float) -> float:
    """h of `adaptive_log`, from what the search measured for every ranked region.

    With singleton scores (`single_round`), every ranked region's own gain F({v})/Z is known, while prefixes
    beyond S_1 are only measured when redundancy asks for them. h over measured prefix gains would then see rank
    1 alone: 0 for every rank-1 deviation example, ignoring exactly the on-prior evidence h exists for.
    Otherwise h is taken over the prefix gains g_r, which greedy searches measure for every ranked region.
    """
    if attribution.singleton_scores is not None:
        singles = torch.as_tensor(attribution.singleton_scores, dtype=torch.float64) / z
        return float(best_on_prior_gain(singles, on_prior[: singles.numel()]))
    return float(best_on_prior_gain(gains, on_prior[: gains.numel()])) if gains.numel() else 0.0


def _deviation_ranks(attribution: Attribution, on_prior: list[bool], margin: float | None, z: float) -> list[int]:
    """Ranks (1-based) that get a deviation example: rank 1 if off-prior, or every off-prior near-tie."""
    if not attribution.ranking:
        return []
    if margin is None:
        return [] if on_prior[0] else [1]
    if attribution.singleton_scores is None:
        raise ValueError("deviation_margin needs singleton scores: use search='single_round'")
    if margin < 0:
        raise ValueError(f"deviation_margin={margin} must be ≥ 0")
    best = attribution.singleton_scores[0]
    return [
        rank for rank, score in enumerate(attribution.singleton_scores, start=1)
        if (best - score) / z <= margin and not on_prior[rank - 1]
    ]
