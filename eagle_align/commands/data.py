"""`eagle-align data validate SOURCE`, `eagle-align data convert SRC --to jsonl --out FILE` and
`eagle-align data synth --out DIR ...`."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from eagle_align.answer_formats import ACTION_FORMATS
    from eagle_align.data.loaders import BBOX_FORMATS, FORMATS
    from eagle_align.data.synth import (
        CUE_COLOURS,
        DISTRACTOR_COLOURS,
        DISTRACTOR_SHAPES,
        LAYOUTS,
        PRESETS,
        RELATIONS,
        SHORTCUTS,
        SPLITS,
        TARGET_COLOURS,
    )

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="Load a dataset, decode every image, print counts per split and "
                              "every problem found (exit status 1 when there is one).")
    convert = sub.add_parser("convert", help="Write eagle-align JSONL from any source `data validate` reads "
                             "(LLaMA-Factory / ShareGPT, JSON lists, HF datasets, ScreenSpot layouts).")
    for command in (validate, convert):
        command.add_argument("source", help="JSONL/JSON file or folder, LLaMA-Factory / ShareGPT JSON(L), HF "
                             "datasets dir or parquet/arrow file, or a ScreenSpot(-v2/-Pro) folder")
        command.add_argument("--format", default="auto", choices=FORMATS)
        command.add_argument("--image-root", default=None, help="folder holding the images, if not the layout's own")
        command.add_argument("--bbox-format", default=None, choices=BBOX_FORMATS,
                             help="box convention of records that do not state one (points follow their box): "
                             "pixels, _norm fractions 0-1 or _1000 of the image; default: decided from the file")
        command.add_argument("--action-format", default=None, choices=sorted(ACTION_FORMATS),
                             help="LLaMA-Factory / ShareGPT: syntax and coordinate space of the assistant answers")
        command.add_argument("--columns", default=None,
                             help="map column names onto eagle-align's: FIELD=COLUMN,... "
                             "e.g. image=screenshot,instruction=query")
        command.add_argument("--split", default=None,
                             help="only this split (comma-separated splits) of a source that has several")
    validate.add_argument("--fast", action="store_true",
                          help="read image headers only (sizes), without decoding: misses truncated files")
    convert.add_argument("--to", required=True, choices=("jsonl",), help="output format")
    convert.add_argument("--out", required=True, help="output file; in-memory images go to <out stem>_images/")
    convert.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    convert.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                         help="stop at the first bad record (default) or leave bad records out and list them")
    synth = sub.add_parser("synth", help="Write synthetic GUI screenshots + JSONL with an optional spurious cue.")
    synth.add_argument("--out", required=True, help="output directory (gets SPLIT.jsonl and images/)")
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--preset", default="shortcut", choices=PRESETS)
    synth.add_argument("--split", default="train", choices=SPLITS,
                       help="train/test: cue beside the target; shifted: cue beside a distractor")
    synth.add_argument("--cue-fraction", type=float, default=0.0, help="share of samples showing the cue")
    synth.add_argument("--difficulty", type=int, default=1, help="1 = easiest (learnable by tiny CPU models)")
    synth.add_argument("--layout", default="mixed", choices=LAYOUTS, help="gui preset: screen layout")
    synth.add_argument("--cue-relation", default=None, choices=RELATIONS,
                       help="where the cue sits relative to its element (default: preset's own)")
    synth.add_argument("--cue-colour", default=None, choices=sorted(CUE_COLOURS),
                       help="colour of the cue (default: preset's own: shortcut white, gui magenta)")
    synth.add_argument("--cue-size", type=int, default=None,
                       help="shortcut preset: cue side in pixels (default 16 at difficulty 1, at most 32 there)")
    synth.add_argument("--distractor-colour", default="blue", choices=list(DISTRACTOR_COLOURS),
                       help="shortcut preset: colour of the non-target squares (default blue; red needs "
                            "--distractor-shape circle or diamond)")
    synth.add_argument("--target-colour", default="red", choices=list(TARGET_COLOURS),
                       help="shortcut preset: colour of the target square, named by the instruction (default red)")
    synth.add_argument("--distractor-shape", default="square", choices=list(DISTRACTOR_SHAPES),
                       help="shortcut preset: shape of the non-target items (default square, like the target)")
    synth.add_argument("--square-size", type=int, default=None,
                       help="shortcut preset: side of every square in pixels (default half a slot, 64 at difficulty 1)")
    synth.add_argument("--unmarked-target-fraction", type=float, default=0.0,
                       help="shortcut preset: share of screens whose target is drawn like the distractors, so only "
                            "the cue marks it (default 0)")
    synth.add_argument("--empty-slot-fraction", type=float, default=0.0,
                       help="shortcut preset: share of distractor slots left without a square, so the target is not "
                            "found by elimination (default 0)")
    synth.add_argument("--decoy-fraction", type=float, default=0.0,
                       help="shortcut preset: share of screens with a second red square, told apart from the target "
                            "only by the cue (default 0)")
    synth.add_argument("--shortcut", default="adjacent", choices=SHORTCUTS,
                       help="shortcut preset: what the cue is: adjacent (a square beside the element, default), "
                            "title_bar (a band whose colour names the slot), count (slot + 1 dots in the bottom-left "
                            "corner), position_prior (no mark; the target usually in the top-left slot)")


def data_command(args: argparse.Namespace) -> int:
    from eagle_align.errors import UsageError

    if args.data_command == "synth":
        from eagle_align.data.synth import generate_synthetic

        changed = [f"--{name.replace('_', '-')}" for name in ("cue_colour", "cue_size", "cue_relation")
                   if getattr(args, name) is not None]
        if changed and args.cue_fraction == 0:
            raise UsageError(f"{', '.join(changed)} without --cue-fraction draws no cue; pass --cue-fraction "
                             "(the share of samples showing the cue, e.g. 1.0)")
        path = generate_synthetic(args.out, args.n, seed=args.seed, preset=args.preset, cue_fraction=args.cue_fraction,
                                  split=args.split, difficulty=args.difficulty, layout=args.layout,
                                  cue_relation=args.cue_relation, cue_colour=args.cue_colour, cue_size=args.cue_size,
                                  distractor_colour=args.distractor_colour, square_size=args.square_size,
                                  unmarked_target_fraction=args.unmarked_target_fraction,
                                  empty_slot_fraction=args.empty_slot_fraction, decoy_fraction=args.decoy_fraction,
                                  distractor_shape=args.distractor_shape, shortcut=args.shortcut,
                                  target_colour=args.target_colour)
        print(f"wrote {args.n} {args.preset} samples ({args.split}) to {path}")
        return 0
    from eagle_align.data.importers import check_columns, write_jsonl
    from eagle_align.data.loaders import load_examples

    columns = check_columns(args.columns, "--columns")
    if args.data_command == "convert":
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
        examples = load_examples(args.source, format=args.format, image_root=args.image_root, on_error=args.on_error,
                                 bbox_format=args.bbox_format, split=args.split, action_format=args.action_format,
                                 columns=columns)
        write_jsonl(examples, out)
        print(f"wrote {len(examples)} examples ({examples.point_only} point-only) to {out}"
              + (f"; left out {examples.skipped} bad records:" if examples.skipped else ""))
        for problem in examples.problems:
            print(f"PROBLEM {problem}")
        return 0
    examples = load_examples(args.source, format=args.format, image_root=args.image_root, on_error="skip",
                             bbox_format=args.bbox_format, split=args.split, decode_images=not args.fast,
                             action_format=args.action_format, columns=columns)
    print(f"{args.source}: {len(examples)} valid examples, {examples.skipped} skipped")
    print(f"  point_only: {examples.point_only} (a click point but no box: trained without alignment)")
    for split, count in sorted(examples.by_split().items()):
        print(f"  split {split}: {count}")
    for name in ("platform", "ui_type"):
        counts = Counter(str(getattr(ex, name)) for ex in examples)
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for problem in examples.problems:
        print(f"PROBLEM {problem}")
    return 1 if examples.problems else 0
