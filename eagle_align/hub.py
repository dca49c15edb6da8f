"""Trained folders on the Hub: model card, push, and verified LoRA merge.

PEFT records `base_model` from `config._name_or_path`, which is a local path whenever the base was loaded from
disk; a card that points at `/scratch/models/...` is useless to whoever downloads the adapter. The card here
(`huggingface_hub.ModelCard`, validated metadata) names the real Hub id, the coordinate space that
`eagle_align.json` records (action format, pixel limits, prompt) and what alignment actually did.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData

from eagle_align.errors import UsageError
from eagle_align.families.space import COORDINATE_SPACE_FILE, CoordinateSpace

logger = logging.getLogger(__name__)

CARD_TAGS = ["gui-agent", "grounding", "eagle-align"]
CARD_FILE = "README.md"


def is_local_path(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def resolve_base_model_id(model_name_or_path: str, base_model_id: str | None = None) -> str | None:
    """The Hub id to record as `base_model`: the explicit one, else the model name when it is not a local path."""
    if base_model_id:
        return base_model_id
    return None if is_local_path(model_name_or_path) else model_name_or_path


def _what(space: CoordinateSpace) -> str:
    base = space.base_model_id or "its base model"
    if space.merged_from:
        return f"{base} with an eagle-align LoRA adapter merged into its weights"
    if space.is_adapter:
        return f"{'QLoRA' if space.finetuning == 'qlora' else 'LoRA'} adapter for {base}"
    return f"{base}, fully fine-tuned"


def _alignment_summary(alignment: dict[str, Any] | None, totals: dict[str, float] | None) -> str:
    """What alignment did, from its counters: the card claims no correction that did not happen."""
    if not alignment or not alignment.get("alignment", True):
        return "Plain supervised fine-tuning (alignment off)."
    totals = totals or {}
    steps, selected = int(totals.get("alignment_steps", 0)), int(totals.get("selected", 0))
    n_dev, n_red = int(totals.get("deviation_examples", 0)), int(totals.get("redundancy_examples", 0))
    if steps == 0:
        return "Prior alignment was enabled, but no alignment step ran (the run ended before the first one)."
    done = (f"Prior alignment ran on {steps} steps: EAGLE-style subset attribution ranked the screenshot regions "
            f"that the click's coordinate tokens of {selected} selected samples relied on")
    if n_dev + n_red == 0:
        return done + "; none relied on evidence outside the target's box, so no alignment loss was applied."
    return (done + f", and {n_dev} deviation / {n_red} redundancy examples penalised reliance outside the "
            "target element's box.")


def _system_prompt_note(space: CoordinateSpace) -> str:
    """The system prompt, or what the chat template adds when none is given (Qwen2/2.5-VL's add one)."""
    if space.system_prompt:
        return f"`{space.system_prompt}`"
    from eagle_align.families.registry import FAMILIES

    family = FAMILIES.get(space.family)
    if family is None:
        return "none"
    if family.template_system_prompt:
        return f"none (the chat template's default: {family.template_system_prompt})"
    return "none (the chat template adds none)"


def _table(title: str, section: dict[str, Any] | None, column: str = "setting") -> list[str]:
    if not section:
        return []
    return ["", f"## {title}", "", f"| {column} | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in section.items())]


def _usage(space: CoordinateSpace) -> list[str]:
    if space.is_adapter:
        load = f'load_model_and_processor("{space.base_model_id or "BASE_MODEL"}", adapter="THIS_REPO")'
        plain = [
            "",
            "Without eagle-align, apply the adapter with PEFT; the processor saved here has the pixel limits above:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            f'base = AutoModelForImageTextToText.from_pretrained("{space.base_model_id or "BASE_MODEL"}")',
            'model = PeftModel.from_pretrained(base, "THIS_REPO")',
            'processor = AutoProcessor.from_pretrained("THIS_REPO")',
            "```",
        ]
    else:
        load = 'load_model_and_processor("THIS_REPO")'
        plain = [
            "",
            "Without eagle-align: `AutoModelForImageTextToText.from_pretrained(\"THIS_REPO\")` and "
            "`AutoProcessor.from_pretrained(\"THIS_REPO\")` (saved with the limits above).",
        ]
    return [
        "",
        "## Usage",
        "",
        "```python",
        "from eagle_align.families import load_model_and_processor",
        f"model, processor = {load}  # pixel limits from eagle_align.json",
        "```",
        *plain,
        "",
    ]


def build_model_card(
    space: CoordinateSpace,
    training: dict[str, Any] | None = None,
    alignment: dict[str, Any] | None = None,
    alignment_totals: dict[str, float] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> ModelCard:
    """The Hub model card: validated metadata (`ModelCardData`), the coordinate space, settings and results."""
    data = ModelCardData(
        base_model=space.base_model_id,
        library_name="peft" if space.is_adapter else "transformers",
        pipeline_tag="image-text-to-text",
        tags=[*CARD_TAGS, *(["lora"] if space.is_adapter or space.merged_from else []), space.finetuning],
    )
    lines = [
        f"# {_what(space)} (eagle-align)",
        "",
        "A GUI-grounding model (screenshot + instruction → click) trained with eagle-align. "
        + _alignment_summary(alignment, alignment_totals),
        "",
        "## Coordinate space (needed to reproduce clicks)",
        "",
        f"- model family: `{space.family}`; action format: `{space.action_format}`",
        f"- min_pixels: {space.min_pixels}, max_pixels: {space.max_pixels} (screenshots are resized into these "
        "limits before the model sees them; absolute-pixel answers refer to the resized image)",
        f"- system prompt: {_system_prompt_note(space)}",
        f"- recorded in `{COORDINATE_SPACE_FILE}`, which `eagle-align eval`, `explain` and `merge` read",
    ]
    if space.merged_from:
        lines.append(f"- merged from the adapter `{space.merged_from}`")
    lines += _table("Training settings", training)
    lines += _table("Alignment settings", alignment)
    if alignment and alignment.get("alignment", True) and alignment_totals:
        # Every counter the run kept (alignment_state.json), as the trainer's policies named them.
        totals = {k: int(v) for k, v in alignment_totals.items() if k != "last_aligned_step"}
        lines += _table("Alignment totals", totals, "count")
    lines += _table("Evaluation", evaluation, "metric")
    lines += _usage(space)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def read_card_header(card_path: str | Path) -> dict[str, Any]:
    """The metadata of a model card (its YAML header), as the Hub reads it."""
    text = Path(card_path).read_text()
    if not text.startswith("---"):
        raise ValueError(f"{card_path} has no YAML header")
    return ModelCard(text).data.to_dict()


def write_model_card(output_dir: str | Path, space: CoordinateSpace, **sections: Any) -> Path:
    """Write README.md into a trained folder; an adapter's config is pointed at the real base model id."""
    out = Path(output_dir)
    path = out / CARD_FILE
    build_model_card(space, **sections).save(path)
    adapter_config = out / "adapter_config.json"
    if space.base_model_id and adapter_config.is_file():
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = space.base_model_id
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


class PushError(UsageError, RuntimeError):
    """Upload failed; the local folder is untouched. One line on the command line (exit 2), like bad input:
    nothing to debug in eagle-align, and the user's next step is to retry once the Hub is reachable."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_hub_reachable(token: str | None = None) -> None:
    """Fail in one line when the Hub cannot be reached: offline mode (HF_HUB_OFFLINE=1), no connection, or a
    token the Hub refuses; asks the Hub who the token belongs to, the cheapest authenticated call."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise UsageError("pushing needs the Hub, but HF_HUB_OFFLINE=1 (offline mode) is set",
                         hint="unset HF_HUB_OFFLINE to push, or leave push_to_hub out and run `eagle-align push` later")
    try:
        HfApi(token=token).whoami()
    except Exception as error:  # no connection, DNS, proxy, refused token: the message says which
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise UsageError(f"the Hub refused the token ({status}): {_first_line(error)}",
                             hint="run `hf auth login` or set HF_TOKEN to a token with write access") from None
        raise UsageError(f"the Hub cannot be reached: {_first_line(error)}",
                         hint="check the connection (or HF_ENDPOINT), or push later with `eagle-align push`") from None


def check_push_ready(repo_id: str | None, token: str | None = None) -> None:
    """Fail before any work when a push could not start: a valid repo id, a token, and a Hub that answers
    (not offline, reachable, and accepting the token).

    Whether the token may write to this repo only the upload itself can tell.
    """
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise UsageError("pushing needs a repo id", hint="set hub_model_id (train) or --repo-id (push) to namespace/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"repo id {repo_id!r} is not valid: {error}", hint="use namespace/name") from None
    if not (token or get_token()):
        raise UsageError(f"pushing to {repo_id} needs a Hub token, and none is set",
                         hint="run `hf auth login`, set HF_TOKEN, or pass hub_token / --token")
    check_hub_reachable(token)


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload eagle-align adapter",
    revision: str | None = None,
) -> str:
    """Upload a trained folder (LoRA adapter, full fine-tune or merged model: weights, processor, card) to
    `repo_id`; returns the commit URL.

    Checkpoint folders and files starting with "_" are left out, like the Trainer does.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(adapter_dir)
    if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
        raise FileNotFoundError(f"{folder} is not a trained folder (no adapter_config.json or config.json)")
    check_push_ready(repo_id, token)
    if (folder / CARD_FILE).is_file():
        read_card_header(folder / CARD_FILE)  # a broken card fails here, before anything is sent
    else:
        logger.warning("%s has no model card (README.md); pushing without one", folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(("_", "checkpoint-")) for part in p.relative_to(folder).parts)
    )
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    except Exception as err:  # network, auth, quota: the local files stay where they are
        raise PushError(f"push of {folder} to {repo_id} failed ({_first_line(err)}); the local folder {folder} is "
                        "intact", hint=f"retry with `eagle-align push {folder} --repo-id {repo_id}`") from err
    return str(getattr(info, "commit_url", info))


def _probe_inputs(processor) -> dict[str, torch.Tensor]:
    """A small deterministic screenshot + instruction + answer for logit comparisons."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (112, 168, 3), generator=g, dtype=torch.uint8).numpy()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "click the Save button"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "(120, 340)"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    return processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt")


def merged_coordinate_space(peft_model, processor, base: str, adapter: str) -> CoordinateSpace:
    """The adapter's recorded space, marked as merged; for an adapter without a record, what merge used."""
    from eagle_align.families import coordinate_space_of, family_of, pixel_limits

    space = coordinate_space_of(peft_model)
    if space is None:
        family = family_of(peft_model)
        min_pixels, max_pixels = pixel_limits(processor)
        logger.warning("%s records no coordinate space; the merged model gets the base's limits and %s's format",
                       adapter, family.name)
        space = CoordinateSpace(family.name, family.default_action_format, min_pixels, max_pixels,
                                base_model_id=resolve_base_model_id(base))
    return dataclasses.replace(space, merged_from=adapter)


def merged_model_card(space: CoordinateSpace, adapter_card: Path) -> ModelCard:
    """The adapter's card (its settings, alignment totals and evaluation) retitled and re-headed for the merged
    weights, with their own usage; a fresh card when the adapter has none."""
    fresh = build_model_card(space)
    if not adapter_card.is_file():
        return fresh
    body = ModelCard(adapter_card.read_text()).text.split("\n## Usage", 1)[0]
    kept = [line for line in body.strip().splitlines() if not line.startswith("# ")]
    title = fresh.text.strip().splitlines()[0]
    usage = "\n## Usage" + fresh.text.split("\n## Usage", 1)[1]
    note = f"The LoRA adapter `{space.merged_from}`, merged into its base model's weights."
    merged = "\n".join([title, "", note, *kept, usage.rstrip(), ""])
    return ModelCard(f"---\n{fresh.data.to_yaml()}\n---\n\n{merged}")


def merge_adapter(
    base: str,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Merge LoRA weights into the base model, save it with the adapter's coordinate space and card, and verify.

    Checks: every LoRA module's base weight changed by exactly its delta (modules with an all-zero delta are
    reported, not failed), the merged checkpoint reloads, and its logits equal base + adapter on a probe input.
    The processor is saved with the adapter's pixel limits (eagle_align.json), not the base's.
    """
    from transformers import AutoModelForImageTextToText

    from eagle_align.families import load_model_and_processor
    from eagle_align.families.lora import lora_module_names

    peft_model, processor = load_model_and_processor(base, dtype=dtype, adapter=str(adapter_dir))
    peft_model.eval()
    space = merged_coordinate_space(peft_model, processor, base, str(adapter_dir))
    probe = _probe_inputs(processor)
    with torch.no_grad():
        expected = peft_model(**probe).logits.float()
    modules = dict(peft_model.named_modules())
    before, deltas = {}, {}
    for name in lora_module_names(peft_model):
        layer = modules[name]
        before[name] = layer.base_layer.weight.detach().clone()
        deltas[name] = layer.get_delta_weight(layer.active_adapters[0]).detach()
    merged = peft_model.merge_and_unload()
    merged_modules = dict(merged.named_modules())
    not_merged, zero_delta = [], []
    for name, weight in before.items():
        merged_name = name.removeprefix("base_model.model.")
        after = merged_modules[merged_name].weight.detach()
        if torch.count_nonzero(deltas[name]) == 0:
            zero_delta.append(merged_name)
        elif not torch.allclose(after, weight + deltas[name], atol=1e-5) or torch.equal(after, weight):
            not_merged.append(merged_name)
    if not_merged:
        raise RuntimeError(f"LoRA merge incomplete: weights unchanged or wrong in {not_merged}")
    out = Path(out_dir)
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    space.save(out)
    merged_model_card(space, Path(adapter_dir) / CARD_FILE).save(out / CARD_FILE)
    reloaded = AutoModelForImageTextToText.from_pretrained(out, dtype=merged.dtype).eval()
    with torch.no_grad():
        got = reloaded(**probe).logits.float()
    max_diff = (got - expected).abs().max().item()
    if max_diff > atol:
        raise RuntimeError(f"merged model at {out} differs from base+adapter (max logit diff {max_diff:.2e})")
    report = {
        "merged_modules": len(before) - len(zero_delta),
        "zero_delta_modules": zero_delta,
        "max_logit_diff": max_diff,
        "out_dir": str(out),
        "min_pixels": space.min_pixels,
        "max_pixels": space.max_pixels,
    }
    (out / "merge_report.json").write_text(json.dumps(report, indent=2))
    return report
