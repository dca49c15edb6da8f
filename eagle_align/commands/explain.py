"""`eagle-align explain`."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from eagle_align.attribution.explain import check_bbox, check_instruction, explain
from eagle_align.attribution.settings import (
    add_attribution_arguments,
    attribution_overrides,
    check_attribution_flags,
)
from eagle_align.errors import UsageError


def explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base model: Hub id or local directory")
    parser.add_argument("--adapter", help="LoRA adapter directory (PEFT) to load on top of --model")
    parser.add_argument("--image", required=True, help="screenshot file (PNG/JPEG)")
    parser.add_argument("--instruction", required=True, help='e.g. "click the Save button"')
    parser.add_argument("--bbox", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                        help="target box in original pixels: adds point game / box-hit metrics")
    parser.add_argument("--answer", help="answer text to explain instead of the model's own greedy answer")
    parser.add_argument("--out", default="explain_out", help="output directory (default: explain_out)")
    parser.add_argument("--action-format", help="answer format (default: the adapter's recorded one, else the "
                        "model family's own)")
    add_attribution_arguments(parser)
    parser.add_argument("--stop-confidence", type=float, help="stop once P(x_S) reaches this (default: never)")
    parser.add_argument("--batch-size", type=int, default=16, help="masked variants per forward")
    parser.add_argument("--top-k", type=int, default=3, help="regions outlined and used for box-hit@k")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--min-pixels", type=int, help="screenshot resize bounds (default: the adapter's recorded "
                        "ones, else the checkpoint's)")
    parser.add_argument("--max-pixels", type=int)
    parser.add_argument("--system-prompt", help="default: the adapter's recorded one, else none")
    parser.add_argument("--force-coordinate-space", action="store_true",
                        help="use --action-format / --min-pixels / --max-pixels / --system-prompt even where they "
                        "contradict what the adapter recorded in eagle_align.json")
    parser.add_argument("--max-new-tokens", type=int, default=64)


def explain_command(args: argparse.Namespace) -> int:
    from eagle_align.answer_formats import format_point, get_action_format
    from eagle_align.families import load_model_and_processor
    from eagle_align.families.space import read_coordinate_space, settle

    check_instruction(args.instruction)
    if not Path(args.image).is_file():
        raise UsageError(f"--image {args.image}: "
                         + ("a directory, not an image file" if Path(args.image).is_dir() else "no such file"))
    if args.bbox is not None:
        with Image.open(args.image) as screenshot:
            check_bbox(args.bbox, screenshot.size)
    # The trained folder's record (eagle_align.json) decides answer syntax, prompt and pixel limits.
    source = args.adapter or args.model
    space = read_coordinate_space(source)
    prompt = settle(space, source, args.force_coordinate_space,
                    action_format=args.action_format, system_prompt=args.system_prompt)
    if prompt["action_format"] is not None:
        get_action_format(prompt["action_format"])  # before any weights load
    overrides = attribution_overrides(args)
    check_attribution_flags(space, overrides)  # the model's record is read again from the loaded model
    model, processor = load_model_and_processor(args.model, dtype=args.dtype, min_pixels=args.min_pixels,
                                                max_pixels=args.max_pixels, adapter=args.adapter,
                                                force_coordinate_space=args.force_coordinate_space)
    result = explain(  # a wrong-format answer is a UsageError: the CLI prints it with the expected template
        model, processor, args.image, args.instruction, bbox=args.bbox, answer=args.answer,
        action_format=prompt["action_format"], out_dir=args.out, attribution=overrides,
        stop_confidence=args.stop_confidence, batch_size=args.batch_size,
        top_k=args.top_k, system_prompt=prompt["system_prompt"], max_new_tokens=args.max_new_tokens,
    )
    attribution = result.attribution
    print(f"answer: {result.answer!r}  click: {format_point(result.click)}")
    print(f"top regions: {attribution.ranking[: args.top_k]}  P(x)={attribution.full_prob:.4f}  "
          f"forwards={attribution.forwards}  {attribution.seconds:.1f}s")
    print("metrics: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in result.metrics.items()))
    used = result.record["attribution_settings"]
    changed = ", ".join(f"{k}={v}" for k, v in used["overrides"].items())
    print(f"attribution settings: {used['source']}" + (f" (flags: {changed})" if changed else ""))
    print(f"wrote {result.paths['overlay']} and {result.paths['json']}")
    return 0
