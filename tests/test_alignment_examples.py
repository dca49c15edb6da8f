"""Alignment example building: on/off-prior gating of a ranking into deviation and redundancy examples."""

from __future__ import annotations

import pytest
import torch

from eagle_align.alignment import build_alignment_examples, on_prior_regions
from eagle_align.attribution import Attribution, make_partition

# A 4x4 merged-cell grid cut into four 2x2 regions: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
PARTITION = make_partition((4, 4), n_regions=4, method="grid")


def attribution(ranking: list[int], insertion=None, deletion=None) -> Attribution:
    insertion = insertion or [0.2 + 0.1 * r for r in range(len(ranking))]
    deletion = deletion or [0.8 - 0.1 * r for r in range(len(ranking))]
    scores = [2 * i + (1 - d) for i, d in zip(insertion, deletion)]
    return Attribution(
        ranking=ranking, prefix_scores=scores, insertion_probs=insertion, deletion_probs=deletion,
        full_prob=0.9, empty_prob=0.05, forwards=0, seconds=0.0, strategy="exact", n_regions=4,
        partition=PARTITION,
    )


def box(rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def test_partition_is_the_expected_quadrants():
    assert PARTITION.n_regions == 4
    assert torch.equal(PARTITION.cell_masks[0], box(slice(0, 2), slice(0, 2)))
    assert torch.equal(PARTITION.cell_masks[3], box(slice(2, 4), slice(2, 4)))


def test_all_on_prior_gives_no_example():
    built = build_alignment_examples(attribution([0, 1, 2]), box(slice(0, 4), slice(0, 4)))
    assert built.on_prior == [True, True, True]
    assert built.examples == []


def test_all_off_prior_gives_one_deviation_and_k_minus_one_redundancy():
    att = attribution([1, 2, 3])
    built = build_alignment_examples(att, box(slice(0, 2), slice(0, 2)))  # box = region 0, never ranked
    assert built.on_prior == [False, False, False]
    assert [(e.kind, e.rank, e.regions) for e in built.examples] == [
        ("deviation", 1, (1,)),
        ("redundancy", 2, (1, 2)),
        ("redundancy", 3, (1, 2, 3)),
    ]
    # The previous prefix's probabilities come from the attribution (no recomputation).
    assert built.redundancy[0].prev_p_insert == pytest.approx(att.insertion_probs[0])
    assert built.redundancy[1].prev_p_delete == pytest.approx(att.deletion_probs[1])
    assert built.deviation[0].prev_p_insert is None
    assert built.best_on_prior_gain == 0.0 and built.full_prob == pytest.approx(0.9)


def test_mixed_rank_one_off_prior_rank_two_on_prior():
    built = build_alignment_examples(attribution([1, 0, 2]), box(slice(0, 2), slice(0, 2)))
    assert built.on_prior == [False, True, False]
    assert [(e.kind, e.rank) for e in built.examples] == [("deviation", 1), ("redundancy", 3)]
    assert built.best_on_prior_gain == pytest.approx(max(0.0, float(built.gains[1])))


def test_mixed_rank_one_on_prior_gives_redundancy_only():
    built = build_alignment_examples(attribution([0, 3]), box(slice(0, 2), slice(0, 2)))
    assert [(e.kind, e.rank, e.regions) for e in built.examples] == [("redundancy", 2, (0, 3))]
    assert built.deviation == []


def test_coverage_threshold_decides_on_prior():
    one_cell = box(slice(0, 1), slice(0, 1))  # covers 1/4 of region 0
    assert on_prior_regions(attribution([0]), one_cell, prior_overlap=0.15) == [True]
    assert on_prior_regions(attribution([0]), one_cell, prior_overlap=0.3) == [False]


def test_keep_cells_are_the_union_and_its_complement():
    built = build_alignment_examples(attribution([1, 2, 3]), box(slice(0, 2), slice(0, 2)))
    insert, delete = built.keep_cells()
    assert insert.shape == (3, 4, 4)
    assert torch.equal(insert[0], PARTITION.cell_masks[1])
    assert torch.equal(insert[2], PARTITION.cell_masks[1] | PARTITION.cell_masks[2] | PARTITION.cell_masks[3])
    assert torch.equal(delete, ~insert)


def test_necessity_example_removes_the_box_cells_not_its_regions():
    """One per sample, whatever the ranking; its deletion keeps every cell outside the box, even in a region the
    box only partly covers."""
    corner = box(slice(0, 1), slice(0, 3))  # region 0's top row and one cell of region 1
    built = build_alignment_examples(attribution([3, 2]), corner, necessity=True)
    assert [(e.kind, e.regions) for e in built.examples][-1] == ("necessity", ())
    assert len(built.necessity) == 1 and len(built.deviation) == 1
    insert, delete = built.keep_cells(built.necessity)
    assert torch.equal(insert[0], corner) and torch.equal(delete[0], ~corner)
    assert built.necessity[0].reference_prob == 0.0  # no blank screen measured: pushed all the way down
    floored = build_alignment_examples(attribution([3, 2]), corner, necessity=True, blank_prob=0.35)
    assert floored.necessity[0].reference_prob == 0.35 and floored.blank_prob == 0.35
    assert build_alignment_examples(attribution([3, 2]), corner).necessity == []  # off by default
    # A box over every cell or over none leaves nothing to remove from or to keep.
    assert build_alignment_examples(attribution([1]), box(slice(0, 4), slice(0, 4)), necessity=True).examples == []
    assert build_alignment_examples(attribution([1]), box(slice(0, 0), slice(0, 0)), necessity=True).necessity == []


def test_gains_and_errors():
    att = attribution([1, 2], insertion=[0.5, 0.7], deletion=[0.5, 0.2])
    built = build_alignment_examples(att, box(slice(0, 2), slice(2, 4)))  # box = region 1
    assert built.gains.tolist() == pytest.approx([1.5 / 3, (2.2 - 1.5) / 3])
    assert built.best_on_prior_gain == pytest.approx(0.5)
    att.partition = None
    with pytest.raises(ValueError, match="partition"):
        build_alignment_examples(att, box(slice(0, 2), slice(0, 2)))


def test_single_round_ranking_gives_redundancy_only_where_the_previous_prefix_was_measured():
    att = attribution([1, 2, 3])
    att.prefix_scores, att.insertion_probs, att.deletion_probs = att.prefix_scores[:1], [0.2], [0.8]
    built = build_alignment_examples(att, box(slice(0, 2), slice(0, 2)))
    assert [(e.kind, e.rank) for e in built.examples] == [("deviation", 1), ("redundancy", 2)]
    assert built.gains.numel() == 1


def single_round(ranking: list[int], singleton_scores: list[float]) -> Attribution:
    """A single_round attribution (a = 2, b = 1, so Z = 3) with the given singleton scores, best first."""
    att = attribution(ranking)
    att.strategy, att.singleton_scores = "single_round", singleton_scores
    att.prefix_scores, att.insertion_probs, att.deletion_probs = singleton_scores[:1], [0.9], [0.1]
    return att


def test_deviation_margin_gates_off_prior_near_ties_of_an_on_prior_top_region():
    # Target (region 0) ranks first by a hair over a cue (region 3); region 1 is far behind.
    att = single_round([0, 3, 1, 2], [2.70, 2.67, 0.30, 0.10])
    target = box(slice(0, 2), slice(0, 2))
    assert build_alignment_examples(att, target).deviation == []  # the paper's gate: rank 1 is on-prior
    near = build_alignment_examples(att, target, deviation_margin=0.05)  # (2.70 - 2.67) / 3 = 0.01
    assert [(e.rank, e.regions) for e in near.deviation] == [(2, (3,))]
    assert [e.rank for e in near.redundancy] == [2]  # unchanged: the paper's term for the same region
    assert build_alignment_examples(att, target, deviation_margin=0.005).deviation == []
    wide = build_alignment_examples(att, target, deviation_margin=0.85)  # 0.30 is 0.8 behind, 0.10 is 0.87
    assert [e.rank for e in wide.deviation] == [2, 3]


def test_best_on_prior_gain_of_a_single_round_ranking_comes_from_singleton_scores():
    # Cue (region 3) first, target (region 0) a close second: only prefix S_1 = {cue} was measured.
    att = single_round([3, 0, 1], [2.70, 2.40, 0.30])
    built = build_alignment_examples(att, box(slice(0, 2), slice(0, 2)))
    assert [e.kind for e in built.examples] == ["deviation"] and built.gains.numel() == 1
    assert built.best_on_prior_gain == pytest.approx(2.40 / 3)  # the target's own gain F({0})/Z
    # Measuring the later prefixes (redundancy on) does not change which evidence h is taken from.
    att.prefix_scores, att.insertion_probs, att.deletion_probs = [2.70, 2.75, 2.80], [0.9] * 3, [0.1] * 3
    assert build_alignment_examples(att, box(slice(0, 2), slice(0, 2))).best_on_prior_gain == pytest.approx(0.8)
    # No on-prior region among the ranked ones: h = 0.
    assert build_alignment_examples(att, box(slice(2, 4), slice(0, 2))).best_on_prior_gain == 0.0


def test_deviation_margin_keeps_an_off_prior_top_region_and_needs_singleton_scores():
    att = single_round([3, 0], [2.7, 2.6])
    built = build_alignment_examples(att, box(slice(0, 2), slice(0, 2)), deviation_margin=0.1)
    assert [(e.rank, e.regions) for e in built.deviation] == [(1, (3,))]
    with pytest.raises(ValueError, match="single_round"):
        build_alignment_examples(attribution([1, 2]), box(slice(0, 2), slice(0, 2)), deviation_margin=0.1)
    with pytest.raises(ValueError, match="≥ 0"):
        build_alignment_examples(att, box(slice(0, 2), slice(0, 2)), deviation_margin=-0.1)


def test_box_sufficiency_gate_keeps_or_drops_a_whole_sample():
    """P(x_B) ≥ m·P(x) keeps every example; below it none is left, and the gate says so. P(x) is 0.9 here."""
    corner = box(slice(0, 1), slice(0, 3))
    open_gate = build_alignment_examples(attribution([3, 2]), corner, necessity=True, box_prob=0.5,
                                         min_box_sufficiency=0.5)
    assert open_gate.box_sufficient and open_gate.box_prob == 0.5
    assert [e.kind for e in open_gate.examples] == ["deviation", "redundancy", "necessity"]
    closed = build_alignment_examples(attribution([3, 2]), corner, necessity=True, box_prob=0.4,
                                      min_box_sufficiency=0.5)
    assert not closed.box_sufficient and closed.examples == []
    assert closed.ranking == [3, 2]  # the attribution itself is still reported
    # Off (the paper): no measurement needed, nothing dropped.
    assert build_alignment_examples(attribution([3, 2]), corner, box_prob=0.0).box_sufficient
    with pytest.raises(ValueError, match="box_prob"):
        build_alignment_examples(attribution([3, 2]), corner, min_box_sufficiency=0.5)


def test_blank_gate_drops_a_sample_whose_click_a_blank_screen_gives_as_well():
    """P(x_∅) < m·P(x) keeps the sample; at or above it nothing is left (P(x) is 0.9 here), and both gates can
    act together."""
    corner = box(slice(0, 1), slice(0, 3))
    kept = build_alignment_examples(attribution([3, 2]), corner, necessity=True, blank_prob=0.5, max_blank_share=0.95)
    assert kept.screen_used and [e.kind for e in kept.examples] == ["deviation", "redundancy", "necessity"]
    assert kept.necessity[0].reference_prob == 0.5  # the same P(x_∅) is the necessity floor
    dropped = build_alignment_examples(attribution([3, 2]), corner, necessity=True, blank_prob=0.88,
                                       max_blank_share=0.95)
    assert not dropped.screen_used and dropped.examples == [] and dropped.box_sufficient
    both = build_alignment_examples(attribution([3, 2]), corner, box_prob=0.1, min_box_sufficiency=0.5,
                                    blank_prob=0.1, max_blank_share=0.95)
    assert both.examples == [] and not both.box_sufficient and both.screen_used
    with pytest.raises(ValueError, match="blank_prob"):
        build_alignment_examples(attribution([3, 2]), corner, max_blank_share=0.95)
