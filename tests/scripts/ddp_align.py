"""Two-rank alignment run for tests/test_distributed.py (`accelerate launch --multi_gpu`, or a DeepSpeed recipe).

Both ranks use the bounded search, deliberately with different work. In the first optimizer step rank 1 asks
for impossible confidence, so it selects nothing; afterwards it aligns every sample but trains deviation only, so
its search settles after rank 1 while rank 0 (redundancy too) ranks three regions per sample. Rank 1 must still
take part in every collective pass. Each rank counts its own forwards (with and without gradient) and backward
passes with hooks, and saves its LoRA weights, so the test can compare ranks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from eagle_align import trainer as trainer_module
from eagle_align.data.collator import GroundingCollator
from eagle_align.data.schema import GroundingExample
from eagle_align.distributed import end_run
from eagle_align.experimental import ExperimentalAlignmentConfig  # selection="all" is experimental
from eagle_align.families import get_family, load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.trainer import PriorAlignedTrainer

FAMILY = "qwen2_5_vl"


def examples(n: int) -> list[GroundingExample]:
    """Grey screens with one red button each, at different places."""
    out = []
    for i in range(n):
        pixels = np.full((140, 196, 3), 210, dtype=np.uint8)
        x, y = 16 + 37 * (i % 4), 20 + 50 * (i // 4 % 2)
        pixels[y : y + 30, x : x + 40] = (220, 30, 30)
        out.append(GroundingExample(image=Image.fromarray(pixels), image_size=(196, 140),
                                    instruction="click the red button", bbox=(x, y, x + 40, y + 30), id=f"s{i}"))
    return out


class SelectAllAfterFirstStep(TrainerCallback):
    """Rank 1 selects nothing in the first optimizer step and every sample afterwards."""

    def on_step_end(self, args, state, control, **kwargs):
        args.selection = "all"


def main(checkpoint: str, out_dir: str) -> None:
    torch.manual_seed(0)
    model, processor = load_model_and_processor(checkpoint, dtype="float32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    config = ExperimentalAlignmentConfig(
        output_dir=f"{out_dir}/run", per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        align_every=1, n_regions=16, max_regions=3, selection="all", loss_chunk_size=2, report_to="none",
        search="bounded", region_method="grid", lambda_redundancy=0.5,
        save_strategy="no", logging_steps=1, learning_rate=1e-2, seed=0, ddp_timeout=300,
        # A random model clicks as well on a blank screen: the blank-screen gate would leave out every step.
        # The box gate stays on, so its step sums are all-reduced on every rank, selecting or not.
        max_blank_share=None,
        # CPU-only: two gloo processes (MULTI_CPU); accelerate only turns DeepSpeed on without use_cpu.
        use_cpu=not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true",
    )
    trainer = PriorAlignedTrainer(model=model, args=config, train_dataset=examples(16),
                                  data_collator=GroundingCollator(processor, get_family(FAMILY).default_action_format))
    rank = trainer.args.process_index
    if rank == 1:  # deliberately uneven: nothing selected in step 1, then a search that stops after rank 1
        trainer.args.lambda_redundancy = 0.0
        trainer.args.selection, trainer.args.min_confidence = "confident_correct", 1.0
        trainer.add_callback(SelectAllAfterFirstStep())
    counts = {"grad_forwards": 0, "no_grad_forwards": 0, "backwards": 0, "attribution_forwards": 0}

    def count_forward(module, args):
        counts["grad_forwards" if torch.is_grad_enabled() else "no_grad_forwards"] += 1

    def count_backward(module, grad_input, grad_output):
        counts["backwards"] += 1

    attribute = trainer_module.RegionAttribution.attribute

    def count_search(self, *args, **kwargs):  # this rank's own attribution forwards (the logs hold the global sum)
        attributions = attribute(self, *args, **kwargs)
        counts["attribution_forwards"] += sum(attribution.forwards for attribution in attributions)
        return attributions

    trainer_module.RegionAttribution.attribute = count_search
    model.get_input_embeddings().register_forward_pre_hook(count_forward)
    model.get_output_embeddings().register_full_backward_hook(count_backward)
    trainer.train()
    lora = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    plugin = trainer.accelerator.state.deepspeed_plugin
    # ZeRO-3 leaves partitioned parameters empty between forwards (small LoRA ones stay whole).
    partitioned = sum(1 for p in model.parameters() if hasattr(p, "ds_id") and p.numel() == 0)
    torch.save(lora, Path(out_dir) / f"lora_rank{rank}.pt")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {"rank": rank, "world_size": trainer.args.world_size, **counts, "logs": logs,
              "distributed_type": trainer.accelerator.distributed_type.value,
              "zero_stage": plugin.zero_stage if plugin else None, "partitioned_params": partitioned}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    end_run(trainer.accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
