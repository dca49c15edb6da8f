"""Training entry point: one YAML recipe, command-line overrides, the same path under `accelerate launch`.

    eagle-align train recipes/train/tiny_synthetic_cpu.yaml --max_steps 20
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m eagle_align.train CONFIG.yaml

The YAML is flat (like TRL / LLaMA-Factory recipes): model, data, LoRA, alignment and Trainer keys side by side.
`HfArgumentParser` splits it into the dataclasses below and `PriorAlignedConfig`.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local directory of a Qwen-VL checkpoint."})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id recorded as base_model in the card when model_name_or_path is a local copy."},
    )
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2, eager."})
    min_pixels: int | None = field(default=None, metadata={"help": "Screenshot resize lower bound (pixels)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Screenshot resize upper bound (pixels)."})
    quantization: str | None = field(
        default=None, metadata={"help": "QLoRA: 4bit (nf4) or 8bit via bitsandbytes; vision and lm_head stay."}
    )
    finetuning: str = field(
        default="lora",
        metadata={"help": "lora (adapters) or full (every language-model weight; for tiny from-scratch models)."},
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Keep the vision tower frozen (false: train it fully alongside)."}
    )


@dataclass
class LoraArguments:
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_targets: str = field(
        default="language",
        metadata={"help": "Preset (language, language+merger, all) or comma-separated module regexes."},
    )


@dataclass
class DataArguments:
    train_data: str = field(metadata={"help": "JSONL, HF dataset dir, ScreenSpot / ScreenSpot-Pro folder."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out data (eval loss and click eval)."})
    image_root: str | None = field(default=None, metadata={"help": "Folder to resolve image paths against."})
    action_format: str | None = field(default=None, metadata={"help": "Answer format; default per family."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system turn."})
    max_length: int | None = field(default=None, metadata={"help": "Token limit; never cuts image tokens."})
    on_error: str = field(default="raise", metadata={"help": "raise, or skip bad records and report the count."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    click_eval: bool = field(
        default=False, metadata={"help": "Run the click-accuracy harness on eval_data at eval_steps."}
    )
    click_eval_limit: int | None = field(default=None, metadata={"help": "Samples per click evaluation."})
    click_eval_attribution_samples: int = field(
        default=0, metadata={"help": "Samples per click evaluation that also get attribution (point game)."}
    )


def _argument_classes():
    from eagle_align.trainer import PriorAlignedConfig

    return ModelArguments, DataArguments, LoraArguments, PriorAlignedConfig


def valid_keys() -> list[str]:
    return sorted({f.name for cls in _argument_classes() for f in fields(cls) if f.init})


class RecipeLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans and floats: only true/false are booleans, and `1e-4` is a float.

    PyYAML follows YAML 1.1, where `no`, `off`, `yes` and `on` are booleans too, so `save_strategy: no` (or
    `--save_strategy no`) would arrive as False and the Trainer would reject it; and a float needs a dot
    there, so `learning_rate: 1e-4` would arrive as a string.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` pairs; values parsed as YAML scalars (numbers, booleans, lists)."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"expected --key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = tokens[i]
        overrides[key.replace("-", "_")] = yaml.load(value, Loader=RecipeLoader)
        i += 1
    return overrides


def load_config(config_path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML recipe merged with overrides; unknown keys fail with the closest valid names."""
    config: dict[str, Any] = {}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        config = yaml.load(path.read_text(), Loader=RecipeLoader) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: a training config must be a mapping of key: value")
    config.update(overrides or {})
    known = set(valid_keys())
    unknown = [k for k in config if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"unknown config key(s): {'; '.join(hints)}. Valid keys: {', '.join(sorted(known))}"
        )
    return config


def parse_config(config: dict[str, Any]):
    """Split a flat config into (model, data, lora, training) dataclasses."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(_argument_classes())
    for cls, required in ((ModelArguments, "model_name_or_path"), (DataArguments, "train_data")):
        if required not in config:
            raise ValueError(f"missing required config key {required!r} ({cls.__name__})")
    config = dict(config)
    config.setdefault("output_dir", "outputs/run")
    return parser.parse_dict(config, allow_extra_keys=False)


def _prepare_model(model_args: ModelArguments, lora_args: LoraArguments, training_args):
    from eagle_align.models import load_model_and_processor
    from eagle_align.models.lora import LORA_TARGET_PRESETS, apply_lora

    if model_args.finetuning not in ("lora", "full"):
        raise ValueError(f"finetuning={model_args.finetuning!r}; choose lora or full")
    if model_args.finetuning == "full" and model_args.quantization:
        raise ValueError("quantization needs finetuning=lora (QLoRA); full fine-tuning of 4/8-bit weights is not possible")
    model, processor = load_model_and_processor(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        quantization=model_args.quantization,
        min_pixels=model_args.min_pixels,
        max_pixels=model_args.max_pixels,
    )
    if model_args.finetuning == "full":
        for name, param in model.named_parameters():
            param.requires_grad = not (model_args.freeze_vision and ".visual." in f".{name}")
        if training_args.gradient_checkpointing:
            model.enable_input_require_grads()
        return model, processor
    if model_args.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    targets = lora_args.lora_targets
    if targets not in LORA_TARGET_PRESETS:
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    model = apply_lora(
        model,
        r=lora_args.lora_r,
        alpha=lora_args.lora_alpha,
        dropout=lora_args.lora_dropout,
        targets=targets,
        gradient_checkpointing=training_args.gradient_checkpointing,
    )
    if not model_args.freeze_vision:
        for name, param in model.named_parameters():
            if ".visual." in name and "lora_" not in name:
                param.requires_grad = True
    return model, processor


def _startup_summary(model, model_args, data_args, training_args, train_set, eval_set, collator, family) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    sample = collator([train_set[0]])
    visual_tokens = int(sample["mm_token_type_ids"].sum())
    align = training_args.alignment
    lines = [
        "eagle-align train",
        f"  model        {model_args.model_name_or_path} ({family.name}, {model_args.finetuning}"
        + (f", {model_args.quantization}" if model_args.quantization else "")
        + ")",
        f"  trainable    {trainable:,} / {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)",
        f"  train data   {len(train_set)} examples from {data_args.train_data}"
        + (f" ({train_set.skipped} skipped)" if getattr(train_set, "skipped", 0) else ""),
        f"  eval data    {len(eval_set) if eval_set is not None else 0} examples",
        f"  action       {collator.action_format.name}; visual tokens per sample ~{visual_tokens}",
        f"  alignment    {'on' if align else 'off'}"
        + (
            f": every {training_args.align_every} steps, {training_args.search} search over "
            f"{training_args.n_regions} regions, loss {training_args.loss_variant}, "
            f"lambda dev/red {training_args.lambda_deviation}/{training_args.lambda_redundancy}"
            if align
            else ""
        ),
        f"  output       {training_args.output_dir}",
    ]
    return "\n".join(lines)


def run_training(config: dict[str, Any]):
    """Train from a flat config dict; returns the trainer (for tests and scripts)."""
    from transformers import set_seed

    from eagle_align.data import GroundingCollator, load_examples
    from eagle_align.hub import resolve_base_model_id
    from eagle_align.models import family_of, pixel_limits
    from eagle_align.trainer import PriorAlignedTrainer

    model_args, data_args, lora_args, training_args = parse_config(config)
    push = training_args.push_to_hub
    if push:
        if not training_args.hub_model_id:
            raise ValueError("push_to_hub: true needs hub_model_id (namespace/name of the adapter repo)")
        # The finished adapter (weights, processor, eagle-align card) is pushed once, at the end, by
        # eagle_align.hub; the Trainer's own pushes of intermediate checkpoints are switched off.
        training_args.push_to_hub = False
    set_seed(training_args.seed)
    model, processor = _prepare_model(model_args, lora_args, training_args)
    family = family_of(model)
    train_set = load_examples(data_args.train_data, image_root=data_args.image_root, on_error=data_args.on_error)
    if data_args.max_train_samples:
        train_set = train_set[: data_args.max_train_samples]
    if len(train_set) == 0:
        raise ValueError(f"train_data {data_args.train_data} has no usable examples")
    eval_set = None
    if data_args.eval_data:
        eval_set = load_examples(data_args.eval_data, image_root=data_args.image_root, on_error=data_args.on_error)
    collator = GroundingCollator(
        processor,
        data_args.action_format or family.default_action_format,
        system_prompt=data_args.system_prompt,
        max_length=data_args.max_length,
    )
    callbacks = []
    if data_args.click_eval:
        if eval_set is None:
            raise ValueError("click_eval: true needs eval_data")
        from eagle_align.eval.callback import ClickEvalCallback

        callbacks.append(
            ClickEvalCallback(
                eval_set,
                processor,
                collator.action_format.name,
                limit=data_args.click_eval_limit,
                attribution_samples=data_args.click_eval_attribution_samples,
                system_prompt=data_args.system_prompt,
            )
        )
    min_pixels, max_pixels = pixel_limits(processor)
    trainer = PriorAlignedTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks or None,
    )
    for callback in callbacks:
        callback.attach(trainer)  # click-eval metrics then go through trainer.log (TensorBoard, W&B, console)
    trainer.model_card_fields = dict(
        base_model_id=resolve_base_model_id(model_args.model_name_or_path, model_args.base_model_id),
        action_format=collator.action_format.name,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        system_prompt=data_args.system_prompt,
        training={
            "finetuning": model_args.finetuning,
            "quantization": model_args.quantization,
            "lora_r": lora_args.lora_r,
            "lora_alpha": lora_args.lora_alpha,
            "lora_targets": lora_args.lora_targets,
            "learning_rate": training_args.learning_rate,
            "max_steps": training_args.max_steps,
            "num_train_epochs": training_args.num_train_epochs,
            "train_examples": len(train_set),
        },
    )
    if trainer.is_world_process_zero():
        print(_startup_summary(model, model_args, data_args, training_args, train_set, eval_set, collator, family))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        (out / "eagle_align_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        trainer.create_model_card()
        (out / "data_report.json").write_text(
            json.dumps(
                {
                    "train_examples": len(train_set),
                    "train_skipped": getattr(train_set, "skipped", 0),
                    "train_problems": list(getattr(train_set, "problems", []))[:100],
                    "model": asdict(model_args),
                },
                indent=2,
            )
        )
    if push and trainer.is_world_process_zero():
        from eagle_align.hub import push_adapter

        url = push_adapter(
            training_args.output_dir,
            training_args.hub_model_id,
            private=bool(training_args.hub_private_repo),
            token=training_args.hub_token,
            revision=training_args.hub_revision,
        )
        print(f"pushed {training_args.output_dir} to {training_args.hub_model_id}: {url}")
    return trainer


def train_arguments(parser) -> None:
    import argparse

    parser.add_argument("config", help="training YAML (see recipes/train/)")
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="--key value pairs overriding any key of the YAML"
    )


def train_command(args) -> int:
    run_training(load_config(args.config, parse_overrides(args.overrides)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m eagle_align.train CONFIG.yaml [--key value ...]` (what `accelerate launch -m` runs)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m eagle_align.train CONFIG.yaml [--key value ...]", file=sys.stderr)
        return 2
    run_training(load_config(argv[0], parse_overrides(argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
