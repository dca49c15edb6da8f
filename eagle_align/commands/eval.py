"""`eagle-align eval`: evaluate a model (optionally with a LoRA adapter) on a grounding benchmark, or score a
predictions file produced elsewhere with the same metrics and reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from eagle_align.attribution.settings import (
    add_attribution_arguments,
    attribution_overrides,
    check_attribution_flags,
)
from eagle_align.data.loaders import BBOX_FORMATS
from eagle_align.eval.report import headline, read_predictions, versions, write_report
from eagle_align.eval.scoring import score_sample, summarize


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="Hub id or local directory of the base model (generation mode)")
    what.add_argument("--predictions", help="JSONL of predictions to score (scoring-only mode): one line per "
                      "sample with `id` and either `point` [x, y] in original pixels or `answer` + "
                      "`action_format` (+ `resized_size` [W, H] for formats in resized pixels: qwen2_5_vl)")
    parser.add_argument("--adapter", help="LoRA adapter directory to load onto --model")
    parser.add_argument("--data", required=True, help="benchmark or dataset: any source `load_examples` accepts")
    parser.add_argument("--data-format", default="auto", help="loader format (default: detect)")
    parser.add_argument("--split", help="evaluate only this split (comma-separated splits) of a source that has "
                        "several (default: all)")
    parser.add_argument("--image-root", help="folder holding the screenshots, if not where the benchmark ships them")
    parser.add_argument("--bbox-format", choices=BBOX_FORMATS,
                        help="box convention of --data records that state none: xyxy, xywh (pixels), _norm (0-1), "
                        "_1000 (0-1000); default: decided from the file, refused where it cannot be")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="invalid records: stop (default) or skip them and report the count")
    parser.add_argument("--out", required=True, help="output directory for metrics.json, predictions.jsonl, report.md, PNGs")
    parser.add_argument("--score-subset", action="store_true",
                        help="scoring-only mode: score only the examples that have a prediction (the headline says "
                        "'on N of M samples'); by default an example without a prediction is a miss, as benchmark "
                        "harnesses score it")
    parser.add_argument("--action-format", help="answer syntax (default: the adapter's recorded one, else the model "
                        "family's own; in scoring-only mode, the format of lines that do not name one)")
    parser.add_argument("--min-pixels", type=int, help="processor min_pixels (default: the adapter's recorded "
                        "value, else the checkpoint's)")
    parser.add_argument("--max-pixels", type=int, help="processor max_pixels (default: the adapter's recorded "
                        "value, else the checkpoint's)")
    parser.add_argument("--system-prompt", help="system prompt given to the model (default: the adapter's "
                        "recorded one, else none)")
    parser.add_argument("--force-coordinate-space", action="store_true",
                        help="use --action-format / --min-pixels / --max-pixels / --system-prompt even where they "
                        "contradict what the adapter recorded in eagle_align.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="evaluate only the first K samples")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    parser.add_argument("--device", default=None, help="device for the model (default: cuda if available, else cpu)")
    parser.add_argument("--attribution-samples", type=int, default=0,
                        help="attribute the first K samples' answers (point game, box-hit@k, AUCs) with the "
                        "attribution settings the model recorded in eagle_align.json (else the training "
                        "defaults), ranking every region; the flags below override single settings")
    add_attribution_arguments(parser)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def _prediction_point(line: dict, where: str, example: Any, default_format: str | None):
    """The click of one predictions line in original pixels (None = unparseable answer: wrong format).

    Relative formats need only the original size; formats in resized pixels also need the line's `resized_size`.
    A line of eagle-align's own predictions.jsonl whose answer was out of range has `point: null` and its
    coordinates in `raw_point`: it re-scores as out of range.
    """
    from eagle_align.answer_formats import get_action_format
    from eagle_align.data import DataError

    if "point" in line:
        point = line["point"]
        if point is None and line.get("out_of_range") and line.get("raw_point") is not None:
            point = line["raw_point"]
        if point is None:
            return None
        if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(isinstance(v, (int, float)) for v in point)):
            raise DataError(f"{where}: `point` must be [x, y] numbers in original pixels, got {point!r}")
        return tuple(float(v) for v in point)
    if "answer" not in line:
        raise DataError(f"{where}: needs `point` or `answer` (+ `action_format` and `resized_size`)")
    fmt_name = line.get("action_format") or default_format
    if fmt_name is None:
        raise DataError(f"{where}: `answer` given without `action_format` (or pass --action-format)")
    try:
        fmt = get_action_format(fmt_name)
    except ValueError as error:
        raise DataError(f"{where}: {error}") from None
    resized = line.get("resized_size")
    if fmt.space == "relative":
        resized = example.image_size  # relative answers do not depend on the size the model saw
    elif not (isinstance(resized, (list, tuple)) and len(resized) == 2
              and all(isinstance(v, (int, float)) and v > 0 for v in resized)):
        raise DataError(f"{where}: action_format {fmt.name} answers in pixels of the resized image, so the line "
                        f"needs `resized_size` [W, H] of the image the model saw, got {resized!r}")
    answer = line["answer"]
    if not isinstance(answer, str):
        return None  # null or a non-text answer: nothing to parse, a wrong-format miss
    return fmt.parse(answer, tuple(example.image_size), (int(resized[0]), int(resized[1])))


def score_file(predictions_path: str | Path, examples, default_format: str | None = None) -> tuple[list[dict], list, int]:
    """Records for a predictions file against `examples`: (records, their examples, examples without a line).

    Unknown or repeated ids are errors (they mean the file belongs to other data); examples without a
    prediction (no line, or a line marked `missing` by an earlier scoring) are counted here, not scored: the
    caller decides whether they are misses or left out of a subset.
    """
    from eagle_align.data import DataError

    by_id = {ex.id: ex for ex in examples}
    records, used, seen = [], [], set()
    for number, line in enumerate(read_predictions(predictions_path), 1):
        if "id" not in line:
            raise DataError(f"{predictions_path}: line {number} has no `id`")
        key = str(line["id"])
        if key not in by_id:
            raise DataError(f"{predictions_path}: line {number}: id {key!r} is not an example of the data")
        if key in seen:
            raise DataError(f"{predictions_path}: line {number}: id {key!r} appears twice")
        seen.add(key)
        if line.get("missing") is True:
            continue
        example = by_id[key]
        where = f"{predictions_path}: line {number} (id {key!r})"
        record = score_sample(example, _prediction_point(line, where, example, default_format), line.get("answer"))
        if "resized_size" in line:
            record["resized_size"] = line["resized_size"]
        records.append(record)
        used.append(example)
    return records, used, len(examples) - len(records)


def _score_only(args, examples) -> dict:
    from eagle_align.eval.harness import write_plots
    from eagle_align.eval.scoring import missing_record

    records, used, missing = score_file(args.predictions, examples, args.action_format)
    if missing and args.score_subset:
        print(f"warning: {missing} of {len(examples)} examples have no prediction; scoring the other "
              f"{len(records)} as a subset (--score-subset)", file=sys.stderr)
    elif missing:
        print(f"warning: {missing} of {len(examples)} examples have no prediction; each is scored as a miss "
              "(--score-subset scores only the predicted ones)", file=sys.stderr)
        scored = {r["id"] for r in records}
        absent = [ex for ex in examples if str(ex.id) not in scored]
        records, used = records + [missing_record(ex) for ex in absent], list(used) + absent
    metrics = summarize(records)
    metrics["missing_predictions"] = missing
    metrics["examples"] = len(examples)
    metrics["scored_subset"] = bool(args.score_subset and missing)
    metrics["settings"] = {"mode": "score_only", "predictions": str(args.predictions), "data": args.data,
                           "action_format": args.action_format, "score_subset": args.score_subset}
    metrics["versions"] = versions()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        metrics["plots"] = write_plots(metrics, records, used, out)
    write_report(metrics, records, out)
    return metrics


def _generate(args, examples) -> dict:
    import torch

    from eagle_align.answer_formats import get_action_format
    from eagle_align.eval.harness import evaluate
    from eagle_align.families import load_model_and_processor
    from eagle_align.families.space import read_coordinate_space, settle

    # The trained folder's record (eagle_align.json) decides the answer syntax, prompt and pixel limits;
    # contradicting options fail here, before any weights load.
    source = args.adapter or args.model
    space = read_coordinate_space(source)
    prompt = settle(space, source, args.force_coordinate_space, action_format=args.action_format,
                    system_prompt=args.system_prompt)
    if prompt["action_format"] is not None:
        get_action_format(prompt["action_format"])
    overrides = attribution_overrides(args)
    check_attribution_flags(space, overrides)  # the model's record is read again from the loaded model
    model, processor = load_model_and_processor(
        args.model, dtype=args.dtype, min_pixels=args.min_pixels, max_pixels=args.max_pixels, adapter=args.adapter,
        force_coordinate_space=args.force_coordinate_space,
    )
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return evaluate(
        model, processor, examples, action_format=prompt["action_format"], batch_size=args.batch_size,
        limit=args.limit, attribution_samples=args.attribution_samples, out_dir=args.out,
        system_prompt=prompt["system_prompt"], max_new_tokens=args.max_new_tokens,
        attribution=overrides, plots=not args.no_plots,
        settings={"model": args.model, "adapter": args.adapter, "data": args.data, "dtype": args.dtype,
                  "coordinate_space": "recorded" if space else "defaults",
                  "force_coordinate_space": args.force_coordinate_space},
    )


def eval_command(args: argparse.Namespace) -> int:
    from eagle_align.answer_formats import get_action_format
    from eagle_align.data import load_examples
    from eagle_align.errors import UsageError

    for option in ("batch_size", "limit", "max_new_tokens", "min_pixels", "max_pixels"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be positive, got {value}")
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        raise UsageError(f"--min-pixels {args.min_pixels} exceeds --max-pixels {args.max_pixels}")
    if args.attribution_samples < 0:
        raise UsageError(f"--attribution-samples must be ≥ 0, got {args.attribution_samples}")
    if args.action_format is not None:
        get_action_format(args.action_format)  # before any data or model is loaded
    examples = load_examples(args.data, format=args.data_format, image_root=args.image_root, on_error=args.on_error,
                             split=args.split, bbox_format=args.bbox_format, require_box=True)
    if getattr(examples, "skipped", 0):
        print(f"warning: skipped {examples.skipped} invalid records of {args.data}", file=sys.stderr)
    if args.score_subset and not args.predictions:
        raise UsageError("--score-subset applies to scoring a predictions file (--predictions), not to --model")
    metrics = _score_only(args, examples) if args.predictions else _generate(args, examples)
    line = headline(metrics)
    point_game = (metrics.get("attribution") or {}).get("overall", {}).get("point_game")
    if point_game is not None:
        line += f"; point game {point_game:.3f}"
    print(f"{line} -> {args.out}")
    if metrics.get("attribution"):
        print(attribution_line(metrics["attribution"]))
    return 0


def attribution_line(attribution: dict) -> str:
    """How many samples attribution explained and, for those it skipped, why (they have no click to explain)."""
    requested, done = attribution.get("requested", 0), attribution["overall"]["n"]
    line = f"attribution: {done} of {requested} sample{'' if requested == 1 else 's'}"
    skipped = requested - done
    if skipped:
        reasons = []
        for key, words in (("skipped_wrong_format", "in the wrong format"), ("skipped_out_of_range", "out of range")):
            count = attribution.get(key, 0)
            if count:
                reasons.append(f"{count} answer{'' if count == 1 else 's'} {words}")
        line += f" ({', '.join(reasons) or f'{skipped} without a click'}: nothing to attribute)"
    return line
