"""Prior alignment: from an attribution and the target box to deviation / redundancy (/ necessity) losses."""

from eagle_align.alignment.examples import (
    GATE_SCOPES,
    AlignmentExample,
    AlignmentExamples,
    GateVerdict,
    build_alignment_examples,
    gate_samples,
    on_prior_regions,
    step_gate_totals,
)
from eagle_align.alignment.losses import (
    LOSS_VARIANTS,
    adaptive_log_penalty,
    best_on_prior_gain,
    deviation_loss,
    log_set_score,
    necessity_loss,
    normalised_gains,
    redundancy_loss,
    set_score,
)

__all__ = [
    "GATE_SCOPES",
    "LOSS_VARIANTS",
    "AlignmentExample",
    "AlignmentExamples",
    "GateVerdict",
    "adaptive_log_penalty",
    "best_on_prior_gain",
    "build_alignment_examples",
    "deviation_loss",
    "gate_samples",
    "log_set_score",
    "necessity_loss",
    "normalised_gains",
    "on_prior_regions",
    "redundancy_loss",
    "set_score",
    "step_gate_totals",
]
