"""PriorAlignedGRPOTrainer: TRL's GRPO on click rewards, plus prior alignment of the policy's own correct clicks.

A click reward cannot tell a click that rests on the target from one that rests on a cue beside it, so GRPO
keeps a shortcut that SFT taught. On alignment steps this trainer takes the completions just sampled whose
click lands in the box, renders each as an answer (the SFT collator's tokens for that click), and hands them to
the same selection, attribution, gates and loss terms as `PriorAlignedTrainer`; their deviation loss is
back-propagated before the GRPO loss of the step, with its own weight. Everything else is TRL's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import Trainer
from trl import GRPOTrainer

from eagle_align import distributed
from eagle_align.data.collator import GroundingCollator
from eagle_align.data.schema import GroundingExample
from eagle_align.eval.scoring import point_in_box
from eagle_align.grpo.config import PriorAlignedGRPOConfig
from eagle_align.grpo.data import grounding_prompts
from eagle_align.grpo.rewards import get_reward, parse_click
from eagle_align.trainer import PriorAlignmentMixin, _AlignmentPlan


class PriorAlignedGRPOTrainer(PriorAlignmentMixin, GRPOTrainer):
    """`GRPOTrainer` for GUI grounding with prior alignment.

    Takes grounding examples (`eagle_align.load_examples`) as `train_dataset` / `eval_dataset` and turns them
    into prompts rendered as SFT renders them (`grounding_prompts`: same chat template, system prompt, image
    resize and answer format), so the sampled clicks, the rewards, the saved coordinate space and eval all
    read one coordinate space. `reward_funcs` are TRL reward functions or names of
    `eagle_align.grpo.rewards` (default: the config's `rewards`). `peft_config`, `callbacks` and the rest go
    to `GRPOTrainer`. Every save writes `eagle_align.json`, the card and `alignment_state.json`, as SFT does.
    With `alignment=False` it is TRL's `GRPOTrainer` on the same rows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        reward_funcs: Sequence[str | Callable] | str | Callable | None = None,
        args: PriorAlignedGRPOConfig | None = None,
        train_dataset: Sequence[GroundingExample] | Any = None,
        eval_dataset: Sequence[GroundingExample] | Any = None,
        processing_class: Any = None,
        *,
        action_format: str | None = None,
        system_prompt: str | None = None,
        base_model_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        from eagle_align.families.loading import family_of

        if not isinstance(args, PriorAlignedGRPOConfig):
            raise ValueError(f"args must be a PriorAlignedGRPOConfig, got {type(args).__name__}")
        if processing_class is None or not hasattr(processing_class, "image_processor"):
            raise ValueError("processing_class must be the model's Qwen-VL processor (eagle_align.load_model_and_"
                             "processor): prompts and sampled clicks are rendered with it")
        self.grounding_collator = GroundingCollator(
            processing_class, action_format or family_of(model).default_action_format, system_prompt=system_prompt
        )
        # The examples behind the rows: a sampled click is attributed against its example's box.
        self.grounding_examples = train_dataset if _are_examples(train_dataset) else None
        if args.alignment and self.grounding_examples is None:
            raise ValueError("alignment needs grounding examples as train_dataset (eagle_align.load_examples): a "
                             "sampled click is attributed against its example's box")
        train_dataset, eval_dataset = self.as_prompts(train_dataset), self.as_prompts(eval_dataset)
        if reward_funcs is None:
            reward_funcs = args.rewards
        if isinstance(reward_funcs, (str, Callable)):
            reward_funcs = [reward_funcs]
        super().__init__(model, reward_funcs=[get_reward(r) for r in reward_funcs], args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        self._init_alignment(base_model_id)
        self._pending_plan: _AlignmentPlan | None = None

    def as_prompts(self, data: Any) -> Any:
        """Grounding examples as GRPO rows (`grounding_prompts`); a `datasets.Dataset` passes through."""
        return grounding_prompts(data, self.grounding_collator) if _are_examples(data) else data

    def _training_section(self) -> dict[str, Any]:
        return {"trainer": "grpo", **super()._training_section(), **self.args.grpo_settings(),
                "rewards": list(self.reward_func_names)}

    # ------------------------------------------------------------------------------- the alignment step
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring; on an alignment step, also the plan of its correct sampled clicks
        (attributed now, with the weights that sampled them; back-propagated by the next `compute_loss`)."""
        output = super()._generate_and_score_completions(inputs)
        if self.args.alignment and self.model.training and self.is_alignment_step():
            self._pending_plan = self._plan_sampled_clicks(inputs, output["completion_ids"], output["completion_mask"])
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan, self._pending_plan = self._pending_plan, None
        if plan is not None and model.training:
            self._align_backward(model, plan)  # before the GRPO forward, as SFT does (DDP pairs forwards)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def sampled_clicks(self, rows: list[dict[str, Any]], completion_ids: torch.Tensor,
                       completion_mask: torch.Tensor) -> tuple[list[GroundingExample], int]:
        """The distinct (prompt, click) pairs of this process's completions whose click lands in the box, as
        examples answering with that click, in sampling order; and how many rows had no box to align to."""
        tokenizer = self.processing_class.tokenizer
        examples, seen, no_box = [], set(), 0
        for row, ids, mask in zip(rows, completion_ids, completion_mask):
            if row["bbox"] is None:
                no_box += 1
                continue
            text = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            point = parse_click(text, row["action_format"], row["image_size"], row["resized_size"])
            if point is None or not point_in_box(point, row["bbox"]):
                continue
            answer = self.grounding_collator.action_format.render(point, tuple(row["image_size"]),
                                                                  tuple(row["resized_size"]))
            if (row["example_index"], answer) in seen:
                continue
            seen.add((row["example_index"], answer))
            examples.append(dataclasses.replace(self.grounding_examples[row["example_index"]], point=point))
        return examples, no_box

    def _plan_sampled_clicks(self, rows: list[dict[str, Any]], completion_ids: torch.Tensor,
                             completion_mask: torch.Tensor) -> _AlignmentPlan:
        """Select, attribute and gate the sampled correct clicks of this generation batch (one alignment batch
        per process, so every rank takes part in the step's collectives even with no correct click).

        At most `per_device_train_batch_size` distinct clicks enter selection (the confident-correct filter
        and `max_aligned_per_step` then apply as in SFT). A process without a correct click plans a batch of
        its first row without a box: nothing is selected, and its forwards only keep sharded ranks paired.
        """
        examples, no_box = self.sampled_clicks(rows, completion_ids, completion_mask)
        examples = examples[: self.args.per_device_train_batch_size]
        correct = distributed.all_reduce_sum([len(examples)], self.accelerator.device)[0]  # every rank is here
        self._metrics["train"]["align/correct_samples"].append(correct)
        if not examples:
            first = self.grounding_examples[rows[0]["example_index"]]
            examples = [dataclasses.replace(first, bbox=None)]
        batch = Trainer._prepare_inputs(self, self.grounding_collator(examples))
        plan = self._plan_alignment(self.model_wrapped, [batch])[0]
        plan.stats.no_box = float(no_box)
        return plan


def _are_examples(data: Any) -> bool:
    return isinstance(data, Sequence) and len(data) > 0 and isinstance(data[0], GroundingExample)
