"""Load a Qwen-VL checkpoint (Hub id or local directory) with the processor settings eagle-align relies on."""

from __future__ import annotations

import torch

from eagle_align.errors import UsageError
from eagle_align.models.registry import ModelFamily, check_model_path, detect_family

QUANTIZATION_CHOICES = (None, "4bit", "8bit")
# Vision tower and LM head stay in full precision: quantising them costs grounding accuracy for little memory.
QUANTIZATION_SKIP_MODULES = ["model.visual", "lm_head"]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """Accept "bfloat16" / "bf16" / "float32" / "auto" / a torch.dtype."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (use auto, bfloat16, float16 or float32)")
    return getattr(torch, name)


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16):
    """bitsandbytes config for QLoRA: nf4 (4bit) or int8 (8bit) language model; vision and lm_head skipped."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization={quantization!r}; choose one of None, '4bit', '8bit'")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES)


def set_pixel_limits(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the processor's smart_resize bounds (the ones qwen-vl-utils must use too)."""
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(f"min_pixels={size['shortest_edge']} exceeds max_pixels={size['longest_edge']}")
    processor.image_processor.size = size


def pixel_limits(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes screenshots into."""
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def load_processor(path_or_id: str, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path_or_id)
    set_pixel_limits(processor, min_pixels, max_pixels)
    return processor


def load_model_and_processor(
    path_or_id: str,
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = None,
    quantization: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    device_map=None,
    adapter: str | None = None,
    force_coordinate_space: bool = False,
):
    """Return `(model, processor)` for a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint, optionally with a LoRA
    `adapter` (folder or Hub id) loaded on top.

    The processor's pixel limits are fixed here, once, for training, evaluation and explanation alike: the
    ones the adapter (or a trained folder given as `path_or_id`) recorded in `eagle_align.json`, else the ones
    asked for, else the checkpoint's own. Limits that contradict the record are a UsageError unless
    `force_coordinate_space`. The record is kept on the model for evaluate / explain (`coordinate_space_of`).
    """
    from transformers import AutoModelForImageTextToText

    from eagle_align.models.space import attach_coordinate_space, read_coordinate_space, settle

    family = detect_family(path_or_id)  # a clear error for checkpoints that are not a supported Qwen-VL family
    if adapter is not None:
        check_model_path(adapter, "adapter")
    source = adapter if adapter is not None else path_or_id
    space = read_coordinate_space(source)
    if space is not None and space.family != family.name:
        raise UsageError(f"{source} was trained on a {space.family} model, but {path_or_id} is {family.name}",
                         hint=f"load it on its base model{f' ({space.base_model_id})' if space.base_model_id else ''}")
    if adapter is not None and space is not None and not space.is_adapter:
        raise UsageError(f"{adapter} holds full model weights ({space.finetuning}"
                         + (f", merged from {space.merged_from}" if space.merged_from else "") + "), not an adapter",
                         hint="pass the folder as the model, without an adapter")
    settled = settle(space, source, force_coordinate_space, min_pixels=min_pixels, max_pixels=max_pixels)
    min_pixels, max_pixels = settled["min_pixels"], settled["max_pixels"]
    torch_dtype = resolve_dtype(dtype)
    compute_dtype = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16
    kwargs = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, compute_dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(path_or_id, **kwargs)
    processor = load_processor(path_or_id, min_pixels, max_pixels)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    attach_coordinate_space(model, space)
    return model, processor


def family_of(model) -> ModelFamily:
    """Family of a loaded (possibly PEFT-wrapped) model."""
    config = getattr(model, "config", None)
    return detect_family(config)
