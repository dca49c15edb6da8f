"""The gates and loss terms of prior alignment, as small objects the trainer is handed (TRL's `reward_funcs`).

A *loss term* turns one attributed sample into alignment examples (region sets whose insertion / deletion
forwards carry the gradient) and scores them; a *gate* decides, from masked probabilities measured once per
sample, which samples give examples at all. Each declares what it needs measured (`measures`): `"box"` is
P(x_B), the box alone; `"blank"` P(x_∅), everything removed; `"ends"` P(x) and P(x_∅) inside the search;
`"prefixes"` every prefix score of the ranking. The trainer keeps the schedule, the counts agreed across ranks
and the backward; `PriorAlignedConfig.policies()` builds the default set, and a subclass of the config may
return others (`eagle_align.experimental` does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from eagle_align.alignment.examples import AlignmentExample, AlignmentExamples
from eagle_align.alignment.losses import deviation_loss, redundancy_loss


@dataclass
class ChunkProbs:
    """What the losses of one gradient chunk read: its examples' masked probabilities (with grad) and the
    attribution's values for them (without)."""

    p_insert: torch.Tensor  # P(x_S), zeros where no term reads it
    p_delete: torch.Tensor  # P(x_¬S)
    chunk: list[AlignmentExample]
    examples: AlignmentExamples
    insertion_weight: float
    deletion_weight: float

    def tensor(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=self.p_delete.device)


class LossTerm(ABC):
    """One alignment loss: which examples a sample gives, and the loss of each (mean over the step × weight)."""

    kind: ClassVar[str]
    measures: ClassVar[frozenset[str]] = frozenset()
    reads_insertion: ClassVar[bool] = True  # its loss reads P(x_S) (scored only when a > 0)
    reads_ranks_beyond_first: ClassVar[bool] = False

    def __init__(self, weight: float, variant: str = "log", beta: float = 2.0) -> None:
        self.weight = float(weight)
        self.variant = variant
        self.beta = beta  # adaptive_log's β (eagle_align.experimental)

    @abstractmethod
    def examples(self, sample: AlignmentExamples) -> list[AlignmentExample]:
        """This term's examples of one attributed sample (none when its weight is 0: nothing to train)."""

    @abstractmethod
    def loss(self, probs: ChunkProbs) -> torch.Tensor:
        """One loss value per example of the chunk (the trainer keeps those of this term's kind)."""

    def _common(self, probs: ChunkProbs) -> dict:
        return dict(variant=self.variant, insertion_weight=probs.insertion_weight,
                    deletion_weight=probs.deletion_weight, best_on_box=probs.examples.best_on_box_gain,
                    full_prob=probs.examples.full_prob, beta=self.beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, variant={self.variant!r})"


class DeviationTerm(LossTerm):
    """The paper's deviation loss: when the top-ranked region lies off the box, lower what it alone explains
    of the click and raise what the rest of the screen without it still gives."""

    kind = "deviation"

    def examples(self, sample: AlignmentExamples) -> list[AlignmentExample]:
        if self.weight <= 0 or not sample.ranking or sample.on_box[0]:
            return []
        return [AlignmentExample("deviation", 1, (sample.ranking[0],))]

    def loss(self, probs: ChunkProbs) -> torch.Tensor:
        return deviation_loss(probs.p_insert, probs.p_delete, **self._common(probs))


class RedundancyTerm(LossTerm):
    """The paper's redundancy loss: every off-box rank r ≥ 2 should add nothing to the prefix before it. Its
    examples reuse the attribution's P(x_{S_{r−1}}) and P(x_¬S_{r−1}) under stop-gradient."""

    kind = "redundancy"
    measures = frozenset({"prefixes"})
    reads_ranks_beyond_first = True

    def examples(self, sample: AlignmentExamples) -> list[AlignmentExample]:
        if self.weight <= 0:
            return []
        ranking, inserted, deleted = sample.ranking, sample.insertion_probs, sample.deletion_probs
        return [
            AlignmentExample("redundancy", rank, tuple(ranking[:rank]), prev_p_insert=float(inserted[rank - 2]),
                             prev_p_delete=float(deleted[rank - 2]))
            for rank in range(2, min(len(ranking), len(inserted) + 1) + 1) if not sample.on_box[rank - 1]
        ]

    def loss(self, probs: ChunkProbs) -> torch.Tensor:
        prev_insert = probs.tensor([e.prev_p_insert or 0.0 for e in probs.chunk])
        prev_delete = probs.tensor([e.prev_p_delete or 0.0 for e in probs.chunk])
        return redundancy_loss(probs.p_insert, probs.p_delete, prev_insert, prev_delete, **self._common(probs))


@dataclass
class GateVerdicts:
    """One gate's word on each sample of a micro-batch."""

    keep: list[bool]
    flagged: list[bool] = field(default_factory=list)  # failing samples kept anyway (counted, not dropped)


class Gate(ABC):
    """Decides which selected samples give alignment examples, from one masked probability per sample.

    ``scope="step"`` reads a failure off the step's sums (every micro-batch and rank): what fails for the
    step's samples taken together is about the model, not about one sample. ``"sample"`` tests each alone.
    """

    measures: ClassVar[str]  # "box" or "blank": the masked probability it reads
    dropped_metric: ClassVar[str]  # align/<name>: samples it left out
    flagged_metric: ClassVar[str | None] = None
    share_metric: ClassVar[str]  # align/<name>: the step's Σmeasured / ΣP(x)
    scopes: ClassVar[tuple[str, ...]] = ("step", "sample")

    def __init__(self, share: float, scope: str = "step") -> None:
        if scope not in self.scopes:
            raise ValueError(f"gate scope {scope!r} is not one of {', '.join(self.scopes)}")
        self.share, self.scope = float(share), scope

    @abstractmethod
    def verdicts(self, full: list[float], measured: list[float], step_full: float,
                 step_measured: float) -> GateVerdicts:
        """Verdicts for samples with P(x) ``full`` and this gate's probability ``measured``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(share={self.share}, scope={self.scope!r})"


class BoxSufficiencyGate(Gate):
    """Align a sample only if its box alone keeps ``share`` of the click, P(x_B) ≥ s·P(x): a box without
    evidence of its own (an element only its context identifies, a wrong box) has nowhere to take the reliance.
    A step whose boxes fail as a whole has a model that stopped looking at them (a shortcut), which is what
    alignment is for: then every sample is kept, and those failing alone are flagged (`align/shortcut_boxes`)."""

    measures = "box"
    dropped_metric = "insufficient_boxes"
    flagged_metric = "shortcut_boxes"
    share_metric = "box_share"

    def verdicts(self, full, measured, step_full, step_measured) -> GateVerdicts:
        keep = [b >= self.share * p for b, p in zip(measured, full)]
        if self.scope == "step" and full and step_measured < self.share * step_full:
            return GateVerdicts([True] * len(keep), [not k for k in keep])
        return GateVerdicts(keep, [False] * len(keep))


class BlankScreenGate(Gate):
    """Leave out clicks a blank screen gives as well, P(x_∅) ≥ s·P(x): they rest on nothing in the screen, and
    the terms would only fight the task loss. Read off the step (a model that does not look at all, e.g. on a
    loss plateau), since one sample's blank-screen click is just the model's default answer."""

    measures = "blank"
    dropped_metric = "blank_clicks"
    share_metric = "blank_share"

    def verdicts(self, full, measured, step_full, step_measured) -> GateVerdicts:
        if self.scope == "step":
            return GateVerdicts([step_measured < self.share * step_full] * len(full))
        return GateVerdicts([e < self.share * p for e, p in zip(measured, full)])


@dataclass
class AlignmentPolicies:
    """The loss terms and gates one training run uses, and what they need measured together."""

    terms: list[LossTerm]
    gates: list[Gate] = field(default_factory=list)

    def __post_init__(self) -> None:
        kinds = [term.kind for term in self.terms]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"loss terms must be of different kinds, got {kinds}")
        measures = [gate.measures for gate in self.gates]
        if len(set(measures)) != len(measures):
            raise ValueError(f"gates must read different probabilities, got {measures}")

    @property
    def kinds(self) -> list[str]:
        return [term.kind for term in self.terms]

    @property
    def measures(self) -> frozenset[str]:
        """Every probability some term or gate reads."""
        return frozenset().union(*(t.measures for t in self.terms if t.weight > 0), {g.measures for g in self.gates})

    @property
    def reads_ranks_beyond_first(self) -> bool:
        return any(t.reads_ranks_beyond_first and t.weight > 0 for t in self.terms)

    def weight(self, kind: str) -> float:
        return next(t.weight for t in self.terms if t.kind == kind)
