"""Collated batches on the real processors (and models) of the tiny checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_vl_utils import smart_resize

from eagle_align.answer_formats import get_action_format
from eagle_align.data import DataError, GroundingCollator, GroundingExample, load_image, validate_example
from eagle_align.families import load_model_and_processor, load_processor, pixel_limits
from eagle_align.families.registry import default_action_format

SIZES_AND_BOXES = [((300, 180), (40, 30, 130, 75)), ((150, 260), (100, 200, 149, 259)), ((500, 120), (0, 0, 56, 28))]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("collator")
    rng = np.random.default_rng(0)
    out = []
    for i, (size, box) in enumerate(SIZES_AND_BOXES):
        path = root / f"s{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        example = GroundingExample(image=str(path), image_size=size, instruction=f"click the button {i}", bbox=box,
                                   id=f"ex{i}")
        out.append(validate_example(example, str(path)))
    return out


@pytest.fixture(scope="module")
def processors(tiny_checkpoints):
    return {name: load_processor(path) for name, path in tiny_checkpoints.items()}


def _real(row_mask: torch.Tensor) -> torch.Tensor:
    return row_mask.nonzero().flatten()


def test_labels_cover_exactly_the_answer(family, processors, examples):
    processor = processors[family]
    batch = GroundingCollator(processor, default_action_format(family))(examples)
    tokenizer = processor.tokenizer
    assert batch["labels"].shape == batch["input_ids"].shape
    for row, meta in enumerate(batch["meta"]):
        labelled = _real(batch["labels"][row] != -100)
        assert torch.equal(labelled, torch.arange(int(labelled[0]), int(labelled[-1]) + 1))  # one contiguous span
        assert tokenizer.decode(batch["labels"][row][labelled]) == meta.answer + "<|im_end|>"
        expected = tokenizer(meta.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert batch["input_ids"][row][labelled].tolist() == expected
        real = _real(batch["attention_mask"][row] == 1)
        assert int(labelled[-1]) == int(real[-1]) - 1  # only the template's trailing newline follows
        assert torch.equal(batch["labels"][row][labelled], batch["input_ids"][row][labelled])


def test_decision_positions_decode_to_coordinate_digits(family, processors, examples):
    processor = processors[family]
    fmt = default_action_format(family)
    batch = GroundingCollator(processor, fmt)(examples)
    for row, meta in enumerate(batch["meta"]):
        numbers = [meta.answer[s:e] for s, e in fmt.coordinate_spans(meta.answer)]
        decoded = processor.tokenizer.decode(batch["input_ids"][row][meta.decision_positions])
        assert decoded == "".join(numbers) and re.fullmatch(r"\d+", decoded)
        assert torch.equal(meta.decision_token_ids, batch["input_ids"][row][meta.decision_positions])
        assert (batch["labels"][row][meta.decision_positions] != -100).all()
        # The answer is the ground-truth point in the space of the size the model saw.
        point = fmt.parse(meta.answer, meta.image_size, meta.resized_size)
        unit = fmt.unit(meta.image_size, meta.resized_size)
        assert abs(point[0] - meta.example.point[0]) <= unit[0] and abs(point[1] - meta.example.point[1]) <= unit[1]


def test_box_mask_marks_exactly_the_touched_cells(family, processors, examples):
    processor = processors[family]
    batch = GroundingCollator(processor, default_action_format(family))(examples)
    cell = processor.image_processor.patch_size * processor.image_processor.merge_size
    for row, meta in enumerate(batch["meta"]):
        t, h, w = batch["image_grid_thw"][row].tolist()
        assert meta.grid_hw == (h // 2, w // 2) and meta.box_mask.shape == meta.grid_hw
        patch = processor.image_processor.patch_size
        assert meta.resized_size == (w * patch, h * patch)
        sx, sy = meta.resized_size[0] / meta.image_size[0], meta.resized_size[1] / meta.image_size[1]
        x1, y1, x2, y2 = meta.example.bbox
        assert meta.bbox_resized == pytest.approx((x1 * sx, y1 * sy, x2 * sx, y2 * sy))
        bx1, by1, bx2, by2 = meta.bbox_resized
        expected = torch.zeros(meta.grid_hw, dtype=torch.bool)
        for r in range(meta.grid_hw[0]):
            for c in range(meta.grid_hw[1]):
                expected[r, c] = bx1 < (c + 1) * cell and c * cell < bx2 and by1 < (r + 1) * cell and r * cell < by2
        assert torch.equal(meta.box_mask, expected)
        assert 0 < expected.sum() < expected.numel()


@pytest.mark.parametrize("inference", [False, True], ids=["train-right-pad", "inference-left-pad"])
def test_mm_token_type_ids_survive_padding_with_mixed_sizes(family, processors, examples, inference):
    processor = processors[family]
    batch = GroundingCollator(processor, default_action_format(family), inference=inference)(examples)
    grids = batch["image_grid_thw"]
    assert len({tuple(g.tolist()) for g in grids}) == len(examples)  # really mixed sizes
    assert batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # padding actually happened
    for row in range(len(examples)):
        types, ids, mask = batch["mm_token_type_ids"][row], batch["input_ids"][row], batch["attention_mask"][row]
        assert torch.equal(types == 1, ids == image_id)
        assert int(types.sum()) == int(grids[row].prod()) // 4
        assert (types[mask == 0] == 0).all()
        pads = _real(mask == 0)
        if pads.numel():  # left pads come first in inference, right pads last in training
            assert (int(pads[-1]) == pads.numel() - 1) if inference else (int(pads[0]) == int(lengths[row]))
    assert ("labels" in batch) is not inference


@pytest.mark.parametrize("inference", [False, True], ids=["train-right-pad", "inference-left-pad"])
def test_padded_batch_matches_single_samples_in_the_model(family, tiny_checkpoints, examples, inference):
    model, processor = load_model_and_processor(tiny_checkpoints[family], dtype="float32")
    model.eval()
    collator = GroundingCollator(processor, default_action_format(family), inference=inference)
    batch = collator(examples)
    inputs = {k: v for k, v in batch.items() if k != "meta"}
    with torch.no_grad():
        out = model(**inputs)
        if not inference:
            assert torch.isfinite(out.loss)
        for row, example in enumerate(examples):
            single = {k: v for k, v in collator([example]).items() if k not in ("meta", "labels")}
            alone = model(**single).logits[0]
            real = _real(batch["attention_mask"][row] == 1)
            assert torch.allclose(out.logits[row][real], alone, atol=2e-4), f"row {row} differs after padding"


def test_truncation_into_image_tokens_raises(processors, examples):
    processor = processors["qwen3_vl"]
    fmt = get_action_format("qwen3_vl")
    full = GroundingCollator(processor, fmt)([examples[0]])["input_ids"].shape[1]
    with pytest.raises(DataError, match=r"ex0.*image tokens"):
        GroundingCollator(processor, fmt, max_length=12)([examples[0]])
    with pytest.raises(DataError, match=r"ex0.*coordinate tokens"):
        GroundingCollator(processor, fmt, max_length=full - 6)([examples[0]])
    prompt = GroundingCollator(processor, fmt, inference=True)([examples[0]])["input_ids"].shape[1]
    with pytest.raises(DataError, match="end of the prompt"):
        GroundingCollator(processor, fmt, max_length=prompt - 1, inference=True)([examples[0]])
    cut = GroundingCollator(processor, fmt, max_length=full - 1)([examples[0]])  # only the final newline goes
    assert cut["input_ids"].shape[1] == full - 1 and cut["mm_token_type_ids"].shape[1] == full - 1
    with pytest.raises(ValueError, match="max_length=0"):
        GroundingCollator(processor, fmt, max_length=0)


@pytest.mark.parametrize("size", [(30, 20), (1000, 90), (2000, 1500), (333, 777), (64, 64)])
def test_qwen_vl_utils_pre_resize_matches_processor_metadata(family, processors, tmp_path, size):
    processor = processors[family]
    path = tmp_path / "img.png"
    Image.new("RGB", size, (10, 200, 30)).save(path)
    example = validate_example(GroundingExample(image=str(path), image_size=size, instruction="click it",
                                                bbox=(0, 0, size[0] / 2, size[1] / 2), id="pin"), "pin")
    min_pixels, max_pixels = pixel_limits(processor)
    patch = processor.image_processor.patch_size
    pre = load_image(example, min_pixels, max_pixels, patch_size=patch)
    height, width = smart_resize(size[1], size[0], factor=patch * 2, min_pixels=min_pixels, max_pixels=max_pixels)
    meta = GroundingCollator(processor, default_action_format(family))([example])["meta"][0]
    assert pre.size == (width, height) == meta.resized_size


def test_inference_mode_and_system_prompt(processors, examples):
    processor = processors["qwen2_5_vl"]
    collator = GroundingCollator(processor, "qwen2_5_vl", system_prompt="You are a GUI agent.", inference=True)
    batch = collator(examples[:2])
    for row, meta in enumerate(batch["meta"]):
        assert meta.answer == "" and meta.decision_positions.numel() == 0
        text = processor.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row] == 1])
        assert text.startswith("<|im_start|>system\nYou are a GUI agent.")
        assert text.endswith("<|im_start|>assistant\n")
    train = GroundingCollator(processor, "qwen2_5_vl", system_prompt="You are a GUI agent.")(examples[:1])
    labelled = processor.tokenizer.decode(train["labels"][0][train["labels"][0] != -100])
    assert "GUI agent" not in labelled and labelled.startswith('{"action": "click"')


def test_bad_batches_raise_data_errors(processors, examples, tmp_path):
    collator = GroundingCollator(processors["qwen2_vl"], "qwen2_vl")
    with pytest.raises(DataError, match="empty batch"):
        collator([])
    missing = GroundingExample(image=str(tmp_path / "gone.png"), image_size=(10, 10), instruction="x",
                               bbox=(0, 0, 5, 5), id="lost-1")
    with pytest.raises(DataError, match="lost-1"):
        collator([examples[0], missing])


def test_skip_mode_leaves_out_examples_that_do_not_decode(processors, examples, tmp_path):
    import dataclasses

    cut = tmp_path / "cut.png"
    data = open(examples[0].image, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    bad = dataclasses.replace(examples[0], image=str(cut), id="cut")
    processor = processors["qwen2_vl"]
    with pytest.raises(DataError, match="example 'cut': cannot load image"):
        GroundingCollator(processor, "qwen2_vl")([examples[1], bad])
    collator = GroundingCollator(processor, "qwen2_vl", on_error="skip")
    with pytest.raises(DataError, match="no example of the batch could be used"):
        collator([bad])  # nothing good seen yet: nothing to stand in
    batch = collator([examples[1], bad])
    assert [m.id for m in batch["meta"]] == ["ex1"] and len(batch["skipped"]) == 1 and "'cut'" in batch["skipped"][0]
    alone = collator([bad])  # a batch left empty repeats the last good example, so the step still trains
    assert [m.id for m in alone["meta"]] == ["ex1"] and len(alone["skipped"]) == 1
    assert "skipped" not in collator([examples[2]])


def test_point_only_example_trains_its_click_with_no_box_mask(family, processors, examples):
    """A click with no box: the answer and its coordinate tokens as usual; no box, so no box mask."""
    boxed = examples[0]
    point_only = validate_example(
        GroundingExample(image=boxed.image, image_size=boxed.image_size, instruction="click it", bbox=None,
                         point=(85.0, 52.5), id="click-only"), "point-only")
    assert point_only.bbox is None
    batch = GroundingCollator(processors[family], default_action_format(family))([boxed, point_only])
    with_box, without = batch["meta"]
    assert with_box.box_mask is not None and with_box.box_mask.any()
    assert without.box_mask is None and without.bbox_resized is None
    assert without.decision_positions.numel() > 0
    # Same click, same answer: the box changes nothing the model is taught to write.
    assert without.answer == with_box.answer
