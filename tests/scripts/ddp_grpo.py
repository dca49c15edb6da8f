"""Two-rank prior-aligned GRPO run for tests/test_grpo.py (`accelerate launch --multi_gpu`, gloo on CPU, or a
DeepSpeed recipe).

Each rank samples its own completions, so the ranks attribute different numbers of correct clicks; every
rank must still take part in each collective, and both must end with the same LoRA weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from peft import LoraConfig

from eagle_align.distributed import end_run
from eagle_align.families import load_model_and_processor
from eagle_align.grpo import PriorAlignedGRPOConfig, PriorAlignedGRPOTrainer

sys.path.insert(0, str(Path(__file__).parent))
from ddp_align import examples  # noqa: E402


def main(checkpoint: str, out_dir: str) -> None:
    model, processor = load_model_and_processor(checkpoint, dtype="float32")
    args = PriorAlignedGRPOConfig(
        output_dir=str(Path(out_dir) / "run"), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=32, bf16=False, gradient_checkpointing=False, report_to="none",
        # CPU-only: two gloo processes (MULTI_CPU); accelerate only turns DeepSpeed on without use_cpu.
        use_cpu=not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true",
        save_strategy="no", logging_steps=1, learning_rate=1e-3, seed=0, ddp_timeout=300,
        preset="paper", n_regions=16, max_regions=3, search="bounded", min_confidence=0.0, align_every=1,
        attribution_batch_size=32,
    )
    trainer = PriorAlignedGRPOTrainer(model, args=args, train_dataset=examples(4), processing_class=processor,
                                      peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                             target_modules=["q_proj", "v_proj"]))
    trainer.train()
    rank = trainer.args.process_index
    lora = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
    torch.save(lora, Path(out_dir) / f"lora_rank{rank}.pt")
    logs = [{k: v for k, v in h.items() if k != "step_time"} for h in trainer.state.log_history if "loss" in h]
    plugin = trainer.accelerator.state.deepspeed_plugin
    result = {"rank": rank, "world_size": trainer.args.world_size, "logs": logs,
              "distributed_type": trainer.accelerator.distributed_type.value,
              "zero_stage": plugin.zero_stage if plugin else None}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    end_run(trainer.accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
