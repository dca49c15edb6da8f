"""GPU check: prior-aligned LoRA training at real scale, with random weights (no download).

Builds Qwen2.5-VL-3B-Instruct from its published configuration (values below) with random bf16 weights on
the GPU, wraps it in LoRA (language preset, r 16), and trains on synthetic 1280×720 screenshots with the
library's default method settings (`PriorAlignedConfig()`: bounded search, deviation only, SLIC regions)
at batch 8, gradient checkpointing, align_every 5, n_regions 64, max_regions 10, every sample eligible. Steps 1-4 are SFT (step 1 is warm-up), step 5 is an alignment step; then
one explanation (a full efficient attribution) is timed on its own. Meant to finish well inside 8 minutes
on one H200; `benchmarks/gpu_check.sh` wraps it with a timeout.

    bash benchmarks/gpu_check.sh                       # the real check (needs CUDA)
    python benchmarks/gpu_check.py --tiny --image-size 448x252 --batch-size 2    # CPU smoke test

The last output line is one JSON object with the figures, so runs can be compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import torch
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModelForImageTextToText, TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attribution_bench import per_variant_ms  # noqa: E402
from train_overhead import StepTimer  # noqa: E402

from eagle_align.attribution import (  # noqa: E402
    AttributionSettings,
    attribute_sample,
)
from eagle_align.data import GroundingCollator, GroundingExample  # noqa: E402
from eagle_align.experimental import ExperimentalAlignmentConfig  # noqa: E402
from eagle_align.families import get_family  # noqa: E402
from eagle_align.families.lora import apply_lora  # noqa: E402
from eagle_align.families.registry import SPECIAL_TOKENS  # noqa: E402
from eagle_align.families.tiny import build_processor, build_tokenizer  # noqa: E402
from eagle_align.trainer import PriorAlignedTrainer  # noqa: E402

# Qwen/Qwen2.5-VL-3B-Instruct config.json (published values). Token ids come from the offline tokenizer.
QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
    attention_dropout=0.0, sliding_window=32768, use_sliding_window=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
)
# --tiny: the same architecture scaled down, for a CPU smoke test of this script.
TINY_TEXT = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                         "mrope_section": [4, 6, 6]})
TINY_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                   fullatt_block_indexes=[1])
MAX_PIXELS = 1280 * 28 * 28  # the usual Qwen2.5-VL GUI setting (the qwen2_5_vl_3b_lora recipe)


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """Random-weight Qwen2.5-VL (3B or tiny) directly on `device`, plus a real processor (offline tokenizer)."""
    family = get_family("qwen2_5_vl")
    tokenizer = build_tokenizer(1024)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {**QWEN2_5_VL_3B_TEXT, **(TINY_TEXT if tiny else {})}
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = {**QWEN2_5_VL_3B_VISION, **(TINY_VISION if tiny else {})}
    config = AutoConfig.for_model(
        "qwen2_5_vl", text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=not tiny,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    processor = build_processor(family, tokenizer, min_pixels=3136, max_pixels=MAX_PIXELS)
    return model, processor


def screenshots(n: int, size: tuple[int, int]) -> list[GroundingExample]:
    """Desktop-like screens: title bar, sidebar, a grid of labelled buttons; the target changes per sample."""
    width, height = size
    out = []
    for index in range(n):
        image = Image.new("RGB", size, (245, 246, 248))
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, width, height // 18], fill=(40, 44, 52))
        draw.rectangle([0, height // 18, width // 7, height], fill=(225, 228, 232))
        boxes = []
        for row in range(4):
            for col in range(5):
                x = width // 7 + 30 + col * (width * 6 // 7 - 60) // 5
                y = height // 18 + 40 + row * (height - 120) // 4
                box = (x, y, x + width // 10, y + height // 16)
                draw.rectangle(box, fill=(60, 120, 200) if (row * 5 + col) % 3 else (90, 160, 90))
                draw.text((box[0] + 8, box[1] + 6), f"Button {row * 5 + col}", fill=(255, 255, 255))
                boxes.append(box)
        target = boxes[(7 * index) % len(boxes)]
        out.append(GroundingExample(image=image, image_size=size, instruction=f"click Button {boxes.index(target)}",
                                    bbox=tuple(float(v) for v in target), id=f"screen{index}"))
    return out


class PeakPerStep(TrainerCallback):
    """Peak CUDA memory (GiB) of every optimizer step, from the previous step's end (so the attribution that
    PriorAlignedTrainer runs while prefetching a step's batches, before on_step_begin, counts)."""

    def __init__(self) -> None:
        self.peaks: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        self.peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="scaled-down model (CPU smoke test of this script)")
    parser.add_argument("--image-size", default="1280x720", help="WxH of the synthetic screenshots")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--attn", default="auto",
                        help="attention implementation; auto = flash_attention_2 when flash_attn is installed, else sdpa "
                             "(sdpa runs Qwen2.5-VL's vision windows one by one, a Python loop per window)")
    parser.add_argument("--speed-variants", type=int, default=16,
                        help="masked variants timed for pixel-space scoring vs re-processing one at a time")
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("gpu_check needs CUDA (use --tiny for a CPU smoke test)")
    device = torch.device("cuda" if cuda else "cpu")
    size = tuple(int(v) for v in args.image_size.lower().split("x"))
    attn = args.attn
    if attn == "auto":
        attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    model, processor = build_model(args.tiny, device, torch.bfloat16, attn)
    model = apply_lora(model, r=16, alpha=32, dropout=0.05, targets="language", gradient_checkpointing=True)
    collator = GroundingCollator(processor, get_family("qwen2_5_vl").default_action_format)
    align_every = 5
    config = ExperimentalAlignmentConfig(  # selection=all (every sample aligned) is experimental
        output_dir=tempfile.mkdtemp(), max_steps=align_every, align_every=align_every, n_regions=64, max_regions=10,
        selection="all", per_device_train_batch_size=args.batch_size, max_aligned_per_step=args.batch_size,
        bf16=True, gradient_checkpointing=True, learning_rate=1e-4, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, use_cpu=not cuda, seed=0,
    )
    timer, peaks = StepTimer(), PeakPerStep()
    trainer = PriorAlignedTrainer(model=model, args=config, train_dataset=screenshots(args.batch_size * align_every, size),
                                  data_collator=collator, callbacks=[timer] + ([peaks] if cuda else []))
    build_seconds = time.perf_counter() - started
    trainer.train()
    sft = sum(timer.seconds[1:-1]) / len(timer.seconds[1:-1])  # step 1 is warm-up, the last step aligns
    alignment_step = timer.seconds[-1]
    aligned = ((align_every - 1) * sft + alignment_step) / align_every  # per step over the whole window

    batch = collator(screenshots(1, size))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    explanation = attribute_sample(model, batch, 0, AttributionSettings.PAPER, batch_size=16)
    if cuda:
        torch.cuda.synchronize()
    explain_seconds = time.perf_counter() - start
    speed = per_variant_ms(model, processor, collator, screenshots(1, size)[0], args.speed_variants,
                           batch_size=args.speed_variants)

    state = trainer.alignment_state
    result = {
        "config": {"model": "Qwen2.5-VL-3B config, random bf16 weights" if not args.tiny else "tiny Qwen2.5-VL",
                   "attn_implementation": attn, "image_size": list(size), "visual_tokens": int(batch["image_grid_thw"][0].prod()) // 4,
                   "batch_size": args.batch_size, "align_every": align_every, "n_regions": 64, "max_regions": 10,
                   "region_method": config.region_method, "search": config.search,
                   "loss_chunk_size": config.loss_chunk_size,
                   "attribution_batch_size": config.attribution_batch_size, "gradient_checkpointing": True,
                   "device": torch.cuda.get_device_name() if cuda else "cpu"},
        "sft_step_seconds": sft,
        "aligned_step_seconds": aligned,
        "overhead_ratio": aligned / sft,
        "attribution_seconds_per_sample": explain_seconds,
        "masked_forwards_per_second": explanation.forwards / explain_seconds,
        "peak_gpu_gb": max(peaks.peaks) if cuda else None,
        "pixel_space_speedup": speed["speedup"],
        "max_prob_diff": speed["max_prob_diff"],
        "speed_breakdown_ms": speed,
        "breakdown": {
            "alignment_step_seconds": alignment_step,
            "alignment_attribution_seconds": trainer.alignment_seconds["attribution"],
            "alignment_attribution_forwards": state["attribution_forwards"],
            "alignment_loss_seconds": trainer.alignment_seconds["loss"],
            "alignment_loss_forwards": state["loss_forwards"],
            "deviation_examples": state["deviation_examples"],
            "redundancy_examples": state["redundancy_examples"],
            "explanation_forwards": explanation.forwards,
            "sft_peak_gpu_gb": max(peaks.peaks[:-1]) if cuda else None,
            "aligned_peak_gpu_gb": peaks.peaks[-1] if cuda else None,
            "build_seconds": build_seconds,
            "total_seconds": time.perf_counter() - started,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
