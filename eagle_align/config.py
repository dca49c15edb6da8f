"""`PriorAlignedConfig`: `TrainingArguments` plus the settings of prior alignment (docs/method.md).

Kept apart from the trainer, TRL-style (`SFTConfig` beside `SFTTrainer`): a recipe's alignment keys are
validated here, at construction, with messages that name the option. Settings beyond the paper that the method
comparison has not validated live in `eagle_align.experimental.ExperimentalAlignmentConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments

from eagle_align.alignment.policies import (
    AlignmentPolicies,
    BlankScreenGate,
    BoxSufficiencyGate,
    DeviationTerm,
    RedundancyTerm,
)
from eagle_align.attribution.masking import BASELINES
from eagle_align.attribution.regions import REGION_METHODS
from eagle_align.attribution.scoring import REDUCTIONS
from eagle_align.attribution.settings import SEARCHES

CORE_LOSS_VARIANTS = ("log", "paper")
# The paper's method settings (arXiv 2602.07008 with EAGLE's set function), for comparisons against it.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "align_every": 5, "align_start_step": 0, "min_confidence": 0.75,
        "n_regions": 64, "region_method": "grid", "baseline": "black", "search": "efficient",
        "insertion_weight": 2.0, "deletion_weight": 1.0, "score_reduction": "mean", "box_overlap": 0.15,
        "max_regions": 10,
        "lambda_deviation": 0.5, "lambda_redundancy": 0.5, "loss_variant": "paper",
        "min_box_sufficiency": None, "max_blank_share": None,
    },
}


@dataclass
class PriorAlignedConfig(TrainingArguments):
    r"""Configuration of [`PriorAlignedTrainer`]: `TrainingArguments` plus the prior-alignment settings.

    Every few optimizer steps the trainer attributes the click of the samples the model already gets right,
    and where the top-ranked evidence lies outside the target box, a deviation loss moves the model's reliance
    back inside it. The default method, in one paragraph: every 5 steps, up to 8 confident-correct samples
    (P ≥ 0.75) are attributed over 16 SLIC regions by deletion (a = 0, b = 1), masking with the screenshot's
    background colour; a rank-1 region outside the box gives a log-space deviation term of weight 2. Samples
    whose box alone loses the click (box gate) and steps a blank screen explains (blank gate) are left out.

    Parameters that control the schedule:
        preset (`str` or `None`, defaults to `None`): `"paper"` sets every method setting to the paper's
            (`PRESETS`); settings passed explicitly win over the preset's. Resolved in `__post_init__` (see
            `_apply_preset`), so subclasses keep it.
        alignment (`bool`, defaults to `True`): add the alignment losses; `False` is plain SFT.
        align_every (`int`, defaults to `5`): align on every n-th optimizer step (paper: 5).
        align_start_step (`int`, defaults to `0`): no alignment before this optimizer step.
        max_aligned_per_step (`int` or `None`, defaults to `8`): aligned samples per device and micro-batch.
        min_confidence (`float`, defaults to `0.75`): a sample is aligned only when the model answers it right
            with P(x) at least this (paper: confident-correct samples).

    Parameters that control the attribution (also recorded in `eagle_align.json`; eval and explain reuse them):
        n_regions (`int`, defaults to `16`): regions the screenshot is split into (paper: 64).
        region_method (`str`, defaults to `"slic"`): `slic` regions follow the screen's elements, so a whole
            element competes with a whole cue; `grid` is the paper's.
        baseline (`str`, defaults to `"background"`): what a removed region is filled with: the screenshot's
            border colour (a removed element looks like empty screen), `mean`, or the paper's `black`.
        search (`str`, defaults to `"bounded"`): `bounded` finds exact search's rank 1 by branch-and-bound for
            a fraction of the forwards; `efficient` (the paper's, EAGLE's), `exact`, `single_round`.
        insertion_weight, deletion_weight (`float`, default `0.0`, `1.0`): a and b of EAGLE's set function
            F(S) = a·P(x_S) + b·(1 − P(x_¬S)) (paper: 2 and 1). a = 0 because the target alone on an empty
            screen is clicked by a shortcut-following model too, so insertion ranks the target first for it.
        score_reduction (`str`, defaults to `"mean"`): `mean` or `logmean` over the click's decision tokens.
        box_overlap (`float`, defaults to `0.15`): a region counts as on the target when the box covers this share.
        max_regions (`int`, defaults to `10`): regions ranked when a loss reads more than rank 1 (redundancy).

    Parameters that control the losses:
        lambda_deviation (`float`, defaults to `2.0`): weight of the mean deviation loss (paper: 0.5).
        lambda_redundancy (`float`, defaults to `0.0`): weight of the mean redundancy loss (paper: 0.5); off
            because on every off-box rank it mostly pushes on background regions.
        loss_variant (`str`, defaults to `"log"`): `log` keeps a gradient once the model is confident on a
            shortcut; `paper`'s linear terms lose it there.
        min_box_sufficiency (`float` or `None`, defaults to `0.5`): beyond the paper: align a sample only if its
            box alone keeps this share of the click, P(x_B) ≥ s·P(x); when a whole step fails it, the model
            ignores the boxes (a shortcut) and every sample is kept. `None`: off, as in the paper.
        max_blank_share (`float` or `None`, defaults to `0.95`): beyond the paper: skip a step whose clicks a
            blank screen gives as well, ΣP(x_∅) ≥ s·ΣP(x) (the model is not looking). `None`: off.

    Parameters that control throughput (not the method):
        attribution_batch_size (`int`, defaults to `8`): masked inputs per attribution forward.
        loss_chunk_size (`int`, defaults to `4`): masked inputs per gradient forward (even, ≥ 2).
    """

    preset: str | None = field(
        default=None, metadata={"help": "paper: the paper's method settings (keys given explicitly win). Unset: the defaults."}
    )
    # Schedule
    alignment: bool = field(default=True, metadata={"help": "Add the alignment losses (false: plain SFT)."})
    align_every: int = field(default=5, metadata={"help": "Align on every n-th optimizer step (paper: 5)."})
    align_start_step: int = field(default=0, metadata={"help": "No alignment before this optimizer step."})
    max_aligned_per_step: int | None = field(
        default=8, metadata={"help": "Aligned samples per device and micro-batch (null: no cap)."}
    )
    min_confidence: float = field(
        default=0.75, metadata={"help": "Align only samples answered right with P(x) at least this (paper: 0.75)."}
    )
    # Attribution
    n_regions: int = field(default=16, metadata={"help": "Regions the screenshot is split into (paper: 64)."})
    region_method: str = field(
        default="slic", metadata={"help": "slic: regions follow the screen's elements | grid (the paper's)."}
    )
    baseline: str = field(
        default="background",
        metadata={"help": "Fill of a removed region: background (border colour: looks like empty screen) | mean | "
                  "black (paper)."},
    )
    search: str = field(
        default="bounded",
        metadata={"help": "bounded: exact search's rank 1 for a fraction of the forwards | efficient (paper) | exact | "
                  "single_round."},
    )
    insertion_weight: float = field(
        default=0.0, metadata={"help": "a in F(S) = a·P(x_S) + b·(1 − P(x_¬S)); 0: deletion only (paper: 2)."}
    )
    deletion_weight: float = field(default=1.0, metadata={"help": "b in F(S) (paper: 1)."})
    score_reduction: str = field(default="mean", metadata={"help": "mean | logmean over the click's tokens."})
    box_overlap: float = field(
        default=0.15, metadata={"help": "A region is on the target when the box covers this share of it."}
    )
    max_regions: int = field(
        default=10, metadata={"help": "Regions ranked when a loss reads more than rank 1 (redundancy)."}
    )
    # Losses
    lambda_deviation: float = field(
        default=2.0, metadata={"help": "Weight of the mean deviation loss (paper: 0.5)."}
    )
    lambda_redundancy: float = field(
        default=0.0, metadata={"help": "Weight of the mean redundancy loss (paper: 0.5; off: it mostly pushes on "
                               "background regions)."}
    )
    loss_variant: str = field(
        default="log", metadata={"help": "log: keeps a gradient on a confident shortcut | paper: linear terms."}
    )
    min_box_sufficiency: float | None = field(
        default=0.5,
        metadata={"help": "Beyond the paper: align a sample only if its box alone keeps this share of the click "
                  "(a whole step failing keeps all). null: off (paper)."},
    )
    max_blank_share: float | None = field(
        default=0.95,
        metadata={"help": "Beyond the paper: skip a step a blank screen explains, ΣP(x_∅) ≥ s·ΣP(x). null: off (paper)."},
    )
    # Throughput
    attribution_batch_size: int = field(default=8, metadata={"help": "Masked inputs per attribution forward."})
    loss_chunk_size: int = field(default=4, metadata={"help": "Masked inputs per gradient forward (even, ≥ 2)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator's 'meta' must reach compute_loss."}
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> PriorAlignedConfig:
        # The one place that knows which settings the caller gave (a default and an equal explicit value look
        # the same afterwards); `__new__` is inherited, so a `@dataclass` subclass keeps the preset.
        self = super().__new__(cls)
        self._explicit = frozenset(kwargs)
        return self

    def __post_init__(self) -> None:
        self._apply_preset()
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # `accelerate launch --multi_gpu` on a machine without GPUs starts several processes; only with
            # use_cpu does transformers set them up as one gloo DDP group instead of independent runs.
            self.use_cpu = True
        super().__post_init__()
        self._check()

    def _apply_preset(self) -> None:
        """Fill every method setting the caller did not give from the preset (HfArgumentParser.parse_dict
        passes only a recipe's own keys, so a recipe's `preset:` means the same as in Python)."""
        if self.preset is None:
            return
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}; choose one of {', '.join(PRESETS)} (or leave it unset)")
        given = getattr(self, "_explicit", frozenset())
        for name, value in PRESETS[self.preset].items():
            if name not in given:
                setattr(self, name, value)

    def _check(self) -> None:
        choices = {
            "loss_variant": self.loss_variants, "region_method": REGION_METHODS, "search": SEARCHES,
            "baseline": BASELINES, "score_reduction": REDUCTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        minimums = {"align_every": 1, "align_start_step": 0, "n_regions": 1, "max_regions": 1,
                    "attribution_batch_size": 1, "loss_chunk_size": 2}
        for name, low in minimums.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        if self.loss_chunk_size % 2:
            raise ValueError(f"loss_chunk_size={self.loss_chunk_size} must be even (insertion and deletion pairs)")
        if self.max_aligned_per_step is not None and self.max_aligned_per_step < 1:
            raise ValueError(f"max_aligned_per_step={self.max_aligned_per_step} must be at least 1 (or null)")
        for name in ("lambda_deviation", "lambda_redundancy", "insertion_weight", "deletion_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0")
        if self.insertion_weight + self.deletion_weight <= 0:
            raise ValueError("insertion_weight + deletion_weight must be > 0")
        for name in ("min_confidence", "box_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.min_box_sufficiency is not None and not self.min_box_sufficiency >= 0:
            raise ValueError(f"min_box_sufficiency={self.min_box_sufficiency} must be ≥ 0 (or null)")
        if self.max_blank_share is not None and not self.max_blank_share > 0:
            raise ValueError(f"max_blank_share={self.max_blank_share} must be > 0 (or null)")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns=True would drop the collator's 'meta'; leave it False")

    @property
    def loss_variants(self) -> tuple[str, ...]:
        return CORE_LOSS_VARIANTS

    # ------------------------------------------------------------------ what the trainer and the card read
    @classmethod
    def method_fields(cls) -> list[str]:
        """The alignment settings of this config class (every field beyond `TrainingArguments`), in order."""
        base = {f.name for f in fields(TrainingArguments)}
        return [f.name for f in fields(cls) if f.init and f.name not in base and f.name != "remove_unused_columns"]

    def method_settings(self) -> dict[str, Any]:
        """Every alignment setting's value: what the model card and the method comparison record."""
        return {name: getattr(self, name) for name in self.method_fields()}

    def attribution_settings(self):
        """The attribution settings training uses, as the object eval and explain share (`eagle_align.json`)."""
        from eagle_align.attribution.settings import AttributionSettings

        return AttributionSettings(**{name: getattr(self, name) for name in AttributionSettings.field_names()})

    @property
    def ranked_regions(self) -> int:
        """How many regions the trainer asks the search to rank: `bounded` ranks only what the losses read
        (rank 1, unless a term reads more); other searches rank max_regions, as the paper does."""
        if self.search == "bounded" and not self.policies().reads_ranks_beyond_first:
            return 1
        return self.max_regions

    def policies(self) -> AlignmentPolicies:
        """The gates and loss terms this config trains with (`eagle_align.alignment.policies`)."""
        terms = [DeviationTerm(self.lambda_deviation, self.loss_variant),
                 RedundancyTerm(self.lambda_redundancy, self.loss_variant)]
        gates = []
        if self.min_box_sufficiency is not None:
            gates.append(BoxSufficiencyGate(self.min_box_sufficiency))
        if self.max_blank_share is not None:
            gates.append(BlankScreenGate(self.max_blank_share))
        return AlignmentPolicies(terms, gates)

    def preset_description(self) -> str:
        """The preset and every setting given over it, or that none was used (what the model card records)."""
        if self.preset is None:
            return "none (eagle-align's defaults)"
        changed = [f"{k}={getattr(self, k)}" for k, v in PRESETS[self.preset].items() if getattr(self, k) != v]
        return self.preset + (f" (changed: {', '.join(changed)})" if changed else "")
