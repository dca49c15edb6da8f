"""PriorAlignedGRPOTrainer on tiny real checkpoints with real TRL, PEFT and processors: recipes for every family,
the alignment path and its gradient, equivalence with plain TRL GRPO, reload through eval, two DDP ranks."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("trl")

from peft import LoraConfig  # noqa: E402
from scripts.ddp_align import examples  # noqa: E402  the same small screens the SFT tests train on
from test_distributed import launch_two_ranks  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from eagle_align.cli import main  # noqa: E402
from eagle_align.config import PriorAlignedConfig  # noqa: E402
from eagle_align.data import GroundingCollator, generate_synthetic, write_jsonl  # noqa: E402
from eagle_align.families import get_family, load_model_and_processor  # noqa: E402
from eagle_align.grpo import PriorAlignedGRPOConfig, PriorAlignedGRPOTrainer, grounding_prompts  # noqa: E402
from eagle_align.grpo.rewards import answer_format, click_in_box  # noqa: E402
from eagle_align.recipes import copy_recipe  # noqa: E402
from eagle_align.train import load_config, run_training  # noqa: E402
from eagle_align.trainer import PriorAlignedTrainer  # noqa: E402

FAMILY = "qwen2_5_vl"
# Small, CPU-sized GRPO: 2 prompts x 4 generations of at most 32 tokens (a JSON click is ~26) per step.
GRPO = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=32, bf16=False,
            gradient_checkpointing=False, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
            learning_rate=1e-3, seed=0, dataloader_num_workers=0)
# The paper's losses (both terms, so deviation and redundancy both back-propagate) on a cheap exact search.
ALIGN = dict(preset="paper", n_regions=16, max_regions=3, search="exact", min_confidence=0.0, align_every=1,
             attribution_batch_size=32)


@pytest.fixture(scope="module")
def grounded(tiny_checkpoints, tmp_path_factory) -> str:
    """The tiny Qwen2.5-VL fully fine-tuned (SFT) on the four screens of `examples(4)`: it answers in the format
    and its sampled clicks land in the box often, as a policy GRPO starts from would."""
    out = tmp_path_factory.mktemp("grounded")
    model, processor = load_model_and_processor(tiny_checkpoints[FAMILY], dtype="float32")
    for param in model.parameters():
        param.requires_grad = True
    args = PriorAlignedConfig(output_dir=str(out), alignment=False, max_steps=300, per_device_train_batch_size=4,
                              learning_rate=2e-3, lr_scheduler_type="constant", report_to="none", use_cpu=True,
                              save_strategy="no", logging_steps=50, seed=0)
    trainer = PriorAlignedTrainer(model=model, args=args, train_dataset=examples(4), processing_class=processor,
                                  data_collator=GroundingCollator(processor, get_family(FAMILY).default_action_format))
    trainer.train()
    trainer.save_model()
    return str(out)


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_family_takes_grpo_steps_from_the_recipe(family_name, tiny_checkpoints, tmp_path):
    train = generate_synthetic(tmp_path / "data", 8, seed=0, preset="shortcut", cue_fraction=1.0, split="train")
    out = tmp_path / "out"
    config = load_config("tiny_grpo_cpu", dict(
        model_name_or_path=tiny_checkpoints[family_name], train_data=str(train), output_dir=str(out),
        action_format=get_family(family_name).default_action_format, min_pixels=64 * 64, max_pixels=128 * 128,
        max_steps=2, per_device_train_batch_size=4, num_generations=4, max_completion_length=12, logging_steps=1,
        lora_targets="q_proj,v_proj"))
    trainer = run_training(config)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for log in logs:
        for reward in ("click_in_box", "answer_format"):
            assert 0.0 <= log[f"rewards/{reward}/mean"] <= 1.0
        assert log["completions/mean_length"] > 0
    assert (out / "adapter_model.safetensors").is_file()
    space = json.loads((out / "eagle_align.json").read_text())
    assert space["family"] == family_name and space["finetuning"] == "lora" and space["max_pixels"] == 128 * 128
    card = (out / "README.md").read_text()
    assert "grpo" in card and "click_in_box" in card


def test_qlora_grpo_from_the_recipe(tiny_checkpoints, tmp_path):
    pytest.importorskip("bitsandbytes")
    train = generate_synthetic(tmp_path / "data", 8, seed=0, preset="shortcut", cue_fraction=1.0, split="train")
    out = tmp_path / "out"
    trainer = run_training(load_config("tiny_grpo_cpu", dict(
        model_name_or_path=tiny_checkpoints["qwen3_vl"], train_data=str(train), output_dir=str(out),
        quantization="4bit", dtype="bfloat16", min_pixels=64 * 64, max_pixels=128 * 128, max_steps=2,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, lora_targets="q_proj,v_proj")))
    assert trainer.state.global_step == 2
    assert "Linear4bit" in {type(m).__name__ for m in trainer.model.modules()}
    assert json.loads((out / "eagle_align.json").read_text())["finetuning"] == "qlora"


def test_alignment_off_is_exactly_plain_trl_grpo(grounded, tmp_path):
    model, processor = load_model_and_processor(grounded, dtype="float32")
    reference = copy.deepcopy(model)
    collator = GroundingCollator(processor, get_family(FAMILY).default_action_format)
    ours = PriorAlignedGRPOTrainer(model, args=PriorAlignedGRPOConfig(output_dir=str(tmp_path / "a"), alignment=False,
                                                                      max_steps=3, **GRPO),
                                   train_dataset=examples(4), processing_class=processor, peft_config=lora())
    ours.train()
    plain = GRPOTrainer(reference, reward_funcs=[click_in_box, answer_format],
                        args=GRPOConfig(output_dir=str(tmp_path / "b"), max_steps=3, **GRPO),
                        train_dataset=grounding_prompts(examples(4), collator), processing_class=processor,
                        peft_config=lora())
    plain.train()
    ours_logs = [{k: v for k, v in h.items() if not k.startswith(("step_time", "train_"))}
                 for h in ours.state.log_history]
    plain_logs = [{k: v for k, v in h.items() if not k.startswith(("step_time", "train_"))}
                  for h in plain.state.log_history]
    assert ours_logs == plain_logs
    assert any(h.get("rewards/click_in_box/mean", 0) > 0 for h in ours_logs)  # the policy does sample hits
    a, b = trainable(ours.model), trainable(plain.model)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sampled_correct_clicks_are_aligned_and_their_gradient_is_the_sft_alignment_gradient(grounded, tmp_path):
    """The plan GRPO makes from its own in-box samples back-propagates exactly what the SFT trainer's alignment
    back-propagates for the same clicks, and it is added to the GRPO loss's gradient."""
    model, processor = load_model_and_processor(grounded, dtype="float32")
    args = PriorAlignedGRPOConfig(output_dir=str(tmp_path / "g"), max_steps=1, **GRPO, **ALIGN)
    trainer = PriorAlignedGRPOTrainer(model, args=args, train_dataset=examples(4), processing_class=processor,
                                      peft_config=lora())
    peft_model = trainer.model
    peft_model.train()
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(args.num_generations)]
    torch.manual_seed(0)
    generated = trainer._generate_and_score_completions(rows)
    plan, trainer._pending_plan = trainer._pending_plan, None  # applied by hand below
    sampled, no_box = trainer.sampled_clicks(rows, generated["completion_ids"], generated["completion_mask"])
    assert sampled and no_box == 0 and plan is not None
    for example in sampled:
        x1, y1, x2, y2 = example.bbox
        assert x1 <= example.point[0] <= x2 and y1 <= example.point[1] <= y2
    assert plan.stats.selected == len(sampled[: args.per_device_train_batch_size]) and plan.chunks

    peft_model.zero_grad()
    trainer._align_backward(peft_model, plan)
    grpo_alignment = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    assert any(g.abs().sum() > 0 for g in grpo_alignment.values())

    # compute_loss adds it to the GRPO loss: with the plan, the gradient is GRPO's plus the alignment's.
    trainer.current_gradient_accumulation_steps = 1  # set by train(); this test calls compute_loss itself
    peft_model.zero_grad()
    trainer.compute_loss(peft_model, generated).backward()
    grpo_only = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    peft_model.zero_grad()
    trainer._pending_plan = plan
    trainer.compute_loss(peft_model, generated).backward()
    for name, grad in grpo_alignment.items():
        total = peft_model.get_parameter(name).grad
        torch.testing.assert_close(total, grpo_only.get(name, torch.zeros_like(grad)) + grad, atol=1e-6, rtol=1e-4)

    sft_args = PriorAlignedConfig(output_dir=str(tmp_path / "s"), report_to="none", use_cpu=True,
                                  **{k: v for k, v in ALIGN.items()})
    sft = PriorAlignedTrainer(model=peft_model, args=sft_args, train_dataset=sampled, processing_class=processor,
                              data_collator=trainer.grounding_collator)
    batch = trainer.grounding_collator(sampled[: args.per_device_train_batch_size])
    peft_model.zero_grad()
    sft._align(peft_model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
    for name, grad in grpo_alignment.items():
        torch.testing.assert_close(peft_model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4)


def test_aligned_grpo_run_logs_alignment_and_reloads_through_eval(grounded, tmp_path):
    model, processor = load_model_and_processor(grounded, dtype="float32")
    out = tmp_path / "run"
    args = PriorAlignedGRPOConfig(output_dir=str(out), max_steps=2, **GRPO, **ALIGN)
    trainer = PriorAlignedGRPOTrainer(model, args=args, train_dataset=examples(4), processing_class=processor,
                                      peft_config=lora())
    before = trainable(trainer.model)
    trainer.train()
    trainer.save_model()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["align/correct_samples"] > 0 and h["align/selected"] > 0 for h in logs), logs
    assert sum(h["align/deviation_examples"] + h["align/redundancy_examples"] for h in logs) > 0
    assert all("align/attribution_seconds" in h and "align/loss_seconds" in h for h in logs)
    assert trainer.alignment_state["alignment_steps"] == 2
    after = trainable(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    saved = json.loads((out / "alignment_state.json").read_text())
    assert saved["selected"] == trainer.alignment_state["selected"] > 0

    data = write_jsonl(examples(4), tmp_path / "eval.jsonl")
    code = main(["eval", "--model", grounded, "--adapter", str(out), "--data", str(data), "--max-new-tokens", "20",
                 "--no-plots", "--out", str(tmp_path / "eval")])
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["coordinate_space"] == "recorded"
    assert metrics["settings"]["action_format"] == get_family(FAMILY).default_action_format


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "zero2", "zero3"])
def test_two_ranks_take_aligned_grpo_steps_in_step(setup, grounded, tmp_path):
    """Each rank samples its own completions, so the ranks align different clicks; under DDP and the shipped
    ZeRO-2/3 recipes neither hangs and both end with the same weights."""
    config = None
    if setup != "ddp":
        pytest.importorskip("deepspeed")
        config = str(copy_recipe(f"deepspeed_{setup}", tmp_path / "recipes")[0])
    ranks = launch_two_ranks("ddp_grpo.py", grounded, tmp_path, config_file=config)
    assert [r["world_size"] for r in ranks] == [2, 2]
    if setup == "ddp":
        assert ranks[0]["distributed_type"] == "MULTI_CPU"
    else:
        assert ranks[0]["distributed_type"] == "DEEPSPEED" and ranks[0]["zero_stage"] == int(setup[-1])
    logs = ranks[0]["logs"]
    assert logs == ranks[1]["logs"] and all(h["align/selected"] > 0 for h in logs), logs
    assert sum(h["align/deviation_examples"] + h["align/redundancy_examples"] for h in logs) > 0
    weights = [torch.load(tmp_path / f"lora_rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
