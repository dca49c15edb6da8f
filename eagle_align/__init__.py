"""eagle-align: teach GUI agents to click for the right reason.

The public API, importable from the package root (loaded lazily, so `eagle-align --help` stays fast):

    from eagle_align import load_model_and_processor, apply_lora, load_examples, GroundingCollator
    from eagle_align import PriorAlignedConfig, PriorAlignedTrainer, explain, evaluate
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model_and_processor": "eagle_align.families",
    "build_tiny_checkpoint": "eagle_align.families",
    "read_coordinate_space": "eagle_align.families",
    "apply_lora": "eagle_align.families.lora",
    "lora_target_modules": "eagle_align.families.lora",
    "GroundingExample": "eagle_align.data",
    "GroundingCollator": "eagle_align.data",
    "load_examples": "eagle_align.data",
    "generate_synthetic": "eagle_align.data",
    "get_action_format": "eagle_align.answer_formats",
    "PriorAlignedConfig": "eagle_align.config",
    "PriorAlignedTrainer": "eagle_align.trainer",
    "AttributionSettings": "eagle_align.attribution",
    "RegionAttribution": "eagle_align.attribution",
    "attribute_sample": "eagle_align.attribution",
    "attribute_samples": "eagle_align.attribution",
    "explain": "eagle_align.attribution",
    "evaluate": "eagle_align.eval",
    "merge_adapter": "eagle_align.hub",
    "push_adapter": "eagle_align.hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eagle_align' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
