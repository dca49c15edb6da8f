"""The alignment policies: loss terms and gates as objects, what they need measured together, and the sets the
configs build (eagle_align.alignment.policies, eagle_align.experimental)."""

from __future__ import annotations

import pytest
import torch

from eagle_align.alignment import (
    AlignmentPolicies,
    BlankScreenGate,
    BoxSufficiencyGate,
    ChunkProbs,
    DeviationTerm,
    RedundancyTerm,
    build_alignment_examples,
    deviation_loss,
    necessity_loss,
    redundancy_loss,
)
from eagle_align.attribution import Attribution, make_partition
from eagle_align.config import PriorAlignedConfig
from eagle_align.experimental import ExperimentalAlignmentConfig, NearTieDeviationTerm, NecessityTerm

# A 4x4 merged-cell grid cut into four 2x2 regions: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
PARTITION = make_partition((4, 4), n_regions=4, method="grid")
TARGET = torch.zeros(4, 4, dtype=torch.bool)
TARGET[:2, :2] = True  # region 0


def attribution(ranking: list[int]) -> Attribution:
    insertion = [0.2 + 0.1 * r for r in range(len(ranking))]
    deletion = [0.8 - 0.1 * r for r in range(len(ranking))]
    return Attribution(
        ranking=ranking, prefix_scores=[2 * i + (1 - d) for i, d in zip(insertion, deletion)],
        insertion_probs=insertion, deletion_probs=deletion, full_prob=0.9, empty_prob=0.05, forwards=0,
        seconds=0.0, search="exact", n_regions=4, partition=PARTITION,
    )


# --- AlignmentPolicies ---------------------------------------------------------------------------------------


def test_policies_reject_two_terms_of_one_kind():
    with pytest.raises(ValueError, match="different kinds"):
        AlignmentPolicies([DeviationTerm(1.0), DeviationTerm(0.5)])
    # A near-tie deviation term is still a deviation term: it replaces the paper's, it does not join it.
    with pytest.raises(ValueError, match="different kinds"):
        AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(1.0), NearTieDeviationTerm(1.0, margin=0.1)])
    with pytest.raises(ValueError, match="different kinds"):
        AlignmentPolicies([NecessityTerm(1.0), NecessityTerm(1.0, floor="zero")])
    policies = AlignmentPolicies([NearTieDeviationTerm(2.0, margin=0.1), RedundancyTerm(0.5), NecessityTerm(1.0)])
    assert policies.kinds == ["deviation", "redundancy", "necessity"]
    assert (policies.weight("deviation"), policies.weight("redundancy"), policies.weight("necessity")) == (2.0, 0.5, 1.0)


def test_policies_reject_two_gates_reading_one_probability():
    with pytest.raises(ValueError, match="different probabilities"):
        AlignmentPolicies([DeviationTerm(1.0)], [BoxSufficiencyGate(0.5), BoxSufficiencyGate(0.3, scope="sample")])
    with pytest.raises(ValueError, match="different probabilities"):
        AlignmentPolicies([DeviationTerm(1.0)], [BlankScreenGate(0.95), BoxSufficiencyGate(0.5), BlankScreenGate(0.9)])
    both = AlignmentPolicies([DeviationTerm(1.0)], [BoxSufficiencyGate(0.5), BlankScreenGate(0.95)])
    assert [gate.measures for gate in both.gates] == ["box", "blank"]


def test_measures_is_the_union_of_what_weighted_terms_and_gates_read():
    assert AlignmentPolicies([]).measures == frozenset()
    assert AlignmentPolicies([DeviationTerm(1.0)]).measures == frozenset()
    assert AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(1.0)]).measures == {"prefixes"}
    assert AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(0.0)]).measures == frozenset()  # off: nothing
    assert AlignmentPolicies([DeviationTerm(1.0)], [BoxSufficiencyGate(0.5)]).measures == {"box"}
    assert AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(1.0)],
                             [BoxSufficiencyGate(0.5), BlankScreenGate(0.95)]).measures == {"prefixes", "box", "blank"}
    # Gates read their probability whatever the terms' weights.
    assert AlignmentPolicies([DeviationTerm(0.0), RedundancyTerm(0.0)], [BlankScreenGate(0.95)]).measures == {"blank"}
    # The necessity term reads the blank screen for its floor, and the box too when its gate reads box evidence.
    assert AlignmentPolicies([DeviationTerm(1.0), NecessityTerm(1.0)]).measures == {"blank"}
    assert AlignmentPolicies([DeviationTerm(1.0), NecessityTerm(1.0, floor="zero")]).measures == frozenset()
    assert AlignmentPolicies([NecessityTerm(1.0, floor="zero", gate="box_evidence")]).measures == {"box", "blank"}
    assert AlignmentPolicies([NecessityTerm(1.0, gate="box_evidence")]).measures == {"box", "blank"}
    assert AlignmentPolicies([NecessityTerm(1.0, gate="target_first")]).measures == {"blank"}
    assert AlignmentPolicies([NecessityTerm(0.0, gate="box_evidence")]).measures == frozenset()  # off: nothing


def test_reads_ranks_beyond_first_only_with_redundancy_on():
    assert AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(0.5)]).reads_ranks_beyond_first
    assert not AlignmentPolicies([DeviationTerm(1.0), RedundancyTerm(0.0)]).reads_ranks_beyond_first
    assert not AlignmentPolicies([DeviationTerm(1.0)]).reads_ranks_beyond_first
    assert not AlignmentPolicies([NearTieDeviationTerm(1.0, margin=0.2), NecessityTerm(1.0)]).reads_ranks_beyond_first


# --- The configs' policies -----------------------------------------------------------------------------------


def summary(policies: AlignmentPolicies) -> tuple:
    return ([(type(t).__name__, t.weight, t.variant) for t in policies.terms],
            [(type(g).__name__, g.share, g.scope) for g in policies.gates])


def test_default_config_policies(tmp_path):
    config = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none")
    policies = config.policies()
    assert summary(policies) == (
        [("DeviationTerm", 2.0, "log"), ("RedundancyTerm", 0.0, "log")],
        [("BoxSufficiencyGate", 0.5, "step"), ("BlankScreenGate", 0.95, "step")],
    )
    assert policies.measures == {"box", "blank"}  # redundancy is off: no prefixes beyond the first
    assert not policies.reads_ranks_beyond_first
    assert config.search == "bounded" and config.ranked_regions == 1
    # Redundancy on: the bounded search ranks max_regions, as the others do.
    with_redundancy = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none", lambda_redundancy=0.5)
    assert with_redundancy.policies().measures == {"prefixes", "box", "blank"}
    assert with_redundancy.ranked_regions == with_redundancy.max_regions == 10


def test_config_without_gates_measures_nothing_for_them(tmp_path):
    """Both gates off (the paper): no gate, so every sample passes and neither P(x_B) nor P(x_∅) is measured."""
    config = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none", min_box_sufficiency=None,
                                max_blank_share=None)
    assert config.policies().gates == [] and config.policies().measures == frozenset()
    only_box = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none", max_blank_share=None)
    assert summary(only_box.policies())[1] == [("BoxSufficiencyGate", 0.5, "step")]


def test_paper_preset_policies(tmp_path):
    config = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none", preset="paper")
    policies = config.policies()
    assert summary(policies) == ([("DeviationTerm", 0.5, "paper"), ("RedundancyTerm", 0.5, "paper")], [])
    assert policies.measures == {"prefixes"} and policies.reads_ranks_beyond_first
    assert config.ranked_regions == config.max_regions == 10
    # A key given explicitly wins over the preset's.
    seven = PriorAlignedConfig(output_dir=str(tmp_path), report_to="none", preset="paper", max_regions=7)
    assert seven.ranked_regions == 7


def test_experimental_config_adds_necessity_and_sample_scoped_gates(tmp_path):
    config = ExperimentalAlignmentConfig(output_dir=str(tmp_path), report_to="none", lambda_necessity=1,
                                         box_gate_scope="sample")
    policies = config.policies()
    assert policies.kinds == ["deviation", "redundancy", "necessity"]
    necessity = policies.terms[-1]
    assert isinstance(necessity, NecessityTerm) and necessity.weight == 1.0
    assert (necessity.floor, necessity.gate, necessity.removes) == ("blank", "always", "box")
    assert summary(policies)[1] == [("BoxSufficiencyGate", 0.5, "sample"), ("BlankScreenGate", 0.95, "step")]
    assert policies.measures == {"box", "blank"}
    both = ExperimentalAlignmentConfig(output_dir=str(tmp_path), report_to="none", lambda_necessity=1,
                                       box_gate_scope="sample", blank_gate_scope="sample").policies()
    assert [g.scope for g in both.gates] == ["sample", "sample"]
    # Its defaults reproduce the core method's policies.
    plain = ExperimentalAlignmentConfig(output_dir=str(tmp_path), report_to="none").policies()
    assert summary(plain) == summary(PriorAlignedConfig(output_dir=str(tmp_path), report_to="none").policies())


def test_experimental_config_near_tie_deviation_and_adaptive_log(tmp_path):
    config = ExperimentalAlignmentConfig(output_dir=str(tmp_path), report_to="none", search="single_round",
                                         deviation_margin=0.1, loss_variant="adaptive_log", adaptive_beta=3.0)
    policies = config.policies()
    deviation = policies.terms[0]
    assert isinstance(deviation, NearTieDeviationTerm) and deviation.margin == 0.1 and deviation.weight == 2.0
    assert all(t.beta == 3.0 and t.variant == "adaptive_log" for t in policies.terms)
    assert "ends" in policies.measures  # adaptive_log reads P(x) and P(x_∅) inside the search


# --- The terms' losses ---------------------------------------------------------------------------------------


def chunk_probs(sample, kind: str, insertion_weight: float, deletion_weight: float) -> ChunkProbs:
    chunk = sample.of_kind(kind)
    n = len(chunk)
    return ChunkProbs(
        p_insert=torch.linspace(0.1, 0.6, n, dtype=torch.float64), p_delete=torch.linspace(0.7, 0.2, n,
                                                                                             dtype=torch.float64),
        chunk=chunk, examples=sample, insertion_weight=insertion_weight, deletion_weight=deletion_weight,
    )


@pytest.mark.parametrize("variant", ["log", "paper", "adaptive_log"])
def test_deviation_and_redundancy_losses_are_the_loss_functions(variant):
    # Rank 1 off the box (deviation), rank 2 on it (region 0), ranks 3 and 4 off it (redundancy).
    deviation, redundancy = DeviationTerm(1.0, variant, beta=3.0), RedundancyTerm(1.0, variant, beta=3.0)
    sample = build_alignment_examples(attribution([1, 0, 2, 3]), TARGET, [deviation, redundancy],
                                      insertion_weight=2.0, deletion_weight=1.0)
    assert [(e.kind, e.rank) for e in sample.examples] == [("deviation", 1), ("redundancy", 3), ("redundancy", 4)]
    assert sample.best_on_box_gain > 0  # adaptive_log has on-box evidence to read
    common = dict(variant=variant, insertion_weight=2.0, deletion_weight=1.0,
                  best_on_box=sample.best_on_box_gain, full_prob=sample.full_prob, beta=3.0)

    probs = chunk_probs(sample, "deviation", 2.0, 1.0)
    expected = deviation_loss(probs.p_insert, probs.p_delete, **common)
    assert torch.equal(deviation.loss(probs), expected) and expected.shape == (1,)

    probs = chunk_probs(sample, "redundancy", 2.0, 1.0)
    prev_insert = torch.tensor([0.3, 0.4])  # P(x_{S_2}), P(x_{S_3}) of the attribution
    prev_delete = torch.tensor([0.7, 0.6])
    assert [e.prev_p_insert for e in probs.chunk] == pytest.approx(prev_insert.tolist())
    assert [e.prev_p_delete for e in probs.chunk] == pytest.approx(prev_delete.tolist())
    expected = redundancy_loss(probs.p_insert, probs.p_delete, probs.tensor([e.prev_p_insert for e in probs.chunk]),
                               probs.tensor([e.prev_p_delete for e in probs.chunk]), **common)
    assert torch.equal(redundancy.loss(probs), expected) and expected.shape == (2,)
    # The previous prefixes matter: other values give another loss.
    other = redundancy_loss(probs.p_insert, probs.p_delete, prev_insert * 0, prev_delete * 0 + 1, **common)
    assert not torch.allclose(other, expected)


def test_necessity_loss_reads_the_floor_each_example_carries():
    term = NecessityTerm(1.0, "log")
    sample = build_alignment_examples(attribution([1, 0]), TARGET, [DeviationTerm(1.0), term], blank_prob=0.25)
    probs = chunk_probs(sample, "necessity", 0.0, 1.0)
    assert [e.reference_prob for e in probs.chunk] == [0.25]
    expected = necessity_loss(probs.p_delete, "log", reference=probs.tensor([0.25]))
    assert torch.equal(term.loss(probs), expected) and float(expected[0]) > 0
    # At the floor there is nothing left to push.
    at_floor = ChunkProbs(torch.zeros(1), torch.tensor([0.25]), probs.chunk, sample, 0.0, 1.0)
    assert float(term.loss(at_floor)[0]) == 0.0
