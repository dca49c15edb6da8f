"""Alignment example building: on/off-box gating of a ranking into the loss terms' examples, and the gates'
verdicts on a micro-batch (eagle_align.alignment.policies, eagle_align.experimental.policies)."""

from __future__ import annotations

import pytest
import torch

from eagle_align.alignment import (
    BlankScreenGate,
    BoxSufficiencyGate,
    DeviationTerm,
    GateVerdicts,
    RedundancyTerm,
    build_alignment_examples,
)
from eagle_align.attribution import Attribution, make_partition
from eagle_align.attribution.metrics import on_box_regions
from eagle_align.experimental import NearTieDeviationTerm, NecessityTerm

# A 4x4 merged-cell grid cut into four 2x2 regions: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
PARTITION = make_partition((4, 4), n_regions=4, method="grid")


def attribution(ranking: list[int], insertion=None, deletion=None) -> Attribution:
    insertion = insertion or [0.2 + 0.1 * r for r in range(len(ranking))]
    deletion = deletion or [0.8 - 0.1 * r for r in range(len(ranking))]
    scores = [2 * i + (1 - d) for i, d in zip(insertion, deletion)]
    return Attribution(
        ranking=ranking, prefix_scores=scores, insertion_probs=insertion, deletion_probs=deletion,
        full_prob=0.9, empty_prob=0.05, forwards=0, seconds=0.0, search="exact", n_regions=4,
        partition=PARTITION,
    )


def box(rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def paper_terms() -> list:
    """The paper's two terms, both on."""
    return [DeviationTerm(1.0), RedundancyTerm(1.0)]


def with_necessity(**necessity) -> list:
    return [*paper_terms(), NecessityTerm(1.0, **necessity)]


def build(att: Attribution, box_mask: torch.Tensor, terms=None, **kwargs):
    """build_alignment_examples with the set function the attributions above were scored with (a = 2, b = 1)."""
    kwargs.setdefault("insertion_weight", 2.0)
    kwargs.setdefault("deletion_weight", 1.0)
    return build_alignment_examples(att, box_mask, paper_terms() if terms is None else terms, **kwargs)


def test_partition_is_the_expected_quadrants():
    assert PARTITION.n_regions == 4
    assert torch.equal(PARTITION.cell_masks[0], box(slice(0, 2), slice(0, 2)))
    assert torch.equal(PARTITION.cell_masks[3], box(slice(2, 4), slice(2, 4)))


def test_all_on_box_gives_no_example():
    built = build(attribution([0, 1, 2]), box(slice(0, 4), slice(0, 4)))
    assert built.on_box == [True, True, True]
    assert built.examples == []


def test_all_off_box_gives_one_deviation_and_k_minus_one_redundancy():
    att = attribution([1, 2, 3])
    built = build(att, box(slice(0, 2), slice(0, 2)))  # box = region 0, never ranked
    assert built.on_box == [False, False, False]
    assert [(e.kind, e.rank, e.regions) for e in built.examples] == [
        ("deviation", 1, (1,)),
        ("redundancy", 2, (1, 2)),
        ("redundancy", 3, (1, 2, 3)),
    ]
    # The previous prefix's probabilities come from the attribution (no recomputation).
    assert built.redundancy[0].prev_p_insert == pytest.approx(att.insertion_probs[0])
    assert built.redundancy[1].prev_p_delete == pytest.approx(att.deletion_probs[1])
    assert built.deviation[0].prev_p_insert is None
    assert built.best_on_box_gain == 0.0 and built.full_prob == pytest.approx(0.9)


def test_a_term_gives_examples_in_the_order_the_terms_are_given():
    built = build(attribution([1, 2, 3]), box(slice(0, 2), slice(0, 2)), terms=[RedundancyTerm(1.0), DeviationTerm(1.0)])
    assert [(e.kind, e.rank) for e in built.examples] == [("redundancy", 2), ("redundancy", 3), ("deviation", 1)]


def test_a_term_with_weight_zero_gives_no_examples():
    att, target = attribution([1, 2, 3]), box(slice(0, 2), slice(0, 2))
    assert [e.kind for e in build(att, target, terms=[DeviationTerm(1.0), RedundancyTerm(0.0)]).examples] == [
        "deviation"]
    assert [e.kind for e in build(att, target, terms=[DeviationTerm(0.0), RedundancyTerm(1.0)]).examples] == [
        "redundancy", "redundancy"]
    assert build(att, target, terms=[DeviationTerm(0.0), RedundancyTerm(0.0), NecessityTerm(0.0)]).examples == []
    assert build(att, target, terms=[]).examples == []


def test_mixed_rank_one_off_box_rank_two_on_box():
    built = build(attribution([1, 0, 2]), box(slice(0, 2), slice(0, 2)))
    assert built.on_box == [False, True, False]
    assert [(e.kind, e.rank) for e in built.examples] == [("deviation", 1), ("redundancy", 3)]
    assert built.best_on_box_gain == pytest.approx(max(0.0, float(built.gains[1])))


def test_mixed_rank_one_on_box_gives_redundancy_only():
    built = build(attribution([0, 3]), box(slice(0, 2), slice(0, 2)))
    assert [(e.kind, e.rank, e.regions) for e in built.examples] == [("redundancy", 2, (0, 3))]
    assert built.deviation == []


def test_coverage_threshold_decides_on_box():
    one_cell = box(slice(0, 1), slice(0, 1))  # covers 1/4 of region 0
    assert on_box_regions(attribution([0]), one_cell, box_overlap=0.15) == [True]
    assert on_box_regions(attribution([0]), one_cell, box_overlap=0.3) == [False]
    # build_alignment_examples' box_overlap is the same threshold.
    assert build(attribution([0]), one_cell, box_overlap=0.15).on_box == [True]
    assert build(attribution([0]), one_cell, box_overlap=0.3).on_box == [False]
    assert [e.kind for e in build(attribution([0]), one_cell, box_overlap=0.3).examples] == ["deviation"]


def test_keep_cells_are_the_union_and_its_complement():
    built = build(attribution([1, 2, 3]), box(slice(0, 2), slice(0, 2)))
    insert, delete = built.keep_cells()
    assert insert.shape == (3, 4, 4)
    assert torch.equal(insert[0], PARTITION.cell_masks[1])
    assert torch.equal(insert[2], PARTITION.cell_masks[1] | PARTITION.cell_masks[2] | PARTITION.cell_masks[3])
    assert torch.equal(delete, ~insert)


def test_necessity_example_removes_the_box_cells_not_its_regions():
    """One per sample, whatever the ranking; its deletion keeps every cell outside the box, even in a region the
    box only partly covers."""
    corner = box(slice(0, 1), slice(0, 3))  # region 0's top row and one cell of region 1
    built = build(attribution([3, 2]), corner, terms=with_necessity())
    assert [(e.kind, e.regions) for e in built.examples][-1] == ("necessity", ())
    necessity = built.of_kind("necessity")
    assert len(necessity) == 1 and len(built.deviation) == 1
    assert torch.equal(necessity[0].cells, corner)  # the example carries the cells it removes
    insert, delete = built.keep_cells(necessity)
    assert torch.equal(insert[0], corner) and torch.equal(delete[0], ~corner)
    assert necessity[0].reference_prob == 0.0  # no blank screen measured: pushed all the way down
    floored = build(attribution([3, 2]), corner, terms=with_necessity(), blank_prob=0.35)
    assert floored.of_kind("necessity")[0].reference_prob == 0.35 and floored.blank_prob == 0.35
    # floor="zero" pushes all the way down even where the blank screen was measured.
    zero = build(attribution([3, 2]), corner, terms=with_necessity(floor="zero"), blank_prob=0.35)
    assert zero.of_kind("necessity")[0].reference_prob == 0.0 and zero.blank_prob == 0.35
    assert build(attribution([3, 2]), corner).of_kind("necessity") == []  # not among the paper's terms
    # A box over every cell or over none leaves nothing to remove from or to keep.
    assert build(attribution([1]), box(slice(0, 4), slice(0, 4)), terms=with_necessity()).examples == []
    assert build(attribution([1]), box(slice(0, 0), slice(0, 0)), terms=with_necessity()).of_kind("necessity") == []


def test_necessity_on_box_regions_removes_what_the_deviation_gate_counts_as_target():
    """removes="on_box_regions": the removed set is the union of the regions the box covers by at least
    box_overlap, so a cue sharing such a region with the box goes with it; regions below the share stay."""
    corner = box(slice(0, 2), slice(0, 1))  # half of region 0 (on-box), nothing of the others
    built = build(attribution([3, 2]), corner, terms=with_necessity(removes="on_box_regions"))
    necessity = built.of_kind("necessity")
    assert torch.equal(necessity[0].cells, PARTITION.cell_masks[0])
    insert, delete = built.keep_cells(necessity)
    assert torch.equal(insert[0], PARTITION.cell_masks[0]) and torch.equal(delete[0], ~PARTITION.cell_masks[0])
    # A box over one cell of region 0 and one of region 1: with box_overlap 0.3 neither region is on-box, so
    # there is nothing to remove and no necessity example; with 0.15 both regions go.
    two_cells = box(slice(1, 2), slice(1, 3))
    assert build(attribution([3]), two_cells, box_overlap=0.3,
                 terms=with_necessity(removes="on_box_regions")).of_kind("necessity") == []
    both = build(attribution([3]), two_cells, terms=with_necessity(removes="on_box_regions"))
    assert torch.equal(both.keep_cells(both.of_kind("necessity"))[0][0],
                       PARTITION.cell_masks[0] | PARTITION.cell_masks[1])
    assert torch.equal(build(attribution([3]), two_cells, terms=with_necessity())
                       .keep_cells()[0][-1], two_cells)  # the default removes the box's own cells
    with pytest.raises(ValueError, match="necessity_removes 'cells'"):
        NecessityTerm(1.0, removes="cells")


def test_target_first_necessity_waits_for_the_target_to_rank_first():
    """gate="target_first": the term joins only a sample whose rank 1 is on the target; a sample whose cue still
    ranks first keeps its deviation term alone."""
    target = box(slice(0, 2), slice(0, 2))  # region 0
    cue_first = build(attribution([1, 0]), target, terms=with_necessity(gate="target_first"))
    assert [e.kind for e in cue_first.examples] == ["deviation"]
    target_first = build(attribution([0, 1]), target, terms=with_necessity(gate="target_first"), blank_prob=0.2)
    assert [e.kind for e in target_first.examples] == ["redundancy", "necessity"]
    assert target_first.of_kind("necessity")[0].reference_prob == 0.2
    always = build(attribution([1, 0]), target, terms=with_necessity())
    assert [e.kind for e in always.examples] == ["deviation", "necessity"]
    with pytest.raises(ValueError, match="necessity_gate 'later'"):
        NecessityTerm(1.0, gate="later")
    with pytest.raises(ValueError, match="necessity_floor 'prior'"):
        NecessityTerm(1.0, floor="prior")


def test_box_evidence_necessity_needs_the_box_to_beat_a_blank_screen():
    """gate="box_evidence": the term only where the box alone keeps the share of what the screen adds over a
    blank one; a box that gives no more than a blank screen (an unmarked target) gets none."""
    target = box(slice(0, 2), slice(0, 2))

    def kinds(box_prob, blank_prob, full_prob=0.9):
        built = build(attribution([1, 0]), target, terms=with_necessity(gate="box_evidence", box_evidence_share=0.5),
                      full_prob=full_prob, box_prob=box_prob, blank_prob=blank_prob)
        return [e.kind for e in built.examples]

    assert kinds(box_prob=0.7, blank_prob=0.3) == ["deviation", "necessity"]  # 0.4 ≥ 0.5 · 0.6
    assert kinds(box_prob=0.4, blank_prob=0.3) == ["deviation"]  # 0.1 < 0.3
    assert kinds(box_prob=0.8, blank_prob=0.8) == ["deviation"]  # the box adds nothing over a blank screen
    assert kinds(box_prob=0.9, blank_prob=0.95) == ["deviation"]  # the screen adds nothing either
    with pytest.raises(ValueError, match="box_evidence"):
        build(attribution([0]), target, terms=with_necessity(gate="box_evidence"))


def test_gains_and_errors():
    att = attribution([1, 2], insertion=[0.5, 0.7], deletion=[0.5, 0.2])
    built = build(att, box(slice(0, 2), slice(2, 4)))  # box = region 1
    assert built.gains.tolist() == pytest.approx([1.5 / 3, (2.2 - 1.5) / 3])
    assert built.best_on_box_gain == pytest.approx(0.5)
    att.partition = None
    with pytest.raises(ValueError, match="partition"):
        build(att, box(slice(0, 2), slice(0, 2)))


def test_single_round_ranking_gives_redundancy_only_where_the_previous_prefix_was_measured():
    att = attribution([1, 2, 3])
    att.prefix_scores, att.insertion_probs, att.deletion_probs = att.prefix_scores[:1], [0.2], [0.8]
    built = build(att, box(slice(0, 2), slice(0, 2)))
    assert [(e.kind, e.rank) for e in built.examples] == [("deviation", 1), ("redundancy", 2)]
    assert built.gains.numel() == 1


def single_round(ranking: list[int], singleton_scores: list[float]) -> Attribution:
    """A single_round attribution (a = 2, b = 1, so Z = 3) with the given singleton scores, best first."""
    att = attribution(ranking)
    att.search, att.singleton_scores = "single_round", singleton_scores
    att.prefix_scores, att.insertion_probs, att.deletion_probs = singleton_scores[:1], [0.9], [0.1]
    return att


def near_tie(margin: float) -> list:
    return [NearTieDeviationTerm(1.0, margin=margin), RedundancyTerm(1.0)]


def test_deviation_margin_gates_off_box_near_ties_of_an_on_box_top_region():
    # Target (region 0) ranks first by a hair over a cue (region 3); region 1 is far behind.
    att = single_round([0, 3, 1, 2], [2.70, 2.67, 0.30, 0.10])
    target = box(slice(0, 2), slice(0, 2))
    assert build(att, target).deviation == []  # the paper's gate: rank 1 is on-box
    near = build(att, target, terms=near_tie(0.05))  # (2.70 - 2.67) / 3 = 0.01
    assert [(e.rank, e.regions) for e in near.deviation] == [(2, (3,))]
    assert [e.rank for e in near.redundancy] == [2]  # unchanged: the paper's term for the same region
    assert build(att, target, terms=near_tie(0.005)).deviation == []
    wide = build(att, target, terms=near_tie(0.85))  # 0.30 is 0.8 behind, 0.10 is 0.87
    assert [e.rank for e in wide.deviation] == [2, 3]


def test_best_on_box_gain_of_a_single_round_ranking_comes_from_singleton_scores():
    # Cue (region 3) first, target (region 0) a close second: only prefix S_1 = {cue} was measured.
    att = single_round([3, 0, 1], [2.70, 2.40, 0.30])
    built = build(att, box(slice(0, 2), slice(0, 2)))
    assert [e.kind for e in built.examples] == ["deviation"] and built.gains.numel() == 1
    assert built.best_on_box_gain == pytest.approx(2.40 / 3)  # the target's own gain F({0})/Z
    # Measuring the later prefixes (redundancy on) does not change which evidence h is taken from.
    att.prefix_scores, att.insertion_probs, att.deletion_probs = [2.70, 2.75, 2.80], [0.9] * 3, [0.1] * 3
    assert build(att, box(slice(0, 2), slice(0, 2))).best_on_box_gain == pytest.approx(0.8)
    # No on-box region among the ranked ones: h = 0.
    assert build(att, box(slice(2, 4), slice(0, 2))).best_on_box_gain == 0.0


def test_deviation_margin_keeps_an_off_box_top_region_and_needs_singleton_scores():
    att = single_round([3, 0], [2.7, 2.6])
    built = build(att, box(slice(0, 2), slice(0, 2)), terms=near_tie(0.1))
    assert [(e.rank, e.regions) for e in built.deviation] == [(1, (3,))]
    with pytest.raises(ValueError, match="single_round"):
        build(attribution([1, 2]), box(slice(0, 2), slice(0, 2)), terms=near_tie(0.1))
    with pytest.raises(ValueError, match="≥ 0"):
        NearTieDeviationTerm(1.0, margin=-0.1)


def test_the_measured_probabilities_travel_with_the_sample():
    """What the gates measured (P(x_B), P(x_∅)) is kept on the sample next to the examples the terms took."""
    corner = box(slice(0, 1), slice(0, 3))
    kept = build(attribution([3, 2]), corner, terms=with_necessity(), box_prob=0.5, blank_prob=0.35)
    assert kept.box_prob == 0.5 and kept.blank_prob == 0.35 and kept.ranking == [3, 2]
    assert [e.kind for e in kept.examples] == ["deviation", "redundancy", "necessity"]
    unmeasured = build(attribution([3, 2]), corner)
    assert unmeasured.box_prob is None and unmeasured.blank_prob is None


def step_verdicts(gate, full, measured):
    """A gate's verdicts when the given samples are the whole step (the step sums are theirs)."""
    return gate.verdicts(full, measured, sum(full), sum(measured))


def test_sample_scope_tests_each_sample_on_its_own():
    """Box gate: P(x_B) ≥ m·P(x) passes; blank gate: P(x_∅) < m·P(x) passes."""
    full, box_probs, blank_probs = [0.9, 0.9, 0.8], [0.45, 0.44, 0.1], [0.5, 0.86, 0.7]
    boxes = step_verdicts(BoxSufficiencyGate(0.5, scope="sample"), full, box_probs)
    blanks = step_verdicts(BlankScreenGate(0.95, scope="sample"), full, blank_probs)
    assert list(zip(boxes.keep, blanks.keep)) == [(True, True), (False, False), (False, True)]
    assert not any(boxes.flagged)  # only the step scope keeps a failing box
    assert not any(blanks.flagged)


def test_step_scope_reads_a_whole_step_failing_as_the_models():
    """Step sums decide what a failure means: the box gate keeps every sample when the step fails it, the blank
    gate drops every sample when the step fails it and none otherwise."""
    full = [1.0, 1.0, 1.0, 1.0]
    box_gate, blank_gate = BoxSufficiencyGate(0.5), BlankScreenGate(0.95)
    assert box_gate.scope == "step" and blank_gate.scope == "step"
    # Two boxes of four lose the click, the step keeps 0.55 ≥ 0.5 of it: those two are left out.
    two = step_verdicts(box_gate, full, [1.0, 1.0, 0.1, 0.1])
    assert two.keep == [True, True, False, False] and not any(two.flagged)
    # Every box loses it (a shortcut model): the model fails, not the boxes, and every sample is aligned; the
    # samples whose own box fails are reported as shortcut boxes.
    kept = step_verdicts(box_gate, full, [0.6, 0.3, 0.1, 0.1])
    assert kept.keep == [True] * 4
    assert kept.flagged == [False, True, True, True]
    # One sample a blank screen clicks (a default answer), the step's blank share 0.8: every sample is kept.
    assert step_verdicts(blank_gate, full, [0.99, 0.7, 0.75, 0.76]).keep == [True] * 4
    # A model that clicks the same on a blank screen everywhere: every sample is left out.
    assert step_verdicts(blank_gate, full, [0.97, 0.99, 0.96, 0.94]).keep == [False] * 4
    # Each gate has its own scope: the box gate per sample, the blank gate on the step.
    boxes = step_verdicts(BoxSufficiencyGate(0.5, scope="sample"), full, [0.4, 0.3, 0.1, 0.6])
    blanks = step_verdicts(blank_gate, full, [0.99, 0.7, 0.75, 0.76])
    assert list(zip(boxes.keep, blanks.keep, boxes.flagged)) == [
        (False, True, False), (False, True, False), (False, True, False), (True, True, False)]
    # The step's sums may come from other micro-batches and ranks: here they fail the blank gate for this one
    # too, though its own blank share (0.5) would pass.
    assert blank_gate.verdicts([1.0], [0.5], 10.0, 9.9).keep == [False]
    # A box failing alone is left out when the step passes, and kept (flagged) when the step fails as a whole.
    assert box_gate.verdicts([1.0], [0.1], 10.0, 9.0) == GateVerdicts([False], [False])
    assert box_gate.verdicts([1.0], [0.1], 10.0, 1.0) == GateVerdicts([True], [True])


def test_gate_scope_is_checked():
    with pytest.raises(ValueError, match="gate scope 'batch'"):
        BoxSufficiencyGate(0.5, scope="batch")
    with pytest.raises(ValueError, match="gate scope 'batch'"):
        BlankScreenGate(0.95, scope="batch")
