"""PriorAlignedTrainer on a tiny real checkpoint with real PEFT LoRA: schedule, logs, SFT equivalence, weighting."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from scripts.ddp_align import examples  # the same small screens the DDP test trains on
from transformers import Trainer, TrainingArguments

from eagle_align.alignment import build_alignment_examples, deviation_loss, necessity_loss, redundancy_loss
from eagle_align.attribution import (
    DecisionScorer,
    attribute_sample,
    baseline_row,
    make_partition,
    slice_sample,
)
from eagle_align.config import PRESETS
from eagle_align.data.collator import GroundingCollator
from eagle_align.experimental import ExperimentalAlignmentConfig
from eagle_align.families import get_family, load_model_and_processor
from eagle_align.families.lora import apply_lora
from eagle_align.trainer import ALIGNMENT_STATE_FILE, PriorAlignedConfig, PriorAlignedTrainer, dropout_off

FAMILY = "qwen2_5_vl"
# The paper's method (both losses, so every code path runs) on 16 regions with a cheap search.
FAST = dict(preset="paper", n_regions=16, max_regions=3, search="exact", selection="all",
            attribution_batch_size=32, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
            learning_rate=1e-3, seed=0)


@pytest.fixture
def lora_setup(tiny_checkpoints):
    torch.manual_seed(0)
    model, processor = load_model_and_processor(tiny_checkpoints[FAMILY], dtype="float32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    return model, processor, GroundingCollator(processor, get_family(FAMILY).default_action_format)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config(tmp_path, **overrides) -> ExperimentalAlignmentConfig:
    """The experimental config (a superset of PriorAlignedConfig), so the experimental terms are tested too."""
    return ExperimentalAlignmentConfig(output_dir=str(tmp_path / "run"), **{**FAST, **overrides})


def test_config_defaults_are_the_settings_measured_best():
    """The default method (the demo recipe's), not the paper's; the experimental defaults reproduce it."""
    cfg = PriorAlignedConfig(output_dir="unused", report_to="none")
    assert (cfg.loss_variant, cfg.baseline, cfg.region_method, cfg.n_regions) == ("log", "background", "slic", 16)
    assert (cfg.insertion_weight, cfg.deletion_weight, cfg.lambda_deviation, cfg.lambda_redundancy) == (0.0, 1.0, 2.0, 0.0)
    assert cfg.min_box_sufficiency == 0.5 and cfg.max_blank_share == 0.95  # beyond the paper (paper: None)
    assert cfg.search == "bounded" and cfg.ranked_regions == 1  # deviation only: the gate reads rank 1
    assert (cfg.align_every, cfg.min_confidence, cfg.box_overlap, cfg.max_regions) == (5, 0.75, 0.15, 10)
    assert (cfg.score_reduction, cfg.alignment) == ("mean", True)
    assert cfg.remove_unused_columns is False and cfg.preset is None
    assert cfg.preset_description() == "none (eagle-align's defaults)"
    assert [t.kind for t in cfg.policies().terms] == ["deviation", "redundancy"]
    assert [g.scope for g in cfg.policies().gates] == ["step", "step"]
    experimental = ExperimentalAlignmentConfig(output_dir="unused", report_to="none")
    assert [(t.kind, t.weight) for t in experimental.policies().terms] == [(t.kind, t.weight) for t in cfg.policies().terms]
    assert experimental.method_settings().items() >= cfg.method_settings().items()


def test_core_config_holds_only_the_method_core():
    """Settings beyond the paper that the comparison has not validated are experimental, not core."""
    core = set(PriorAlignedConfig.method_fields())
    for name in ("lambda_necessity", "deviation_margin", "box_gate_scope", "selection", "adaptive_beta",
                 "search_scope", "resort_every", "stop_confidence", "prior_overlap", "prior_hit_k"):
        assert name not in core
    assert len(core) == 22
    with pytest.raises(TypeError):
        PriorAlignedConfig(output_dir="unused", report_to="none", lambda_necessity=1.0)
    with pytest.raises(ValueError, match="loss_variant"):
        PriorAlignedConfig(output_dir="unused", report_to="none", loss_variant="adaptive_log")


@pytest.mark.parametrize("cls", [PriorAlignedConfig, ExperimentalAlignmentConfig])
def test_every_setting_says_what_it_does_in_one_short_help_string(cls):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in cls.method_fields():
        text = fields[name].metadata.get("help", "")
        assert 0 < len(text) <= 200, (name, text)


def test_a_dataclass_subclass_keeps_the_preset():
    @dataclasses.dataclass
    class MyConfig(PriorAlignedConfig):
        my_option: int = 1

    cfg = MyConfig(output_dir="unused", report_to="none", preset="paper", lambda_deviation=3.0)
    assert (cfg.search, cfg.n_regions, cfg.baseline, cfg.lambda_redundancy) == ("efficient", 64, "black", 0.5)
    assert cfg.lambda_deviation == 3.0 and cfg.my_option == 1  # explicit settings win
    assert dataclasses.replace(cfg, learning_rate=0.5).lambda_deviation == 3.0  # copies keep the resolved values


# Every method setting of the paper, written out here independently of eagle_align.config.PRESETS.
PAPER = dict(
    align_every=5, align_start_step=0, lambda_deviation=0.5, lambda_redundancy=0.5, loss_variant="paper",
    insertion_weight=2.0, deletion_weight=1.0, min_confidence=0.75, box_overlap=0.15, n_regions=64,
    region_method="grid", search="efficient", max_regions=10, baseline="black", score_reduction="mean",
    min_box_sufficiency=None, max_blank_share=None,
)


def test_preset_paper_sets_every_paper_value_and_explicit_settings_win():
    cfg = PriorAlignedConfig(output_dir="unused", report_to="none", preset="paper")
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    assert PRESETS["paper"] == PAPER  # nothing beyond these settings
    assert cfg.preset_description() == "paper"
    # An explicit value wins, even one equal to the library default; the rest stays the paper's.
    cfg = PriorAlignedConfig(output_dir="unused", report_to="none", preset="paper", n_regions=16, baseline="background")
    assert {k: getattr(cfg, k) for k in PAPER} == {**PAPER, "n_regions": 16, "baseline": "background"}
    assert cfg.preset_description() == "paper (changed: n_regions=16, baseline=background)"
    with pytest.raises(ValueError, match="preset"):
        PriorAlignedConfig(output_dir="unused", report_to="none", preset="eagle")


@pytest.mark.parametrize(
    "option, value",
    [("loss_variant", "l2"), ("search", "beam"), ("baseline", "white"), ("score_reduction", "max"),
     ("selection", "some"), ("region_method", "voronoi"), ("align_every", 0), ("loss_chunk_size", 1),
     ("loss_chunk_size", 3), ("min_confidence", 1.5), ("box_overlap", -0.1), ("adaptive_beta", 0.0),
     ("lambda_deviation", -1.0),
     ("max_aligned_per_step", 0), ("remove_unused_columns", True),
     ("deviation_margin", -0.1), ("deviation_margin", 0.1),  # the second: the default search is not single_round
     ("min_box_sufficiency", -0.1), ("max_blank_share", 0.0), ("necessity_floor", "one"), ("necessity_gate", "later"),
     ("necessity_removes", "cells"), ("box_gate_scope", "batch"), ("blank_gate_scope", "all")],
)
def test_config_rejects_bad_values_naming_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        ExperimentalAlignmentConfig(output_dir="unused", report_to="none", **{option: value})


def test_box_evidence_necessity_gate_needs_the_box_gates_share():
    with pytest.raises(ValueError, match="necessity_gate=box_evidence .*min_box_sufficiency"):
        ExperimentalAlignmentConfig(output_dir="unused", report_to="none", necessity_gate="box_evidence",
                           min_box_sufficiency=None)


def test_alignment_only_on_alignment_steps_and_parameters_move(lora_setup, tmp_path):
    model, processor, collator = lora_setup
    before = lora_state(model)
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=4, align_every=2, save_strategy="steps",
                 save_steps=4)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(8), data_collator=collator,
                                  processing_class=processor)
    trainer.train()
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert sorted(logs) == [1, 2, 3, 4]
    for step in (1, 3):
        assert not any(k.startswith("align/") for k in logs[step]), logs[step]
    for step in (2, 4):
        log = logs[step]
        assert log["align/selected"] == 2 and log["align/attribution_forwards"] > 0
        assert log["align/deviation_examples"] + log["align/redundancy_examples"] > 0
        assert any(k in log for k in ("align/loss_deviation", "align/loss_redundancy"))
        assert 0.0 <= log["align/point_game"] <= 1.0 and "align/box_hit@3" in log
    after = lora_state(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.isfinite(p).all() for p in after.values())
    saved = json.loads((tmp_path / "run" / "checkpoint-4" / ALIGNMENT_STATE_FILE).read_text())
    assert saved["alignment_steps"] == 2 and saved["selected"] == 4

    resumed = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(8), data_collator=collator,
                                  processing_class=processor)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert resumed.alignment_state["alignment_steps"] == 2


class DropMeta:
    """A plain Trainer cannot take the collator's `meta`; the reference run drops it."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, batch):
        out = self.collator(batch)
        out.pop("meta")
        return out


def test_alignment_off_is_exactly_plain_sft(lora_setup, tmp_path):
    model, processor, collator = lora_setup
    reference_model = copy.deepcopy(model)
    common = dict(per_device_train_batch_size=2, max_steps=3, report_to="none", use_cpu=True, save_strategy="no",
                  logging_steps=1, learning_rate=1e-3, seed=0, remove_unused_columns=False)
    ours = PriorAlignedTrainer(model=model, args=PriorAlignedConfig(output_dir=str(tmp_path / "a"), alignment=False,
                               align_every=1, **common), train_dataset=examples(6), data_collator=collator)
    ours.train()
    plain = Trainer(model=reference_model, args=TrainingArguments(output_dir=str(tmp_path / "b"), **common),
                    train_dataset=examples(6), data_collator=DropMeta(collator))
    plain.train()
    losses = [h["loss"] for h in ours.state.log_history if "loss" in h]
    assert losses == [h["loss"] for h in plain.state.log_history if "loss" in h]
    a, b = lora_state(model), lora_state(reference_model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def _manual_alignment_grads(model, batch, cfg, removed: list | None = None) -> dict[str, torch.Tensor]:
    """λ·mean(L_dev) + λ·mean(L_red) (+ λ·mean(L_nec)) over the whole batch in one graph, from the same
    attributions; `removed` collects each necessity example's (removed cells, box cells)."""
    dev, red, nec = [], [], []
    weights = dict(insertion_weight=cfg.insertion_weight, deletion_weight=cfg.deletion_weight)
    model.zero_grad()
    for i in range(batch["input_ids"].shape[0]):
        sample = slice_sample(batch, i)
        row = baseline_row(model, cfg.baseline, sample["pixel_values"], sample["image_grid_thw"])
        att = attribute_sample(model, batch, i, cfg.attribution_settings(), baselines=row,
                               max_regions=cfg.max_regions, stop_confidence=0.8)
        built = build_alignment_examples(att, batch["meta"][i].box_mask, cfg.policies().terms, cfg.box_overlap,
                                         **weights)
        if removed is not None and built.of_kind("necessity"):
            removed.append((built.keep_cells(built.of_kind("necessity"))[0][0], batch["meta"][i].box_mask.bool()))
        if not built.examples:
            continue
        model.eval()
        insert, delete = built.keep_cells()
        scorer = DecisionScorer(model, sample, batch["meta"][i], row)
        probs = scorer.score(torch.cat([insert, delete]), grad=True)
        blank = scorer.score(torch.zeros(1, *scorer.grid_hw, dtype=torch.bool))[0]
        floor = blank if cfg.necessity_floor == "blank" else 0.0
        n = len(built.examples)
        for j, example in enumerate(built.examples):
            if example.kind == "deviation":
                dev.append(deviation_loss(probs[j], probs[n + j], cfg.loss_variant, **weights))
            elif example.kind == "necessity":
                nec.append(necessity_loss(probs[n + j], cfg.loss_variant, reference=floor))
            else:
                red.append(redundancy_loss(probs[j], probs[n + j], torch.tensor(example.prev_p_insert),
                                           torch.tensor(example.prev_p_delete), cfg.loss_variant, **weights))
    assert dev and red and (nec or not cfg.lambda_necessity)
    loss = cfg.lambda_deviation * torch.stack(dev).mean() + cfg.lambda_redundancy * torch.stack(red).mean()
    if nec:
        loss = loss + cfg.lambda_necessity * torch.stack(nec).mean()
    loss.backward()
    model.train()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _lora_b_off_zero(model) -> None:
    """Move LoRA B off zero so every LoRA weight receives gradient."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)


def test_chunked_alignment_gradient_equals_the_batch_mean_loss(lora_setup, tmp_path):
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    cfg = config(tmp_path, per_device_train_batch_size=3, loss_chunk_size=2)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(3), data_collator=collator)
    batch = collator(examples(3))
    expected = _manual_alignment_grads(model, batch, cfg)
    model.zero_grad()
    model.train()
    trainer._align(model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
    logged = trainer._alignment_metrics
    assert logged["align/loss_forwards"][0] == 2 * (logged["align/deviation_examples"][0]
                                                     + logged["align/redundancy_examples"][0])
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in expected.values())


@pytest.mark.parametrize(("floor", "removes"), [("zero", "box"), ("blank", "box"), ("blank", "on_box_regions")])
def test_necessity_term_and_deletion_only_forwards_give_the_batch_mean_loss(lora_setup, tmp_path, floor, removes):
    """λ_nec·mean(−log(1 − ReLU(P(x_¬B) − floor))) joins the other means, the floor 0 or P(x_∅) of a blank
    screen, ¬B the box's cells or its on-box regions removed; with a = 0 no insertion is scored (one input per
    term)."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    cfg = config(tmp_path, per_device_train_batch_size=3, loss_chunk_size=2, insertion_weight=0.0,
                 loss_variant="log", lambda_necessity=1.0, necessity_gate="always", necessity_floor=floor,
                 necessity_removes=removes)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(3), data_collator=collator)
    batch = collator(examples(3))
    removed = []
    expected = _manual_alignment_grads(model, batch, cfg, removed)
    # The 16-region grid cuts through these boxes, so on-box regions reach past the box's cells.
    assert any(not torch.equal(cells, box) for cells, box in removed) == (removes == "on_box_regions")
    model.zero_grad()
    model.train()
    trainer._align(model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
    logged = trainer._alignment_metrics
    assert logged["align/necessity_examples"] == [3.0]  # one per sample: every box covers some cells, not all
    assert logged["align/loss_forwards"][0] == (logged["align/deviation_examples"][0]
                                                + logged["align/redundancy_examples"][0] + 3)
    assert logged["align/loss_necessity"][0] > 0 or floor == "blank"
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4)
    assert trainer.alignment_state["necessity_examples"] == 3


def _kept_and_full(model, batch, tmp_path, keep_cells) -> tuple[list[float], list[float]]:
    """P(x_keep) and P(x) of every sample, measured with scorers of their own."""
    base = config(tmp_path, per_device_train_batch_size=4, lambda_necessity=1.0)
    kept, full = [], []
    model.eval()
    for i, meta in enumerate(batch["meta"]):
        sample = slice_sample(batch, i)
        row = baseline_row(model, base.baseline, sample["pixel_values"], sample["image_grid_thw"])
        scorer = DecisionScorer(model, sample, meta, row)
        kept.append(float(scorer.score(keep_cells(meta, scorer)[None])[0]))
        full.append(scorer.full_prob())
    return kept, full


def _ratios_and_split(model, batch, tmp_path, keep_cells) -> tuple[list[float], float, float]:
    """P(x_keep)/P(x) of every sample, a threshold in their widest gap, and the batch's share ΣP(x_keep)/ΣP(x)
    (what the step scope tests)."""
    kept, full = _kept_and_full(model, batch, tmp_path, keep_cells)
    ratios = [k / f for k, f in zip(kept, full)]
    order = sorted(ratios)
    gap, threshold = max((b - a, (a + b) / 2) for a, b in zip(order, order[1:]))
    assert gap > 1e-3, f"ratios too close to split: {ratios}"
    return ratios, threshold, sum(kept) / sum(full)


def _gate_counts(model, collator, batch, tmp_path, **gates) -> dict[str, float]:
    """One alignment step of the batch under ``gates``: the samples each gate left out, and the necessity examples
    (one per sample the gates keep: the term on every such sample, whatever ranks first)."""
    trainer = PriorAlignedTrainer(model=model, args=config(tmp_path, per_device_train_batch_size=4,
                                                           lambda_necessity=1.0, necessity_gate="always", **gates),
                                  train_dataset=examples(4), data_collator=collator)
    model.train()
    trainer._align(model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
    model.zero_grad()
    gates_said = ("insufficient_boxes", "blank_clicks", "shortcut_boxes")
    # A gate that is off logs nothing: it left out no sample.
    counts = {k: trainer._alignment_metrics.get(f"align/{k}", [0.0])[0] for k in (*gates_said, "necessity_examples")}
    assert {k: trainer.alignment_state.get(k, 0.0) for k in gates_said} == {k: counts[k] for k in gates_said}
    return counts


def _box_cells(meta, scorer):
    return meta.box_mask


def _blank_cells(meta, scorer):
    return torch.zeros(scorer.grid_hw, dtype=torch.bool)


def test_box_sufficiency_gate_drops_the_samples_whose_box_alone_loses_the_click(lora_setup, tmp_path):
    """box_gate_scope sample: a sample is aligned only if P(x_B) ≥ m·P(x); the ratios are measured here with a scorer
    of their own and the threshold put between two of them, so the gate must split the batch exactly there."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    batch = collator(examples(4))
    ratios, threshold, _ = _ratios_and_split(model, batch, tmp_path, _box_cells)
    kept = sum(r >= threshold for r in ratios)
    off = _gate_counts(model, collator, batch, tmp_path, min_box_sufficiency=None, max_blank_share=None)
    assert off == {"insufficient_boxes": 0.0, "blank_clicks": 0.0, "shortcut_boxes": 0.0, "necessity_examples": 4.0}
    on = _gate_counts(model, collator, batch, tmp_path, min_box_sufficiency=threshold, max_blank_share=None,
                      box_gate_scope="sample")
    assert on == {"insufficient_boxes": float(4 - kept), "blank_clicks": 0.0, "shortcut_boxes": 0.0,
                  "necessity_examples": float(kept)}


def test_blank_gate_drops_the_samples_a_blank_screen_clicks_as_well(lora_setup, tmp_path):
    """blank_gate_scope sample: a sample is aligned only if P(x_∅) < m·P(x), with the threshold put between two
    measured ratios; the same forward gives the necessity floor, so the necessity examples are exactly the
    samples kept."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    batch = collator(examples(4))
    ratios, threshold, _ = _ratios_and_split(model, batch, tmp_path, _blank_cells)
    kept = sum(r < threshold for r in ratios)
    logged = _gate_counts(model, collator, batch, tmp_path, necessity_floor="blank", min_box_sufficiency=None,
                          max_blank_share=threshold, blank_gate_scope="sample")
    assert logged == {"blank_clicks": float(4 - kept), "necessity_examples": float(kept), "insufficient_boxes": 0.0,
                      "shortcut_boxes": 0.0}


def test_step_scope_reads_a_gate_failing_for_the_whole_step_as_the_models(lora_setup, tmp_path):
    """Step scopes (default): thresholds on either side of the batch's summed share ΣP(x_keep)/ΣP(x), each
    between it and a sample's own ratio, so that the sample scope would leave samples out in both cases.
    Box gate: a step that passes leaves out its failing samples; a step that fails leaves out none.
    Blank gate: a step that passes keeps every sample; a step that fails leaves out every one."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    batch = collator(examples(4))
    off = {"min_box_sufficiency": None, "max_blank_share": None}

    def thresholds(cells):
        ratios, _, share = _ratios_and_split(model, batch, tmp_path, cells)
        assert min(ratios) < share - 1e-4 and share + 1e-4 < max(ratios), (ratios, share)
        return ratios, (min(ratios) + share) / 2, (share + max(ratios)) / 2

    ratios, low, high = thresholds(_box_cells)  # the step passes below its share, fails above
    passes = _gate_counts(model, collator, batch, tmp_path, **{**off, "min_box_sufficiency": low})
    fails = _gate_counts(model, collator, batch, tmp_path, **{**off, "min_box_sufficiency": high})
    assert passes["insufficient_boxes"] == sum(r < low for r in ratios) > 0 and passes["shortcut_boxes"] == 0
    assert fails["insufficient_boxes"] == 0 and fails["necessity_examples"] == 4
    assert fails["shortcut_boxes"] == sum(r < high for r in ratios) > 0

    ratios, low, high = thresholds(_blank_cells)  # the step passes above its share, fails at or below
    passes = _gate_counts(model, collator, batch, tmp_path, **{**off, "max_blank_share": high})
    fails = _gate_counts(model, collator, batch, tmp_path, **{**off, "max_blank_share": low})
    assert sum(r >= high for r in ratios) > 0  # the sample scope would leave these out
    assert passes["blank_clicks"] == 0 and passes["necessity_examples"] == 4
    assert fails["blank_clicks"] == 4 and fails["necessity_examples"] == 0


def test_the_steps_gate_shares_are_logged(lora_setup, tmp_path):
    """align/box_share and align/blank_share are the step's ΣP(x_B)/ΣP(x) and ΣP(x_∅)/ΣP(x), what the step
    scopes test, logged under either scope (here with gates that pass everything)."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    batch = collator(examples(4))
    expected = {key: _ratios_and_split(model, batch, tmp_path, cells)[2]
                for key, cells in (("box_share", _box_cells), ("blank_share", _blank_cells))}
    for scope in ("step", "sample"):
        trainer = PriorAlignedTrainer(model=model, args=config(tmp_path, per_device_train_batch_size=4,
                                                               min_box_sufficiency=0.0, max_blank_share=100.0,
                                                               box_gate_scope=scope, blank_gate_scope=scope),
                                      train_dataset=examples(4), data_collator=collator)
        model.train()
        trainer._align(model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
        model.zero_grad()
        for key, share in expected.items():
            assert trainer._alignment_metrics[f"align/{key}"][0] == pytest.approx(share, rel=1e-3), (scope, key)
        assert trainer._alignment_metrics["align/insufficient_boxes"] == [0.0] and trainer._alignment_metrics["align/blank_clicks"] == [0.0]


def test_step_scope_sums_over_every_micro_batch_of_the_step(lora_setup, tmp_path):
    """Two micro-batches of one step: a blank-gate threshold between the step's share and the larger share of
    one micro-batch alone keeps both micro-batches (each tested alone, that one would be left out)."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    screens = examples(4)
    kept, full = _kept_and_full(model, collator(screens), tmp_path, _blank_cells)
    share = sum(kept) / sum(full)
    halves = [sum(kept[k : k + 2]) / sum(full[k : k + 2]) for k in (0, 2)]
    assert max(halves) > share + 1e-4, (halves, share)
    threshold = (share + max(halves)) / 2
    cfg = config(tmp_path, align_every=1, lambda_necessity=1.0, necessity_gate="always",
                 min_box_sufficiency=None, max_blank_share=threshold)
    trainer = PriorAlignedTrainer(model=model, args=cfg, data_collator=collator)
    _step_alignment_grads(trainer, model, [collator(screens[:2]), collator(screens[2:])])
    assert trainer._alignment_metrics["align/blank_clicks"] == [0.0, 0.0]
    assert trainer._alignment_metrics["align/necessity_examples"] == [2.0, 2.0]


def _step_alignment_grads(trainer, model, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
    """The alignment gradient of one optimizer step made of `micro_batches`, as train() runs it.

    get_batch_samples plans the whole step; each compute_loss back-propagates its micro-batch's alignment
    chunks and returns the SFT loss, which is not back-propagated here.
    """
    model.zero_grad()
    model.train()
    prepared, _ = trainer.get_batch_samples(iter(micro_batches), len(micro_batches), trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(prepared)  # as Trainer's loop sets it (SFT's 1/GA)
    for batch in prepared:
        trainer.compute_loss(model, trainer._prepare_inputs(batch))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_alignment_gradient_of_a_step_does_not_depend_on_gradient_accumulation(lora_setup, tmp_path):
    """λ·mean over the step's examples, whether it comes as one micro-batch of 4 or two of 2, one of them empty."""
    model, processor, collator = lora_setup
    _lora_b_off_zero(model)
    # A box over the whole screen makes every region on-box: those two samples give no alignment example.
    # Screens 0 and 4 give both kinds (a deviation and redundancy examples) with this seed.
    plain = examples(5)
    blank = [dataclasses.replace(e, bbox=(0, 0, *e.image_size), point=None) for e in plain[1:3]]
    screens = [*blank, plain[0], plain[4]]
    cfg = config(tmp_path, loss_chunk_size=2, align_every=1)
    trainer = PriorAlignedTrainer(model=model, args=cfg, data_collator=collator)
    expected = _manual_alignment_grads(model, collator(screens), cfg)
    one = _step_alignment_grads(trainer, model, [collator(screens)])
    trainer._alignment_metrics.clear()
    two = _step_alignment_grads(trainer, model, [collator(screens[:2]), collator(screens[2:])])
    counts = [d + r for d, r in zip(trainer._alignment_metrics["align/deviation_examples"],
                                    trainer._alignment_metrics["align/redundancy_examples"])]
    assert counts[0] == 0 and counts[1] > 0  # the first micro-batch had nothing to align
    for name, grad in expected.items():
        torch.testing.assert_close(one[name], grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(two[name], grad, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in expected.values())


def test_confident_correct_selection_matches_a_full_forward(tiny_checkpoints, tmp_path):
    model, processor = load_model_and_processor(tiny_checkpoints[FAMILY], dtype="float32")
    collator = GroundingCollator(processor, get_family(FAMILY).default_action_format)
    batch = collator(examples(4))
    inputs = {k: v for k, v in batch.items() if k != "meta"}
    # Memorise the first sample's answer so that the filter has something to accept. Adam at this rate
    # oscillates, so stop once the answer is learned rather than after a fixed step count.
    memorise = {k: v for k, v in collator(examples(1)).items() if k != "meta"}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        optimizer.zero_grad()
        loss = model(**memorise).loss
        if loss.item() < 0.02:
            break
        loss.backward()
        optimizer.step()
    trainer = PriorAlignedTrainer(model=model, args=config(tmp_path, selection="confident_correct", min_confidence=0.5),
                                  data_collator=collator)
    model.eval()
    with torch.no_grad():
        chosen, probs = trainer._select(model, inputs, batch["meta"])
        logits = model(**inputs).logits
    expected = []
    for i, meta in enumerate(batch["meta"]):
        rows = logits[i, meta.decision_positions - 1].softmax(-1)
        p = float(rows.gather(-1, meta.decision_token_ids[:, None]).mean())
        if torch.equal(rows.argmax(-1), meta.decision_token_ids) and p >= 0.5:
            expected.append(i)
            assert probs[i] == pytest.approx(p, abs=1e-5)
    assert chosen == expected and 0 in chosen


def test_gradient_checkpointing_bf16_and_nonfinite_terms_are_skipped(lora_setup, tmp_path):
    model, processor, collator = lora_setup
    lm_head = model.get_output_embeddings()

    def poison_masked_gradient_forwards(module, args, output):
        # Alignment loss chunks are the only forwards with gradient, several rows and logits at a few positions.
        if torch.is_grad_enabled() and output.shape[0] > 1 and output.shape[1] < 8:
            return output * float("nan")
        return output

    lm_head.register_forward_hook(poison_masked_gradient_forwards)
    before = lora_state(model)
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=2, align_every=1, bf16=True,
                 gradient_checkpointing=True)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(4), data_collator=collator)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["align/nonfinite_terms"] > 0 for h in logs)
    assert all(np.isfinite(h["loss"]) for h in logs)
    after = lora_state(model)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_dropout_off_switches_only_dropout(tiny_checkpoints):
    model, _ = load_model_and_processor(tiny_checkpoints[FAMILY], dtype="float32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.1, gradient_checkpointing=True)
    model.base_model.model.activation_checkpointing_enable()
    model.train()
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) or hasattr(m, "attention_dropout")]
    others = [m for m in model.modules() if not any(m is d for d in dropouts)]
    assert checkpointed and dropouts
    with dropout_off(model):
        assert not any(m.training for m in dropouts)
        assert all(m.training for m in others)  # checkpointed layers keep checkpointing
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(("lambda_redundancy", "loss_variant"), [(0.0, "log"), (0.5, "log"), (0.0, "adaptive_log")])
def test_single_round_measures_prefixes_only_when_redundancy_is_trained(lora_setup, tmp_path, lambda_redundancy,
                                                                        loss_variant):
    model, processor, collator = lora_setup
    cfg = config(tmp_path, search="single_round", lambda_redundancy=lambda_redundancy, loss_variant=loss_variant)
    trainer = PriorAlignedTrainer(model=model, args=cfg, data_collator=collator)
    batch = collator(examples(2))
    model.train()
    trainer._align(model, {k: v for k, v in batch.items() if k != "meta"}, batch["meta"])
    regions = [make_partition(m.grid_hw, cfg.n_regions).n_regions for m in batch["meta"]]
    # 2N singletons, plus both sides of prefixes 2..max_regions when redundancy is on; P(x) and P(x_∅) only for
    # adaptive_log, the one loss that reads P(x).
    prefixes = 2 * (cfg.max_regions - 1) if lambda_redundancy else 0
    ends = 2 if cfg.loss_variant == "adaptive_log" else 0
    assert trainer._alignment_metrics["align/attribution_forwards"] == [sum(2 * n + ends + prefixes for n in regions)]
    if not lambda_redundancy:
        assert trainer._alignment_metrics["align/redundancy_examples"] == [0.0]


def test_point_only_samples_train_as_sft_and_are_counted_not_aligned(lora_setup, tmp_path):
    """A record with a click point and no box gives the SFT loss, never an alignment term; align/no_box counts it."""
    model, processor, collator = lora_setup
    data = examples(4)
    for i in (1, 3):
        x0, y0, x1, y1 = data[i].bbox
        data[i] = dataclasses.replace(data[i], bbox=None, point=((x0 + x1) / 2, (y0 + y1) / 2))
    cfg = config(tmp_path, per_device_train_batch_size=4, max_steps=2, align_every=1)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=data, data_collator=collator,
                                  processing_class=processor)
    before = lora_state(model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "align/no_box" in h]
    assert [h["align/no_box"] for h in logs] == [2.0, 2.0]
    assert all(h["align/selected"] == 2.0 for h in logs)  # selection "all" takes every sample that has a box
    assert trainer.alignment_state["no_box"] == 4
    after = lora_state(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_backoff_doubles_the_interval_while_nothing_fires_and_returns_when_a_term_does(lora_setup, tmp_path):
    model, processor, collator = lora_setup
    # Nothing can be selected (P ≥ 1 is impossible): every alignment step applies no term, so the schedule backs off.
    idle = config(tmp_path, per_device_train_batch_size=2, max_steps=12, align_every=1, max_align_every=4,
                  selection="confident_correct", min_confidence=1.0)
    trainer = PriorAlignedTrainer(model=model, args=idle, train_dataset=examples(8), data_collator=collator)
    trainer.train()
    aligned = {h["step"]: h["align/interval"] for h in trainer.state.log_history if "align/interval" in h}
    # Logged at step s + 1 for the alignment step at global step s: 0, then 0 + 2, 2 + 4, 6 + 4.
    assert aligned == {1: 2.0, 3: 4.0, 7: 4.0, 11: 4.0}
    assert trainer.alignment_state["alignment_steps"] == 4

    busy = config(tmp_path, per_device_train_batch_size=2, max_steps=3, align_every=1, max_align_every=4)
    trainer = PriorAlignedTrainer(model=model, args=busy, train_dataset=examples(6), data_collator=collator)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["align/deviation_examples"] + h["align/redundancy_examples"] > 0 for h in logs), logs
    assert [h["align/interval"] for h in logs] == [1.0, 1.0, 1.0]
