"""Box-guided crop augmentation: the box stays whole and keeps its pixels, the window's size and padding, the
determinism, the collator's training-only hook, the recipe's `augment` key and a training run with it on."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from cli_checks import fails_in_one_line
from PIL import Image

from eagle_align.data import BoxGuidedCrop, GroundingCollator, GroundingExample, generate_synthetic
from eagle_align.families import load_processor
from eagle_align.families.registry import default_action_format
from eagle_align.train import load_config, parse_config, run_training

GREEN = (0, 255, 0)
SIZE = (200, 120)
BOX = (50, 40, 90, 70)


def _screen(size=SIZE, box=BOX, point=None, with_box: bool = True, id: str = "ex") -> GroundingExample:
    """A noise screenshot with a pure green box at `box` (a point-only example when `with_box` is False)."""
    pixels = np.random.default_rng(0).integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = GREEN
    return GroundingExample(image=Image.fromarray(pixels), image_size=size, instruction="click the green box",
                            bbox=box if with_box else None, point=point, id=id)


def _views(crop: BoxGuidedCrop, example: GroundingExample, n: int) -> list[GroundingExample]:
    return [crop(example) for _ in range(n)]


def test_the_box_stays_whole_and_shows_the_same_pixels_as_the_original():
    original = np.asarray(_screen().image)
    for view in _views(BoxGuidedCrop(probability=1.0, seed=3), _screen(), 60):
        x1, y1, x2, y2 = view.bbox
        width, height = view.image_size
        assert view.image.size == (width, height)
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height  # fully inside the new image
        pixels = np.asarray(view.image)
        assert (pixels[y1:y2, x1:x2] == GREEN).all()  # the remapped box is where the green box went
        left, top, right, bottom = view.extra["box_guided_crop"]["window"]
        assert (right - left, bottom - top) == (width, height)
        assert view.point == ((x1 + x2) / 2, (y1 + y2) / 2)  # the click moved with the box
        # Wherever the window covers the original image, the new image is that part of it.
        ox1, oy1, ox2, oy2 = max(left, 0), max(top, 0), min(right, SIZE[0]), min(bottom, SIZE[1])
        assert np.array_equal(pixels[oy1 - top:oy2 - top, ox1 - left:ox2 - left], original[oy1:oy2, ox1:ox2])
        assert view.instruction == "click the green box" and view.id == "ex"


def test_the_window_size_stays_within_the_scale_range():
    views = _views(BoxGuidedCrop(probability=1.0, seed=0), _screen(), 200)
    widths = [v.image_size[0] / SIZE[0] for v in views]
    heights = [v.image_size[1] / SIZE[1] for v in views]
    assert min(widths) >= 0.5 and max(widths) <= 1.5 and min(heights) >= 0.5 and max(heights) <= 1.5
    assert min(widths) < 0.7 and max(widths) > 1.3  # the whole range is used, per axis
    assert any(w < 1 < h for w, h in zip(widths, heights))  # the axes are drawn independently
    narrow = _views(BoxGuidedCrop(probability=1.0, scale=(0.8, 0.9), seed=0), _screen(), 50)
    assert all(0.8 * SIZE[0] <= v.image_size[0] <= 0.9 * SIZE[0] for v in narrow)


def test_probability_zero_is_the_identity_and_a_half_crops_about_half():
    example = _screen()
    assert all(view is example for view in _views(BoxGuidedCrop(probability=0.0), example, 20))
    half = _views(BoxGuidedCrop(probability=0.5, seed=1), example, 200)
    cropped = sum(view is not example for view in half)
    assert 70 < cropped < 130


def test_a_window_larger_than_the_image_pads_it_and_holds_all_of_it():
    example = _screen()
    view = BoxGuidedCrop(probability=1.0, scale=(1.5, 1.5), pad_colour=(255, 0, 255), seed=0)(example)
    assert view.image_size == (300, 180)
    left, top, _, _ = view.extra["box_guided_crop"]["window"]
    assert -100 <= left <= 0 and -60 <= top <= 0
    pixels = np.asarray(view.image)
    inside = np.zeros(pixels.shape[:2], dtype=bool)
    inside[-top:-top + SIZE[1], -left:-left + SIZE[0]] = True
    assert np.array_equal(pixels[inside].reshape(SIZE[1], SIZE[0], 3), np.asarray(example.image))
    assert (pixels[~inside] == (255, 0, 255)).all()


def test_a_box_that_cannot_fit_the_window_leaves_the_example_as_it_is():
    example = _screen(box=(10, 10, 190, 110))
    assert all(view is example for view in _views(BoxGuidedCrop(probability=1.0, scale=(0.5, 0.6)), example, 10))


def test_a_point_only_example_keeps_its_point_inside():
    example = _screen(point=(120.5, 80.25), with_box=False)
    for view in _views(BoxGuidedCrop(probability=1.0, seed=2), example, 60):
        x, y = view.point
        assert view.bbox is None and 0 <= x < view.image_size[0] and 0 <= y < view.image_size[1]
        left, top, _, _ = view.extra["box_guided_crop"]["window"]
        assert (x + left, y + top) == (120.5, 80.25)


def test_views_repeat_per_seed_example_and_draw_and_differ_between_draws():
    def windows(seed: int, example_id: str) -> list:
        crop = BoxGuidedCrop(probability=1.0, seed=seed)
        return [v.extra["box_guided_crop"]["window"] for v in _views(crop, _screen(id=example_id), 5)]

    assert windows(0, "a") == windows(0, "a")
    assert windows(0, "a") != windows(1, "a") and windows(0, "a") != windows(0, "b")
    assert len({tuple(w) for w in windows(0, "a")}) > 1  # a new view on every epoch


def test_bad_settings_name_the_setting():
    for settings, words in ((dict(probability=1.5), "probability=1.5"), (dict(scale=(1.5, 0.5)), "scale="),
                            (dict(scale=(0, 1)), "scale="), (dict(pad_colour=(0, 0, 300)), "pad_colour=")):
        with pytest.raises(ValueError, match=words):
            BoxGuidedCrop(**settings)


@pytest.fixture(scope="module")
def processors(tiny_checkpoints):
    return {name: load_processor(path) for name, path in tiny_checkpoints.items()}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_the_rendered_answer_of_a_crop_lands_in_the_moved_box_in_every_format(processors, family):
    fmt = default_action_format(family)
    collator = GroundingCollator(processors[family], fmt, augment=BoxGuidedCrop(probability=1.0, seed=0))
    examples = [_screen(box=box, id=f"ex{i}") for i, box in enumerate([BOX, (0, 0, 30, 20), (150, 90, 200, 120)])]
    for _ in range(4):
        for meta in collator(examples)["meta"]:
            example = meta.example
            assert "box_guided_crop" in example.extra and meta.image_size == example.image_size
            x, y = fmt.parse(meta.answer, meta.image_size, meta.resized_size)
            x1, y1, x2, y2 = example.bbox
            assert x1 <= x <= x2 and y1 <= y <= y2, (meta.answer, example.bbox)
            assert tuple(np.asarray(example.image)[int(y), int(x)]) == GREEN


def test_inference_mode_never_augments(processors):
    def refuse(example):
        raise AssertionError("augment called in inference mode")

    example = _screen()
    collator = GroundingCollator(processors["qwen3_vl"], "qwen3_vl", inference=True, augment=refuse)
    assert collator([example])["meta"][0].example is example


def _recipe_config(tmp_path, **keys) -> dict:
    return {"model_name_or_path": "Qwen/Qwen3-VL-2B-Instruct", "train_data": str(tmp_path / "t.jsonl"),
            "report_to": "none", "output_dir": str(tmp_path / "out"), **keys}


def test_the_recipe_option_parses_into_a_seeded_crop(tmp_path):
    augment = {"kind": "box_crop", "probability": 0.25, "scale": [0.6, 1.4], "pad_colour": [9, 9, 9]}
    _, data_args, _, training_args = parse_config(load_config(None, _recipe_config(tmp_path, augment=augment,
                                                                                   seed=7)))
    crop = data_args.augmenter(training_args.seed)
    assert isinstance(crop, BoxGuidedCrop)
    assert (crop.probability, crop.scale, crop.pad_colour, crop.seed) == (0.25, (0.6, 1.4), (9, 9, 9), 7)
    _, off, _, _ = parse_config(load_config(None, _recipe_config(tmp_path)))
    assert off.augment is None and off.augmenter(0) is None


@pytest.mark.parametrize("value, words", [
    ("box_crop", "augment='box_crop' must be null or a mapping"),
    ({"kind": "blur"}, "augment: kind='blur'; choose one of box_crop"),
    ({"kind": "box_crop", "probability": 2}, "augment: probability=2 must be a number within [0, 1]"),
    ({"kind": "box_crop", "scale": [1.5, 0.5]}, "augment: scale=[1.5, 0.5] must be [low, high]"),
    ({"kind": "box_crop", "size": 3}, "augment: unknown key 'size'; box_crop takes probability, scale, pad_colour"),
])
def test_bad_recipe_values_exit_with_one_line_before_any_model_loads(tmp_path, capsys, value, words):
    train = generate_synthetic(tmp_path / "data", 2, seed=0)
    empty = tmp_path / "empty-model"  # loading it would fail with another message: the option is checked first
    empty.mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": str(empty), "train_data": str(train), "report_to": "none",
                                      "output_dir": str(tmp_path / "out"), "augment": value}))
    fails_in_one_line(["train", str(recipe)], capsys, words)


def test_a_training_run_with_box_crops_trains_and_logs(tiny_checkpoints, tmp_path):
    train = generate_synthetic(tmp_path / "data", 8, seed=0, cue_fraction=1.0)
    config = load_config("tiny_synthetic_cpu", {
        "model_name_or_path": tiny_checkpoints["qwen3_vl"], "train_data": str(train),
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
        "min_pixels": 64 * 64, "max_pixels": 256 * 256, "align_start_step": 0, "align_every": 1,
        "selection": "all", "max_aligned_per_step": 1, "n_regions": 8, "max_regions": 2, "search": "single_round",
        "augment": {"kind": "box_crop", "probability": 1.0},
    })
    trainer = run_training(config)
    crop = trainer.data_collator.augment
    assert isinstance(crop, BoxGuidedCrop) and crop.probability == 1.0 and crop.seed == 0
    assert sum(crop._draws.values()) >= 4  # two steps of two examples went through the crop
    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "out" / "trainer_state.json").is_file()
