"""Two-rank alignment step with FSDP2-sharded parameters (gloo on CPU), for tests/test_distributed.py.

accelerate does not shard on CPU (an FSDP config falls back to multi-CPU DDP there), so this script shards the
tiny model itself, the way accelerate's FSDP2 set-up would with `eagle_align/recipes/accelerate/fsdp.yaml`: accelerate's
own wrap policy for the recipe's settings picks the units, torch's `fully_shard` shards them bottom-up, then
the root. It then runs the trainer's alignment step on the sharded model. Every forward now gathers parameters collectively. Rank 0 attributes both of
its samples with the bounded search (whose forward count depends on what it prunes) and rank 1 selects
nothing, so the ranks run very different numbers of forwards. The step must
still finish, and rank 0's attribution under sharding must equal the one computed before sharding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from eagle_align.attribution import AttributionSettings, attribute_sample, attribution_mode
from eagle_align.data.collator import GroundingCollator
from eagle_align.distributed import Lockstep, end_run
from eagle_align.experimental import ExperimentalAlignmentConfig  # selection="all" is experimental
from eagle_align.families import get_family, load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.trainer import PriorAlignedTrainer

FAMILY = "qwen2_5_vl"
ATTRIBUTION = dict(settings=AttributionSettings(n_regions=16, region_method="grid", baseline="black", search="bounded",
                                                insertion_weight=2.0, max_regions=3), batch_size=4)
FSDP_RECIPE = Path(__file__).resolve().parents[2] / "eagle_align" / "recipes" / "accelerate" / "fsdp.yaml"


def recipe_wrap_policy(model: torch.nn.Module, recipe: Path = FSDP_RECIPE):
    """accelerate's FSDP2 wrap policy for the recipe's fsdp_config, and the plugin it came from."""
    fsdp = yaml.safe_load(recipe.read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"], auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=fsdp.get("fsdp_transformer_layer_cls_to_wrap"),
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"], state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    plugin.set_auto_wrap_policy(model)
    return fsdp2_prepare_auto_wrap_policy(plugin, model), plugin


def shard_like_recipe(model: torch.nn.Module) -> int:
    """fully_shard every unit the recipe's policy picks (children first), then the root; returns the count."""
    policy, plugin = recipe_wrap_policy(model)
    units = [m for m in reversed(list(model.modules())) if m is not model and policy(m)]
    for module in units:
        fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, reshard_after_forward=plugin.reshard_after_forward)
    return len(units)


def main(checkpoint: str, out_dir: str) -> None:
    from ddp_align import examples  # a sibling script: importable when this file runs as a script

    torch.manual_seed(0)
    model, processor = load_model_and_processor(checkpoint, dtype="float32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    config = ExperimentalAlignmentConfig(
        output_dir=f"{out_dir}/run", per_device_train_batch_size=2, align_every=1, n_regions=16, max_regions=3,
        search="bounded", region_method="grid", lambda_redundancy=0.5, selection="all", loss_chunk_size=2, attribution_batch_size=4, report_to="none", save_strategy="no",
        # a = 1: with the deletion-only default this random model ranks the prior first and its one redundancy
        # hinge is inactive (P(x_notS) stays near 1), so rank 0's pass would carry no gradient to check.
        insertion_weight=1.0, seed=0, ddp_timeout=120, use_cpu=True,
        # Redundancy hinges can all be inactive on a random model; the necessity term (P(x_notB) pushed towards 0)
        # always carries gradient, so the backward pass this test checks is never empty.
        lambda_necessity=1.0, necessity_floor="zero",
        # A random model clicks as well on a blank screen: the blank-screen gate would leave out both samples.
        max_blank_share=None,
    )
    collator = GroundingCollator(processor, get_family(FAMILY).default_action_format)
    trainer = PriorAlignedTrainer(model=model, args=config, train_dataset=examples(4), data_collator=collator)
    rank = trainer.args.process_index
    batch = collator(examples(4)[2 * rank : 2 * rank + 2])
    metas = batch.pop("meta")
    with attribution_mode(model):
        before = attribute_sample(model, {**batch, "meta": metas}, 0, **ATTRIBUTION)

    units = shard_like_recipe(model)
    assert units > 0 and all(isinstance(p, DTensor) for p in model.parameters())

    calls = {"forwards": 0, "backwards": 0}
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__("forwards", calls["forwards"] + 1))
    model.get_output_embeddings().register_full_backward_hook(
        lambda module, grad_in, grad_out: calls.__setitem__("backwards", calls["backwards"] + 1)
    )
    model.train()
    if rank == 1:  # deliberately uneven: nothing on this rank passes the filter
        trainer.args.selection, trainer.args.min_confidence = "confident_correct", 1.0
    trainer._align(model, dict(batch), metas)

    # Only rank 0 attributes again; rank 1 joins each of its parameter gathers through Lockstep's padding.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                     "image_grid_thw")}
    with attribution_mode(model), Lockstep(model, lambda: model(**inputs)) as lockstep:
        after = attribute_sample(model, {**batch, "meta": metas}, 0, **ATTRIBUTION) if rank == 0 else None
    grads = [p.grad.full_tensor() for p in model.parameters() if p.requires_grad and p.grad is not None]
    result = {
        "rank": rank,
        **calls,
        "padded_after": lockstep.padded,
        "fsdp_units": units,
        "metrics": {k: sum(v) / len(v) for k, v in trainer._alignment_metrics.items()},
        "grad_norm": float(torch.stack([g.norm() for g in grads]).norm()) if grads else 0.0,
        "ranking_before": list(before.ranking),
        "ranking_after": list(after.ranking) if after else None,
        "prob_diff": float((torch.tensor(before.insertion_probs) - torch.tensor(after.insertion_probs)).abs().max())
        if after else None,
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    end_run(trainer.accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
