"""Model card, push (Hub client replaced only at its network seam) and verified merge."""

from __future__ import annotations

import json

import pytest
import torch

from eagle_align.errors import UsageError
from eagle_align.families import CoordinateSpace, load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.hub import (
    PushError,
    build_model_card,
    merge_adapter,
    push_adapter,
    read_card_header,
    write_model_card,
)


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
    space = CoordinateSpace("qwen2_5_vl", "qwen2_5_vl", 3136, 1003520, base_model_id="Qwen/Qwen2.5-VL-3B-Instruct")
    write_model_card(
        adapter,
        space,
        training={"lora_r": 4},
        alignment={"alignment": True, "align_every": 5},
        alignment_totals={"alignment_steps": 2, "selected": 3, "deviation_examples": 4, "redundancy_examples": 1},
        evaluation={"click_accuracy": 0.5},
    )
    header = read_card_header(adapter / "README.md")
    assert header["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert header["library_name"] == "peft"
    assert header["pipeline_tag"] == "image-text-to-text"
    assert {"gui-agent", "grounding", "eagle-align", "lora"} <= set(header["tags"])
    body = (adapter / "README.md").read_text()
    assert "qwen2_5_vl" in body and "1003520" in body and "click_accuracy" in body and "align_every" in body
    assert "4 deviation / 1 redundancy examples" in body and "| deviation_examples | 4 |" in body
    assert 'adapter="THIS_REPO"' in body
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_card_claims_no_correction_that_did_not_happen(tmp_path):
    space = CoordinateSpace("qwen3_vl", "qwen3_vl", 65536, 65536)
    on = {"alignment": True}
    nothing = build_model_card(space, alignment=on, alignment_totals={"alignment_steps": 3, "selected": 5}).text
    assert "no alignment loss was applied" in nothing and "penalised" not in nothing
    assert "no alignment step ran" in build_model_card(space, alignment=on, alignment_totals={}).text
    assert "alignment off" in build_model_card(space, alignment={"alignment": False}).text


def test_full_finetuning_card_makes_no_peft_claims(tmp_path):
    space = CoordinateSpace("qwen3_vl", "qwen3_vl", 65536, 65536, base_model_id="Qwen/Qwen3-VL-2B-Instruct",
                            finetuning="full")
    write_model_card(tmp_path, space)
    header = read_card_header(tmp_path / "README.md")
    assert header["library_name"] == "transformers" and "lora" not in header["tags"]
    body = (tmp_path / "README.md").read_text()
    assert "peft" not in body.lower() and "adapter" not in body.lower() and "fully fine-tuned" in body
    assert 'load_model_and_processor("THIS_REPO")' in body


def test_push_uploads_exactly_the_adapter(tiny_checkpoints, tmp_path, recording_hub):
    adapter = _save_adapter(tiny_checkpoints["qwen3_vl"], tmp_path / "adapter")
    write_model_card(adapter, CoordinateSpace("qwen3_vl", "qwen3_vl", 1, 2, base_model_id="Qwen/Qwen3-VL-2B-Instruct"))
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
    with pytest.raises(PushError, match=f"the local folder {adapter} is intact"):
        push_adapter(adapter, "me/my-gui-adapter")
    assert {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()} == before


def test_push_refuses_a_folder_without_weights_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json or config.json"):
        push_adapter(tmp_path, "me/x")


def _logged_out(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_push_checks_repo_id_and_token_before_sending(tiny_checkpoints, tmp_path, monkeypatch, recording_hub):
    adapter = _save_adapter(tiny_checkpoints["qwen3_vl"], tmp_path / "adapter")
    with pytest.raises(UsageError, match="not valid"):
        push_adapter(adapter, "me/two//slashes")
    _logged_out(monkeypatch, tmp_path)
    with pytest.raises(UsageError, match="needs a Hub token") as error:
        push_adapter(adapter, "me/x")
    assert "HF_TOKEN" in str(error.value)
    assert recording_hub.repos == []
    push_adapter(adapter, "me/x", token="hf_given")  # an explicit token is enough
    assert recording_hub.repos == ["me/x"]


def test_full_weights_folder_pushes_with_its_card(tiny_checkpoints, tmp_path, recording_hub):
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_vl"], dtype="float32")
    folder = tmp_path / "full"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_model_card(folder, CoordinateSpace("qwen2_vl", "qwen2_vl", 3136, 65536, finetuning="full"))
    push_adapter(folder, "me/full-ft")
    assert {"config.json", "model.safetensors", "README.md"} <= set(recording_hub.uploaded["me/full-ft"])


def test_merge_verifies_every_module_and_reloads(tiny_checkpoints, tmp_path, family):
    adapter = _save_adapter(tiny_checkpoints[family], tmp_path / "adapter")
    report = merge_adapter(tiny_checkpoints[family], adapter, tmp_path / "merged")
    assert report["merged_modules"] == 14 and report["zero_delta_modules"] == []
    assert report["max_logit_diff"] < 1e-3
    assert (tmp_path / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "merged" / "merge_report.json").read_text())["merged_modules"] == 14


def _train_config(tiny_dir: str, tmp_path, **extra) -> dict:
    from eagle_align.data import generate_synthetic

    data = generate_synthetic(tmp_path / "data", 4, seed=0, preset="shortcut", split="train")
    return dict(model_name_or_path=tiny_dir, train_data=str(data), output_dir=str(tmp_path / "out"),
                max_steps=1, per_device_train_batch_size=2, save_strategy="no", report_to="none", bf16=False,
                dtype="float32", alignment=False, max_pixels=65536, dataloader_num_workers=0, **extra)


def test_full_finetuning_output_has_its_own_card_and_pushes(tiny_checkpoints, tmp_path, recording_hub):
    from eagle_align.families import read_coordinate_space
    from eagle_align.train import run_training

    config = _train_config(tiny_checkpoints["qwen3_vl"], tmp_path, finetuning="full", push_to_hub=True,
                           hub_model_id="me/full-ft", base_model_id="Qwen/Qwen3-VL-2B-Instruct")
    run_training(config)
    out = tmp_path / "out"
    header = read_card_header(out / "README.md")
    body = (out / "README.md").read_text()
    assert header["library_name"] == "transformers" and "lora" not in header["tags"]
    assert "lora_r" not in body and "peft" not in body.lower() and "fully fine-tuned" in body
    assert read_coordinate_space(out).finetuning == "full"
    assert {"model.safetensors", "config.json", "README.md", "eagle_align.json", "trainer_state.json",
            "alignment_state.json"} <= set(recording_hub.uploaded["me/full-ft"])


def test_push_to_hub_is_checked_before_training(tiny_checkpoints, tmp_path, monkeypatch):
    from eagle_align.train import run_training

    _logged_out(monkeypatch, tmp_path)
    config = _train_config(tiny_checkpoints["qwen3_vl"], tmp_path, push_to_hub=True, hub_model_id="me/x")
    with pytest.raises(UsageError, match="needs a Hub token"):
        run_training(config)
    assert not (tmp_path / "out").exists()  # nothing was trained (or written) first


def _one_line_exit_2(argv, capsys, *expected) -> str:
    from eagle_align.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert lines[0].startswith(f"eagle-align {argv[0]}: ") and len(lines) <= 2 and "Traceback" not in err, err
    for words in expected:
        assert words in err, (words, err)
    return err


def test_push_command_failures_are_one_line_and_keep_the_folder(tiny_checkpoints, tmp_path, monkeypatch, capsys,
                                                                recording_hub):
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    adapter = _save_adapter(tiny_checkpoints["qwen2_vl"], tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}
    capsys.readouterr()
    recording_hub.fail = True  # the upload itself fails (503)
    _one_line_exit_2(["push", str(adapter), "--repo-id", "me/x"], capsys, "failed (503 Service Unavailable)",
                     f"the local folder {adapter} is intact", "eagle-align push")

    def unreachable(self, **kwargs):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution\n(and sixty lines of httpx)")

    monkeypatch.setattr(HfApi, "whoami", unreachable)
    err = _one_line_exit_2(["push", str(adapter), "--repo-id", "me/x"], capsys, "the Hub cannot be reached",
                           "name resolution")
    assert "sixty lines" not in err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _one_line_exit_2(["push", str(adapter), "--repo-id", "me/x"], capsys, "HF_HUB_OFFLINE=1")
    assert recording_hub.repos == ["me/x"]  # only the first try got as far as the Hub
    assert {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()} == before


def test_push_to_hub_offline_is_refused_before_training(tiny_checkpoints, tmp_path, monkeypatch, capsys,
                                                        recording_hub):
    import huggingface_hub.constants
    import yaml
    from transformers import AutoModelForImageTextToText

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the push check")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", no_weights)
    config = _train_config(tiny_checkpoints["qwen3_vl"], tmp_path, push_to_hub=True, hub_model_id="me/x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(config))
    _one_line_exit_2(["train", str(recipe)], capsys, "pushing needs the Hub, but HF_HUB_OFFLINE=1")
    assert not (tmp_path / "out").exists() and recording_hub.repos == []


def test_card_names_the_system_prompt_the_chat_template_adds(tiny_checkpoints):
    from eagle_align.families import FAMILIES, load_processor

    for name, family in FAMILIES.items():
        # The registry's note agrees with what the family's chat template renders without a system turn.
        processor = load_processor(tiny_checkpoints[name])
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                             tokenize=False)
        if family.template_system_prompt:
            assert f"<|im_start|>system\n{family.template_system_prompt}<|im_end|>" in text
        else:
            assert "<|im_start|>system" not in text
        body = build_model_card(CoordinateSpace(name, family.default_action_format, 3136, 65536)).text
        line = next(line for line in body.splitlines() if line.startswith("- system prompt:"))
        if family.template_system_prompt:
            assert line == f"- system prompt: none (the chat template's default: {family.template_system_prompt})"
        else:
            assert line == "- system prompt: none (the chat template adds none)"
    given = build_model_card(CoordinateSpace("qwen2_vl", "qwen2_vl", 3136, 65536, system_prompt="Be brief.")).text
    assert "- system prompt: `Be brief.`" in given
