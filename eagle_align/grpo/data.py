"""Grounding examples as GRPO prompts: the rows TRL's `GRPOTrainer` samples from and passes to the rewards.

The prompt is the SFT collator's own user turn (same system prompt, same chat template) and the image is the
one the collator would give the processor, so GRPO samples clicks in exactly the coordinate space SFT trains
and eval reads. The rows also carry what the click rewards read (`eagle_align.grpo.rewards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from eagle_align.data.collator import GroundingCollator
from eagle_align.data.images import image_for_processor
from eagle_align.data.schema import GroundingExample

PROMPT_COLUMNS = ("prompt", "image", "bbox", "point", "image_size", "resized_size", "action_format", "example_index")


def prompt_row(example: GroundingExample, index: int, collator: GroundingCollator) -> dict[str, Any]:
    """One GRPO row: `prompt` (chat messages with an image placeholder), `image` (PIL, resized as the collator
    resizes it), and the reward columns `bbox` (xyxy original pixels, None for a point-only record), `point`,
    `image_size`, `resized_size`, `action_format` and `example_index` (the row's example, which the
    prior-aligned trainer re-renders with a sampled click to attribute it)."""
    image = image_for_processor(example, collator.processor)
    return {
        "prompt": collator.messages(example),
        "image": image,
        "bbox": None if example.bbox is None else [float(v) for v in example.bbox],
        "point": None if example.point is None else [float(v) for v in example.point],
        "image_size": [int(v) for v in example.image_size],
        "resized_size": list(collator.resized_size(image)),
        "action_format": collator.action_format.name,
        "example_index": index,
    }


def grounding_prompts(examples: Sequence[GroundingExample], collator: GroundingCollator) -> Dataset:
    """`examples` as a `datasets.Dataset` of GRPO rows rendered by `collator` (its action format, system prompt
    and pixel limits). It stores only the example indices: each row is built, image loaded, when it is read,
    so a large dataset costs no memory up front."""

    def rows(batch: dict[str, list]) -> dict[str, list]:
        # TRL's sampler repeats each prompt num_generations times in a batch: load and resize its image once.
        built = {index: prompt_row(examples[index], index, collator) for index in dict.fromkeys(batch["example_index"])}
        return {column: [built[index][column] for index in batch["example_index"]] for column in PROMPT_COLUMNS}

    return Dataset.from_dict({"example_index": list(range(len(examples)))}).with_transform(rows)
