"""Batched, logits_to_keep decision-token scoring equals a plain full forward, position by position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.attribution import DecisionScorer, attribution_mode, mask_image_rows, slice_sample
from eagle_align.data.collator import GroundingCollator
from eagle_align.data.schema import GroundingExample
from eagle_align.families import get_family, load_model_and_processor


def _example(size: tuple[int, int], seed: int) -> GroundingExample:
    rng = np.random.RandomState(seed)
    pixels = np.full((size[1], size[0], 3), 230, dtype=np.uint8)
    pixels[20:60, 30:90] = rng.randint(0, 255, 3)
    return GroundingExample(image=Image.fromarray(pixels), image_size=size, instruction="click the red button",
                            bbox=(30, 20, 90, 60), id=f"ex{seed}")


def _batch(processor, family):
    collator = GroundingCollator(processor, get_family(family).default_action_format)
    return collator([_example((200, 150), 0), _example((150, 230), 1)])


def _reference_probs(model, sample, meta, keep, baseline) -> torch.Tensor:
    """Plain full forward (all logits) of each masked variant, one at a time."""
    positions = meta.decision_positions - sample["offset"]
    rows = []
    for k in keep:
        pixel_values = mask_image_rows(sample["pixel_values"], sample["image_grid_thw"][0], k[None], baseline)
        logits = model(input_ids=sample["input_ids"], attention_mask=sample["attention_mask"],
                       mm_token_type_ids=sample["mm_token_type_ids"], pixel_values=pixel_values,
                       image_grid_thw=sample["image_grid_thw"]).logits[0]
        rows.append(logits[positions - 1].softmax(-1).gather(-1, meta.decision_token_ids[:, None])[:, 0])
    return torch.stack(rows)


def test_scorer_matches_full_forward_per_position(tiny_checkpoints, family):
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    batch = _batch(processor, family)
    meta = batch["meta"][1]
    sample = slice_sample(batch, 1)
    assert sample["input_ids"].shape[0] == 1 and sample["attention_mask"].all()
    assert sample["pixel_values"].shape[0] == int(sample["image_grid_thw"].prod())
    keep = torch.rand(5, *meta.grid_hw, generator=torch.Generator().manual_seed(0)) > 0.4
    keep[0] = True
    with attribution_mode(model):
        scorer = DecisionScorer(model, sample, meta, batch_size=2)
        probs = scorer.token_probs(keep)
        expected = _reference_probs(model, sample, meta, keep, scorer.baseline)
    assert probs.shape == (5, meta.decision_token_ids.numel()) and scorer.forwards == 5
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(probs[0], probs[1]), "masking must change the probabilities"
    with attribution_mode(model):
        assert scorer.full_prob() == pytest.approx(float(probs[0].mean()), abs=1e-5)
        torch.testing.assert_close(scorer.score(keep[:2]), probs[:2].mean(-1), atol=1e-6, rtol=0)
        logmean = DecisionScorer(model, sample, meta, reduction="logmean").score(keep[:2])
    torch.testing.assert_close(logmean, probs[:2].log().mean(-1).exp(), atol=1e-6, rtol=1e-5)


def test_left_padded_sample_scores_the_same(tiny_checkpoints):
    model, processor = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    batch = _batch(processor, "qwen3_vl")
    meta = batch["meta"][0]
    keep = torch.rand(3, *meta.grid_hw, generator=torch.Generator().manual_seed(1)) > 0.5
    with attribution_mode(model):
        plain = DecisionScorer(model, slice_sample(batch, 0), meta).token_probs(keep)
        pad = 7
        shifted = dict(batch)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            shifted[key] = torch.cat([torch.zeros(2, pad, dtype=batch[key].dtype), batch[key]], dim=1)
        sample = slice_sample(shifted, 0)
        assert sample["offset"] == pad
        meta.decision_positions = meta.decision_positions + pad
        padded = DecisionScorer(model, sample, meta).token_probs(keep)
    torch.testing.assert_close(padded, plain, atol=1e-6, rtol=0)


def test_peft_model_scores_with_its_adapter_and_gradient_path(tiny_checkpoints):
    from peft import LoraConfig, get_peft_model

    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32")
    batch = _batch(processor, "qwen2_5_vl")
    meta, sample = batch["meta"][0], slice_sample(batch, 0)
    keep = torch.rand(4, *meta.grid_hw, generator=torch.Generator().manual_seed(2)) > 0.5
    with attribution_mode(model):
        base = DecisionScorer(model, sample, meta).token_probs(keep)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    with attribution_mode(peft_model):
        scorer = DecisionScorer(peft_model, sample, meta, batch_size=3)
        adapted = scorer.token_probs(keep)
        expected = _reference_probs(peft_model, sample, meta, keep, scorer.baseline)
    assert peft_model.training, "attribution_mode restores train mode"
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(adapted, base, atol=1e-4), "the LoRA adapter must be active"
    peft_model.eval()
    with_grad = scorer.score(keep, grad=True)
    assert with_grad.requires_grad
    with_grad.sum().backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    torch.testing.assert_close(with_grad.detach(), adapted.mean(-1), atol=1e-5, rtol=1e-4)


def test_scorer_refuses_inconsistent_inputs(tiny_checkpoints):
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_vl"], dtype="float32")
    batch = _batch(processor, "qwen2_vl")
    meta, sample = batch["meta"][0], slice_sample(batch, 0)
    with pytest.raises(ValueError, match="score_reduction='median'"):
        DecisionScorer(model, sample, meta, reduction="median")
    meta.decision_token_ids = meta.decision_token_ids + 1
    with pytest.raises(ValueError, match="decision_token_ids do not match"):
        DecisionScorer(model, sample, meta)
    with pytest.raises(IndexError):
        slice_sample(batch, 2)


def test_joint_scoring_of_two_samples_equals_each_scored_alone(tiny_checkpoints, family):
    """Two samples of different image sizes (so different prompt lengths and grids) in shared forwards."""
    from eagle_align.attribution import score_jointly

    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    batch = _batch(processor, family)
    generator = torch.Generator().manual_seed(0)
    with attribution_mode(model):
        scorers = [DecisionScorer(model, slice_sample(batch, i), batch["meta"][i], baseline="mean") for i in (0, 1)]
        assert scorers[0].sample["input_ids"].shape[1] != scorers[1].sample["input_ids"].shape[1]
        keeps = [torch.rand(n, *s.grid_hw, generator=generator) > 0.5 for n, s in zip((3, 4), scorers)]
        alone = [scorer.score(keep) for scorer, keep in zip(scorers, keeps)]
        calls = []
        handle = model.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        together = score_jointly(list(zip(scorers, keeps)), batch_size=4)
        handle.remove()
    assert calls == [4, 3]  # the first forward holds sample 0's three masks and one of sample 1's
    for joint, single in zip(together, alone):
        torch.testing.assert_close(joint, single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[1][:1], together[1][1:2]), "masks must change the scores"
    assert [s.forwards for s in scorers] == [3 + 3, 4 + 4]
