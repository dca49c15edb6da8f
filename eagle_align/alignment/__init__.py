"""Prior alignment: from an attribution and the target box to the gated deviation / redundancy losses."""

from eagle_align.alignment.examples import AlignmentExample, AlignmentExamples, build_alignment_examples
from eagle_align.alignment.losses import (
    LOSS_VARIANTS,
    adaptive_log_penalty,
    best_on_box_gain,
    deviation_loss,
    log_set_score,
    necessity_loss,
    normalised_gains,
    redundancy_loss,
    set_score,
)
from eagle_align.alignment.policies import (
    AlignmentPolicies,
    BlankScreenGate,
    BoxSufficiencyGate,
    ChunkProbs,
    DeviationTerm,
    Gate,
    GateVerdicts,
    LossTerm,
    RedundancyTerm,
)

__all__ = [
    "LOSS_VARIANTS",
    "AlignmentExample",
    "AlignmentExamples",
    "AlignmentPolicies",
    "BlankScreenGate",
    "BoxSufficiencyGate",
    "ChunkProbs",
    "DeviationTerm",
    "Gate",
    "GateVerdicts",
    "LossTerm",
    "RedundancyTerm",
    "adaptive_log_penalty",
    "best_on_box_gain",
    "build_alignment_examples",
    "deviation_loss",
    "log_set_score",
    "necessity_loss",
    "normalised_gains",
    "redundancy_loss",
    "set_score",
]
