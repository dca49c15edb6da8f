"""Adapters on the Hub: model card, push, and verified LoRA merge.

PEFT records `base_model` from `config._name_or_path`, which is a local path whenever the base was loaded from
disk; a card that points at `/scratch/models/...` is useless to whoever downloads the adapter. The card here
names the real Hub id and everything needed to reproduce the coordinate space (action format, pixel limits).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

logger = logging.getLogger(__name__)

CARD_TAGS = ["gui-agent", "grounding", "eagle-align", "lora"]


def is_local_path(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def resolve_base_model_id(model_name_or_path: str, base_model_id: str | None = None) -> str | None:
    """The Hub id to record as `base_model`: the explicit one, else the model name when it is not a local path."""
    if base_model_id:
        return base_model_id
    return None if is_local_path(model_name_or_path) else model_name_or_path


def build_model_card(
    base_model_id: str | None,
    action_format: str,
    min_pixels: int,
    max_pixels: int,
    training: dict[str, Any] | None = None,
    alignment: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    system_prompt: str | None = None,
) -> str:
    """Markdown model card with a YAML header the Hub understands."""
    header: dict[str, Any] = {
        "library_name": "peft",
        "pipeline_tag": "image-text-to-text",
        "tags": list(CARD_TAGS),
    }
    if base_model_id:
        header["base_model"] = base_model_id
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    title = f"LoRA adapter for {base_model_id}" if base_model_id else "LoRA adapter"
    lines += [
        f"# {title} (eagle-align)",
        "",
        "A GUI-grounding adapter (screenshot + instruction → click) trained with eagle-align. "
        + (
            "Prior-aligned training was on: every few steps EAGLE-style subset attribution ranked screenshot "
            "regions by how much the click's coordinate tokens relied on them, and deviation / redundancy losses "
            "pushed reliance back inside the target element's box."
            if alignment and alignment.get("alignment", True)
            else "Plain supervised fine-tuning (alignment off)."
        ),
        "",
        "## Coordinate space (needed to reproduce clicks)",
        "",
        f"- action format: `{action_format}`",
        f"- min_pixels: {min_pixels}, max_pixels: {max_pixels} (screenshots are resized with qwen-vl-utils "
        "`fetch_image` and these limits, then by the processor with the same limits)",
    ]
    if system_prompt:
        lines.append(f"- system prompt: `{system_prompt}`")
    for title_, section in (("Training settings", training), ("Alignment settings", alignment)):
        if section:
            lines += ["", f"## {title_}", "", "| setting | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in section.items()]
    if evaluation:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in evaluation.items()]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from peft import PeftModel",
        "from eagle_align.models import load_model_and_processor",
        f'model, processor = load_model_and_processor("{base_model_id or "BASE_MODEL"}", '
        f"min_pixels={min_pixels}, max_pixels={max_pixels})",
        'model = PeftModel.from_pretrained(model, "THIS_REPO")',
        "```",
        "",
    ]
    return "\n".join(lines)


def read_card_header(card_path: str | Path) -> dict[str, Any]:
    """Parse the YAML header of a model card."""
    text = Path(card_path).read_text()
    if not text.startswith("---"):
        raise ValueError(f"{card_path} has no YAML header")
    return yaml.safe_load(text.split("---", 2)[1]) or {}


def write_model_card(output_dir: str | Path, base_model_id: str | None, **card_fields: Any) -> Path:
    """Write README.md into an adapter directory and point adapter_config.json at the real base model id."""
    out = Path(output_dir)
    path = out / "README.md"
    path.write_text(build_model_card(base_model_id, **card_fields))
    adapter_config = out / "adapter_config.json"
    if base_model_id and adapter_config.is_file():
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = base_model_id
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


class PushError(RuntimeError):
    """Upload failed; the local adapter directory is untouched."""


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload eagle-align adapter",
    revision: str | None = None,
) -> str:
    """Upload an adapter directory (weights, processor, card) to `repo_id`; returns the commit URL.

    Checkpoint folders and files starting with "_" are left out, like the Trainer does.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an adapter directory (no adapter_config.json)")
    if (folder / "README.md").is_file():
        read_card_header(folder / "README.md")  # a broken card fails here, before anything is sent
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
        raise PushError(f"push of {folder} to {repo_id} failed ({err}); the local adapter is intact") from err
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


def merge_adapter(
    base: str,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Merge LoRA weights into the base model, save it, and verify the merge.

    Checks: every LoRA module's base weight changed by exactly its delta (modules with an all-zero delta are
    reported, not failed), the merged checkpoint reloads, and its logits equal base + adapter on a probe input.
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from eagle_align.models import load_model_and_processor
    from eagle_align.models.lora import lora_module_names

    model, processor = load_model_and_processor(base, dtype=dtype)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
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
    }
    (out / "merge_report.json").write_text(json.dumps(report, indent=2))
    return report


def push_arguments(parser) -> None:
    parser.add_argument("adapter_dir", help="directory written by `eagle-align train`")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="defaults to the cached login / HF_TOKEN")
    parser.add_argument("--commit-message", default="Upload eagle-align adapter")


def push_command(args) -> int:
    url = push_adapter(args.adapter_dir, args.repo_id, args.private, args.token, args.commit_message)
    print(f"pushed {args.adapter_dir} to {args.repo_id}: {url}")
    return 0


def merge_arguments(parser) -> None:
    parser.add_argument("--base", required=True, help="base model Hub id or directory")
    parser.add_argument("--adapter", required=True, help="LoRA adapter directory or Hub id")
    parser.add_argument("--out", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="float32", help="dtype to merge and save in (float32, bfloat16)")


def merge_command(args) -> int:
    report = merge_adapter(args.base, args.adapter, args.out, args.dtype)
    print(
        f"merged {report['merged_modules']} LoRA modules into {report['out_dir']} "
        f"(max logit diff vs base+adapter {report['max_logit_diff']:.2e})"
    )
    return 0
