"""LoRA target presets for Qwen-VL models.

PEFT's `all-linear` also hits the vision blocks and the merger, which is rarely what a grounding fine-tune
wants; the presets below make the choice explicit. Names follow transformers 5.x runtime modules:
`model.language_model.layers.N...` and `model.visual.(blocks|merger|deepstack_merger_list)...`.
"""

from __future__ import annotations

import re

_LANGUAGE = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_MERGER = r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.(mlp\.[02]|linear_fc\d)"
_VISION = r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc\d|linear_fc\d|gate_proj|up_proj|down_proj))"

LORA_TARGET_PRESETS: dict[str, str] = {
    "language": _LANGUAGE,
    "language+merger": f"({_LANGUAGE}|{_MERGER})",
    "all": f"({_LANGUAGE}|{_MERGER}|{_VISION})",
}


def lora_target_modules(targets: str | list[str]) -> str | list[str]:
    """A PEFT `target_modules` value for a preset name, or explicit module patterns passed through."""
    if isinstance(targets, str):
        if targets in LORA_TARGET_PRESETS:
            return LORA_TARGET_PRESETS[targets]
        raise ValueError(
            f"lora targets={targets!r} is not a preset ({', '.join(LORA_TARGET_PRESETS)}); "
            "pass a list of module name patterns for custom targets"
        )
    if not targets:
        raise ValueError("lora targets is an empty list")
    return list(targets)


def apply_lora(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: str | list[str] = "language",
    gradient_checkpointing: bool = False,
):
    """Wrap `model` in a PEFT LoRA model with the given target preset.

    With gradient checkpointing and a frozen vision tower the inputs to the first checkpointed block carry no
    gradient, so input gradients are enabled explicitly.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(targets),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if gradient_checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model


def lora_module_names(model) -> list[str]:
    """Names of the modules that carry LoRA weights (for checks and summaries)."""
    return sorted({re.sub(r"\.lora_[AB].*$", "", n) for n, _ in model.named_parameters() if ".lora_A." in n})
