"""`PriorAlignedGRPOConfig`: TRL's `GRPOConfig` plus the prior-alignment settings of `PriorAlignedConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from eagle_align.config import PriorAlignedConfig
from eagle_align.grpo.rewards import get_reward

DEFAULT_REWARDS = ("click_in_box", "answer_format")
# What the card records of a GRPO run, beside the alignment settings.
GRPO_CARD_FIELDS = ("rewards", "reward_weights", "num_generations", "max_completion_length", "temperature", "beta",
                    "loss_type", "scale_rewards", "num_iterations", "steps_per_generation")


@dataclass
class PriorAlignedGRPOConfig(GRPOConfig, PriorAlignedConfig):
    r"""Configuration of [`PriorAlignedGRPOTrainer`]: every `GRPOConfig` option, with TRL's defaults, plus the
    prior-alignment settings of [`PriorAlignedConfig`] with theirs.

    On the alignment schedule (`align_every`, `align_start_step`) the trainer takes the policy's own sampled
    clicks that land in the target box, attributes them with the same attribution settings, gates and loss
    terms as SFT, and adds the deviation (and redundancy) loss to the GRPO objective with its own weight
    (`lambda_deviation`, `lambda_redundancy`). Alignment happens on generation steps: with
    `steps_per_generation` or `num_iterations` above 1, a generation that falls on the schedule aligns once
    for all the optimizer steps its completions train.

    Parameters that control the rewards:
        rewards (`list[str]`, defaults to `["click_in_box", "answer_format"]`): reward functions by name
            (`eagle_align.grpo.rewards.REWARDS`: click_in_box, click_distance, gaussian_point, answer_format),
            used when the trainer is given no `reward_funcs`; GUI-R1 and UI-R1 train on accuracy + format.
            Weigh them with TRL's `reward_weights`.

    TRL's defaults that differ from `TrainingArguments` stay TRL's (learning rate 1e-6, bf16, gradient
    checkpointing, 8 generations, β 0); set `bf16: false` and `gradient_checkpointing: false` on CPU.
    """

    rewards: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Reward functions by name (click_in_box, click_distance, gaussian_point, answer_format) "
                  "when the trainer gets no reward_funcs."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rewards, str):
            self.rewards = [name.strip() for name in self.rewards.split(",") if name.strip()]
        if not self.rewards:
            raise ValueError("rewards is empty; name at least one (e.g. click_in_box)")
        for name in self.rewards:
            get_reward(name)

    @classmethod
    def method_fields(cls) -> list[str]:
        """The alignment settings (GRPO's own options are recorded apart, `grpo_settings`)."""
        return PriorAlignedConfig.method_fields()

    def grpo_settings(self) -> dict[str, Any]:
        """The GRPO options a model card records."""
        return {name: getattr(self, name) for name in GRPO_CARD_FIELDS}
