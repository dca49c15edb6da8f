"""What a trained model's click rests on: P(click) on a demo run's training screens under five maskings.

For each screen, the teacher-forced probability of the recorded click (the decision tokens, as in training) with
nothing masked, the target box alone, the box removed, the cue removed, the cue alone and everything removed;
masked cells show the baseline (the demo recipe's `background` unless `--baseline`). Means over the screens the model
gets confidently right (P ≥ 0.75), for targets drawn red and for unmarked ones apart (`--by-slot`: also per
target slot, since a cue can stay a shortcut in one position and be gone in the others; `--regions N`: also the
share of screens whose cue falls in a region the deviation gate reads as on-box, in the N-region SLIC partition
training attributes over; always: the share whose cue touches a merged cell of the box). It tells the shortcuts of
`method_comparison/history.md` apart: a cue-follower keeps the click with the box removed; a model that has learned
to see the mask scores every masked input alike, far below the unmasked one; a collapsed model scores them all
near its unmasked P.

    python benchmarks/masking_probe.py outputs/demo/aligned outputs/demo/data/train.jsonl --family qwen3_vl

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from eagle_align.attribution.masking import BASELINES, pixel_values_to_image
from eagle_align.attribution.regions import make_partition
from eagle_align.attribution.scoring import DecisionScorer, attribution_mode, slice_sample
from eagle_align.data import load_examples
from eagle_align.data.collator import GroundingCollator, box_mask, resize_box
from eagle_align.demo import FAMILIES
from eagle_align.families import get_family, load_model_and_processor

MASKINGS = ("full", "box_alone", "box_removed", "cue_removed", "cue_alone", "all_removed")


def cue_cells(meta) -> torch.Tensor:
    """Bool [rows, cols]: every merged cell the cue touches."""
    cue_resized = resize_box(meta.example.extra["cue_bbox"], meta.image_size, meta.resized_size)
    return box_mask(cue_resized, meta.grid_hw, meta.resized_size[0] // meta.grid_hw[1]).bool()


def keep_masks(box: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
    """Bool [len(MASKINGS), rows, cols] from the box's and the cue's cells; the cue's exclude the box's (the cue
    sits beside the target)."""
    cue = cue & ~box
    return torch.stack([torch.ones_like(box), box, ~box, ~cue, cue, torch.zeros_like(box)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a trained folder (e.g. outputs/demo/aligned)")
    parser.add_argument("data", help="the run's training JSONL (e.g. outputs/demo/data/train.jsonl)")
    parser.add_argument("--family", default="qwen3_vl", choices=sorted(FAMILIES))
    parser.add_argument("--samples", type=int, default=48, help="first N training screens (default 48)")
    parser.add_argument("--baseline", default="background", choices=BASELINES,
                        help="masking baseline (default: background, the training default)")
    parser.add_argument("--min-confidence", type=float, default=0.75)
    parser.add_argument("--by-slot", action="store_true", help="also break the means down by the target's slot")
    parser.add_argument("--regions", type=int, default=None,
                        help="also check, in an N-region SLIC partition, whether the cue shares an on-box region")
    parser.add_argument("--prior-overlap", type=float, default=0.15, help="on-box coverage (training default)")
    args = parser.parse_args()

    pixels = FAMILIES[args.family]["pixels"]
    model, processor = load_model_and_processor(args.model, dtype="float32", min_pixels=pixels, max_pixels=pixels)
    examples = load_examples(args.data)[: args.samples]
    collator = GroundingCollator(processor, get_family(args.family).default_action_format)
    probs: dict[str, list[list[float]]] = {"marked": [], "unmarked": []}
    cue_on_box: list[bool] = []
    cue_in_box_cell: list[bool] = []
    with attribution_mode(model):
        for start in range(0, len(examples), 16):
            batch = collator(examples[start : start + 16])
            for i, meta in enumerate(batch["meta"]):
                sample = slice_sample(batch, i)
                scorer = DecisionScorer(model, sample, meta, baseline=args.baseline)
                extra = meta.example.extra
                name = "marked" if extra.get("target_marked", True) else "unmarked"
                box, cue = meta.box_mask.bool(), cue_cells(meta)
                masks = keep_masks(box, cue)
                cue_in_box_cell.append(bool((cue & box).any()))
                row = scorer.score(masks).tolist()
                if args.regions:
                    image = pixel_values_to_image(model, sample["pixel_values"], sample["image_grid_thw"][0])
                    partition = make_partition(meta.grid_hw, args.regions, "slic", image=image)
                    on_box = partition.on_box(meta.box_mask, args.box_overlap)
                    cue_regions = partition.cell_masks[:, masks[MASKINGS.index("cue_alone")]].any(1)
                    cue_on_box.append(bool((cue_regions & on_box).any()))
                probs[name].append(row)
                if args.by_slot:
                    probs.setdefault(f"{name}_slot_{extra['slot']}", []).append(row)

    result = {"model": args.model, "family": args.family, "baseline": args.baseline}
    for name, rows in sorted(probs.items()):
        table = torch.tensor(rows).view(-1, len(MASKINGS))
        confident = table[table[:, 0] >= args.min_confidence]
        result[f"{name}_screens"], result[f"{name}_confident"] = len(rows), len(confident)
        if len(confident):
            result[name] = {m: round(float(v), 3) for m, v in zip(MASKINGS, confident.mean(0))}
            print(f"{name:>16} ({len(confident)} of {len(rows)} confident): "
                  + "  ".join(f"{m} {result[name][m]:.3f}" for m in MASKINGS), flush=True)
    # A cue in a cell the box touches is removed with the box (necessity term) and kept with it (box alone).
    result["cue_in_box_cell"] = sum(cue_in_box_cell) / max(1, len(cue_in_box_cell))
    print(f"cue in a merged cell the box touches: {sum(cue_in_box_cell)} of {len(cue_in_box_cell)} screens", flush=True)
    if args.regions:
        result["regions"] = args.regions
        result["cue_in_on_box_region"] = sum(cue_on_box) / max(1, len(cue_on_box))
        print(f"cue in an on-box region of {args.regions} SLIC regions: {sum(cue_on_box)} of {len(cue_on_box)} "
              "screens", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
