"""Foundation: tiny checkpoints of every family behave like the real architectures, offline."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from eagle_align.families import (
    FAMILIES,
    build_tiny_checkpoint,
    detect_family,
    family_of,
    get_family,
    load_model_and_processor,
    pixel_limits,
    quantization_config,
)
from eagle_align.families.lora import apply_lora, lora_module_names


def _smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Reference smart_resize as documented by Qwen: round to factor, then rescale into the pixel range."""
    h_bar, w_bar = round(h / factor) * factor, round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar, w_bar = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar, w_bar = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def _inputs(processor, image: Image.Image, answer: str | None = None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "click the Save button"}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    return processor(text=[text], images=[image], return_tensors="pt")


def _screenshot(w: int = 300, h: int = 170, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def test_registry_geometry_and_detection(tiny_checkpoints, family):
    fam = get_family(family)
    assert fam.factor == fam.patch_size * fam.merge_size
    assert fam.row_width == {14: 1176, 16: 1536}[fam.patch_size]
    assert detect_family(tiny_checkpoints[family]) is fam
    with pytest.raises(ValueError, match="supported"):
        get_family("llava")
    with pytest.raises(ValueError, match="not a supported Qwen-VL family"):
        detect_family({"model_type": "llama"})


def test_round_trip_processor_forward_generate(tiny_checkpoints, family):
    fam = FAMILIES[family]
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    processor = AutoProcessor.from_pretrained(tiny_checkpoints[family])
    assert type(model).__name__ == fam.model_class
    assert type(processor).__name__ == fam.processor_class

    image = _screenshot(300, 170)
    batch = _inputs(processor, image, answer="(512, 233)")
    min_px, max_px = pixel_limits(processor)
    h, w = _smart_resize(170, 300, fam.factor, min_px, max_px)
    assert batch["image_grid_thw"].tolist() == [[1, h // fam.patch_size, w // fam.patch_size]]
    assert batch["pixel_values"].shape == ((h // fam.patch_size) * (w // fam.patch_size), fam.row_width)
    assert "mm_token_type_ids" in batch
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum().item()
    assert n_image_tokens == (h // fam.factor) * (w // fam.factor)
    assert batch["mm_token_type_ids"].sum().item() == n_image_tokens

    labels = batch["input_ids"].clone()
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)

    prompt = _inputs(processor, image)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_three_d_positions_are_used(tiny_checkpoints, family):
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    model.eval()
    batch = _inputs(processor, _screenshot(256, 192), answer="(10, 20)")
    inner = model.model
    position_ids, _ = inner.get_rope_index(
        batch["input_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"],
    )
    image_positions = batch["mm_token_type_ids"][0].bool()
    # On image tokens the height and width components differ (2-D layout); a 1-D fallback would repeat one index.
    assert not torch.equal(position_ids[1, 0, image_positions], position_ids[2, 0, image_positions])
    with torch.no_grad():
        with_3d = model(**batch).logits
        seq = batch["input_ids"].shape[1]
        flat = torch.arange(seq).view(1, 1, -1).expand(3, 1, -1)
        with_1d = model(**batch, position_ids=flat).logits
    assert not torch.allclose(with_3d, with_1d, atol=1e-5)
    # Dropping mm_token_type_ids must never pass silently: depending on the family the model refuses
    # (Qwen2-VL, Qwen3-VL) or falls back to other positions, which changes what it computes.
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    try:
        with torch.no_grad():
            dropped = model(**without).logits
    except ValueError as err:
        assert "mm_token_type_ids" in str(err)
    else:
        assert not torch.allclose(with_3d, dropped, atol=1e-5)


def test_pixel_limits_are_the_ones_asked_for(tiny_checkpoints, family):
    fam = FAMILIES[family]
    lo, hi = (fam.factor * 4) ** 2, (fam.factor * 6) ** 2
    _, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32", min_pixels=lo, max_pixels=hi)
    assert pixel_limits(processor) == (lo, hi)
    batch = _inputs(processor, _screenshot(900, 500))
    _, gh, gw = batch["image_grid_thw"][0].tolist()
    assert gh * gw * fam.patch_size**2 <= hi
    with pytest.raises(ValueError, match="min_pixels"):
        load_model_and_processor(tiny_checkpoints[family], min_pixels=hi, max_pixels=lo)


def test_lora_default_targets_language_only_and_reloads(tiny_checkpoints, family, tmp_path):
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    names = lora_module_names(peft_model)
    assert names and all(".language_model.layers." in n for n in names)
    assert not any("visual" in n for n in names)
    assert family_of(peft_model).name == family
    # Give LoRA B non-zero values so the adapter changes outputs, then save and reload onto a fresh base.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.eval()
    batch = _inputs(processor, _screenshot(), answer="(1, 2)")
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    from peft import PeftModel

    fresh, _ = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    with torch.no_grad():
        base_logits = fresh(**batch).logits
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(**batch).logits
    assert not torch.allclose(base_logits, expected, atol=1e-4)
    torch.testing.assert_close(got, expected)


def test_lora_presets_reach_the_vision_side(tiny_checkpoints):
    model, _ = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32")
    merger = lora_module_names(apply_lora(model, targets="language+merger"))
    assert any(".visual.merger." in n for n in merger) and not any(".visual.blocks." in n for n in merger)
    model, _ = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32")
    everything = lora_module_names(apply_lora(model, targets="all"))
    assert any(".visual.blocks." in n for n in everything)
    with pytest.raises(ValueError, match="preset"):
        apply_lora(model, targets="vision-only")


def test_tiny_checkpoint_is_deterministic_per_seed(tmp_path):
    a = build_tiny_checkpoint("qwen3_vl", tmp_path / "a", seed=3)
    b = build_tiny_checkpoint("qwen3_vl", tmp_path / "b", seed=3)
    c = build_tiny_checkpoint("qwen3_vl", tmp_path / "c", seed=4)
    load = lambda d: AutoModelForImageTextToText.from_pretrained(d).state_dict()  # noqa: E731
    sa, sb, sc = load(a), load(b), load(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_quantization_config_skips_vision_and_head():
    pytest.importorskip("bitsandbytes")
    cfg = quantization_config("4bit")
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4"
    assert set(cfg.llm_int8_skip_modules) == {"model.visual", "lm_head"}
    with pytest.raises(ValueError, match="quantization"):
        quantization_config("3bit")
