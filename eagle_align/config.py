"""`PriorAlignedConfig`: `TrainingArguments` plus every knob of prior alignment (docs/method.md).

Kept apart from the trainer, TRL-style (`SFTConfig` beside `SFTTrainer`): a recipe's alignment keys are
validated here, at construction, with messages that name the option.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from eagle_align.alignment.examples import GATE_SCOPES, NECESSITY_GATES, NECESSITY_REMOVALS
from eagle_align.alignment.losses import LOSS_VARIANTS
from eagle_align.attribution.masking import BASELINES
from eagle_align.attribution.regions import REGION_METHODS
from eagle_align.attribution.scoring import REDUCTIONS
from eagle_align.attribution.search import DEFAULT_RESORT_EVERY, DEFAULT_SEARCH_SCOPE, STRATEGIES

SELECTIONS = ("confident_correct", "all")
NECESSITY_FLOORS = ("blank", "zero")
# Every method setting of the paper (its losses, gate, schedule and EAGLE's set function and efficient search
# with EAGLE's scope 10 / re-sort every 5), for comparisons against it; throughput knobs are not part of it.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "align_every": 5, "align_start_step": 0, "lambda_deviation": 0.5, "lambda_redundancy": 0.5, "lambda_necessity": 0.0,
        "loss_variant": "paper", "deviation_margin": None, "adaptive_beta": 2.0, "insertion_weight": 2.0,
        "deletion_weight": 1.0, "selection": "confident_correct", "min_confidence": 0.75, "prior_overlap": 0.15,
        "n_regions": 64, "region_method": "grid", "search": "efficient", "search_scope": 10, "resort_every": 5,
        "max_regions": 10, "stop_confidence": 0.8, "baseline": "black", "score_reduction": "mean",
        "min_box_sufficiency": None, "max_blank_share": None,
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; choose one of {', '.join(PRESETS)} (or leave it unset for the defaults)")
    return dict(PRESETS[name])


@dataclass
class PriorAlignedConfig(TrainingArguments):
    """TrainingArguments plus every knob of the prior-alignment method.

    The defaults are the method settings measured best for GUI grounding on the synthetic shortcut benchmark
    (data_cards/synthetic.md): log-space deviation loss with weight 2, no redundancy term, SLIC regions, the
    screenshot's own background colour as the masking baseline (a removed element looks like empty screen, which
    is what a model should learn to click without), a deletion-only set function (a = 0, b = 1: for "click the X",
    X alone on an empty screen is clicked whatever the model learned, so the insertion half of F lets a
    shortcut-following model rank the target first), the paper's rank-1 gate, no necessity term (it is there,
    `lambda_necessity`, but on a benchmark whose cue is sometimes the only mark of the target it undid the
    alignment), the box-sufficiency gate and the blank-screen gate (both beyond the paper), and the `bounded`
    search, which finds exact's rank-1 region for a
    fraction of the forwards (benchmarks/fidelity_bench.py). ``preset="paper"`` starts from the paper's settings instead
    (`PRESETS`); settings passed explicitly, in Python or in a recipe, win over the preset's.
    """

    preset: str | None = field(
        default=None,
        metadata={"help": "paper: every method setting as in the paper (keys given explicitly win). "
                  "Unset: eagle-align's measured defaults."},
    )
    alignment: bool = field(default=True, metadata={"help": "Add the alignment losses (False: plain SFT)."})
    align_every: int = field(default=5, metadata={"help": "Align on every n-th optimizer step."})
    align_start_step: int = field(default=0, metadata={"help": "No alignment before this optimizer step."})
    lambda_deviation: float = field(
        default=2.0, metadata={"help": "Weight of the mean deviation loss (paper: 0.5; 2 measured best with a = 0)."}
    )
    lambda_redundancy: float = field(
        default=0.0,
        metadata={"help": "Weight of the mean redundancy loss (paper: 0.5; 0 by default: on every off-prior rank "
                  "it mostly pushes on background regions, and it hurt on the synthetic benchmark)."},
    )
    lambda_necessity: float = field(
        default=0.0,
        metadata={"help": "Beyond the paper: weight of the mean necessity loss on P(x_¬B), the click with the whole "
                  "target box removed (what a cue beside the target still explains once the deviation gate has "
                  "closed). 0 (default): off, as in the paper; 1 removed the cue on every tiny Qwen3-VL seed but undid "
                  "the alignment of a tiny Qwen2-VL trained on targets the cue alone marks (data_cards/synthetic.md)."},
    )
    necessity_floor: str = field(
        default="blank",
        metadata={"help": "How far the necessity loss pushes P(x_¬B): blank (default: down to P(x_∅), the click on "
                  "a screen with everything removed, one forward per sample; a model answering from its prior "
                  "has no shortcut outside the box) | zero (all the way to 0, the 2026-12-02 form)."},
    )
    necessity_gate: str = field(
        default="always",
        metadata={"help": "Which samples get the necessity term: always (every aligned sample) | target_first (only "
                  "those whose top-ranked region is on the target, i.e. once the deviation gate has closed: a "
                  "sample whose box does not rank first may hold nothing that gives the click without the cue, "
                  "and its deviation term acts instead) | box_evidence (only those whose box alone keeps "
                  "min_box_sufficiency of what the screen adds over a blank one, P(x_B) − P(x_∅) ≥ s·(P(x) − "
                  "P(x_∅)): a box that gives no more than a blank screen holds nothing the click could rest on once "
                  "the cue is gone)."},
    )
    necessity_removes: str = field(
        default="box",
        metadata={"help": "What the necessity term removes: box (default: the target box's cells, so a cue beside "
                  "the target is never removed with it) | on_prior_regions (every region the box covers by at least "
                  "prior_overlap, the deviation gate's own definition of the target: evidence the partition merges "
                  "with the target is left alone by both terms)."},
    )
    loss_variant: str = field(
        default="log",
        metadata={"help": "log (default: keeps a gradient once the model is confident on a shortcut) | paper "
                  "(linear terms, whose gradient vanishes there) | adaptive_log."},
    )
    deviation_margin: float | None = field(
        default=None,
        metadata={"help": "Beyond the paper: also a deviation term for every off-prior region whose singleton score "
                  "F({v})/(a+b) is within this margin of the best (near-ties with the target; needs search="
                  "single_round). None: rank 1 only, as in the paper."},
    )
    min_box_sufficiency: float | None = field(
        default=0.5,
        metadata={"help": "Beyond the paper: align a sample only if its box alone keeps this share of the click, "
                  "P(x_B) ≥ min_box_sufficiency · P(x) (one forward per sample). A box that holds no evidence "
                  "(an element only its context identifies, a wrong box) has nothing to move reliance to, and "
                  "pushing there destroys the click. See box_gate_scope. None: every selected sample, as in the "
                  "paper."},
    )
    max_blank_share: float | None = field(
        default=0.95,
        metadata={"help": "Beyond the paper: align a sample only if a blank screen (everything removed) keeps less "
                  "than this share of the click, P(x_∅) < max_blank_share · P(x) (one forward per sample, shared "
                  "with the necessity floor). A click the model gives without looking (a prior, or a model still "
                  "on its loss plateau) rests on nothing in the screen, and the terms would only fight the task "
                  "loss. See blank_gate_scope. None: every selected sample, as in the paper."},
    )
    box_gate_scope: str = field(
        default="step",
        metadata={"help": "Beyond the paper: step (default): a step whose boxes fail the box gate as a whole (summed "
                  "over its samples) has a model that stopped looking at the boxes (a shortcut) and keeps every "
                  "sample; otherwise the failing samples are left out. sample: each sample on its own test."},
    )
    blank_gate_scope: str = field(
        default="step",
        metadata={"help": "Beyond the paper: step (default): the blank gate tests the step's summed probabilities "
                  "and leaves out the whole step (a model that does not look at the screen) or nothing (a single "
                  "sample's blank-screen click is a default answer). sample: each sample on its own test."},
    )
    adaptive_beta: float = field(default=2.0, metadata={"help": "β of the adaptive_log penalty."})
    insertion_weight: float = field(
        default=0.0,
        metadata={"help": "a in F(S) = a·P(x_S) + b·(1 − P(x_¬S)) (default 0: deletion only, the target alone is "
                  "clicked by a shortcut model too; EAGLE's explanations: 1; paper: 2)."},
    )
    deletion_weight: float = field(default=1.0, metadata={"help": "b in F(S) (paper: 1)."})
    selection: str = field(
        default="confident_correct",
        metadata={"help": "confident_correct (argmax right at every decision token and P(x) ≥ min_confidence) | all."},
    )
    min_confidence: float = field(default=0.75, metadata={"help": "Minimum P(x) for a sample to be aligned."})
    max_aligned_per_step: int | None = field(
        default=8, metadata={"help": "Cap on aligned samples per device and micro-batch (None: no cap)."}
    )
    prior_overlap: float = field(default=0.15, metadata={"help": "Region is on-prior if the box covers this share."})
    n_regions: int = field(default=16, metadata={"help": "Regions the screenshot is partitioned into (paper: 64)."})
    region_method: str = field(
        default="slic",
        metadata={"help": "slic (default: regions follow the screen's elements, so a whole element competes with a "
                  "whole cue) | grid (the paper's)."},
    )
    search: str = field(
        default="bounded",
        metadata={"help": "bounded (default: exact's choices by branch-and-bound over region groups, ranking only "
                  "what the losses read, see ranked_regions) | efficient (the paper's) | exact | single_round."},
    )
    search_scope: int = field(default=DEFAULT_SEARCH_SCOPE, metadata={"help": "Candidates between re-sorts."})
    resort_every: int | None = field(
        default=DEFAULT_RESORT_EVERY, metadata={"help": "Re-sort all candidates every n steps (None: once)."}
    )
    max_regions: int = field(default=10, metadata={"help": "Ranked regions per attribution."})
    stop_confidence: float | None = field(default=0.8, metadata={"help": "Stop ranking once P(x_S) reaches it."})
    baseline: str = field(
        default="background",
        metadata={"help": "Masking baseline: background (default: the screenshot's border colour, so a removed region "
                  "looks like empty screen) | mean (the processor's mean colour; a warm grey for Qwen2-VL's CLIP "
                  "statistics, which a model can learn to recognise) | black (the paper's)."},
    )
    score_reduction: str = field(default="mean", metadata={"help": "mean | logmean over decision tokens."})
    # Throughput only. The selected samples' searches share forwards, so a forward is usually full; 8 was the
    # fastest per masked input on CPU (benchmarks/README.md); on a GPU, raise it as memory allows.
    attribution_batch_size: int = field(
        default=8, metadata={"help": "Masked inputs per attribution forward (shared by the selected samples)."}
    )
    loss_chunk_size: int = field(default=4, metadata={"help": "Masked inputs per gradient forward (even, ≥ 2)."})
    prior_hit_k: int = field(default=3, metadata={"help": "k of the logged align/prior_hit@k."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator's 'meta' must reach compute_loss."}
    )

    def __post_init__(self) -> None:
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # `accelerate launch --multi_gpu` on a machine without GPUs starts several processes; only with
            # use_cpu does transformers set them up as one gloo DDP group instead of independent runs.
            self.use_cpu = True
        super().__post_init__()
        choices = {
            "loss_variant": LOSS_VARIANTS, "selection": SELECTIONS, "necessity_floor": NECESSITY_FLOORS,
            "necessity_gate": NECESSITY_GATES, "necessity_removes": NECESSITY_REMOVALS,
            "box_gate_scope": GATE_SCOPES, "blank_gate_scope": GATE_SCOPES, "region_method": REGION_METHODS,
            "search": STRATEGIES, "baseline": BASELINES, "score_reduction": REDUCTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        minimums = {
            "align_every": 1, "align_start_step": 0, "n_regions": 1, "max_regions": 1, "search_scope": 1,
            "attribution_batch_size": 1, "loss_chunk_size": 2, "prior_hit_k": 1,
        }
        for name, low in minimums.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        for name in ("max_aligned_per_step", "resort_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1 (or None)")
        for name in ("lambda_deviation", "lambda_redundancy", "lambda_necessity", "insertion_weight", "deletion_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0")
        if self.insertion_weight + self.deletion_weight <= 0:
            raise ValueError("insertion_weight + deletion_weight must be > 0")
        for name in ("min_confidence", "prior_overlap", "stop_confidence"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")
        if self.deviation_margin is not None:
            if not self.deviation_margin >= 0:
                raise ValueError(f"deviation_margin={self.deviation_margin} must be ≥ 0 (or None)")
            if self.search != "single_round":
                raise ValueError(f"deviation_margin needs search=single_round (singleton scores), got {self.search!r}")
        if self.min_box_sufficiency is not None and not self.min_box_sufficiency >= 0:
            raise ValueError(f"min_box_sufficiency={self.min_box_sufficiency} must be ≥ 0 (or None)")
        if self.max_blank_share is not None and not self.max_blank_share > 0:
            raise ValueError(f"max_blank_share={self.max_blank_share} must be > 0 (or None)")
        if self.necessity_gate == "box_evidence" and self.min_box_sufficiency is None:
            raise ValueError("necessity_gate=box_evidence reads its share from min_box_sufficiency; set it (e.g. 0.5)")
        if not self.adaptive_beta > 0:
            raise ValueError(f"adaptive_beta={self.adaptive_beta} must be > 0")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns=True would drop the collator's 'meta'; leave it False")

    def preset_description(self) -> str:
        """The preset and every setting given over it, or that none was used (what the model card records)."""
        if self.preset is None:
            return "none (eagle-align's defaults)"
        changed = [f"{k}={getattr(self, k)}" for k, v in PRESETS[self.preset].items() if getattr(self, k) != v]
        return self.preset + (f" (changed: {', '.join(changed)})" if changed else "")

    @property
    def ranked_regions(self) -> int:
        """How many regions the trainer asks the search to rank.

        `bounded` ranks only what the losses read: rank 1 for the deviation gate, unless redundancy (every
        off-prior rank with its prefix score) or adaptive_log (the best on-prior gain among the ranks) needs the
        top max_regions. Other strategies always rank max_regions, as the paper does.
        """
        if self.search == "bounded" and self.lambda_redundancy == 0 and self.loss_variant != "adaptive_log":
            return 1
        return self.max_regions


def _preset_first(init):
    """Wrap the dataclass __init__ so that a preset fills exactly the settings the caller did not pass.

    Only the constructor knows which keyword arguments were given (a default and an explicit value equal to
    it look the same afterwards), so the preset is merged here: preset values first, then the caller's.
    HfArgumentParser.parse_dict passes only a recipe's own keys, so a recipe's `preset:` means the same.
    """

    @functools.wraps(init)
    def __init__(self, *args: Any, preset: str | None = None, **kwargs: Any) -> None:
        if preset is not None:
            kwargs = {**preset_values(preset), **kwargs}
        init(self, *args, preset=preset, **kwargs)

    return __init__


PriorAlignedConfig.__init__ = _preset_first(PriorAlignedConfig.__init__)
