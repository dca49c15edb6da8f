"""Training entry point: one YAML recipe, command-line overrides, the same path under `accelerate launch`.

    eagle-align train tiny_synthetic_cpu --max_steps 20
    accelerate launch --config_file "$(eagle-align recipes path multi_gpu)" -m eagle_align.train CONFIG.yaml

The YAML is flat (like TRL / LLaMA-Factory recipes): model, data, LoRA, alignment and Trainer keys side by side.
`HfArgumentParser` splits it into the dataclasses below and `PriorAlignedConfig`. `preset: paper` sets every
method setting to the paper's first; the recipe's own keys (and command-line overrides) then win over it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from eagle_align.errors import UsageError

logger = logging.getLogger(__name__)
FINETUNING_CHOICES = ("lora", "full")


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

    def __post_init__(self) -> None:
        from eagle_align.families.loading import QUANTIZATION_CHOICES, resolve_dtype

        if self.finetuning not in FINETUNING_CHOICES:
            raise UsageError(f"finetuning={self.finetuning!r}; choose one of {', '.join(FINETUNING_CHOICES)}")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise UsageError(f"quantization={self.quantization!r}; choose 4bit or 8bit (or leave it out)")
        if self.finetuning == "full" and self.quantization:
            raise UsageError("quantization needs finetuning=lora (QLoRA); full fine-tuning of 4/8-bit weights is "
                             "not possible")
        resolve_dtype(self.dtype)
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name}={value} must be a positive number of pixels")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise UsageError(f"min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}",
                             hint="set min_pixels ≤ max_pixels")


@dataclass
class LoraArguments:
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_targets: str = field(
        default="language",
        metadata={"help": "Preset (language, language+merger, all) or comma-separated layer names or name endings "
                  "(e.g. q_proj,v_proj), matched as PEFT matches target_modules."},
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise UsageError(f"lora_r={self.lora_r} must be a rank of at least 1")
        if self.lora_alpha <= 0:
            raise UsageError(f"lora_alpha={self.lora_alpha} must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not str(self.lora_targets).strip(" ,"):
            raise UsageError("lora_targets is empty; use a preset (language, language+merger, all) or layer names")

    def target_list(self) -> str | list[str]:
        """A preset name as it is, anything else as the list of layer names it lists."""
        from eagle_align.families.lora import LORA_TARGET_PRESETS

        if self.lora_targets in LORA_TARGET_PRESETS:
            return self.lora_targets
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass
class DataArguments:
    train_data: str = field(metadata={"help": "JSONL, HF dataset dir, ScreenSpot / ScreenSpot-Pro folder."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out data (eval loss and click eval)."})
    image_root: str | None = field(default=None, metadata={"help": "Folder to resolve image paths against."})
    action_format: str | None = field(default=None, metadata={"help": "Answer format; default per family."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system turn."})
    max_length: int | None = field(default=None, metadata={"help": "Token limit; never cuts image tokens."})
    on_error: str = field(
        default="raise",
        metadata={"help": "raise, or skip bad records (at load time, and images that do not decode during "
                  "training) and report the count."},
    )
    train_split: str | None = field(
        default="train",
        metadata={"help": "Split(s) of train_data to train on (comma-separated), when it has several (a "
                  "DatasetDict, a folder of split files); null: all of them."},
    )
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split(s) of eval_data (default: all); without eval_data, taken from train_data."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    click_eval: bool = field(
        default=False, metadata={"help": "Run the click-accuracy harness on eval_data at eval_steps."}
    )
    click_eval_limit: int | None = field(default=None, metadata={"help": "Samples per click evaluation."})
    click_eval_attribution_samples: int = field(
        default=0, metadata={"help": "Samples per click evaluation that also get attribution (point game)."}
    )
    bbox_format: str | None = field(
        default=None,
        metadata={"help": "Box convention of train_data and eval_data records that state none: xyxy, xywh "
                  "(pixels), xyxy_norm, xywh_norm (0-1), xyxy_1000, xywh_1000 (0-1000); points follow their box. "
                  "Default: decided from the file, refused where it cannot be."},
    )
    train_bbox_format: str | None = field(default=None, metadata={"help": "bbox_format of train_data only."})
    eval_bbox_format: str | None = field(default=None, metadata={"help": "bbox_format of eval_data only."})
    columns: dict | str | None = field(
        default=None,
        metadata={"help": "Column names of train_data and eval_data mapped onto eagle-align's fields, e.g. "
                  "{image: screenshot, instruction: query, bbox: target_box}."},
    )
    train_columns: dict | str | None = field(default=None, metadata={"help": "columns of train_data only."})
    eval_columns: dict | str | None = field(default=None, metadata={"help": "columns of eval_data only."})
    data_action_format: str | None = field(
        default=None,
        metadata={"help": "Answer format the assistant turns of LLaMA-Factory / ShareGPT data are written in "
                  "(default: action_format)."},
    )
    augment: dict | None = field(
        default=None,
        metadata={"help": "Training-time augmentation: null (off) or {kind: box_crop, probability: 0.5, scale: "
                  "[0.5, 1.5], pad_colour: [0, 0, 0]}, a random window that keeps the target box whole "
                  "(eagle_align.data.BoxGuidedCrop, seeded by the run's seed)."},
    )

    def __post_init__(self) -> None:
        from eagle_align.answer_formats import get_action_format
        from eagle_align.data import BBOX_FORMATS
        from eagle_align.data.importers import check_columns

        if self.action_format is not None:
            get_action_format(self.action_format)
        if self.data_action_format is not None:
            try:
                get_action_format(self.data_action_format)
            except UsageError as error:
                raise UsageError(str(error).replace("action_format=", "data_action_format=", 1)) from None
        for key in ("bbox_format", "train_bbox_format", "eval_bbox_format"):
            value = getattr(self, key)
            if value is not None and value not in BBOX_FORMATS:
                raise UsageError(f"{key}={value!r}; choose one of {', '.join(BBOX_FORMATS)}")
        for key in ("columns", "train_columns", "eval_columns"):
            setattr(self, key, check_columns(getattr(self, key), key))
        if self.on_error not in ("raise", "skip"):
            raise UsageError(f"on_error={self.on_error!r}; choose raise or skip")
        if self.click_eval and not (self.eval_data or self.eval_split):
            raise UsageError("click_eval: true needs eval_data (or eval_split of train_data)")
        self.augmenter(seed=0)  # a bad mapping fails here, before any weights load

    def augmenter(self, seed: int) -> typing.Callable | None:
        """The `augment` the collator applies to training examples (None: off), seeded with the run's `seed`."""
        from eagle_align.data.augment import augment_from_config

        return augment_from_config(self.augment, seed=seed)


TRAINERS = ("sft", "grpo")


def recipe_trainer(config: dict[str, Any]) -> str:
    """The recipe's `trainer:` (sft, the default, or grpo)."""
    trainer = config.get("trainer", "sft")
    if trainer not in TRAINERS:
        raise UsageError(f"trainer={trainer!r}; choose one of {', '.join(TRAINERS)}")
    return trainer


def _argument_classes(experimental: bool = True, trainer: str = "sft"):
    """The recipe's dataclasses. The training one is `PriorAlignedGRPOConfig` for `trainer: grpo`, else the
    experimental config when asked (its keys are a superset of PriorAlignedConfig's)."""
    if trainer == "grpo":
        try:
            from eagle_align.grpo.config import PriorAlignedGRPOConfig as training_class
        except ModuleNotFoundError as error:
            if error.name != "trl":
                raise
            raise UsageError("trainer: grpo needs TRL, which is not installed",
                             hint='pip install "eagle-align[grpo]"') from None
    elif experimental:
        from eagle_align.experimental import ExperimentalAlignmentConfig as training_class
    else:
        from eagle_align.config import PriorAlignedConfig as training_class

    return ModelArguments, DataArguments, LoraArguments, training_class


def experimental_keys(config: dict[str, Any]) -> list[str]:
    """The keys of `config` that only `eagle_align.experimental.ExperimentalAlignmentConfig` has."""
    from eagle_align.config import PriorAlignedConfig
    from eagle_align.experimental import ExperimentalAlignmentConfig

    core = {f.name for f in fields(PriorAlignedConfig)}
    return [f.name for f in fields(ExperimentalAlignmentConfig) if f.name not in core and f.name in config]


def valid_keys(trainer: str = "sft") -> list[str]:
    """Every key a recipe for `trainer` may hold."""
    return sorted({f.name for cls in _argument_classes(trainer=trainer) for f in fields(cls) if f.init} | {"trainer"})


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
            raise UsageError(f"expected --key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = tokens[i]
        key = key.replace("-", "_")
        try:
            overrides[key] = yaml.load(value, Loader=RecipeLoader)
        except yaml.YAMLError as error:
            raise UsageError(f"--{key} {value!r}: not a YAML value ({getattr(error, 'problem', error)})") from None
        i += 1
    return overrides


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One recipe's keys, over those of the recipe its `base:` names (a path relative to this recipe's folder).

    `base:` keeps a variant of a recipe to the keys it changes, so the experiment recipes cannot drift apart
    from the recipe they vary.
    """
    if not path.is_file():
        where = f" (the base of {seen[-1]})" if seen else ""
        raise UsageError(f"training config {path}{where} " + ("is a directory" if path.is_dir() else "does not exist"),
                         hint="pass a recipe YAML or a shipped recipe's name (eagle-align recipes)")
    try:
        with open(path, encoding="utf-8") as handle:  # from the file, so YAML errors name it
            config = yaml.load(handle, Loader=RecipeLoader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise UsageError(f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {error.problem}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: a training config must be a mapping of key: value")
    base = config.pop("base", None)
    if base is None:
        return config
    if not isinstance(base, str):
        raise UsageError(f"{path}: base={base!r} must be the path of another recipe")
    base_path = (path.parent / base).resolve()
    if base_path in seen + (path.resolve(),):
        raise UsageError(f"{path}: base {base} leads back to itself")
    return {**_read_recipe(base_path, seen + (path.resolve(),)), **config}


def load_config(config_path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML recipe (over its `base:` recipe, if it names one) merged with overrides; unknown keys fail with the
    closest valid names."""
    if config_path is not None:
        from eagle_align.recipes import recipe_path

        config_path = recipe_path(config_path, "train")
    config = _read_recipe(Path(config_path)) if config_path is not None else {}
    if config_path is not None:
        # The recipe's own paths, where no override replaces them.
        check_recipe_paths({k: v for k, v in config.items() if k not in (overrides or {})}, Path(config_path))
    config.update(overrides or {})
    known = set(valid_keys(recipe_trainer(config)))
    unknown = [k for k in config if k not in known]
    if unknown:
        close = {key: difflib.get_close_matches(key, known, n=3) for key in unknown}
        hints = [f"did you mean {' or '.join(matches)} (for {key})?" for key, matches in close.items() if matches]
        raise UsageError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
            hint=" ".join(hints) or "the keys are the fields of ModelArguments, DataArguments, LoraArguments "
            "(eagle_align.train) and PriorAlignedConfig (TrainingArguments + alignment); see eagle-align recipes",
        )
    return config


def _scalar_types(annotation) -> tuple[type, ...] | None:
    """The scalar types a field takes (a float field takes ints too); None when it also takes other things."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)  # list[str] is not a union
    kinds = tuple(t for t in (typing.get_args(annotation) if union else (annotation,)) if t is not type(None))
    if not kinds or not all(t in (bool, int, float, str) for t in kinds):
        return None
    return kinds + (int,) * (float in kinds) + (os.PathLike,) * (str in kinds)


def _check_value_types(config: dict[str, Any], classes) -> None:
    """A value of the wrong type (`max_steps: abc`) fails here, naming the key, not later deep in training
    (HfArgumentParser.parse_dict does not convert values)."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            value, kinds = config.get(f.name), _scalar_types(hints.get(f.name))
            if value is None or kinds is None:
                continue
            if f.name == "resume_from_checkpoint":
                kinds = (*kinds, bool)  # true: the latest checkpoint in output_dir (parse_config finds it)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join(dict.fromkeys(t.__name__ for t in kinds if t is not os.PathLike))
                raise UsageError(f"{f.name}={value!r} must be {names}")


def parse_config(config: dict[str, Any]):
    """Split a flat config into (model, data, lora, training) dataclasses."""
    from transformers import HfArgumentParser

    trainer = recipe_trainer(config)
    experimental = experimental_keys(config) if trainer == "sft" else []
    if experimental:
        logger.warning("experimental settings (eagle_align.experimental): %s", ", ".join(experimental))
    classes = _argument_classes(experimental=bool(experimental), trainer=trainer)
    parser = HfArgumentParser(classes)
    for cls, required in ((ModelArguments, "model_name_or_path"), (DataArguments, "train_data")):
        if required not in config:
            raise UsageError(f"missing required config key {required!r} ({cls.__name__})")
    config = {key: value for key, value in config.items() if key != "trainer"}
    config.setdefault("output_dir", "outputs/run")
    _check_value_types(config, classes)
    try:
        parsed = parser.parse_dict(config, allow_extra_keys=False)
    except UsageError:
        raise
    except ValueError as error:  # the argument classes' own checks, e.g. TrainingArguments' value rules
        raise UsageError(f"training config: {' '.join(str(error).split())}") from None
    _check_training_arguments(parsed[-1], config)
    return parsed


def _check_training_arguments(training_args, config: dict[str, Any]) -> None:
    """Trainer settings that TrainingArguments accepts but that would fail late or do something else than
    asked (`max_steps: -3` trains by epochs); `resume_from_checkpoint: true` becomes the checkpoint it means."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, name)
        if value < 1:
            raise UsageError(f"{name}={value} must be at least 1")
    rewards = getattr(training_args, "rewards", None)  # trainer: grpo
    if rewards is not None and training_args.reward_weights is not None and len(training_args.reward_weights) != len(
            rewards):
        raise UsageError(f"reward_weights has {len(training_args.reward_weights)} values for {len(rewards)} rewards "
                         f"({', '.join(rewards)})")
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise UsageError(f"max_steps={training_args.max_steps} must be a positive number of steps, or -1 to train "
                         "for num_train_epochs")
    resume = training_args.resume_from_checkpoint
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        output_dir = Path(training_args.output_dir)
        latest = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if latest is None:
            raise UsageError(f"resume_from_checkpoint: true, but {output_dir} has no checkpoint-* folder to resume "
                             "from", hint="give a checkpoint folder, or train without resume_from_checkpoint")
        training_args.resume_from_checkpoint = latest
    elif resume is False:
        training_args.resume_from_checkpoint = None
    elif resume is not None and not Path(resume).expanduser().is_dir():
        raise UsageError(f"resume_from_checkpoint={str(resume)!r}: no such checkpoint folder")
    if "dataloader_pin_memory" not in config:
        import torch

        # Pinned memory only helps host-to-accelerator copies; without an accelerator torch warns on every loader.
        if not torch.accelerator.is_available():
            training_args.dataloader_pin_memory = False


def check_model_options(model_args: ModelArguments, lora_args: LoraArguments) -> None:
    """Options whose validity depends on the checkpoint's family and layers, checked from its config before
    any weights load: LoRA targets must match layers of the model (pixel limits are checked where the
    processor loads, in `load_model_and_processor`)."""
    if model_args.finetuning != "lora":
        return
    targets = lora_args.target_list()
    if isinstance(targets, list):
        from eagle_align.families.loading import check_lora_targets, meta_model

        check_lora_targets(meta_model(model_args.model_name_or_path), targets)


def load_training_data(data_args: DataArguments):
    """(train examples, eval examples or None) for a recipe, loaded and validated before any model loads.

    `train_split` picks among the splits of a source that has several (default "train": a DatasetDict with
    train and test trains on train only); without eval_data, `eval_split` takes the eval set from train_data.
    Per-source `train_/eval_bbox_format` and `train_/eval_columns` win over `bbox_format` / `columns`. With
    click_eval, a point-only eval record is a bad record (click accuracy needs the box).
    """
    from eagle_align.data import DataError, ExampleSet, load_examples

    def load(source: str, split: str | None, role: str) -> ExampleSet:
        train = role == "train_data"
        examples = load_examples(
            source, image_root=data_args.image_root, on_error=data_args.on_error, split=split,
            bbox_format=(data_args.train_bbox_format if train else data_args.eval_bbox_format) or data_args.bbox_format,
            columns=(data_args.train_columns if train else data_args.eval_columns) or data_args.columns,
            action_format=data_args.data_action_format or data_args.action_format,
            require_box=data_args.click_eval and not train,
        )
        if train and data_args.max_train_samples:
            examples = ExampleSet(examples[: data_args.max_train_samples], examples.problems, examples.skipped)
        if not examples:
            first = f"; first problem: {examples.problems[0]}" if examples.problems else ""
            raise DataError(f"{role} {source} has no usable examples ({examples.skipped} skipped{first})")
        return examples

    train_set = load(data_args.train_data, data_args.train_split, "train_data")
    eval_source = data_args.eval_data or (data_args.train_data if data_args.eval_split else None)
    eval_set = load(eval_source, data_args.eval_split, "eval_data") if eval_source else None
    return train_set, eval_set


def check_recipe_paths(config: dict[str, Any], recipe: Path) -> None:
    """Data paths resolve from the current directory. A relative one missing there that exists beside the
    recipe fails here, naming the path that would work, instead of as a missing file later."""
    from eagle_align.data import DataError

    for key in ("train_data", "eval_data", "image_root"):
        value = config.get(key)
        if not isinstance(value, str) or Path(value).is_absolute() or Path(value).exists():
            continue
        beside = recipe.parent / value
        if beside.exists():
            raise DataError(f"{key} {value}: no such file or directory (paths resolve from the current directory, "
                            f"{Path.cwd()})", hint=f"relative to the recipe's folder it is {beside}: write that path")


def _prepare_model(model_args: ModelArguments, lora_args: LoraArguments, training_args):
    from eagle_align.families import load_model_and_processor
    from eagle_align.families.lora import apply_lora

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
    targets = lora_args.target_list()
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
    policies = training_args.policies()
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
            f": every {training_args.align_every} steps from step {training_args.align_start_step}; "
            f"{training_args.search} search over {training_args.n_regions} {training_args.region_method} regions, "
            f"{training_args.baseline} baseline, a/b {training_args.insertion_weight:g}/"
            f"{training_args.deletion_weight:g}; "
            f"terms {', '.join(f'{t.kind} {t.weight:g}' for t in policies.terms)} "
            f"({training_args.loss_variant}); gates {', '.join(repr(g) for g in policies.gates) or 'none'}; "
            f"preset {training_args.preset_description()}"
            if align
            else ""
        ),
        f"  output       {training_args.output_dir}",
    ]
    if hasattr(training_args, "grpo_settings"):
        grpo = training_args.grpo_settings()
        lines.insert(-1, f"  grpo         rewards {', '.join(grpo['rewards'])}; {grpo['num_generations']} generations of "
                         f"at most {grpo['max_completion_length']} tokens; beta {grpo['beta']:g}; "
                         f"loss {grpo['loss_type']}")
    return "\n".join(lines)


def run_training(config: dict[str, Any]):
    """Train from a flat config dict; returns the trainer (for tests and scripts)."""
    from transformers import set_seed

    from eagle_align.data import GroundingCollator
    from eagle_align.families import family_of
    from eagle_align.hub import resolve_base_model_id
    from eagle_align.trainer import PriorAlignedTrainer

    model_args, data_args, lora_args, training_args = parse_config(config)
    push = training_args.push_to_hub
    if push:
        from eagle_align.hub import check_push_ready

        # Before any work: a push that cannot start should not wait for the end of training to say so.
        check_push_ready(training_args.hub_model_id, training_args.hub_token)
        # The finished adapter (weights, processor, eagle-align card) is pushed once, at the end, by
        # eagle_align.hub; the Trainer's own pushes of intermediate checkpoints are switched off.
        training_args.push_to_hub = False
    train_set, eval_set = load_training_data(data_args)  # bad data fails before any weights load
    check_model_options(model_args, lora_args)  # LoRA targets against the checkpoint's layers, before weights load
    set_seed(training_args.seed)
    model, processor = _prepare_model(model_args, lora_args, training_args)
    family = family_of(model)
    collator = GroundingCollator(
        processor,
        data_args.action_format or family.default_action_format,
        system_prompt=data_args.system_prompt,
        max_length=data_args.max_length,
        on_error=data_args.on_error,
        augment=data_args.augmenter(training_args.seed),
    )
    if collator.action_format.name != family.default_action_format:
        logger.warning(
            "action_format %r is not the format %s was pretrained to answer in (%r): training starts from another "
            "coordinate convention; eval, explain and merge will read its answers as %r (eagle_align.json)",
            collator.action_format.name, family.name, family.default_action_format, collator.action_format.name,
        )
    callbacks = []
    if data_args.click_eval:
        from eagle_align.eval.callback import ClickEvalCallback

        callbacks.append(
            ClickEvalCallback(
                eval_set,
                processor,
                collator.action_format.name,
                limit=data_args.click_eval_limit,
                attribution_samples=data_args.click_eval_attribution_samples,
                system_prompt=data_args.system_prompt,
                out_dir=Path(training_args.output_dir) / "click_eval",  # per-step predictions and report
            )
        )
    base_model_id = resolve_base_model_id(model_args.model_name_or_path, model_args.base_model_id)
    if recipe_trainer(config) == "grpo":
        from eagle_align.grpo.trainer import PriorAlignedGRPOTrainer

        # TRL samples from prompts the collator renders; the rewards read the same coordinate space.
        trainer = PriorAlignedGRPOTrainer(
            model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, processing_class=processor,
            action_format=collator.action_format.name, system_prompt=data_args.system_prompt,
            callbacks=callbacks or None, base_model_id=base_model_id,
        )
    else:
        trainer = PriorAlignedTrainer(
            model=model,
            args=training_args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=collator,
            processing_class=processor,
            callbacks=callbacks or None,
            base_model_id=base_model_id,
        )
    for callback in callbacks:
        callback.attach(trainer)  # click-eval metrics then go through trainer.log (TensorBoard, W&B, console)
    if trainer.is_world_process_zero():
        print(_startup_summary(model, model_args, data_args, training_args, train_set, eval_set, collator, family))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_set is not None and training_args.eval_strategy == "no":
        _evaluate_at_end(trainer)  # eval data without an eval_strategy: evaluated once rather than never
    trainer.save_model()
    trainer.save_state()  # trainer_state.json (log history) and alignment_state.json beside the weights
    skipped_in_training = _count_skipped(trainer)
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        (out / "eagle_align_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (out / "data_report.json").write_text(
            json.dumps(
                {
                    "train_examples": len(train_set),
                    "train_skipped": getattr(train_set, "skipped", 0),
                    # a click point but no box: trained as plain SFT, without alignment
                    "train_point_only": sum(1 for ex in train_set if ex.bbox is None),
                    "train_problems": list(getattr(train_set, "problems", []))[:100],
                    # under on_error: skip, examples the collator could not encode (e.g. images that do not decode)
                    "skipped_during_training": skipped_in_training,
                    "skipped_during_training_problems": sorted(trainer.skipped_examples)[:100],
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


def _evaluate_at_end(trainer) -> dict[str, float]:
    """One evaluate() after training, for a recipe that gives eval data but no eval_strategy (the Trainer would
    load the eval set and never use it); says so, and how to evaluate during training instead."""
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        loss = metrics.get("eval_loss")
        result = f" (eval_loss {loss:.4f})" if loss is not None else ""
        print(f"evaluated the eval data once, after training{result}: the recipe sets no eval_strategy; set "
              "eval_strategy: steps and eval_steps to evaluate during training")
    return metrics


def _count_skipped(trainer) -> int:
    """Distinct examples the collator left out during training, summed over processes (every rank calls this)."""
    import torch
    from accelerate.utils import reduce

    count = torch.tensor(float(len(trainer.skipped_examples)), device=trainer.args.device)
    total = int(reduce(count, reduction="sum").item())
    if total and trainer.is_world_process_zero():
        print(f"skipped {total} example(s) during training that could not be encoded (on_error: skip); "
              f"see data_report.json in {trainer.args.output_dir}")
    return total


def train_from_argv(argv: list[str]) -> int:
    """Train from `CONFIG.yaml [--key value ...]`.

    A multi-process run ends here, once every rank has waited for the main process's writes and push
    (`end_run`).
    """
    from eagle_align.distributed import end_run

    trainer = run_training(load_config(argv[0], parse_overrides(argv[1:])))
    end_run(trainer.accelerator)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m eagle_align.train CONFIG.yaml [--key value ...]` (what `accelerate launch -m` runs)."""
    argv = sys.argv[1:] if argv is None else argv
    from eagle_align.cli import run_reporting_errors, strip_debug_flag

    argv, debug = strip_debug_flag(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0].startswith("-"):
        print("usage: python -m eagle_align.train CONFIG.yaml [--key value ...] [--debug]", file=sys.stderr)
        return 2
    return run_reporting_errors("train", lambda: train_from_argv(argv), debug)


if __name__ == "__main__":
    sys.exit(main())
