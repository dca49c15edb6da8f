"""PriorAlignedTrainer: SFT on click answers plus EAGLE prior-alignment losses every few steps (docs/method.md).

Every optimizer step trains the answer tokens (plain SFT). On alignment steps the trainer also picks the
samples the model already gets right with confidence, asks the attribution engine which screenshot regions
the answer relies on, and hands each attributed sample to the config's gates and loss terms
(`eagle_align.alignment.policies`), back-propagating their losses in small chunks so that memory stays near an
SFT step. The trainer keeps the schedule, the counts agreed across ranks and the backward.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from eagle_align import distributed
from eagle_align.alignment.examples import AlignmentExample, AlignmentExamples, build_alignment_examples
from eagle_align.alignment.policies import AlignmentPolicies, ChunkProbs
from eagle_align.attribution.masking import baseline_row
from eagle_align.attribution.metrics import box_hit_at_k, point_game
from eagle_align.attribution.scoring import (
    DecisionScorer,
    attribution_mode,
    reduce_token_probs,
    score_jointly,
    slice_sample,
)
from eagle_align.attribution.search import Attribution, RegionAttribution, evaluate_prefixes, set_prob_for
from eagle_align.config import PriorAlignedConfig
from eagle_align.families.space import CoordinateSpace

ALIGNMENT_STATE_FILE = "alignment_state.json"
BOX_HIT_K = 3  # k of the logged align/box_hit@k
# Where a training search stops ranking once the kept regions alone give the click (EAGLE's and the paper's 0.8).
TRAINING_STOP_CONFIDENCE = 0.8
logger = logging.get_logger(__name__)
_MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
_PLAN_KEY = "alignment_plan"  # set on a micro-batch by get_batch_samples, popped by compute_loss
_NEEDS_META = "alignment=True needs batches with 'meta' (use eagle_align.data.GroundingCollator)"


@contextlib.contextmanager
def dropout_off(module: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the loss forwards (the function the attribution ranked), everything else as it was.

    Only dropout layers and attention modules (whose dropout depends on their training flag) leave training
    mode. A blanket eval() would be wrong here: transformers only checkpoints a layer while it is training
    (the loss forwards need checkpointing for memory), and bitsandbytes switches 4-bit layers to an
    inference-only kernel in eval mode.
    """
    switched = [
        sub for sub in module.modules()
        if sub.training and (isinstance(sub, torch.nn.Dropout) or hasattr(sub, "attention_dropout"))
    ]
    for sub in switched:
        sub.training = False
    try:
        yield
    finally:
        for sub in switched:
            sub.training = True


@dataclass
class AlignmentStats:
    """One micro-batch's alignment counts and sums: summed over ranks, logged as `align/<name>`, and the counts
    kept cumulatively in `alignment_state.json`."""

    selected: float = 0.0
    attributed: float = 0.0
    no_box: float = 0.0  # point-only samples: nothing to align to
    attribution_forwards: float = 0.0
    loss_forwards: float = 0.0
    nonfinite_terms: float = 0.0
    padded_passes: float = 0.0
    point_hits: float = 0.0
    box_hits: float = 0.0
    attribution_seconds: float = 0.0
    loss_seconds: float = 0.0
    examples: dict[str, float] = field(default_factory=dict)  # per loss kind
    loss_sums: dict[str, float] = field(default_factory=dict)  # per loss kind
    gates: dict[str, float] = field(default_factory=dict)  # per gate metric (dropped or flagged samples)
    step_values: dict[str, float] = field(default_factory=dict)  # already global: gate shares, back-off interval

    _SCALARS = ("selected", "attributed", "no_box", "attribution_forwards", "loss_forwards", "nonfinite_terms",
                "padded_passes", "point_hits", "box_hits", "attribution_seconds", "loss_seconds")
    _COUNTED = ("selected", "no_box", "attribution_forwards", "loss_forwards", "nonfinite_terms", "padded_passes")

    @classmethod
    def for_policies(cls, policies: AlignmentPolicies) -> AlignmentStats:
        gates = {}
        for gate in policies.gates:
            gates[gate.dropped_metric] = 0.0
            if gate.flagged_metric:
                gates[gate.flagged_metric] = 0.0
        return cls(examples=dict.fromkeys(policies.kinds, 0.0), loss_sums=dict.fromkeys(policies.kinds, 0.0),
                   gates=gates)

    def summed_over_ranks(self, device: torch.device) -> AlignmentStats:
        keyed = [("examples", k) for k in self.examples] + [("loss_sums", k) for k in self.loss_sums] + [
            ("gates", k) for k in self.gates]
        values = [getattr(self, name) for name in self._SCALARS] + [getattr(self, d)[k] for d, k in keyed]
        total = distributed.all_reduce_sum(values, device)
        out = AlignmentStats(step_values=dict(self.step_values))
        for name, value in zip(self._SCALARS, total):
            setattr(out, name, value)
        for (d, k), value in zip(keyed, total[len(self._SCALARS):]):
            getattr(out, d)[k] = value
        return out

    def metrics(self, ranks: int) -> dict[str, float]:
        """The `align/*` log entries (seconds are per rank)."""
        metrics = {f"align/{name}": getattr(self, name) for name in self._COUNTED}
        metrics.update({f"align/{kind}_examples": n for kind, n in self.examples.items()})
        metrics.update({f"align/{name}": n for name, n in self.gates.items()})
        metrics["align/attribution_seconds"] = self.attribution_seconds / ranks
        metrics["align/loss_seconds"] = self.loss_seconds / ranks
        for kind, n in self.examples.items():
            if n:
                metrics[f"align/loss_{kind}"] = self.loss_sums[kind] / n
        metrics.update({f"align/{name}": value for name, value in self.step_values.items()})
        if self.attributed:
            metrics["align/point_game"] = self.point_hits / self.attributed
            metrics[f"align/box_hit@{BOX_HIT_K}"] = self.box_hits / self.attributed
        return metrics

    def counts(self) -> dict[str, float]:
        """What `alignment_state.json` accumulates."""
        return {**{name: getattr(self, name) for name in self._COUNTED},
                **{f"{kind}_examples": n for kind, n in self.examples.items()}, **self.gates}


class PriorAlignmentMixin:
    """What the SFT and GRPO trainers share: the alignment schedule, selection, attribution, gates and loss
    terms with their chunked backward, the counters, and what every save records.

    Mixed in before a transformers `Trainer` subclass (`PriorAlignedTrainer`: `Trainer`;
    `PriorAlignedGRPOTrainer`: TRL's `GRPOTrainer`). Alignment reads batches in the form `GroundingCollator`
    writes (answer tokens, `meta` with the box mask and the coordinate tokens); `grounding_collator` is the
    collator that renders answers, so the coordinate space is read from it.
    """

    grounding_collator: Any = None

    def _init_alignment(self, base_model_id: str | None) -> None:
        """The alignment state every trainer keeps; call after `Trainer.__init__`."""
        if not isinstance(self.args, PriorAlignedConfig):
            raise ValueError(f"args must be a PriorAlignedConfig, got {type(self.args).__name__}")
        for module in self.model.modules():
            # On CPU, bitsandbytes repacks 4-bit weights for an inference-only kernel at the first eval-mode
            # forward (attribution runs in eval mode); later gradient forwards then fail. Keep the trainable layout.
            if getattr(module, "support_avx512bf16_for_cpu", False) and self.args.device.type == "cpu":
                module.support_avx512bf16_for_cpu = False
        self.policies = self.args.policies()
        self.attribution_settings = self.args.attribution_settings()
        self.ranked_regions = self.args.ranked_regions  # fixed by the config: not rebuilt every alignment step
        self._alignment_metrics: dict[str, list[float]] = defaultdict(list)
        self._last_aligned_step = -1
        # Back-off schedule (max_align_every): the current interval and the step it next aligns on.
        self._align_interval = self.args.align_every
        self._next_aligned_step: int | None = None
        # Cumulative counts, saved with every checkpoint (alignment_state.json) and restored on resume;
        # wall-clock totals are kept apart (not state: they differ from run to run).
        self.alignment_state: dict[str, float] = defaultdict(float)
        self.alignment_seconds: dict[str, float] = defaultdict(float)
        # The coordinate space the clicks are in (eagle_align.json), from the model, processor and collator.
        self.coordinate_space: CoordinateSpace | None = self._coordinate_space(base_model_id)
        # Examples the collator left out under on_error="skip" (message -> times), on this process.
        self.skipped_examples: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------------------ what a save records
    def _coordinate_space(self, base_model_id: str | None) -> CoordinateSpace | None:
        """What defines this model's clicks, read off the model, its processor and the collator's format."""
        from eagle_align.families.loading import family_of, pixel_limits
        from eagle_align.hub import resolve_base_model_id

        collator, processor = self.grounding_collator, self.processing_class
        if not hasattr(collator, "action_format") or not hasattr(processor, "image_processor"):
            logger.warning("no GroundingCollator / Qwen-VL processor: eagle_align.json (the coordinate space of the "
                           "clicks) will not be written")
            return None
        family = family_of(self.model)
        min_pixels, max_pixels = pixel_limits(processor)
        peft_config = self._peft_config()
        name = (getattr(peft_config, "base_model_name_or_path", None)
                or getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "") or "")
        quantized = getattr(self.accelerator.unwrap_model(self.model), "is_quantized", False)
        return CoordinateSpace(
            family=family.name,
            action_format=collator.action_format.name,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            system_prompt=collator.system_prompt,
            base_model_id=resolve_base_model_id(name, base_model_id) if name or base_model_id else None,
            finetuning=("qlora" if quantized else "lora") if peft_config is not None else "full",
            attribution=self.attribution_settings.to_dict(),
        )

    def _peft_config(self) -> Any:
        """The adapter's PEFT config (None: full weights)."""
        return next(iter(getattr(self.model, "peft_config", {}).values()), None)

    def _training_section(self) -> dict[str, Any]:
        """The card's training table: how the weights were trained."""
        peft_config = self._peft_config()
        section: dict[str, Any] = {"finetuning": self.coordinate_space.finetuning}
        if peft_config is not None:
            targets = peft_config.target_modules
            section.update(lora_r=peft_config.r, lora_alpha=peft_config.lora_alpha,
                           lora_targets=targets if isinstance(targets, str) else sorted(targets))
        unwrapped = self.accelerator.unwrap_model(self.model)
        section["freeze_vision"] = not any(p.requires_grad for n, p in unwrapped.named_parameters() if ".visual." in n)
        section.update(learning_rate=self.args.learning_rate, max_steps=self.args.max_steps,
                       num_train_epochs=self.args.num_train_epochs)
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            section["train_examples"] = len(self.train_dataset)
        return section

    def create_model_card(self, output_dir: str | None = None, **kwargs: Any) -> None:
        """eagle-align's card: the base id, coordinate space, every alignment setting and what alignment did,
        the last click eval. The Trainer's default card records a local base path and none of that."""
        if self.coordinate_space is None:
            return super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return None
        from eagle_align.hub import write_model_card

        evaluation = next(
            ({k: v for k, v in entry.items() if k.startswith("eval/")}
             for entry in reversed(self.state.log_history) if any(k.startswith("eval/") for k in entry)),
            None,
        )
        write_model_card(
            output_dir or self.args.output_dir,
            self.coordinate_space,
            training=self._training_section(),
            alignment={**self.args.method_settings(), "preset": self.args.preset_description()},
            alignment_totals=dict(self.alignment_state),
            evaluation=evaluation,
        )
        return None

    # ----------------------------------------------------------------------------------------- schedule
    def is_alignment_step(self) -> bool:
        """Alignment runs on optimizer steps align_every, 2·align_every, ... (1-based), after the warm-up; under
        back-off (`max_align_every`), on the step the last alignment step scheduled."""
        step = self.state.global_step
        if not self.args.alignment or step < self.args.align_start_step:
            return False
        if self._next_aligned_step is not None:
            return step >= self._next_aligned_step
        return (step + 1) % self.args.align_every == 0

    def _schedule_next(self, terms: float) -> bool:
        """Back-off: the interval to the next alignment step doubles after a step where no term fired (counted
        over every rank, so all ranks agree) and returns to align_every when one does. False: no back-off."""
        most = getattr(self.args, "max_align_every", None)
        if most is None:
            return False
        self._align_interval = self.args.align_every if terms else min(2 * self._align_interval, most)
        self._next_aligned_step = self.state.global_step + self._align_interval
        return True

    # ---------------------------------------------------------------------------------------- selection
    def _select(self, model: torch.nn.Module, inputs: dict, metas: list) -> tuple[list[int], dict[int, float]]:
        """Indices of confidently-correct samples with a box (and their P(x)), capped at max_aligned_per_step.

        One eval-mode forward of the batch with the LM head only at decision positions.
        """
        boxed = [i for i, m in enumerate(metas) if m.box_mask is not None]
        cap = self.args.max_aligned_per_step or len(metas)
        if getattr(self.args, "selection", "confident_correct") == "all" or not boxed:
            return boxed[:cap], {}
        device = inputs["input_ids"].device
        positions = [torch.as_tensor(m.decision_positions).long().view(-1) - 1 for m in metas]
        union = torch.unique(torch.cat(positions))
        logits = model(**{k: inputs[k] for k in _MODEL_KEYS}, logits_to_keep=union.to(device), use_cache=False).logits
        log_probs = logits.float().log_softmax(-1).cpu()
        chosen, full_probs = [], {}
        for i in boxed:
            rows = log_probs[i, torch.searchsorted(union, positions[i])]
            targets = torch.as_tensor(metas[i].decision_token_ids).long().view(-1)
            token_log_probs = rows.gather(-1, targets[:, None]).squeeze(-1)
            prob = reduce_token_probs(token_log_probs.exp(), self.args.score_reduction)
            if bool((rows.argmax(-1) == targets).all()) and float(prob) >= self.args.min_confidence:
                chosen.append(i)
                full_probs[i] = float(prob)
        return chosen[:cap], full_probs

    # ---------------------------------------------------------------------------------------- alignment
    def _align(self, model: torch.nn.Module, inputs: dict, metas: list) -> None:
        """Attribute and back-propagate one micro-batch's alignment losses as an optimizer step of its own."""
        self._align_backward(model, self._plan_alignment(model, [{**inputs, "meta": metas}])[0])

    def _plan_alignment(self, model: torch.nn.Module, batches: list[dict]) -> list[_AlignmentPlan]:
        """Select, attribute and gate the micro-batches of one optimizer step (no gradient).

        The loss is λ·mean over every example of the step's global batch, so each term weighs
        λ·world_size / (count of its kind over all micro-batches and ranks); world_size undoes the gradient
        averaging over ranks. Every rank plans the same micro-batches, so its Lockstep forwards pair up. The
        gates' step tests sum their probabilities over the same batch.
        """
        unwrapped = self.accelerator.unwrap_model(model)
        per_chunk = self.args.loss_chunk_size // 2
        policies = self.policies
        measured_batches = []
        for batch in batches:
            if batch.get("meta") is None:
                raise ValueError(_NEEDS_META)
            samples = _BatchSamples(batch, unwrapped, self.args)
            stats = AlignmentStats.for_policies(policies)
            start = time.perf_counter()
            lockstep = distributed.Lockstep(unwrapped, lambda s=samples: s.dummy_pass(unwrapped, grad=False),
                                            self.accelerator.device)
            with attribution_mode(unwrapped), lockstep:
                selected, full_probs = self._select(unwrapped, batch, batch["meta"])
                measured = self._attribute(unwrapped, samples, selected, full_probs, stats)
            stats.selected, stats.attributed = len(selected), len(measured)
            stats.no_box = sum(m.box_mask is None for m in batch["meta"])
            stats.padded_passes += lockstep.padded
            stats.attribution_seconds = time.perf_counter() - start
            measured_batches.append((samples, measured, stats))
        step = [m for _, measured, _ in measured_batches for m in measured]
        # The gates' step sums over every micro-batch and rank: ΣP(x), then Σ of each gate's probability.
        local = [sum(m.full_prob for m in step)] + [sum(m.probs[g.measures] for m in step) for g in policies.gates]
        step_full, *step_gated = distributed.all_reduce_sum(local, self.accelerator.device) if policies.gates else local
        plans, local_counts = [], []
        for samples, measured, stats in measured_batches:
            keep = [True] * len(measured)
            for gate, step_measured in zip(policies.gates, step_gated):
                verdicts = gate.verdicts([m.full_prob for m in measured], [m.probs[gate.measures] for m in measured],
                                         step_full, step_measured)
                stats.gates[gate.dropped_metric] += sum(not k for k in verdicts.keep)
                if gate.flagged_metric:
                    stats.gates[gate.flagged_metric] += sum(verdicts.flagged)
                if step_full > 0:
                    stats.step_values[gate.share_metric] = step_measured / step_full
                keep = [a and b for a, b in zip(keep, verdicts.keep)]
            built = [(m.index, self._examples(samples, m)) for m, kept in zip(measured, keep)]
            for (_, examples), kept in zip(built, keep):
                if not kept:
                    examples.examples = []
            chunks = [(i, ex, ex.examples[k : k + per_chunk])
                      for i, ex in built for k in range(0, len(ex.examples), per_chunk)]
            kinds = [sum(len(ex.of_kind(kind)) for _, ex in built) for kind in policies.kinds]
            stats.examples = dict(zip(policies.kinds, map(float, kinds)))
            plans.append(_AlignmentPlan(samples, chunks, stats))
            local_counts += [len(chunks), *kinds]
        # [ranks, micro-batches, (chunks, one count per loss kind)], one collective for the whole step.
        counts = distributed.gather_counts(local_counts, self.accelerator.device).view(
            -1, len(batches), 1 + len(policies.kinds))
        weights = {}
        for column, term in enumerate(policies.terms, start=1):
            total = float(counts[..., column].sum())
            weights[term.kind] = term.weight * distributed.world_size() / total if total else 0.0
        for k, plan in enumerate(plans):
            plan.agreed_chunks, plan.weights = int(counts[:, k, 0].max()), weights
        if self._schedule_next(float(counts[..., 1:].sum())):
            plans[0].stats.step_values["interval"] = float(self._align_interval)
        return plans

    def _examples(self, samples: _BatchSamples, m: _MeasuredSample) -> AlignmentExamples:
        settings = self.attribution_settings
        return build_alignment_examples(
            m.attribution, samples.batch["meta"][m.index].box_mask, self.policies.terms, settings.box_overlap,
            settings.insertion_weight, settings.deletion_weight, full_prob=m.full_prob,
            box_prob=m.probs.get("box"), blank_prob=m.probs.get("blank"),
        )

    def _align_backward(self, model: torch.nn.Module, plan: _AlignmentPlan) -> None:
        """Back-propagate one micro-batch's alignment chunks, each with its own backward, and log the step.

        Order matters under DDP: this finishes before the micro-batch's SFT forward, so no DDP forward is ever
        left waiting for its backward; every rank runs the micro-batch's agreed number of gradient passes.
        """
        start = time.perf_counter()
        stats = plan.stats
        if plan.agreed_chunks:
            with dropout_off(self.accelerator.unwrap_model(model)):
                for i, examples, chunk in plan.chunks:
                    self._loss_chunk(plan.samples.scorer(model, i), examples, chunk, plan.weights, stats)
                stats.padded_passes += distributed.pad_passes(
                    len(plan.chunks), plan.agreed_chunks,
                    lambda: self._backward(plan.samples.dummy_pass(model, grad=True)),
                )
        stats.loss_seconds = time.perf_counter() - start
        self._record(stats)

    def _attribute(
        self, model: torch.nn.Module, samples: _BatchSamples, selected: list[int], full_probs: dict[int, float],
        stats: AlignmentStats,
    ) -> list[_MeasuredSample]:
        """Attribution of the selected samples with the current weights (their searches share forwards), their
        box metrics, and the masked probabilities the gates and terms read (`measures`)."""
        args, measures = self.args, self.policies.measures
        attribution = RegionAttribution(model, self.attribution_settings, batch_size=args.attribution_batch_size)
        attributions = attribution.attribute(
            samples.batch, target=selected, baselines=[samples.row(i) for i in selected],
            max_regions=self.ranked_regions, full_probs=[full_probs.get(i) for i in selected],
            stop_confidence=TRAINING_STOP_CONFIDENCE,
            measure_ends="ends" in measures,
        )
        # In shared no-grad forwards: P(x_B) (box alone), P(x) where selection did not measure it, P(x_∅) (blank).
        extra = [name for name in ("box", "blank") if name in measures]
        full = [full_probs.get(i) for i in selected]
        probs: list[dict[str, float]] = [{} for _ in selected]
        if extra and selected:
            masks = []
            for i, p in zip(selected, full):
                box = samples.batch["meta"][i].box_mask.bool()
                # Order: box alone, the whole screen (if unmeasured), blank.
                rows = ([box] if "box" in extra else []) + ([torch.ones_like(box)] if p is None else []) + (
                    [torch.zeros_like(box)] if "blank" in extra else [])
                masks.append(torch.stack(rows))
            scored = score_jointly([(samples.scorer(model, i), m) for i, m in zip(selected, masks)],
                                   args.attribution_batch_size)
            for k, q in enumerate(scored):
                if "box" in extra:
                    probs[k]["box"] = float(q[0])
                if "blank" in extra:
                    probs[k]["blank"] = float(q[-1])
                if full[k] is None:
                    full[k] = float(q[int("box" in extra)])
            stats.attribution_forwards += sum(len(m) for m in masks)
        measured = []
        for k, (i, attribution) in enumerate(zip(selected, attributions)):
            if "prefixes" in measures and self.attribution_settings.search == "single_round":
                # Redundancy needs F(S_{r-1}) of every prefix; single_round measured only S_1.
                evaluate_prefixes(attribution, set_prob_for(samples.scorer(model, i), attribution.partition))
            box = samples.batch["meta"][i].box_mask
            overlap = self.attribution_settings.box_overlap
            stats.attribution_forwards += attribution.forwards
            stats.point_hits += float(point_game(attribution, box, overlap))
            stats.box_hits += box_hit_at_k(attribution, box, k=BOX_HIT_K, box_overlap=overlap)
            full_prob = float(attribution.full_prob if full[k] is None else full[k])
            measured.append(_MeasuredSample(i, attribution, full_prob, probs[k]))
        return measured

    def _loss_chunk(
        self, scorer: DecisionScorer, examples: AlignmentExamples, chunk: list, weights: dict, stats: AlignmentStats
    ) -> None:
        """One gradient forward over the chunk's deletion inputs and the insertions its terms read, weighted,
        back-propagated now. Insertions are scored only where they carry weight (a > 0 and a term reading them).
        """
        settings = self.attribution_settings
        terms = {term.kind: term for term in self.policies.terms}
        insert_cells, delete_cells = examples.keep_cells(chunk)
        reads_insert = [i for i, e in enumerate(chunk)
                        if terms[e.kind].reads_insertion and settings.insertion_weight > 0]
        probs = scorer.score(torch.cat([insert_cells[reads_insert], delete_cells]), grad=True)
        stats.loss_forwards += probs.numel()
        p_delete = probs[len(reads_insert) :]
        p_insert = p_delete.new_zeros(len(chunk)).index_copy(
            0, torch.tensor(reads_insert, dtype=torch.long, device=probs.device), probs[: len(reads_insert)])
        inputs = ChunkProbs(p_insert, p_delete, chunk, examples, settings.insertion_weight, settings.deletion_weight)
        of_kind = {kind: torch.tensor([e.kind == kind for e in chunk], device=probs.device) for kind in terms}
        values = weight = None
        # Each term's loss over the whole chunk, kept where the example is of its kind (later kinds win ties).
        for kind, term in terms.items():
            if not bool(of_kind[kind].any()) and values is not None:
                continue
            term_values = term.loss(inputs)
            values = term_values if values is None else torch.where(of_kind[kind], term_values, values)
            kind_weight = torch.as_tensor(weights[kind], device=probs.device)
            weight = kind_weight if weight is None else torch.where(of_kind[kind], kind_weight, weight)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            # Never back-propagate through a non-finite forward: a zero-weighted pass keeps ranks in step.
            stats.nonfinite_terms += float((~finite).sum())
            del probs, values
            self._backward(scorer.score(torch.ones(1, *scorer.grid_hw, dtype=torch.bool), grad=True).sum() * 0.0)
            return
        for kind in terms:
            stats.loss_sums[kind] += float(values.detach()[of_kind[kind]].sum())
        self._backward((values * weight).sum())

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one alignment chunk now (bounded memory), scaled like the Trainer's own backward."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # accelerate's DeepSpeed backward would also step the optimizer; chunks only accumulate gradients.
            self.accelerator.deepspeed_engine_wrapped.engine.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    # ------------------------------------------------------------------------------------------ metrics
    def _record(self, stats: AlignmentStats) -> None:
        """Reduce this micro-step's statistics over ranks and queue them for the next log()."""
        total = stats.summed_over_ranks(self.accelerator.device)
        ranks = distributed.world_size()
        for key, value in total.metrics(ranks).items():
            self._alignment_metrics[key].append(value)
        if total.nonfinite_terms:
            logger.warning(f"step {self.state.global_step}: skipped {int(total.nonfinite_terms)} non-finite "
                           "alignment term(s)")
        if self._last_aligned_step != self.state.global_step:
            self._last_aligned_step = self.state.global_step
            self.alignment_state["alignment_steps"] += 1
        for key, value in total.counts().items():
            self.alignment_state[key] += value
        self.alignment_seconds["attribution"] += total.attribution_seconds / ranks
        self.alignment_seconds["loss"] += total.loss_seconds / ranks

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        window = {key: sum(values) / len(values) for key, values in self._alignment_metrics.items() if values}
        self._alignment_metrics.clear()
        super().log({**logs, **window}, start_time)

    # --------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Trainer._save (weights, processor), plus what makes the folder usable on its own: eagle_align.json
        (coordinate space, attribution settings), the card and alignment_state.json. `save_model()` and every
        checkpoint come through here."""
        super()._save(output_dir, state_dict)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and self.coordinate_space is not None:
            self.coordinate_space.save(folder)
            self._write_alignment_state(folder)
            self.create_model_card(output_dir=folder)

    def _write_alignment_state(self, folder: str) -> None:
        state = {**self.alignment_state, "last_aligned_step": self._last_aligned_step,
                 "align_interval": self._align_interval, "next_aligned_step": self._next_aligned_step}
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(os.path.join(folder, ALIGNMENT_STATE_FILE), "w") as handle:
            json.dump(state, handle, indent=2)

    def save_state(self) -> None:
        """trainer_state.json (log history) and alignment_state.json into the output directory."""
        super().save_state()
        if self.is_world_process_zero():
            self._write_alignment_state(self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """Trainer.train, restoring the alignment counters saved with the checkpoint being resumed
        (``True``: the latest checkpoint in output_dir)."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        path = os.path.join(checkpoint, ALIGNMENT_STATE_FILE) if isinstance(checkpoint, str) else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                saved = json.load(handle)
            self._last_aligned_step = int(saved.pop("last_aligned_step", -1))
            self._align_interval = int(saved.pop("align_interval", self.args.align_every))
            self._next_aligned_step = saved.pop("next_aligned_step", None)
            self.alignment_state = defaultdict(float, {k: float(v) for k, v in saved.items() if math.isfinite(v)})
        return super().train(resume_from_checkpoint, *args, **kwargs)




class PriorAlignedTrainer(PriorAlignmentMixin, Trainer):
    """Drop-in `Trainer` for GUI grounding SFT with prior alignment.

    Use with a `PriorAlignedConfig`, a dataset of grounding examples and a `GroundingCollator` (its batches
    carry a `"meta"` list that `compute_loss` pops). Pass a PEFT `LoraConfig` as ``peft_config`` to train
    LoRA adapters on a plain model, as `SFTTrainer` does. Every save (`save_model()` and each checkpoint)
    writes what `eagle-align train` writes: `eagle_align.json` (the coordinate space the clicks are in and the
    attribution settings), the model card and `alignment_state.json`. Alignment metrics (`align/...`) are
    averaged over the aligned micro-steps of each logging window.
    """

    def __init__(self, *args: Any, peft_config: Any = None, base_model_id: str | None = None,
                 **kwargs: Any) -> None:
        if peft_config is not None:
            if "model" in kwargs or not args:
                kwargs["model"] = _with_adapter(kwargs.get("model"), peft_config)
            else:
                args = (_with_adapter(args[0], peft_config), *args[1:])
        super().__init__(*args, **kwargs)
        self.grounding_collator = self.data_collator
        self._init_alignment(base_model_id)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's prefetch of one optimizer step's micro-batches; on alignment steps, also their attribution.

        Attributing every micro-batch of the step before its first backward (the weights cannot change in
        between: no optimizer step) gives each alignment mean its denominator over the whole step, all
        micro-batches on all ranks, so gradient accumulation does not change the alignment loss. Each
        micro-batch carries its plan to `compute_loss`, which back-propagates it.
        """
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.alignment and batch_samples and self.is_alignment_step():
            plans = self._plan_alignment(self.model_wrapped, [self._prepare_inputs(b) for b in batch_samples])
            for batch, plan in zip(batch_samples, plans):
                batch[_PLAN_KEY] = plan
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        metas = inputs.pop("meta", None)
        for message in inputs.pop("skipped", ()):
            self.skipped_examples[message] += 1
        plan = inputs.pop(_PLAN_KEY, None)
        if self.args.alignment and model.training:
            if metas is None:
                raise ValueError(_NEEDS_META)
            if plan is not None:
                self._align_backward(model, plan)
            elif self.is_alignment_step():  # training_step called outside train(): the micro-batch is the step
                self._align(model, inputs, metas)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

def _with_adapter(model: Any, peft_config: Any) -> Any:
    """``model`` wrapped in a PEFT model for ``peft_config`` (as SFTTrainer does), unless it already is one."""
    from peft import PeftModel, get_peft_model

    if model is None or isinstance(model, str):
        raise ValueError("peft_config needs a loaded model (eagle_align.load_model_and_processor)")
    if isinstance(model, PeftModel):
        raise ValueError("the model already carries adapters; pass peft_config only with a plain model")
    return get_peft_model(model, peft_config)


@dataclass
class _MeasuredSample:
    """One selected sample's attribution and the masked probabilities its gates and terms read."""

    index: int  # in the micro-batch
    attribution: Attribution
    full_prob: float  # P(x)
    probs: dict[str, float] = field(default_factory=dict)  # "box": P(x_B), "blank": P(x_∅), when measured


@dataclass
class _AlignmentPlan:
    """One micro-batch's attributed alignment examples, weighted for the optimizer step it belongs to."""

    samples: _BatchSamples
    chunks: list[tuple[int, AlignmentExamples, list[AlignmentExample]]]
    stats: AlignmentStats
    agreed_chunks: int = 0  # gradient passes every rank runs for this micro-batch (the most chunks of any rank)
    weights: dict[str, float] = field(default_factory=dict)  # λ·world_size / global count, per kind


class _BatchSamples:
    """Per-sample views of one micro-batch, built once: unpadded slices, baseline rows and scorers."""

    def __init__(self, batch: dict, unwrapped: torch.nn.Module, args: PriorAlignedConfig) -> None:
        self.batch, self.unwrapped, self.args = batch, unwrapped, args
        self._slices: dict[int, dict] = {}
        self._rows: dict[int, torch.Tensor] = {}
        self._scorers: dict[tuple[int, int], DecisionScorer] = {}

    def sample(self, i: int) -> dict:
        if i not in self._slices:
            self._slices[i] = slice_sample(self.batch, i)
        return self._slices[i]

    def row(self, i: int) -> torch.Tensor:
        """The masking baseline of sample i (one row, shared by its attribution and loss forwards)."""
        if i not in self._rows:
            sample = self.sample(i)
            self._rows[i] = baseline_row(
                self.unwrapped, self.args.baseline, sample["pixel_values"].cpu(), sample["image_grid_thw"].cpu()
            )
        return self._rows[i]

    def scorer(self, model: torch.nn.Module, i: int) -> DecisionScorer:
        key = (id(model), i)
        if key not in self._scorers:
            self._scorers[key] = DecisionScorer(
                model, self.sample(i), self.batch["meta"][i], self.row(i),
                batch_size=self.args.attribution_batch_size, reduction=self.args.score_reduction,
            )
        return self._scorers[key]

    def dummy_pass(self, model: torch.nn.Module, grad: bool) -> torch.Tensor:
        """One forward of sample 0, unmasked; with grad, a zero-weighted loss to back-propagate (padding)."""
        scorer = self.scorer(model, 0)
        return scorer.score(torch.ones(1, *scorer.grid_hw, dtype=torch.bool), grad=grad).sum() * 0.0

