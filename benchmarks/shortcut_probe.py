"""Does plain SFT take the cue? The demo's SFT run under other benchmark settings (cue colour and size, distractor
colour, unmarked targets, empty slots, decoys, training cue fraction, pixel budget, schedule), scored on the iid,
shifted and cue-free splits.

Same checkpoint builder, recipe, seed, data sizes and pixel limits as `eagle-align demo --family F`, but only the
SFT model, so one setting costs 3–7 minutes on 2 CPU cores. A shifted click accuracy well below the iid one
means SFT follows the cue; 100 / 100 means the cue was ignored (nothing for alignment to remove). The cue-free
split (the test screens' generator with no cue at all) tells the two kinds of shortcut apart: near 100 % the model
also knows the target and the cue only wins when the two disagree; near chance (25 %) it learned nothing but the cue.
`method_comparison/history.md` records the settings measured so far (under older defaults).

    python benchmarks/shortcut_probe.py --family qwen2_5_vl --seed 0 --cue-colour cyan --distractor-colour orange

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from eagle_align.data import load_examples
from eagle_align.data.synth import CUE_COLOURS, DISTRACTOR_COLOURS, DISTRACTOR_SHAPES
from eagle_align.demo import (
    FAMILIES,
    RECIPE,
    SIZES,
    TRAIN_CUE_FRACTION,
    run_overrides,
    synthetic_split,
    training_config,
)
from eagle_align.eval import evaluate
from eagle_align.families import build_tiny_checkpoint, get_family, load_model_and_processor
from eagle_align.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen3_vl", choices=sorted(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cue-colour", default="magenta", choices=sorted(CUE_COLOURS))
    parser.add_argument("--cue-size", type=int, default=None, help="pixels (default: the preset's, 16)")
    parser.add_argument("--distractor-colour", default="orange", choices=sorted(DISTRACTOR_COLOURS))
    parser.add_argument("--distractor-shape", default="square", choices=DISTRACTOR_SHAPES)
    parser.add_argument("--square-size", type=int, default=None,
                        help="side of every square in pixels (default: the preset's, 64)")
    parser.add_argument("--unmarked-fraction", type=float, default=0.0,
                        help="share of training screens whose target is drawn like the distractors (default 0)")
    parser.add_argument("--empty-slot-fraction", type=float, default=0.0,
                        help="share of training screens' distractor slots left empty (default 0)")
    parser.add_argument("--decoy-fraction", type=float, default=0.0,
                        help="share of training screens with a second red square (default 0)")
    parser.add_argument("--cue-fraction", type=float, default=TRAIN_CUE_FRACTION,
                        help="share of training screens with the cue (the demo's: 1.0)")
    parser.add_argument("--pixels", type=int, default=None,
                        help="min = max pixels of the processor (default: the family's in the demo)")
    parser.add_argument("--steps", type=int, default=None,
                        help="SFT steps (default: the family's demo run, 600)")
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()

    start = time.perf_counter()
    sizes, pixels = SIZES["full"], args.pixels or FAMILIES[args.family]["pixels"]
    steps = args.steps or run_overrides(args.family, quick=False).get("max_steps")  # None: the recipe's
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        cue = {"cue_colour": args.cue_colour, "cue_size": args.cue_size, "distractor_colour": args.distractor_colour,
               "distractor_shape": args.distractor_shape, "square_size": args.square_size,
               "unmarked_train_fraction": args.unmarked_fraction, "empty_train_slot_fraction": args.empty_slot_fraction,
               "decoy_train_fraction": args.decoy_fraction}

        def split_of(folder: str, split: str, n: int, cue_fraction: float) -> Path:
            return synthetic_split(out / folder, split, n, args.seed, cue_fraction, args.family, cue)

        train = split_of("data", "train", sizes["train"], args.cue_fraction)
        tests = {"iid": split_of("data", "test", sizes["iid"], args.cue_fraction),
                 "shifted": split_of("data", "shifted", sizes["shifted"], 1.0),
                 "cue_free": split_of("cue_free", "test", sizes["iid"], 0.0)}
        checkpoint = build_tiny_checkpoint(args.family, out / "checkpoint", seed=args.seed, min_pixels=pixels,
                                           max_pixels=pixels)
        config = training_config(RECIPE, checkpoint, train, out / "sft", args.seed, alignment=False,
                                 overrides={"max_steps": steps} if steps else {}, family=args.family, pixels=pixels)
        run_training(config)
        model, processor = load_model_and_processor(str(out / "sft"), dtype="float32", min_pixels=pixels,
                                                    max_pixels=pixels)
        action_format = get_family(args.family).default_action_format
        result = {**{key: value for key, value in vars(args).items() if key != "out"}, "steps": config["max_steps"]}
        for split, path in tests.items():
            metrics = evaluate(model, processor, load_examples(path), action_format=action_format, batch_size=16,
                               attribution_samples=0, out_dir=out / "eval" / split)
            result[f"{split}_click_accuracy"] = round(100 * metrics["click_accuracy"], 1)
    result["minutes"] = round((time.perf_counter() - start) / 60, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
