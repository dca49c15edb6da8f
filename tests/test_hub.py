"""Model card, push (Hub client replaced only at its network seam) and verified merge."""

from __future__ import annotations

import json

import pytest
import torch

from eagle_align.hub import PushError, merge_adapter, push_adapter, read_card_header, write_model_card
from eagle_align.models import load_model_and_processor
from eagle_align.models.lora import apply_lora


def _save_adapter(base_dir: str, out_dir, seed: int = 0):
    model, processor = load_model_and_processor(base_dir, dtype="float32")
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    peft_model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def test_model_card_header_and_adapter_config(tiny_checkpoints, tmp_path):
    adapter = _save_adapter(tiny_checkpoints["qwen2_5_vl"], tmp_path / "adapter")
    write_model_card(
        adapter,
        "Qwen/Qwen2.5-VL-3B-Instruct",
        action_format="qwen2_5_vl",
        min_pixels=3136,
        max_pixels=1003520,
        training={"lora_r": 4},
        alignment={"alignment": True, "align_every": 5},
        evaluation={"click_accuracy": 0.5},
    )
    header = read_card_header(adapter / "README.md")
    assert header["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert header["library_name"] == "peft"
    assert header["pipeline_tag"] == "image-text-to-text"
    assert {"gui-agent", "grounding", "eagle-align"} <= set(header["tags"])
    body = (adapter / "README.md").read_text()
    assert "qwen2_5_vl" in body and "1003520" in body and "click_accuracy" in body and "align_every" in body
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_push_uploads_exactly_the_adapter(tiny_checkpoints, tmp_path, recording_hub):
    adapter = _save_adapter(tiny_checkpoints["qwen3_vl"], tmp_path / "adapter")
    write_model_card(adapter, "Qwen/Qwen3-VL-2B-Instruct", action_format="qwen3_vl", min_pixels=1, max_pixels=2)
    (adapter / "checkpoint-10").mkdir()
    (adapter / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    (adapter / "_scratch.txt").write_text("temp")
    url = push_adapter(adapter, "me/my-gui-adapter")
    assert recording_hub.repos == ["me/my-gui-adapter"]
    local = sorted(p.name for p in adapter.iterdir() if p.is_file() and not p.name.startswith("_"))
    assert recording_hub.uploaded["me/my-gui-adapter"] == local
    assert "adapter_model.safetensors" in local and "README.md" in local
    assert url.endswith("/commit/abc")


def test_failed_push_leaves_adapter_intact(tiny_checkpoints, tmp_path, recording_hub):
    adapter = _save_adapter(tiny_checkpoints["qwen3_vl"], tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}
    recording_hub.fail = True
    with pytest.raises(PushError, match="local adapter is intact"):
        push_adapter(adapter, "me/my-gui-adapter")
    assert {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()} == before


def test_push_refuses_a_non_adapter_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        push_adapter(tmp_path, "me/x")


def test_merge_verifies_every_module_and_reloads(tiny_checkpoints, tmp_path, family):
    adapter = _save_adapter(tiny_checkpoints[family], tmp_path / "adapter")
    report = merge_adapter(tiny_checkpoints[family], adapter, tmp_path / "merged")
    assert report["merged_modules"] == 14 and report["zero_delta_modules"] == []
    assert report["max_logit_diff"] < 1e-3
    assert (tmp_path / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "merged" / "merge_report.json").read_text())["merged_modules"] == 14
