"""Facts about each supported Qwen-VL family, in one place.

Everything downstream (masking in pixel_values space, coordinate conversion, tiny checkpoints) reads these
numbers from here instead of hard-coding them, so adding a family is one entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from eagle_align.answer_formats import ActionFormat, get_action_format
from eagle_align.errors import UsageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Chat templates written for eagle-align: they render the same prompt layout as each family's published
# template for the messages a GUI agent uses (optional system, user turns with images and text, assistant
# text), which is what training and inference must agree on.
_QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
_QWEN2_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + _QWEN2_DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL: no default system turn.
_QWEN3_TEMPLATE = _QWEN2_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + _QWEN2_DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}",
    "",
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclass(frozen=True)
class ModelFamily:
    """One Qwen-VL generation: its classes, vision geometry and coordinate convention."""

    name: str
    model_type: str
    model_class: str
    processor_class: str
    video_processor_class: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    coordinate_convention: str  # "relative_1000" | "absolute_resized" | "relative_999"
    default_action_format: str
    default_min_pixels: int
    default_max_pixels: int
    chat_template: str
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    # The system turn the chat template writes when the messages have none (what "no system prompt" means).
    template_system_prompt: str | None = None

    @property
    def factor(self) -> int:
        """Side of one merged cell (one LLM image token) in resized pixels."""
        return self.patch_size * self.merge_size

    @property
    def row_width(self) -> int:
        """Columns of one pixel_values row: channels · temporal copies · patch · patch."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


FAMILIES: dict[str, ModelFamily] = {
    "qwen2_vl": ModelFamily(
        name="qwen2_vl",
        model_type="qwen2_vl",
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        coordinate_convention="relative_1000",
        default_action_format="qwen2_vl",
        default_min_pixels=56 * 56,
        default_max_pixels=28 * 28 * 1280,
        chat_template=_QWEN2_TEMPLATE,
        template_system_prompt=_QWEN2_DEFAULT_SYSTEM,
    ),
    "qwen2_5_vl": ModelFamily(
        name="qwen2_5_vl",
        model_type="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        coordinate_convention="absolute_resized",
        default_action_format="qwen2_5_vl",
        default_min_pixels=56 * 56,
        default_max_pixels=28 * 28 * 1280,
        chat_template=_QWEN2_TEMPLATE,
        template_system_prompt=_QWEN2_DEFAULT_SYSTEM,
    ),
    "qwen3_vl": ModelFamily(
        name="qwen3_vl",
        model_type="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        coordinate_convention="relative_999",
        default_action_format="qwen3_vl",
        default_min_pixels=65536,
        default_max_pixels=16777216,
        chat_template=_QWEN3_TEMPLATE,
    ),
}


def get_family(name: str) -> ModelFamily:
    """Return the family registered under `name`, or fail listing the known ones."""
    if name not in FAMILIES:
        raise UsageError(f"Unknown model family {name!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def default_action_format(family_name: str) -> ActionFormat:
    """The format each family was trained to emit (its published coordinate convention)."""
    return get_action_format(get_family(family_name).default_action_format)


def _looks_local(name_or_path: str) -> bool:
    """True unless `name_or_path` has the form of a Hub id (`namespace/name`): every Qwen-VL checkpoint on the
    Hub has a namespace, so a bare name, an absolute or relative path, `~` or `a/b/c` means a local folder."""
    name = str(name_or_path)
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1 or name.endswith("/")


def check_model_path(path_or_id: str, what: str = "model") -> None:
    """Fail at once for a local-looking path that does not exist, instead of asking the Hub for it."""
    if _looks_local(path_or_id) and not Path(path_or_id).expanduser().exists():
        raise UsageError(f"{what} {path_or_id}: no such folder",
                         hint="give a local folder or a Hub id of the form namespace/name "
                              "(e.g. Qwen/Qwen2.5-VL-3B-Instruct)")


def _model_type_of(path_or_id: str) -> str | None:
    """model_type of a local folder, or of a Hub id through `AutoConfig` (the local cache when offline).

    A local-looking path that does not exist fails here at once, instead of being sent to the Hub.
    """
    path = Path(path_or_id).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()).get("model_type")
    if path.is_dir():
        hint = ("it holds a LoRA adapter: pass its base model as the model and this folder as the adapter"
                if (path / "adapter_config.json").is_file() else None)
        raise UsageError(f"model {path_or_id}: the folder has no config.json, so it is not a checkpoint", hint=hint)
    if path.exists():
        raise UsageError(f"model {path_or_id}: a file, not a checkpoint folder or a Hub id")
    check_model_path(path_or_id)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path_or_id).model_type
    except OSError as error:  # not on the Hub, no connection and not cached, gated, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"model {path_or_id}: not a local folder, and its config could not be loaded from the Hub "
                         f"or the cache: {first}") from error


def detect_family(config_or_path) -> ModelFamily:
    """Family of a checkpoint, from a `PretrainedConfig`, a config dict, a local directory or a Hub id.

    Hub ids are resolved through `AutoConfig` (which uses the local cache when offline).
    """
    if isinstance(config_or_path, dict):
        model_type = config_or_path.get("model_type")
    elif isinstance(config_or_path, (str, os.PathLike)):
        model_type = _model_type_of(str(config_or_path))
    else:
        model_type = getattr(config_or_path, "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise UsageError(
        f"Checkpoint model_type {model_type!r} is not a supported Qwen-VL family "
        f"(supported: {', '.join(f.model_type for f in FAMILIES.values())})"
    )
