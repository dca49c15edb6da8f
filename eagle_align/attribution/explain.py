"""Explain one click: which screenshot regions the answer's coordinate tokens rely on (`eagle-align explain`).

The answer is the model's own greedy answer (or one given by the user); its exact tokens are teacher-forced,
so the attribution explains what the model said, not a re-rendering of it. Outputs an overlay PNG and a JSON
with the ranking, the measured curves, the metrics and the attribution settings used: by default the ones
the trained folder recorded in eagle_align.json (what its training's point game measured), else the library
defaults, ranking every region so the curves are complete; flags override single settings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from eagle_align.attribution.metrics import attribution_metrics
from eagle_align.attribution.overlay import explanation_figure, with_title
from eagle_align.attribution.scoring import attribution_mode
from eagle_align.attribution.search import Attribution, RegionAttribution
from eagle_align.attribution.settings import (
    AttributionSettings,
    resolve_attribution_settings,
)
from eagle_align.errors import UsageError


@dataclass
class Explanation:
    """Result of `explain`: the answer, its click (original pixels; None if unparseable) and the evidence."""

    answer: str
    click: tuple[float, float] | None
    attribution: Attribution
    metrics: dict[str, Any]
    overlay: Image.Image
    record: dict[str, Any]  # what the JSON file holds
    paths: dict[str, str]


def _device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _generate(model, processor, prompt: dict[str, Any], max_new_tokens: int) -> list[int]:
    """The model's greedy answer tokens, up to (not including) the end of its turn."""
    tokenizer = processor.tokenizer
    inputs = {k: v.to(_device(model)) for k, v in prompt.items() if torch.is_tensor(v)}
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    with attribution_mode(model):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=sorted(t for t in stop if t is not None))
    tokens = []
    for token in out[0, inputs["input_ids"].shape[1] :].tolist():
        if token in stop:
            break
        tokens.append(token)
    return tokens


def _token_spans(tokenizer, tokens: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `tokens` and each token's character span in it (incremental decoding)."""
    spans, previous = [], 0
    for i in range(len(tokens)):
        end = len(tokenizer.decode(tokens[: i + 1], skip_special_tokens=False))
        spans.append((previous, end))
        previous = end
    return tokenizer.decode(tokens, skip_special_tokens=False), spans


def teacher_forced_batch(prompt: dict[str, Any], answer_tokens: list[int], token_spans, coordinate_spans) -> dict:
    """Inference-mode batch (one sample) + answer tokens, with the meta's decision tokens set to the answer's
    coordinate tokens (those whose characters overlap a coordinate span)."""
    keep = prompt["attention_mask"][0].bool()
    prompt_ids = prompt["input_ids"][0, keep]
    answer = torch.tensor(answer_tokens, dtype=prompt_ids.dtype)
    hits = [i for i, (s, e) in enumerate(token_spans) if any(s < ce and e > cs for cs, ce in coordinate_spans)]
    positions = torch.tensor(hits, dtype=torch.long) + prompt_ids.numel()
    ids = torch.cat([prompt_ids, answer])[None]
    batch = dict(prompt)
    batch["input_ids"] = ids
    batch["attention_mask"] = torch.ones_like(ids)
    batch["mm_token_type_ids"] = torch.cat(
        [prompt["mm_token_type_ids"][0, keep], torch.zeros_like(answer)]
    )[None].to(prompt["mm_token_type_ids"].dtype)
    meta = prompt["meta"][0]
    batch["meta"] = [dataclasses.replace(meta, decision_positions=positions, decision_token_ids=ids[0, positions])]
    return batch


def check_bbox(bbox, image_size: tuple[int, int]) -> None:
    """A target box must be x1 < x2, y1 < y2 and lie inside the image (original pixels)."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise UsageError(f"--bbox {x1:g} {y1:g} {x2:g} {y2:g} is not a box inside the {width}x{height} image",
                         hint="give X1 Y1 X2 Y2 in original pixels with 0 <= X1 < X2 <= width and "
                              "0 <= Y1 < Y2 <= height")


def check_instruction(instruction: str) -> None:
    """An instruction is one non-empty line: the prompt the model answers, and the figure's title."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise UsageError("--instruction is empty", hint='say what to click, e.g. --instruction "click Save"')
    if "\n" in instruction or "\r" in instruction:
        raise UsageError("--instruction must be one line", hint="join its lines into one sentence")


def explain(
    model: torch.nn.Module,
    processor,
    image: str | Path | Image.Image,
    instruction: str,
    bbox: tuple[float, float, float, float] | None = None,
    answer: str | None = None,
    action_format: str | None = None,
    out_dir: str | Path | None = None,
    attribution: AttributionSettings | Mapping[str, Any] | None = None,
    stop_confidence: float | None = None,
    batch_size: int = 16,
    top_k: int = 3,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> Explanation:
    """Generate (or take) the answer to `instruction` on `image`, attribute its coordinate tokens, and render.

    `attribution`: the settings to attribute with. None or a mapping of single settings: the ones `model`
    was trained with (recorded in its eagle_align.json), else `AttributionSettings()`, ranking every region
    (no early stop, unless the mapping sets max_regions) so the insertion / deletion curves are complete,
    with the mapping's entries overriding; complete `AttributionSettings` are used as given. `bbox` (xyxy,
    original pixels) adds box metrics and is drawn; files go to `out_dir` when given.
    """
    from eagle_align.answer_formats import get_action_format
    from eagle_align.data.collator import GroundingCollator
    from eagle_align.data.schema import GroundingExample
    from eagle_align.families.space import model_action_format, model_system_prompt

    check_instruction(instruction)
    settings, settings_record = resolve_attribution_settings(model, attribution)
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        image = Image.open(image)
    image = image.convert("RGB")
    if bbox is not None:
        check_bbox(bbox, image.size)
    # Defaults: what the model was trained with (its eagle_align.json), else its family's own format.
    fmt = get_action_format(action_format) if action_format else model_action_format(model)
    system_prompt = model_system_prompt(model, system_prompt)
    example = GroundingExample(image=image, image_size=image.size, instruction=instruction,
                               bbox=tuple(bbox) if bbox else (0.0, 0.0, float(image.width), float(image.height)),
                               id="explain")
    prompt = GroundingCollator(processor, fmt, system_prompt=system_prompt, inference=True)([example])
    meta = prompt["meta"][0]
    tokenizer = processor.tokenizer
    if answer is None:
        tokens = _generate(model, processor, prompt, max_new_tokens)
        text, spans = _token_spans(tokenizer, tokens)
    else:
        encoded = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        tokens, spans, text = encoded["input_ids"], [tuple(s) for s in encoded["offset_mapping"]], answer
    coordinate_spans = fmt.coordinate_spans(text)
    if not coordinate_spans:
        expected = fmt.template.format(x="X", y="Y")
        raise UsageError(f"the answer {text!r} is in the wrong format for action format {fmt.name!r} "
                         f"(no coordinates to attribute); expected an answer like {expected}",
                         hint="pass --answer in that form, or --action-format for the format the answer is in")
    batch = teacher_forced_batch(prompt, tokens, spans, coordinate_spans)
    click = fmt.parse(text, meta.image_size, meta.resized_size)
    device = _device(model)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with tqdm(desc="attribution", unit="fwd", disable=not progress, dynamic_ncols=True) as bar:
        result = RegionAttribution(model, settings, batch_size).attribute(
            batch, [0], stop_confidence=stop_confidence, progress=bar.update
        )[0]
    metrics = attribution_metrics(result, meta.box_mask if bbox else None, settings.box_overlap, top_k)
    if bbox and click is not None:
        metrics["click_in_box"] = bool(bbox[0] <= click[0] <= bbox[2] and bbox[1] <= click[1] <= bbox[3])
    in_box = {True: "yes", False: "no"}.get(metrics.get("click_in_box"), "no box given" if not bbox else "no click")
    title = [f"instruction: {instruction}", f"answer: {text}",
             f"P(x) = {result.full_prob:.4f}   click in box: {in_box}"]
    overlay = with_title(explanation_figure(image, result, bbox=bbox, click=click, top_k=top_k), title)
    record = {
        "title": title,
        "instruction": instruction, "answer": text, "click": list(click) if click else None,
        "bbox": list(bbox) if bbox else None, "image_size": list(image.size),
        "resized_size": list(meta.resized_size), "action_format": fmt.name,
        "decision_tokens": [tokenizer.decode([t]) for t in batch["meta"][0].decision_token_ids.tolist()],
        "attribution_settings": settings_record,
        "settings": {"stop_confidence": stop_confidence, "top_k": top_k, "batch_size": batch_size},
        "metrics": metrics, "attribution": result.to_dict(),
    }
    paths = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"overlay": str(out / "explanation.png"), "json": str(out / "explanation.json")}
        overlay.save(paths["overlay"])
        Path(paths["json"]).write_text(json.dumps(record, indent=2))
    return Explanation(text, click, result, metrics, overlay, record, paths)
