"""Click evaluation during training, as a `TrainerCallback`.

The Trainer's own evaluation only measures loss on the eval set; what GUI-agent users watch is click accuracy
and whether the evidence lies in the box. This callback runs the eval harness every `eval_steps` optimizer
steps and logs `eval/click_accuracy` (and `eval/point_game` when attribution samples are asked for). Its
attribution uses the trainer's own attribution settings (ranking every region, for complete AUCs), so
`eval/point_game` measures what `align/point_game` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from eagle_align.attribution.settings import AttributionSettings, resolve_attribution_settings
from eagle_align.eval.harness import (
    attribute_predictions,
    predict,
    summarize_attribution,
)
from eagle_align.eval.scoring import summarize

logger = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(items: Sequence[Any], rank: int, world: int) -> tuple[list[Any], int]:
    """This rank's contiguous share, padded by repeating its last item so every rank runs as many batches
    (sharded-parameter generation is collective); returns the share and how many real items it holds."""
    per_rank = -(-len(items) // world)
    share = list(items[rank * per_rank : (rank + 1) * per_rank])
    real = len(share)
    filler = share[-1] if share else items[-1]
    return share + [filler] * (per_rank - real), real


def _gather(values: list[Any], world: int) -> list[Any]:
    if world == 1:
        return values
    gathered: list[list[Any]] = [None] * world  # type: ignore[list-item]
    torch.distributed.all_gather_object(gathered, values)
    return [v for part in gathered for v in part]


class ClickEvalCallback(TrainerCallback):
    """Run click evaluation every `eval_steps` steps (default: the Trainer's `eval_steps`) and log it.

    Under several processes the examples are split across ranks and the records gathered, so every rank
    generates the same number of batches. Attribution runs on each rank's own share; with sharded parameters
    (DeepSpeed ZeRO-3, FSDP) it is skipped, since its data-dependent forward counts would desynchronise ranks.
    Metrics reach the Trainer's loggers through `trainer.log` once `attach(trainer)` was called; otherwise
    they are recorded in `state.log_history` and the Python log.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        processor=None,
        action_format=None,
        eval_steps: int | None = None,
        batch_size: int = 8,
        limit: int | None = None,
        attribution_samples: int = 0,
        system_prompt: str | None = None,
        max_new_tokens: int = 64,
        attribution: AttributionSettings | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"eval_steps={eval_steps} must be a positive number of steps")
        if limit is not None and limit < 1:
            raise ValueError(f"limit={limit} must be a positive number of samples")
        if not examples:
            raise ValueError("ClickEvalCallback needs at least one evaluation example")
        self.examples = list(examples[:limit] if limit else examples)
        self.processor = processor
        self.action_format = action_format
        self.eval_steps = eval_steps
        self.batch_size = batch_size
        self.attribution_samples = attribution_samples
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.attribution = attribution
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.trainer = None
        self.history: list[dict] = []

    def attach(self, trainer) -> ClickEvalCallback:
        """Register with `trainer` so metrics go through `trainer.log` (TensorBoard, W&B, console)."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if not (self.eval_steps or args.eval_steps):
            raise ValueError("ClickEvalCallback: set eval_steps (in the training arguments or on the callback)")
        return control

    def _due(self, args, state) -> bool:
        steps = self.eval_steps or getattr(state, "eval_steps", None) or args.eval_steps
        return bool(steps) and state.global_step > 0 and state.global_step % int(steps) == 0

    def _sharded_parameters(self, args) -> bool:
        from transformers.integrations import is_deepspeed_zero3_enabled

        return is_deepspeed_zero3_enabled() or bool(getattr(args, "fsdp", None))

    def attribution_settings(self, args=None, model=None) -> tuple[AttributionSettings, dict]:
        """The settings to attribute with and where they came from: the ones given to the callback, else the
        training arguments' own (PriorAlignedConfig carries every AttributionSettings field), else what
        `model` recorded or the library defaults. Trainer settings rank every region (complete AUCs)."""
        if self.attribution is not None:
            return resolve_attribution_settings(None, self.attribution)
        names = AttributionSettings.field_names()
        if args is not None and all(hasattr(args, name) for name in names):
            settings = AttributionSettings(**{name: getattr(args, name) for name in names}).replace(max_regions=None)
            return settings, {"settings": settings.to_dict(), "source": "the trainer's settings", "overrides": {},
                              "complete_ranking": True}
        return resolve_attribution_settings(model)

    def run(
        self, model: torch.nn.Module, processor, sharded_parameters: bool = False, args=None
    ) -> tuple[dict[str, float], dict, list[dict]]:
        """Evaluate `model` now: (values to log, full metrics, per-sample records); the same on every rank.
        `args` are the training arguments whose attribution settings apply (see `attribution_settings`)."""
        from eagle_align.answer_formats import get_action_format
        from eagle_align.families.space import model_action_format

        fmt = get_action_format(self.action_format) if self.action_format else model_action_format(model)
        rank, world = _world()
        share, real = _shard(self.examples, rank, world)
        records, _ = predict(model, processor, share, fmt, self.batch_size, self.system_prompt,
                             self.max_new_tokens, progress=rank == 0)
        all_records = _gather(records[:real], world)
        metrics = summarize(all_records)
        logs = {"eval/click_accuracy": metrics["click_accuracy"], "eval/wrong_format": metrics["wrong_format"],
                "eval/out_of_range": metrics["out_of_range"]}
        if metrics["mean_distance"] is not None:
            logs["eval/mean_distance"] = metrics["mean_distance"]
        if self.attribution_samples > 0 and not (world > 1 and sharded_parameters):
            wanted = -(-self.attribution_samples // world)
            settings, record = self.attribution_settings(args, model)
            rows, _ = attribute_predictions(model, processor, share[:real], records[:real], fmt, wanted,
                                            self.system_prompt, progress=rank == 0, settings=settings)
            rows = _gather(rows, world)
            metrics["attribution"] = summarize_attribution(rows, min(wanted * world, len(all_records)), record)
            if metrics["attribution"]["overall"]["point_game"] is not None:
                logs["eval/point_game"] = metrics["attribution"]["overall"]["point_game"]
                logs["eval/box_hit@k"] = metrics["attribution"]["overall"]["box_hit@k"]
        elif self.attribution_samples > 0:
            logger.warning("click eval: attribution skipped under sharded parameters (ZeRO-3 / FSDP)")
        return logs, metrics, all_records

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self._due(args, state):
            return control
        processor = self.processor or processing_class
        if model is None or processor is None:
            raise ValueError("ClickEvalCallback needs the model and a processor (pass processor=...)")
        logs, metrics, records = self.run(model, processor, self._sharded_parameters(args), args)
        self.history.append({"step": state.global_step, **logs})
        if self.out_dir is not None and state.is_world_process_zero:
            from eagle_align.eval.report import versions, write_report

            metrics["settings"] = {"step": state.global_step, "system_prompt": self.system_prompt,
                                   "action_format": str(getattr(self.action_format, "name", self.action_format))}
            metrics["versions"] = versions()
            write_report(metrics, records, self.out_dir / f"step-{state.global_step}")
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})
            if state.is_world_process_zero:
                logger.info("step %d: %s", state.global_step, logs)
        return control
