"""`ExperimentalAlignmentConfig`: `PriorAlignedConfig` plus settings the method comparison has not validated."""

from __future__ import annotations

from dataclasses import dataclass, field

from eagle_align.alignment.losses import LOSS_VARIANTS
from eagle_align.alignment.policies import AlignmentPolicies, BlankScreenGate, BoxSufficiencyGate, Gate
from eagle_align.config import PriorAlignedConfig
from eagle_align.experimental.policies import (
    NECESSITY_FLOORS,
    NECESSITY_GATES,
    NECESSITY_REMOVALS,
    NearTieDeviationTerm,
    NecessityTerm,
)

SELECTIONS = ("confident_correct", "all")


@dataclass
class ExperimentalAlignmentConfig(PriorAlignedConfig):
    """`PriorAlignedConfig` plus experimental alignment settings; each default reproduces the core method.

    Parameters:
        lambda_necessity (`float`, defaults to `0.0`): weight of the necessity loss on P(x_¬B), the click with
            the whole box removed (`NecessityTerm`). Off: on targets a cue alone marks, it undoes alignment.
        necessity_floor (`str`, defaults to `"blank"`): push P(x_¬B) down to P(x_∅) (`blank`) or to `zero`.
        necessity_gate (`str`, defaults to `"always"`): `always`, `target_first` (once the box ranks first) or
            `box_evidence` (the box alone keeps min_box_sufficiency of what the screen adds over a blank one).
        necessity_removes (`str`, defaults to `"box"`): the box's cells, or `on_box_regions` (every region the
            box covers by box_overlap).
        deviation_margin (`float` or `None`, defaults to `None`): also a deviation term for every off-box region
            within this singleton-score margin of the best (needs `search="single_round"`).
        box_gate_scope, blank_gate_scope (`str`, default `"step"`): read a gate's failure off the step's sums
            (`step`) or each sample alone (`sample`).
        adaptive_beta (`float`, defaults to `2.0`): β of `loss_variant="adaptive_log"`.
        selection (`str`, defaults to `"confident_correct"`): `all` aligns every sample, right or wrong.
        max_align_every (`int` or `None`, defaults to `None`): back off while nothing fires. After an alignment
            step that applies no loss term (on any rank), the interval to the next one doubles, up to this many
            optimizer steps; a step with a term returns it to `align_every`. Logged as `align/interval`. `None`
            keeps the fixed schedule.
    """

    lambda_necessity: float = field(default=0.0, metadata={"help": "Weight of the necessity loss on P(x_¬B)."})
    necessity_floor: str = field(default="blank", metadata={"help": "blank: down to P(x_∅) | zero."})
    necessity_gate: str = field(default="always", metadata={"help": "always | target_first | box_evidence."})
    necessity_removes: str = field(default="box", metadata={"help": "box | on_box_regions."})
    deviation_margin: float | None = field(
        default=None, metadata={"help": "Deviation terms for off-box near-ties of rank 1 (needs single_round)."}
    )
    box_gate_scope: str = field(default="step", metadata={"help": "step | sample."})
    blank_gate_scope: str = field(default="step", metadata={"help": "step | sample."})
    adaptive_beta: float = field(default=2.0, metadata={"help": "β of loss_variant adaptive_log."})
    selection: str = field(default="confident_correct", metadata={"help": "confident_correct | all."})
    max_align_every: int | None = field(
        default=None, metadata={"help": "Back-off: double the alignment interval after a step with no term, up to this."}
    )

    @property
    def loss_variants(self) -> tuple[str, ...]:
        return LOSS_VARIANTS

    def _check(self) -> None:
        super()._check()
        choices = {"necessity_floor": NECESSITY_FLOORS, "necessity_gate": NECESSITY_GATES,
                   "necessity_removes": NECESSITY_REMOVALS, "box_gate_scope": Gate.scopes,
                   "blank_gate_scope": Gate.scopes, "selection": SELECTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if not self.lambda_necessity >= 0:
            raise ValueError(f"lambda_necessity={self.lambda_necessity} must be ≥ 0")
        if self.deviation_margin is not None:
            if not self.deviation_margin >= 0:
                raise ValueError(f"deviation_margin={self.deviation_margin} must be ≥ 0 (or null)")
            if self.search != "single_round":
                raise ValueError(f"deviation_margin needs search=single_round (singleton scores), got {self.search!r}")
        if self.necessity_gate == "box_evidence" and self.min_box_sufficiency is None:
            raise ValueError("necessity_gate=box_evidence reads its share from min_box_sufficiency; set it (e.g. 0.5)")
        if self.max_align_every is not None and self.max_align_every < self.align_every:
            raise ValueError(f"max_align_every={self.max_align_every} must be at least align_every={self.align_every}")
        if not self.adaptive_beta > 0:
            raise ValueError(f"adaptive_beta={self.adaptive_beta} must be > 0")

    def policies(self) -> AlignmentPolicies:
        deviation = (NearTieDeviationTerm(self.lambda_deviation, self.loss_variant, self.deviation_margin,
                                          self.adaptive_beta)
                     if self.deviation_margin is not None else None)
        policies = super().policies()
        for term in policies.terms:
            term.beta = self.adaptive_beta
        if deviation is not None:
            policies.terms[0] = deviation
        if self.lambda_necessity > 0:
            policies.terms.append(NecessityTerm(self.lambda_necessity, self.loss_variant, self.necessity_floor,
                                                self.necessity_gate, self.necessity_removes,
                                                self.min_box_sufficiency or 0.0))
        scopes = {BoxSufficiencyGate: self.box_gate_scope, BlankScreenGate: self.blank_gate_scope}
        policies.gates = [type(gate)(gate.share, scopes[type(gate)]) for gate in policies.gates]
        if self.loss_variant == "adaptive_log":
            for term in policies.terms:  # h reads P(x), P(x_∅) and every ranked region's gain
                term.measures = term.measures | {"ends"}
                term.reads_ranks_beyond_first = True
        return policies
