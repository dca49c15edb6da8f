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
