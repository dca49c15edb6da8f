"""PriorAlignedTrainer: SFT on click answers plus EAGLE prior-alignment losses every few steps (docs/method.md).

Every optimizer step trains the answer tokens (plain SFT). On alignment steps the trainer also picks the
samples the model already gets right with confidence, asks the attribution engine which screenshot regions
the answer relies on, and for off-prior evidence adds the deviation / redundancy losses, back-propagated in
small chunks so that memory stays near an SFT step. All data-dependent counts are agreed across ranks.
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
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from eagle_align import distributed
from eagle_align.alignment import (
    AlignmentExample,
    AlignmentExamples,
    build_alignment_examples,
    deviation_loss,
    gate_samples,
    necessity_loss,
    redundancy_loss,
    step_gate_totals,
)
from eagle_align.attribution.masking import baseline_row
from eagle_align.attribution.metrics import point_game, prior_hit_at_k
from eagle_align.attribution.scoring import DecisionScorer, attribution_mode, score_jointly, slice_sample
from eagle_align.attribution.search import (
    Attribution,
    attribute_samples,
    evaluate_prefixes,
    set_prob_for,
)
from eagle_align.config import PriorAlignedConfig
from eagle_align.models.space import CoordinateSpace

ALIGNMENT_STATE_FILE = "alignment_state.json"
logger = logging.get_logger(__name__)
_MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
_PLAN_KEY = "alignment_plan"  # set on a micro-batch by get_batch_samples, popped by compute_loss
_NEEDS_META = "alignment=True needs batches with 'meta' (use eagle_align.data.GroundingCollator)"
LOSS_KINDS = ("deviation", "redundancy", "necessity")  # each weighs lambda_<kind> / (its count in the step)


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


class PriorAlignedTrainer(Trainer):
    """Drop-in `Trainer` for GUI grounding SFT with prior alignment.

    Use with a PEFT model, a `PriorAlignedConfig`, an `ExampleSet` and a `GroundingCollator` (its batches
    carry a `"meta"` list that `compute_loss` pops). Alignment metrics (`align/...`) are averaged over the
    aligned micro-steps of each logging window.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PriorAlignedConfig):
            raise ValueError(f"args must be a PriorAlignedConfig, got {type(self.args).__name__}")
        for module in self.model.modules():
            # On CPU, bitsandbytes repacks 4-bit weights for an inference-only kernel at the first eval-mode
            # forward (attribution runs in eval mode); later gradient forwards then fail. Keep the trainable layout.
            if getattr(module, "support_avx512bf16_for_cpu", False) and self.args.device.type == "cpu":
                module.support_avx512bf16_for_cpu = False
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._last_aligned_step = -1
        # Cumulative counts, saved with every checkpoint (alignment_state.json) and restored on resume;
        # wall-clock totals are kept apart (not state: they differ from run to run).
        self.alignment_state: dict[str, float] = defaultdict(float)
        self.alignment_seconds: dict[str, float] = defaultdict(float)
        # Set by `eagle_align.train`: the coordinate space (family, action format, pixel limits, prompt, base id),
        # written as eagle_align.json with every save, and the training settings for the model card.
        self.coordinate_space: CoordinateSpace | None = None
        self.model_card_fields: dict[str, Any] = {}
        # Examples the collator left out under on_error="skip" (message -> times), on this process.
        self.skipped_examples: dict[str, int] = defaultdict(int)

    def create_model_card(self, **kwargs: Any) -> None:
        """eagle-align's card: the real base id, coordinate space, alignment settings and totals, last click eval.

        The Trainer's default card records a local base path and none of what reproduces the clicks.
        """
        if self.coordinate_space is None:
            return super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return None
        from eagle_align.hub import write_model_card

        alignment_keys = (
            "alignment", "align_every", "align_start_step", "lambda_deviation", "lambda_redundancy", "lambda_necessity",
            "necessity_floor", "necessity_gate", "necessity_removes", "loss_variant",
            "deviation_margin", "min_box_sufficiency", "max_blank_share", "box_gate_scope",
            "blank_gate_scope",
            "insertion_weight", "deletion_weight", "selection", "min_confidence", "prior_overlap", "n_regions",
            "region_method", "search", "max_regions", "baseline", "score_reduction",
        )
        evaluation = next(
            ({k: v for k, v in entry.items() if k.startswith("eval/")}
             for entry in reversed(self.state.log_history) if any(k.startswith("eval/") for k in entry)),
            None,
        )
        write_model_card(
            self.args.output_dir,
            self.coordinate_space,
            alignment={"preset": self.args.preset_description(), **{k: getattr(self.args, k) for k in alignment_keys}},
            alignment_totals=dict(self.alignment_state),
            evaluation=evaluation,
            **self.model_card_fields,
        )
        return None

    # ----------------------------------------------------------------------------------------- schedule
    def is_alignment_step(self) -> bool:
        """Alignment runs on optimizer steps align_every, 2·align_every, ... (1-based), after the warm-up."""
        step = self.state.global_step
        return self.args.alignment and step >= self.args.align_start_step and (step + 1) % self.args.align_every == 0

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

    # ---------------------------------------------------------------------------------------- selection
    def _select(self, model: torch.nn.Module, inputs: dict, metas: list) -> tuple[list[int], dict[int, float]]:
        """Indices of confidently-correct samples (and their P(x)), capped at max_aligned_per_step.

        One eval-mode forward of the batch with the LM head only at decision positions.
        """
        cap = self.args.max_aligned_per_step or len(metas)
        if self.args.selection == "all":
            return list(range(len(metas)))[:cap], {}
        device = inputs["input_ids"].device
        positions = [torch.as_tensor(m.decision_positions).long().view(-1) - 1 for m in metas]
        union = torch.unique(torch.cat(positions))
        logits = model(**{k: inputs[k] for k in _MODEL_KEYS}, logits_to_keep=union.to(device), use_cache=False).logits
        log_probs = logits.float().log_softmax(-1).cpu()
        chosen, full_probs = [], {}
        for i, meta in enumerate(metas):
            rows = log_probs[i, torch.searchsorted(union, positions[i])]
            targets = torch.as_tensor(meta.decision_token_ids).long().view(-1)
            token_log_probs = rows.gather(-1, targets[:, None]).squeeze(-1)
            prob = token_log_probs.exp().mean() if self.args.score_reduction == "mean" else token_log_probs.mean().exp()
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
        gates' step tests (`box_gate_scope` / `blank_gate_scope`) sum their probabilities over the same batch.
        """
        args = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        per_chunk = args.loss_chunk_size // 2
        measured_batches = []
        for batch in batches:
            if batch.get("meta") is None:
                raise ValueError(_NEEDS_META)
            samples = _BatchSamples(batch, unwrapped, args)
            stats = dict.fromkeys(("point_hits", "prior_hits", "attribution_forwards", *LOSS_KINDS,
                                   "nonfinite", "loss_forwards", "padded", "insufficient_boxes",
                                   "blank_clicks", "shortcut_boxes"), 0.0)
            start = time.perf_counter()
            lockstep = distributed.Lockstep(unwrapped, lambda s=samples: s.dummy_pass(unwrapped, grad=False),
                                            self.accelerator.device)
            with attribution_mode(unwrapped), lockstep:
                selected, full_probs = self._select(unwrapped, batch, batch["meta"])
                measured = self._attribute(unwrapped, samples, selected, full_probs, stats)
            stats["padded"] += lockstep.padded
            measured_batches.append((samples, len(selected), measured, stats, time.perf_counter() - start))
        step_totals, shares = None, {}
        if args.min_box_sufficiency is not None or args.max_blank_share is not None:
            # The step scopes test these sums; both scopes log the step's shares (align/box_share, blank_share).
            step = [m for _, _, measured, _, _ in measured_batches for m in measured]
            local = step_gate_totals([m.full_prob for m in step], [m.box_prob for m in step],
                                     [m.blank_prob for m in step])
            step_totals = tuple(distributed.all_reduce_sum(local, self.accelerator.device))
            full, box, blank = step_totals
            if full > 0 and args.min_box_sufficiency is not None:
                shares["box_share"] = box / full
            if full > 0 and args.max_blank_share is not None:
                shares["blank_share"] = blank / full
        plans, local_counts = [], []
        for samples, n_selected, measured, stats, seconds in measured_batches:
            stats.update(shares)  # already global: logged as they are, not summed over ranks
            built = self._build_examples(samples, measured, step_totals, stats)
            chunks = [(i, ex, ex.examples[k : k + per_chunk])
                      for i, ex in built for k in range(0, len(ex.examples), per_chunk)]
            kinds = [sum(len(getattr(ex, kind)) for _, ex in built) for kind in LOSS_KINDS]
            plans.append(_AlignmentPlan(samples, chunks, (n_selected, len(built), *kinds), stats, seconds))
            local_counts += [len(chunks), *kinds]
        # [ranks, micro-batches, (chunks, one count per loss kind)], one collective for the whole step.
        counts = distributed.gather_counts(local_counts, self.accelerator.device).view(
            -1, len(batches), 1 + len(LOSS_KINDS))
        weights = {}
        for column, kind in enumerate(LOSS_KINDS, start=1):
            total = float(counts[..., column].sum())
            weights[kind] = getattr(args, f"lambda_{kind}") * distributed.world_size() / total if total else 0.0
        for k, plan in enumerate(plans):
            plan.agreed_chunks, plan.weights = int(counts[:, k, 0].max()), weights
        return plans

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
                stats["padded"] += distributed.pad_passes(
                    len(plan.chunks), plan.agreed_chunks,
                    lambda: self._backward(plan.samples.dummy_pass(model, grad=True)),
                )
        self._record(*plan.counts, stats, plan.attribution_seconds, time.perf_counter() - start)

    def _attribute(
        self, model: torch.nn.Module, samples: _BatchSamples, selected: list[int], full_probs: dict[int, float],
        stats: dict,
    ) -> list[_MeasuredSample]:
        """Attribution of the selected samples with the current weights (their searches share forwards), their
        prior metrics, and what the gates and the necessity floor read."""
        args = self.args
        attributions = attribute_samples(
            model, samples.batch, selected, n_regions=args.n_regions, region_method=args.region_method,
            baseline=[samples.row(i) for i in selected], strategy=args.search,
            batch_size=args.attribution_batch_size, reduction=args.score_reduction,
            full_probs=[full_probs.get(i) for i in selected], prior_overlap=args.prior_overlap,
            max_regions=args.ranked_regions, stop_confidence=args.stop_confidence, search_scope=args.search_scope,
            resort_every=args.resort_every, insertion_weight=args.insertion_weight,
            deletion_weight=args.deletion_weight, measure_ends=args.loss_variant == "adaptive_log",  # reads P(x)
        )
        box_probs, full = [None] * len(selected), [full_probs.get(i) for i in selected]
        blank_probs = [None] * len(selected)
        gate = args.min_box_sufficiency is not None  # also box_evidence's P(x_B) (config requires it then)
        blank = args.max_blank_share is not None or (
            args.lambda_necessity > 0 and (args.necessity_floor == "blank" or args.necessity_gate == "box_evidence"))
        if (gate or blank) and selected:
            # In shared no-grad forwards: the sufficiency gate's P(x_B), P(x) where selection did not measure
            # it, and P(x_∅) for the blank gate and the necessity floor.
            masks = []
            for i, p in zip(selected, full):
                box = samples.batch["meta"][i].prior_mask.bool()
                masks.append(torch.stack(([box] if gate else []) + ([torch.ones_like(box)] if p is None else [])
                                         + ([torch.zeros_like(box)] if blank else [])))
            probs = score_jointly([(samples.scorer(model, i), m) for i, m in zip(selected, masks)],
                                  args.attribution_batch_size)
            if gate:
                box_probs = [float(q[0]) for q in probs]
            full = [p if p is not None else float(q[int(gate)]) for p, q in zip(full, probs)]
            if blank:
                blank_probs = [float(q[-1]) for q in probs]
            stats["attribution_forwards"] += sum(len(m) for m in masks)
        measured = []
        for i, attribution, box_prob, full_prob, blank_prob in zip(selected, attributions, box_probs, full,
                                                                   blank_probs):
            if args.search == "single_round" and args.lambda_redundancy > 0:
                # Redundancy needs F(S_{r-1}) of every prefix; single_round measured only S_1.
                evaluate_prefixes(attribution, set_prob_for(samples.scorer(model, i), attribution.partition))
            prior = samples.batch["meta"][i].prior_mask
            stats["attribution_forwards"] += attribution.forwards
            stats["point_hits"] += float(point_game(attribution, prior, args.prior_overlap))
            stats["prior_hits"] += prior_hit_at_k(attribution, prior, k=args.prior_hit_k,
                                                  prior_overlap=args.prior_overlap)
            full_prob = float(attribution.full_prob if full_prob is None else full_prob)
            measured.append(_MeasuredSample(i, attribution, full_prob, box_prob, blank_prob))
        return measured

    def _build_examples(
        self, samples: _BatchSamples, measured: list[_MeasuredSample], step_totals: tuple | None, stats: dict
    ) -> list[tuple[int, AlignmentExamples]]:
        """The gates' verdicts and each sample's alignment examples (a term with weight 0 gives none)."""
        args = self.args
        weight = {kind: getattr(args, f"lambda_{kind}") for kind in LOSS_KINDS}
        verdicts = gate_samples([m.full_prob for m in measured], [m.box_prob for m in measured],
                                [m.blank_prob for m in measured], args.min_box_sufficiency, args.max_blank_share,
                                box_scope=args.box_gate_scope, blank_scope=args.blank_gate_scope,
                                step_totals=step_totals)
        built = []
        for m, verdict in zip(measured, verdicts):
            examples = build_alignment_examples(m.attribution, samples.batch["meta"][m.index].prior_mask,
                                                args.prior_overlap, args.insertion_weight, args.deletion_weight,
                                                deviation_margin=args.deviation_margin,
                                                necessity=args.lambda_necessity > 0,
                                                necessity_gate=args.necessity_gate,
                                                necessity_removes=args.necessity_removes,
                                                box_evidence_share=args.min_box_sufficiency or 0.0,
                                                full_prob=m.full_prob, box_prob=m.box_prob,
                                                blank_prob=m.blank_prob, box_sufficient=verdict.box_sufficient,
                                                screen_used=verdict.screen_used)
            stats["insufficient_boxes"] += float(not verdict.box_sufficient)
            stats["blank_clicks"] += float(not verdict.screen_used)
            stats["shortcut_boxes"] += float(verdict.shortcut_box)
            examples.examples = [e for e in examples.examples if weight[e.kind] > 0]
            built.append((m.index, examples))
        return built

    def _loss_chunk(
        self, scorer: DecisionScorer, examples: AlignmentExamples, chunk: list, weights: dict, stats: dict
    ) -> None:
        """One gradient forward over the chunk's deletion inputs and the insertions its losses read, weighted,
        back-propagated now.

        Insertions are only scored where they carry weight: not for necessity examples, and for none when a = 0
        (their P(x_S) would enter every loss multiplied by 0).
        """
        args = self.args
        insert_cells, delete_cells = examples.keep_cells(chunk)
        reads_insert = [i for i, e in enumerate(chunk) if e.kind != "necessity" and args.insertion_weight > 0]
        probs = scorer.score(torch.cat([insert_cells[reads_insert], delete_cells]), grad=True)
        stats["loss_forwards"] += probs.numel()
        p_delete = probs[len(reads_insert) :]
        p_insert = p_delete.new_zeros(len(chunk)).index_copy(
            0, torch.tensor(reads_insert, dtype=torch.long, device=probs.device), probs[: len(reads_insert)])
        common = dict(
            variant=args.loss_variant, insertion_weight=args.insertion_weight, deletion_weight=args.deletion_weight,
            best_on_prior=examples.best_on_prior_gain, full_prob=examples.full_prob, beta=args.adaptive_beta,
        )
        is_dev = torch.tensor([e.kind == "deviation" for e in chunk], device=probs.device)
        is_nec = torch.tensor([e.kind == "necessity" for e in chunk], device=probs.device)
        prev_insert = torch.tensor([e.prev_p_insert or 0.0 for e in chunk], device=probs.device)
        prev_delete = torch.tensor([e.prev_p_delete or 0.0 for e in chunk], device=probs.device)
        floor = torch.tensor([e.reference_prob for e in chunk], device=probs.device)
        terms = torch.where(
            is_nec,
            necessity_loss(p_delete, args.loss_variant, reference=floor),
            torch.where(
                is_dev,
                deviation_loss(p_insert, p_delete, **common),
                redundancy_loss(p_insert, p_delete, prev_insert, prev_delete, **common),
            ),
        )
        finite = torch.isfinite(terms)
        if not bool(finite.all()):
            # Never back-propagate through a non-finite forward: a zero-weighted pass keeps ranks in step.
            stats["nonfinite"] += float((~finite).sum())
            del probs, terms
            self._backward(scorer.score(torch.ones(1, *scorer.grid_hw, dtype=torch.bool), grad=True).sum() * 0.0)
            return
        weight = torch.where(is_nec, weights["necessity"], torch.where(is_dev, weights["deviation"], weights["redundancy"]))
        stats["deviation"] += float(terms.detach()[is_dev].sum())
        stats["redundancy"] += float(terms.detach()[~is_dev & ~is_nec].sum())
        stats["necessity"] += float(terms.detach()[is_nec].sum())
        self._backward((terms * weight).sum())

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one alignment chunk now (bounded memory), scaled like the Trainer's own backward."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # accelerate's DeepSpeed backward would also step the optimizer; chunks only accumulate gradients.
            self.accelerator.deepspeed_engine_wrapped.engine.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    # ------------------------------------------------------------------------------------------ metrics
    def _record(self, selected, attributed, n_dev, n_red, n_nec, stats, attr_seconds, loss_seconds) -> None:
        """Reduce this micro-step's statistics over ranks and queue them for the next log()."""
        values = [
            selected, attributed, n_dev, n_red, n_nec, stats["deviation"], stats["redundancy"], stats["necessity"],
            stats["nonfinite"], stats["point_hits"], stats["prior_hits"], stats["attribution_forwards"],
            stats["loss_forwards"], attr_seconds, loss_seconds, stats["padded"], stats["insufficient_boxes"],
            stats["blank_clicks"], stats["shortcut_boxes"],
        ]
        (selected, attributed, n_dev, n_red, n_nec, dev_sum, red_sum, nec_sum, nonfinite, point_hits, prior_hits,
         forwards, loss_forwards, attr_seconds, loss_seconds, padded, insufficient, blank,
         shortcut) = distributed.all_reduce_sum(values, self.accelerator.device)
        ranks = distributed.world_size()
        metrics = {
            "align/selected": selected,
            "align/deviation_examples": n_dev,
            "align/redundancy_examples": n_red,
            "align/necessity_examples": n_nec,
            "align/attribution_forwards": forwards,
            "align/attribution_seconds": attr_seconds / ranks,
            "align/loss_forwards": loss_forwards,
            "align/loss_seconds": loss_seconds / ranks,
            "align/nonfinite_terms": nonfinite,
            "align/padded_passes": padded,
            "align/insufficient_boxes": insufficient,
            "align/blank_clicks": blank,
            "align/shortcut_boxes": shortcut,
        }
        if n_dev:
            metrics["align/loss_deviation"] = dev_sum / n_dev
        if n_red:
            metrics["align/loss_redundancy"] = red_sum / n_red
        if n_nec:
            metrics["align/loss_necessity"] = nec_sum / n_nec
        for key in ("box_share", "blank_share"):
            if key in stats:
                metrics[f"align/{key}"] = stats[key]
        if attributed:
            metrics["align/point_game"] = point_hits / attributed
            metrics[f"align/prior_hit@{self.args.prior_hit_k}"] = prior_hits / attributed
        for key, value in metrics.items():
            self._metrics[key].append(value)
        if nonfinite:
            logger.warning(f"step {self.state.global_step}: skipped {int(nonfinite)} non-finite alignment term(s)")
        state = self.alignment_state
        if self._last_aligned_step != self.state.global_step:
            self._last_aligned_step = self.state.global_step
            state["alignment_steps"] += 1
        for key, value in (("selected", selected), ("deviation_examples", n_dev), ("redundancy_examples", n_red),
                           ("necessity_examples", n_nec), ("insufficient_boxes", insufficient),
                           ("blank_clicks", blank), ("shortcut_boxes", shortcut), ("attribution_forwards", forwards),
                           ("loss_forwards", loss_forwards),
                           ("nonfinite_terms", nonfinite), ("padded_passes", padded)):
            state[key] += value
        self.alignment_seconds["attribution"] += attr_seconds / ranks
        self.alignment_seconds["loss"] += loss_seconds / ranks

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        window = {key: sum(values) / len(values) for key, values in self._metrics.items() if values}
        self._metrics.clear()
        super().log({**logs, **window}, start_time)

    # --------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Trainer._save (weights, processor), plus eagle_align.json: the final folder and every checkpoint
        carry the coordinate space their clicks are in."""
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.coordinate_space is not None:
            self.coordinate_space.save(output_dir if output_dir is not None else self.args.output_dir)

    def _write_alignment_state(self, folder: str) -> None:
        state = {**self.alignment_state, "last_aligned_step": self._last_aligned_step}
        with open(os.path.join(folder, ALIGNMENT_STATE_FILE), "w") as handle:
            json.dump(state, handle, indent=2)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self._write_alignment_state(folder)

    def save_state(self) -> None:
        """trainer_state.json (log history) and alignment_state.json into the output directory."""
        super().save_state()
        if self.is_world_process_zero():
            self._write_alignment_state(self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """Trainer.train, restoring the alignment counters saved with the checkpoint being resumed."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        path = os.path.join(checkpoint, ALIGNMENT_STATE_FILE) if isinstance(checkpoint, str) else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                saved = json.load(handle)
            self._last_aligned_step = int(saved.pop("last_aligned_step", -1))
            self.alignment_state = defaultdict(float, {k: float(v) for k, v in saved.items() if math.isfinite(v)})
        return super().train(resume_from_checkpoint, *args, **kwargs)


@dataclass
class _MeasuredSample:
    """One selected sample's attribution and the probabilities its gates and necessity floor read."""

    index: int  # in the micro-batch
    attribution: Attribution
    full_prob: float  # P(x)
    box_prob: float | None  # P(x_B), when the box gate is on
    blank_prob: float | None  # P(x_∅), when the blank gate or the blank necessity floor is on


@dataclass
class _AlignmentPlan:
    """One micro-batch's attributed alignment examples, weighted for the optimizer step it belongs to."""

    samples: _BatchSamples
    chunks: list[tuple[int, AlignmentExamples, list[AlignmentExample]]]
    counts: tuple[int, ...]  # this rank's selected and attributed samples, then its examples of each LOSS_KINDS
    stats: dict[str, float]
    attribution_seconds: float
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
