"""Generation harness: greedy answers for a benchmark, parsed into clicks, scored, attributed and reported.

The prompts come from the same collator the trainer uses (inference mode: generation prompt, left padding,
`mm_token_type_ids` kept), so the model is evaluated on exactly the coordinate space it was trained in.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from eagle_align.eval.scoring import score_sample, summarize

if TYPE_CHECKING:
    from eagle_align.attribution.settings import AttributionSettings

ATTRIBUTION_KEYS = ("point_game", "box_hit@k", "insertion_auc", "deletion_auc")


def _device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _greedy_config(model: torch.nn.Module, max_new_tokens: int):
    """The model's generation config made greedy, without sampling knobs that would only trigger warnings."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = None
    config.num_beams = 1
    config.max_new_tokens = max_new_tokens
    return config


def _stop_ids(config, tokenizer) -> set[int]:
    ids = config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    for extra in (config.pad_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if extra is not None:
            ids.add(int(extra))
    return ids


def _decode(tokens: torch.Tensor, stop_ids: set[int], tokenizer) -> str:
    """Text up to the first end/pad token; other special tokens stay, since some formats are written in them."""
    kept = []
    for token in tokens.tolist():
        if token in stop_ids:
            break
        kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=False)


def prompt_preview(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                   image_token: str = "<|image_pad|>") -> str:
    """A prompt as the model saw it (padding dropped), with the image tokens written once with their count."""
    text = tokenizer.decode(input_ids[attention_mask.bool()].tolist(), skip_special_tokens=False)
    count = text.count(image_token)
    return text.replace(image_token * count, f"{image_token}×{count}", 1) if count else text


def predict(
    model: torch.nn.Module,
    processor,
    examples: Sequence[Any],
    action_format,
    batch_size: int = 8,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> tuple[list[dict], str]:
    """Greedy answers for `examples`, parsed and scored: per-sample records and one prompt preview.

    Each record (see `score_sample`) also carries `resized_size`, the size the model saw, so the raw answer
    can be re-parsed later in scoring-only mode.
    """
    from eagle_align.data import GroundingCollator

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    collator = GroundingCollator(processor, action_format, system_prompt=system_prompt, inference=True)
    tokenizer = processor.tokenizer
    config = _greedy_config(model, max_new_tokens)
    stop_ids = _stop_ids(config, tokenizer)
    device = _device(model)
    records: list[dict] = []
    preview = ""
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(examples), batch_size)
        for start in tqdm(batches, desc="eval", unit="batch", disable=not progress, dynamic_ncols=True):
            batch = collator(list(examples[start : start + batch_size]))
            metas = batch.pop("meta")
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if start == 0:
                preview = prompt_preview(batch["input_ids"][0], batch["attention_mask"][0], tokenizer)
            with torch.no_grad():
                generated = model.generate(**inputs, generation_config=config)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :].cpu()
            for meta, tokens in zip(metas, new_tokens):
                answer = _decode(tokens, stop_ids, tokenizer)
                point = action_format.parse(answer, meta.image_size, meta.resized_size)
                record = score_sample(meta.example, point, answer)
                record["resized_size"] = [int(v) for v in meta.resized_size]
                records.append(record)
    finally:
        model.train(was_training)
    return records, preview


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _aggregate(rows: Sequence[dict]) -> dict:
    summary: dict[str, Any] = {"n": len(rows)}
    for key in (*ATTRIBUTION_KEYS, "forwards", "seconds"):
        summary[key] = _mean([float(r[key]) for r in rows])
    return summary


def summarize_attribution(rows: Sequence[dict], requested: int, settings_record: dict | None = None,
                          top_k: int = 3, records: Sequence[dict] | None = None) -> dict:
    """Attribution metrics overall and split by correct / incorrect clicks (means over attributed samples),
    with the settings used and where they came from (`resolve_attribution_settings`'s record: `settings`,
    `source`, `overrides`, `complete_ranking`) and the k of box-hit@k.

    `skipped` counts the requested samples without a click to explain; with the click `records` attribution
    chose from, it is split into wrong-format and out-of-range answers.
    """
    summary = {
        "overall": _aggregate(rows),
        "correct": _aggregate([r for r in rows if r["hit"]]),
        "incorrect": _aggregate([r for r in rows if not r["hit"]]),
        "requested": requested,
        "skipped": requested - len(rows),
    }
    if records is not None:
        first = records[:requested]
        summary["skipped_wrong_format"] = sum(bool(r.get("wrong_format")) for r in first)
        summary["skipped_out_of_range"] = sum(bool(r.get("out_of_range")) for r in first)
    return {**summary, **(settings_record or {}), "top_k": top_k}


def attribute_predictions(
    model: torch.nn.Module,
    processor,
    examples: Sequence[Any],
    records: Sequence[dict],
    action_format,
    n_samples: int,
    system_prompt: str | None = None,
    progress: bool = True,
    settings: AttributionSettings | Mapping[str, Any] | None = None,
    top_k: int = 3,
    batch_size: int = 16,
) -> tuple[list[dict], dict[int, Any]]:
    """Attribute the first `n_samples` answers, with the model's own answer as target.

    The target is the model's predicted click rendered in the action format (so its decision tokens are the
    coordinates the model chose); the box is the ground-truth box. Wrong-format answers have no click to
    explain and are skipped. `settings` are the attribution settings, chosen as `evaluate` chooses them
    (None or a mapping of overrides: what `model` recorded, else the library defaults, ranking every region;
    complete `AttributionSettings` as given), `top_k` the k of box-hit@k, `batch_size` the masked inputs
    per forward. Returns one metrics row per attributed sample and its `Attribution` by index.
    """
    from eagle_align.attribution import (
        RegionAttribution,
        box_hit_at_k,
        deletion_auc,
        insertion_auc,
        point_game,
    )
    from eagle_align.attribution.settings import resolve_attribution_settings
    from eagle_align.data import GroundingCollator

    settings = resolve_attribution_settings(model, settings)[0]
    attributor = RegionAttribution(model, settings, batch_size)
    box_overlap = settings.box_overlap
    collator = GroundingCollator(processor, action_format, system_prompt=system_prompt)
    device = _device(model)
    rows, attributions = [], {}
    chosen = [i for i in range(min(n_samples, len(records))) if records[i]["point"] is not None]
    for index in tqdm(chosen, desc="attribution", unit="sample", disable=not progress, dynamic_ncols=True):
        own = dataclasses.replace(examples[index], point=tuple(records[index]["point"]))
        batch = collator([own])
        mask = batch["meta"][0].box_mask
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        started = time.perf_counter()
        attribution = attributor.attribute(batch, [0])[0]
        rows.append({
            "index": index,
            "id": records[index]["id"],
            "hit": bool(records[index]["hit"]),
            "point_game": bool(point_game(attribution, mask, box_overlap=box_overlap)),
            "box_hit@k": float(box_hit_at_k(attribution, mask, k=top_k, box_overlap=box_overlap)),
            "insertion_auc": float(insertion_auc(attribution)),
            "deletion_auc": float(deletion_auc(attribution)),
            "forwards": int(attribution.forwards),
            "seconds": time.perf_counter() - started,
        })
        attributions[index] = attribution
    return rows, attributions


def evaluate(
    model: torch.nn.Module,
    processor,
    examples: Sequence[Any],
    action_format=None,
    batch_size: int = 8,
    limit: int | None = None,
    attribution_samples: int = 0,
    out_dir: str | Path | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
    attribution: AttributionSettings | Mapping[str, Any] | None = None,
    settings: dict | None = None,
    plots: bool = True,
    progress: bool = True,
    top_k: int = 3,
) -> dict:
    """Evaluate `model` on `examples`: click metrics, optional attribution metrics, and (with `out_dir`) the
    metrics.json / predictions.jsonl / report.md / PNG outputs. Returns the metrics dict.

    `attribution` decides how the first `attribution_samples` answers are attributed. None or a mapping of
    single settings: the settings `model` was trained with (recorded in its eagle_align.json, so the point
    game measures what training's `align/point_game` measured), else `AttributionSettings()`, with the
    mapping's entries overriding. Either way every region is ranked (max_regions None, unless the mapping
    sets it): insertion / deletion AUCs compare whole curves across models. Complete `AttributionSettings`
    are used as given. metrics["attribution"] records the settings, their source and the overrides.
    """
    from eagle_align.answer_formats import get_action_format
    from eagle_align.attribution.settings import resolve_attribution_settings
    from eagle_align.eval.report import versions, write_report
    from eagle_align.families import pixel_limits
    from eagle_align.families.space import model_action_format, model_system_prompt

    # Defaults: what the model was trained with (its eagle_align.json), else its family's own format.
    fmt = get_action_format(action_format) if action_format is not None else model_action_format(model)
    system_prompt = model_system_prompt(model, system_prompt)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be a positive number of samples")
        examples = examples[:limit]
    if not examples:
        raise ValueError("evaluate got no examples")
    records, preview = predict(model, processor, examples, fmt, batch_size, system_prompt, max_new_tokens, progress)
    metrics = summarize(records)
    attributions: dict[int, Any] = {}
    if attribution_samples > 0:
        chosen, settings_record = resolve_attribution_settings(model, attribution)
        rows, attributions = attribute_predictions(
            model, processor, examples, records, fmt, attribution_samples, system_prompt, progress=progress,
            settings=chosen, top_k=top_k,
        )
        metrics["attribution"] = summarize_attribution(rows, min(attribution_samples, len(records)),
                                                       settings_record, top_k, records=records)
    min_pixels, max_pixels = pixel_limits(processor)
    metrics["settings"] = {
        "action_format": fmt.name,
        "system_prompt": system_prompt,
        "prompt": preview,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "attribution_samples": attribution_samples,
        **(settings or {}),
    }
    metrics["versions"] = versions()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            metrics["plots"] = write_plots(metrics, records, examples, out, processor, attributions)
        write_report(metrics, records, out)
    return metrics


def write_plots(
    metrics: dict,
    records: Sequence[dict],
    examples: Sequence[Any] | None,
    out_dir: Path,
    processor=None,
    attributions: dict[int, Any] | None = None,
) -> dict[str, str]:
    """Accuracy bar chart, and (when the screenshots are at hand) a grid of hit and miss overlays.

    `examples[i]` belongs to `records[i]`. With a processor the screenshots are shown as the model saw them
    (resized); without one (scoring-only mode) at their original size.
    """
    from eagle_align.data.images import image_for_processor
    from eagle_align.eval.plots import open_image, overlay, pick_examples, plot_accuracy, plot_examples

    files = {"accuracy": plot_accuracy(metrics, out_dir / "accuracy.png").name}
    if examples:
        attributions = attributions or {}
        chosen = pick_examples(records, prefer=sorted(attributions))
        panels = []
        for i in chosen:
            image = image_for_processor(examples[i], processor) if processor is not None else open_image(examples[i])
            panels.append((overlay(image, records[i], attributions.get(i)), records[i]))
        if panels:
            files["examples"] = plot_examples(panels, out_dir / "examples.png").name
    return files
