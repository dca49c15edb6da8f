"""Batches for training, attribution and inference, plus the per-sample facts the trainer needs.

Each sample is processed on its own (chat template → processor), so its answer span, coordinate tokens and
image tokens are known exactly before padding; padding then extends every sequence tensor, including
`mm_token_type_ids` (without which M-RoPE silently falls back to 1-D positions), in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from eagle_align.answer_formats import ActionFormat, get_action_format
from eagle_align.data.images import image_for_processor
from eagle_align.data.schema import DataError, GroundingExample
from eagle_align.errors import UsageError

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


@dataclass
class SampleMeta:
    """What the trainer and attribution need about one sample, in the coordinates the model saw."""

    id: str
    image_size: tuple[int, int]  # (W, H) original
    resized_size: tuple[int, int]  # (W, H) = image_grid_thw[1:] · patch, as (W, H)
    grid_hw: tuple[int, int]  # merged-cell grid (rows, cols)
    bbox_resized: tuple[float, float, float, float] | None  # None: a point-only example (no box)
    box_mask: torch.Tensor | None  # bool [rows, cols]: merged cells the bbox touches; None without a box
    decision_positions: torch.Tensor  # long: positions (in the padded row) of the coordinate tokens
    decision_token_ids: torch.Tensor  # long
    answer: str
    example: GroundingExample


def resize_box(box, image_size: tuple[int, int], resized_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """An xyxy box in original pixels, in the pixels of the resized image the model sees."""
    sx, sy = resized_size[0] / image_size[0], resized_size[1] / image_size[1]
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def box_mask(bbox_resized, grid_hw: tuple[int, int], cell: int) -> torch.Tensor:
    """Bool [rows, cols]: cell (r, c) covers [c·cell, (c+1)·cell) × [r·cell, (r+1)·cell) and is marked when
    the open box interior overlaps it."""
    rows, cols = grid_hw
    x1, y1, x2, y2 = bbox_resized
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    c1, c2 = int(x1 // cell), -int(-x2 // cell)  # first cell, one past the last (ceil)
    r1, r2 = int(y1 // cell), -int(-y2 // cell)
    mask[max(r1, 0) : min(max(r2, r1 + 1), rows), max(c1, 0) : min(max(c2, c1 + 1), cols)] = True
    return mask


class GroundingCollator:
    """Examples → padded batch + `meta` (list of SampleMeta).

    Training mode: user turn (image + instruction) and the assistant answer rendered by `action_format`
    at the resized size; labels cover the answer and its end-of-turn token, everything else is -100; pads
    right. Inference mode: the prompt ends with the generation prompt, no labels; pads left.
    The image is pre-resized with qwen-vl-utils using the processor's pixel limits (see data.images).

    on_error "skip": an example that cannot be encoded (an image that does not decode, too many tokens) is
    logged and left out of its batch, and its message is listed under the batch's `"skipped"` key (the trainer
    counts them); a batch left empty repeats the last good example, so the step still trains. "raise" stops
    with the example named.

    `augment` (e.g. `eagle_align.data.BoxGuidedCrop`) turns each example into the one trained on, in training
    mode only: inference mode, which predicts clicks on the screenshot as given, never applies it. The batch's
    `meta` then describes the augmented example (its image, size and box).
    """

    def __init__(
        self,
        processor,
        action_format: str | ActionFormat,
        system_prompt: str | None = None,
        max_length: int | None = None,
        inference: bool = False,
        on_error: str = "raise",
        augment: Callable[[GroundingExample], GroundingExample] | None = None,
    ):
        if max_length is not None and max_length <= 0:
            raise UsageError(f"max_length={max_length} must be positive")
        if on_error not in ("raise", "skip"):
            raise UsageError(f"on_error={on_error!r}; choose 'raise' or 'skip'")
        self.on_error = on_error
        self._spare: GroundingExample | None = None  # the last example that encoded (stands in for an empty batch)
        self.processor = processor
        self.action_format = get_action_format(action_format)
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.inference = inference
        self.augment = augment
        image_processor = processor.image_processor
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        tokenizer = processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.image_token = getattr(processor, "image_token", "<|image_pad|>")

    def messages(self, example: GroundingExample, answer: str | None = None) -> list[dict]:
        """Chat messages for one example (answer appended as the assistant turn when given)."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append(
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.instruction}]}
        )
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def __call__(self, examples: list[GroundingExample]) -> dict:
        if not examples:
            raise DataError("GroundingCollator got an empty batch")
        samples, skipped = [], []
        for example in examples:
            try:
                samples.append(self._encode(self._augmented(example)))
            except DataError as error:
                if self.on_error == "raise":
                    raise
                logger.warning("on_error=skip: leaving out %s", error)
                skipped.append(str(error))
        if not samples:
            if self._spare is None:
                raise DataError(f"no example of the batch could be used: {'; '.join(skipped)}")
            samples.append(self._encode(self._spare))
        self._spare = samples[-1]["meta"].example
        length = max(s["input_ids"].shape[0] for s in samples)
        batch = {key: [] for key in (*_SEQUENCE_KEYS, "labels")}
        metas = []
        for sample in samples:
            pad = length - sample["input_ids"].shape[0]
            offset = pad if self.inference else 0  # left padding shifts every position
            for key, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0),
                               ("labels", IGNORE_INDEX)):
                if key == "labels" and self.inference:
                    continue
                filler = torch.full((pad,), value, dtype=sample[key].dtype)
                parts = (filler, sample[key]) if self.inference else (sample[key], filler)
                batch[key].append(torch.cat(parts))
            meta = sample["meta"]
            meta.decision_positions = meta.decision_positions + offset
            metas.append(meta)
        out = {key: torch.stack(values) for key, values in batch.items() if values}
        out["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
        out["image_grid_thw"] = torch.stack([s["image_grid_thw"] for s in samples])
        out["meta"] = metas
        if skipped:
            out["skipped"] = skipped
        return out

    def _augmented(self, example: GroundingExample) -> GroundingExample:
        """The example this batch trains on: `augment`'s view of it in training mode, itself otherwise."""
        return example if self.inference or self.augment is None else self.augment(example)

    def _encode(self, example: GroundingExample) -> dict:
        image = image_for_processor(example, self.processor)
        prompt = self.processor.apply_chat_template(self.messages(example), tokenize=False, add_generation_prompt=True)
        if self.inference:
            text, answer, label_chars, tail, probed = prompt, "", 0, 0, None
        else:
            # The answer needs the resized size before the text is tokenised: ask the image processor's own
            # resize rule (no pixel work); the processor output below must agree, or the example fails.
            probed = self.resized_size(image)
            answer = self.action_format.render(example.point, example.image_size, probed)
            text = self.processor.apply_chat_template(self.messages(example, answer), tokenize=False)
            if not text.startswith(prompt + answer):
                raise DataError(f"example {example.id!r}: chat template does not put the answer after the prompt")
            after = text[len(prompt) + len(answer):]
            tail = len(text) - len(prompt)  # chars from the answer start to the end of the text
            label_chars = len(answer) + len(after.rstrip())  # answer + end-of-turn token, not the newline
        encoded = self.processor(text=[text], images=[image], return_tensors="pt", return_offsets_mapping=True)
        ids = encoded["input_ids"][0]
        offsets = encoded.pop("offset_mapping")[0]
        grid = encoded["image_grid_thw"][0]
        resized = (int(grid[2]) * self.patch_size, int(grid[1]) * self.patch_size)
        grid_hw = (int(grid[1]) // self.merge_size, int(grid[2]) // self.merge_size)
        if probed is not None and probed != resized:
            raise DataError(f"example {example.id!r}: processor resized to {resized}, answer rendered for {probed}")
        starts, ends = offsets[:, 0], offsets[:, 1]
        labels = torch.full_like(ids, IGNORE_INDEX)
        positions = torch.zeros(0, dtype=torch.long)
        if not self.inference:
            answer_start = int(ends.max()) - tail  # the answer sits at the end of the expanded text
            in_answer = (ends > answer_start) & (starts < answer_start + label_chars)
            labels[in_answer] = ids[in_answer]
            spans = self.action_format.coordinate_spans(answer)
            hits = torch.zeros_like(in_answer)
            for s, e in spans:
                hits |= (ends > answer_start + s) & (starts < answer_start + e)
            positions = hits.nonzero().flatten()
            if len(spans) == 0 or positions.numel() == 0:
                raise DataError(f"example {example.id!r}: no coordinate tokens found in answer {answer!r}")
        # A point-only example has no box: it trains on its answer alone (the trainer skips its alignment).
        bbox_resized = None if example.bbox is None else resize_box(example.bbox, example.image_size, resized)
        sample = {key: encoded[key][0] for key in _SEQUENCE_KEYS}
        sample["labels"] = labels
        sample = self._truncate(sample, positions, example)
        sample["pixel_values"] = encoded["pixel_values"]
        sample["image_grid_thw"] = grid
        sample["meta"] = SampleMeta(
            id=example.id,
            image_size=tuple(example.image_size),
            resized_size=resized,
            grid_hw=grid_hw,
            bbox_resized=bbox_resized,
            box_mask=None if bbox_resized is None else box_mask(bbox_resized, grid_hw,
                                                                    self.patch_size * self.merge_size),
            decision_positions=positions,
            decision_token_ids=ids[positions],
            answer=answer,
            example=example,
        )
        return sample

    def resized_size(self, image) -> tuple[int, int]:
        """(W, H) the image processor will resize `image` to, from its smart_resize and pixel limits."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        size = self.processor.image_processor.size
        height, width = smart_resize(
            image.height, image.width, factor=self.patch_size * self.merge_size,
            min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"],
        )
        return width, height

    def _truncate(self, sample: dict, positions: torch.Tensor, example: GroundingExample) -> dict:
        """Cut to max_length only where nothing but answer tokens after the coordinates are lost."""
        length = sample["input_ids"].shape[0]
        if self.max_length is None or length <= self.max_length:
            return sample
        image_positions = (sample["mm_token_type_ids"] != 0).nonzero().flatten()
        where = f"example {example.id!r}: {length} tokens exceed max_length={self.max_length}"
        if image_positions.numel() and int(image_positions.max()) >= self.max_length:
            raise DataError(f"{where} and cutting would remove image tokens; raise max_length or lower max_pixels")
        if self.inference:
            raise DataError(f"{where}; cutting would remove the end of the prompt")
        if positions.numel() and int(positions.max()) >= self.max_length:
            raise DataError(f"{where}; cutting would remove the coordinate tokens of the answer")
        return {key: value[: self.max_length] for key, value in sample.items()}
