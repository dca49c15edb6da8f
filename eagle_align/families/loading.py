"""Load a Qwen-VL checkpoint (Hub id or local directory) with the processor settings eagle-align relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from eagle_align.errors import UsageError
from eagle_align.families.registry import ModelFamily, check_model_path, detect_family
from eagle_align.families.space import attach_coordinate_space, read_coordinate_space, settle

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
        given = " and ".join(f"{n}={v}" for n, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v)
        raise UsageError(f"min_pixels={size['shortest_edge']} exceeds max_pixels={size['longest_edge']}"
                         + (f" (given: {given}; the other is the checkpoint's)" if given else ""),
                         hint="set min_pixels ≤ max_pixels")
    processor.image_processor.size = size


def min_max_pixels(family: ModelFamily) -> int:
    """The smallest max_pixels that keeps every side of a screenshot up to 4:1 at least one merged cell long.

    Below it the resize rounds a side down to 0 px and every image fails to load, which would be blamed on the
    images (and, under on_error: skip, drop the whole dataset).
    """
    return 4 * family.factor * family.factor


def check_pixel_limits(family: ModelFamily, min_pixels: int | None, max_pixels: int | None) -> None:
    """Fail with one line for pixel limits no screenshot can be resized into (before any weights load)."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{name}={value!r} must be a positive number of pixels")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise UsageError(f"min_pixels={min_pixels} exceeds max_pixels={max_pixels}", hint="set min_pixels ≤ max_pixels")
    lowest = min_max_pixels(family)
    if max_pixels is not None and max_pixels < lowest:
        raise UsageError(f"max_pixels={max_pixels} is below {lowest}: {family.name} resizes screenshots into cells of "
                         f"{family.factor}×{family.factor} px, and a screenshot needs at least 2×2 of them",
                         hint=f"use max_pixels ≥ {lowest} (the family's default is {family.default_max_pixels})")


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
    check_pixel_limits(family, min_pixels, max_pixels)
    # Processor and adapter first: limits that contradict the checkpoint's, or an adapter that does not fit
    # this base, fail here in one line instead of after (or inside) loading the weights.
    processor = load_processor(path_or_id, min_pixels, max_pixels)
    check_pixel_limits(family, *pixel_limits(processor))
    if adapter is not None:
        check_adapter(adapter, path_or_id)
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
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    attach_coordinate_space(model, space)
    return model, processor


def family_of(model) -> ModelFamily:
    """Family of a loaded (possibly PEFT-wrapped) model."""
    config = getattr(model, "config", None)
    return detect_family(config)


def meta_model(path_or_id: str) -> torch.nn.Module:
    """The checkpoint's architecture on the meta device: every module name and shape, no weights read."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path_or_id)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


# Module types PEFT's LoRA can wrap.
_LORA_LAYER_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def check_lora_targets(model: torch.nn.Module, targets: str | list[str]) -> None:
    """Fail with one line when LoRA targets match no layer of `model`, matched the way PEFT matches them.

    A preset (a regex string) must fully match at least one layer name; each name of a list must be a layer's
    name or the end of one (`q_proj` matches `...self_attn.q_proj`), and a layer LoRA can wrap.
    """
    from eagle_align.families.lora import LORA_TARGET_PRESETS

    modules = dict(model.named_modules())
    if isinstance(targets, str):
        pattern = LORA_TARGET_PRESETS.get(targets, targets)
        if not any(re.fullmatch(pattern, name) for name in modules):
            raise UsageError(f"lora_targets={targets!r} matches no layer of the model")
        return
    if not targets:
        raise UsageError("lora_targets is empty", hint=f"use a preset ({', '.join(LORA_TARGET_PRESETS)}) or layer names")
    examples = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items()
                       if isinstance(module, torch.nn.Linear) and ".layers." in name})
    for target in targets:
        matched = [m for name, m in modules.items() if name == target or name.endswith(f".{target}")]
        if not any(isinstance(m, _LORA_LAYER_TYPES) for m in matched):
            what = "matches no layer" if not matched else "matches only modules LoRA cannot wrap"
            raise UsageError(f"lora_targets: {target!r} {what} of the model",
                             hint=f"use a preset ({', '.join(LORA_TARGET_PRESETS)}) or comma-separated layer names "
                             f"such as {', '.join(examples[:7])}")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's header, without reading the tensors."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return {name: list(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def check_adapter(adapter: str, base: str) -> None:
    """Fail with one line, before any weights load, when a local `adapter` folder is not a LoRA adapter or
    was trained on a base of another size (its LoRA shapes, read from the safetensors header, must fit the
    base's layers)."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        return  # a Hub id: PEFT fetches and checks it
    if not (folder / "adapter_config.json").is_file():
        hint = ("it holds a model (config.json): pass it as the model, without an adapter"
                if (folder / "config.json").is_file() else "pass the folder `eagle-align train` wrote "
                "(with adapter_config.json and adapter_model.safetensors)")
        raise UsageError(f"adapter {adapter}: the folder has no adapter_config.json, so it is not a LoRA adapter",
                         hint=hint)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return
    try:
        shapes = _safetensors_shapes(weights)
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"adapter {adapter}: {weights.name} is not a readable safetensors file ({error})") from None
    layers = dict(meta_model(base).named_modules())
    recorded = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    hint = f"load it on the base it was trained on{f' ({recorded})' if recorded else ''}"
    for key, shape in sorted(shapes.items()):
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        name = match["module"]
        layer = layers.get(name)
        if layer is None:
            raise UsageError(f"adapter {adapter} does not fit {base}: it has LoRA weights for {name}, a layer the "
                             "base does not have", hint=hint)
        size = getattr(layer, "in_features", None) if match["part"] == "A" else getattr(layer, "out_features", None)
        got = shape[-1] if match["part"] == "A" else shape[0]
        if size is not None and got != size:
            side = "input" if match["part"] == "A" else "output"
            raise UsageError(f"adapter {adapter} does not fit {base}: {name} has {side} size {size} in the base, "
                             f"{got} in the adapter (a base of another size?)", hint=hint)
