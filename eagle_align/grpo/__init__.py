"""GRPO for GUI grounding (`pip install "eagle-align[grpo]"`): TRL's `GRPOTrainer` with click rewards and prior
alignment of the policy's own correct clicks.

`eagle_align.grpo.rewards` and `grounding_prompts` need no TRL; the config and trainer import it when first used.
"""

from __future__ import annotations

from typing import Any

from eagle_align.grpo.data import grounding_prompts
from eagle_align.grpo.rewards import REWARDS, answer_format, click_distance, click_in_box, gaussian_point

__all__ = [
    "REWARDS",
    "PriorAlignedGRPOConfig",
    "PriorAlignedGRPOTrainer",
    "answer_format",
    "click_distance",
    "click_in_box",
    "gaussian_point",
    "grounding_prompts",
]


def __getattr__(name: str) -> Any:
    if name == "PriorAlignedGRPOConfig":
        from eagle_align.grpo.config import PriorAlignedGRPOConfig

        return PriorAlignedGRPOConfig
    if name == "PriorAlignedGRPOTrainer":
        from eagle_align.grpo.trainer import PriorAlignedGRPOTrainer

        return PriorAlignedGRPOTrainer
    raise AttributeError(f"module 'eagle_align.grpo' has no attribute {name!r}")
