"""Synthetic GUIs: determinism, the cue outside the target, the shifted split, and loadable output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_checks import fails_in_one_line
from PIL import Image

from eagle_align.cli import main
from eagle_align.data import generate_synthetic, load_examples
from eagle_align.data.synth import (
    DISTRACTOR_COLOURS,
    PRIOR_SLOT,
    SHORTCUTS,
    TITLE_BAR_COLOURS,
    shortcut_margin,
    synth_record,
)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _paired_screens(tmp_path, n: int, seed: int, flags: list[str], **base_options) -> list[tuple]:
    """Shortcut screens (orange distractors, cue on every screen) from the API with `base_options`, and the same
    screens from `eagle-align data synth` with `flags`: (base record, record, base pixels, pixels) per screen,
    after checking that the flags moved neither box nor cue."""
    base = _records(generate_synthetic(tmp_path / "base", n, seed=seed, cue_fraction=1.0, distractor_colour="orange",
                                       **base_options))
    assert main(["data", "synth", "--out", str(tmp_path / "changed"), "--n", str(n), "--seed", str(seed),
                 "--cue-fraction", "1", "--distractor-colour", "orange", *flags]) == 0
    pairs = []
    for a, b in zip(base, _records(tmp_path / "changed" / "train.jsonl")):
        assert a["bbox"] == b["bbox"] and a["extra"]["cue_bbox"] == b["extra"]["cue_bbox"]
        pairs.append((a, b, np.asarray(Image.open(tmp_path / "base" / a["image"])),
                      np.asarray(Image.open(tmp_path / "changed" / b["image"]))))
    return pairs


def _gap(cue, box) -> float:
    """Chebyshev distance between two boxes (0 when they touch)."""
    dx = max(box[0] - cue[2], cue[0] - box[2], 0)
    dy = max(box[1] - cue[3], cue[1] - box[3], 0)
    return max(dx, dy)


@pytest.mark.parametrize("preset", ["shortcut", "gui"])
def test_deterministic_per_seed(tmp_path, preset):
    a = generate_synthetic(tmp_path / "a", 6, seed=5, preset=preset, cue_fraction=0.5)
    b = generate_synthetic(tmp_path / "b", 6, seed=5, preset=preset, cue_fraction=0.5)
    c = generate_synthetic(tmp_path / "c", 6, seed=6, preset=preset, cue_fraction=0.5)
    assert a.read_text() == b.read_text()
    assert a.read_text() != c.read_text()
    for rec in _records(a):
        pixels_a = np.asarray(Image.open(tmp_path / "a" / rec["image"]))
        pixels_b = np.asarray(Image.open(tmp_path / "b" / rec["image"]))
        assert np.array_equal(pixels_a, pixels_b)
    # Prefix-stable: more samples with the same seed start with the same ones.
    longer = generate_synthetic(tmp_path / "d", 8, seed=5, preset=preset, cue_fraction=0.5)
    assert longer.read_text().splitlines()[:6] == a.read_text().splitlines()


def test_shortcut_cue_beside_target_in_train(tmp_path):
    path = generate_synthetic(tmp_path, 120, seed=1, preset="shortcut", cue_fraction=0.75, split="train")
    records = _records(path)
    with_cue = [r for r in records if r["extra"]["cue_bbox"] is not None]
    assert 0.6 < len(with_cue) / len(records) < 0.9
    slots = set()
    for rec in records:
        target, cue = rec["bbox"], rec["extra"]["cue_bbox"]
        assert rec["instruction"] == "click the red square" and rec["image_size"] == [256, 256]
        assert len(rec["extra"]["distractor_bboxes"]) == 3
        pixels = np.asarray(Image.open(tmp_path / rec["image"]))
        cx, cy = (target[0] + target[2]) // 2, (target[1] + target[3]) // 2
        assert tuple(pixels[cy, cx]) == (220, 50, 47)  # the target really is the red square
        slots.add(rec["extra"]["slot"])
        if cue is None:
            assert rec["extra"]["cue_on"] is None
            continue
        assert rec["extra"]["cue_on"] == "target" and rec["extra"]["cue_anchor_bbox"] == target
        assert not _overlaps(cue, target)
        assert 0 < _gap(cue, target) <= 16
        assert cue[2] <= target[0] and cue[3] <= target[1]  # fixed relation: above-left of the target
        assert cue[0] // 128 == target[0] // 128 and cue[1] // 128 == target[1] // 128  # in the target's quadrant
        assert (pixels[cue[1] : cue[3], cue[0] : cue[2]] == 255).all()  # the cue is drawn where recorded
        for other in rec["extra"]["distractor_bboxes"]:
            assert not _overlaps(cue, other)
    assert slots == {0, 1, 2, 3}


@pytest.mark.parametrize("preset", ["shortcut", "gui"])
def test_shifted_split_moves_cue_next_to_a_distractor(tmp_path, preset):
    path = generate_synthetic(tmp_path, 40, seed=2, preset=preset, cue_fraction=1.0, split="shifted")
    for rec in _records(path):
        target, cue, anchor = rec["bbox"], rec["extra"]["cue_bbox"], rec["extra"]["cue_anchor_bbox"]
        assert rec["extra"]["cue_on"] == "distractor"
        assert anchor in rec["extra"]["distractor_bboxes"] and anchor != target
        assert not _overlaps(cue, target) and not _overlaps(cue, anchor)
        assert _gap(cue, anchor) < _gap(cue, target)
        assert _gap(cue, anchor) <= 16
    test = _records(generate_synthetic(tmp_path / "iid", 40, seed=2, preset=preset, cue_fraction=1.0, split="test"))
    assert all(r["extra"]["cue_anchor_bbox"] == r["bbox"] for r in test)


@pytest.mark.parametrize("layout", ["mobile", "desktop", "web"])
def test_gui_layouts_are_valid_grounding_data(tmp_path, layout):
    path = generate_synthetic(tmp_path, 12, seed=3, preset="gui", layout=layout, difficulty=2, cue_fraction=0.5)
    examples = load_examples(path)
    assert len(examples) == 12 and examples.skipped == 0
    for ex in examples:
        assert ex.platform == layout and ex.ui_type in ("text", "icon")
        assert ex.instruction.startswith("click the ")
        boxes = [list(ex.bbox), *ex.extra["distractor_bboxes"]]
        assert len(boxes) == 6
        assert all(not _overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        cue = ex.extra["cue_bbox"]
        if cue is not None:
            assert all(not _overlaps(cue, b) for b in boxes)
            assert 0 <= cue[0] and cue[2] <= ex.image_size[0] and cue[3] <= ex.image_size[1]
    assert len({ex.instruction for ex in examples}) > 3


def test_difficulty_changes_the_task(tmp_path):
    easy = _records(generate_synthetic(tmp_path / "e", 20, seed=0, difficulty=1))
    hard = _records(generate_synthetic(tmp_path / "h", 20, seed=0, difficulty=4))
    assert {len(r["extra"]["distractor_bboxes"]) for r in easy} == {3}
    assert {len(r["extra"]["distractor_bboxes"]) for r in hard} == {15}
    assert len({tuple(r["bbox"]) for r in easy}) == 4  # four fixed positions: learnable by tiny models
    assert len({tuple(r["bbox"]) for r in hard}) > 10
    big = _records(generate_synthetic(tmp_path / "g", 2, seed=0, preset="gui", layout="desktop", difficulty=3))
    assert big[0]["image_size"][0] > 900


def test_bad_options_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="preset='fancy'"):
        generate_synthetic(tmp_path, 2, preset="fancy")
    with pytest.raises(ValueError, match="cue_fraction=1.5"):
        generate_synthetic(tmp_path, 2, cue_fraction=1.5)
    with pytest.raises(ValueError, match="difficulty=9"):
        generate_synthetic(tmp_path, 2, difficulty=9)
    with pytest.raises(ValueError, match="split='dev'"):
        generate_synthetic(tmp_path, 2, split="dev")


def test_cli_synth(tmp_path, capsys):
    rc = main(["data", "synth", "--out", str(tmp_path), "--n", "3", "--seed", "4", "--cue-fraction", "1",
               "--split", "shifted", "--preset", "gui", "--layout", "web"])
    assert rc == 0 and "shifted.jsonl" in capsys.readouterr().out
    records = _records(tmp_path / "shifted.jsonl")
    assert len(records) == 3 and all(r["extra"]["cue_on"] == "distractor" for r in records)
    assert all((tmp_path / r["image"]).is_file() for r in records)


def test_cue_colour_changes_only_the_cue(tmp_path):
    white = _records(generate_synthetic(tmp_path / "w", 8, seed=2, cue_fraction=1.0, split="shifted"))
    rc = main(["data", "synth", "--out", str(tmp_path / "m"), "--n", "8", "--seed", "2", "--cue-fraction", "1",
               "--split", "shifted", "--cue-colour", "magenta"])
    magenta = _records(tmp_path / "m" / "shifted.jsonl")
    assert rc == 0
    for a, b in zip(white, magenta):
        assert a["extra"]["cue_colour"] == [255, 255, 255] and b["extra"]["cue_colour"] == [255, 0, 255]
        assert a["bbox"] == b["bbox"] and a["extra"]["cue_bbox"] == b["extra"]["cue_bbox"]  # same layout
        pa = np.asarray(Image.open(tmp_path / "w" / a["image"])).astype(int)
        pb = np.asarray(Image.open(tmp_path / "m" / b["image"])).astype(int)
        x1, y1, x2, y2 = b["extra"]["cue_bbox"]
        assert (pb[y1:y2, x1:x2] == (255, 0, 255)).all()
        pa[y1:y2, x1:x2] = pb[y1:y2, x1:x2]
        assert np.array_equal(pa, pb)  # nothing else moved
    with pytest.raises(ValueError, match="cue_colour='teal'"):
        generate_synthetic(tmp_path, 2, cue_colour="teal")


def test_cue_size_and_distractor_colour(tmp_path):
    """The shortcut preset's salience knobs: a bigger cue still fits its slot, distractors change colour only."""
    base = _records(generate_synthetic(tmp_path / "b", 8, seed=1, cue_fraction=1.0, split="shifted"))
    rc = main(["data", "synth", "--out", str(tmp_path / "c"), "--n", "8", "--seed", "1", "--cue-fraction", "1",
               "--split", "shifted", "--cue-size", "32", "--distractor-colour", "orange"])
    assert rc == 0
    for a, b in zip(base, _records(tmp_path / "c" / "shifted.jsonl")):
        assert a["bbox"] == b["bbox"] and a["extra"]["distractor_bboxes"] == b["extra"]["distractor_bboxes"]
        x1, y1, x2, y2 = b["extra"]["cue_bbox"]
        assert x2 - x1 == y2 - y1 == 32 and x2 - x1 > a["extra"]["cue_bbox"][2] - a["extra"]["cue_bbox"][0]
        assert all(not _overlaps(b["extra"]["cue_bbox"], box) for box in [b["bbox"], *b["extra"]["distractor_bboxes"]])
        pixels = np.asarray(Image.open(tmp_path / "c" / b["image"]))
        d = b["extra"]["distractor_bboxes"][0]
        assert tuple(pixels[(d[1] + d[3]) // 2, (d[0] + d[2]) // 2]) == (240, 140, 20)  # orange
    with pytest.raises(ValueError, match=r"cue_size=33 must be within \[1, 32\]"):
        generate_synthetic(tmp_path, 2, cue_size=33)
    with pytest.raises(ValueError, match="distractor_colour='red' is the target's colour: it needs a distractor_shape"):
        generate_synthetic(tmp_path, 2, distractor_colour="red")
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", cue_size=8)


def test_square_size_shrinks_every_square_about_its_centre_and_widens_the_cue_margin(tmp_path):
    """A smaller square is less evidence for the target; centres, answers and the default cue size stay."""
    base = _records(generate_synthetic(tmp_path / "b", 8, seed=2, cue_fraction=1.0, split="train"))
    rc = main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "8", "--seed", "2", "--cue-fraction", "1",
               "--square-size", "32"])
    assert rc == 0
    for a, b in zip(base, _records(tmp_path / "s" / "train.jsonl")):
        for old, new in zip([a["bbox"], *a["extra"]["distractor_bboxes"]], [b["bbox"], *b["extra"]["distractor_bboxes"]]):
            assert new[2] - new[0] == new[3] - new[1] == 32
            assert (new[0] + new[2]) // 2 == (old[0] + old[2]) // 2 and (new[1] + new[3]) // 2 == (old[1] + old[3]) // 2
        cue = b["extra"]["cue_bbox"]
        assert cue[2] - cue[0] == a["extra"]["cue_bbox"][2] - a["extra"]["cue_bbox"][0] == 16
        assert cue[0] >= 0 and not _overlaps(cue, b["bbox"])
        pixels = np.asarray(Image.open(tmp_path / "s" / b["image"]))
        x1, y1, x2, y2 = a["bbox"]  # the old target's corner is screen background now
        assert tuple(pixels[y1 + 2, x1 + 2]) == (128, 128, 128)
    assert shortcut_margin(1, 32) == 48 and shortcut_margin(1) == 32
    generate_synthetic(tmp_path / "m", 1, cue_size=48, square_size=32)  # the wider margin fits a 48-px cue
    with pytest.raises(ValueError, match=r"square_size=65 must be within \[8, 64\]"):
        generate_synthetic(tmp_path, 2, square_size=65)
    with pytest.raises(ValueError, match=r"cue_size=49 must be within \[1, 48\]"):
        generate_synthetic(tmp_path, 2, cue_size=49, square_size=32)
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", square_size=32)


def test_unmarked_targets_look_like_distractors_and_leave_the_other_screens_unchanged(tmp_path):
    """An unmarked target is drawn in the distractors' colour (only the cue marks it); its own draw keeps every
    other screen pixel-identical to the default data."""
    unmarked = 0
    for _, b, old, new in _paired_screens(tmp_path, 24, 3, ["--unmarked-target-fraction", "0.5"]):
        x1, y1, x2, y2 = b["bbox"]
        if b["extra"]["target_marked"]:
            assert np.array_equal(old, new)
        else:
            unmarked += 1
            assert tuple(new[(y1 + y2) // 2, (x1 + x2) // 2]) == (240, 140, 20)  # orange, like the distractors
            assert tuple(old[(y1 + y2) // 2, (x1 + x2) // 2]) == (220, 50, 47)  # red by default
    assert 0 < unmarked < 24
    with pytest.raises(ValueError, match=r"unmarked_target_fraction=1.5 must be within \[0, 1\]"):
        generate_synthetic(tmp_path, 2, unmarked_target_fraction=1.5)
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", unmarked_target_fraction=0.5)


def test_empty_slots_leave_distractor_squares_out_and_the_other_screens_unchanged(tmp_path):
    """An empty slot shows the screen's grey where a distractor was; the target, the cue and at least one
    distractor stay, and screens without an empty slot are pixel-identical to the default data."""
    emptied = 0
    for a, b, old, new in _paired_screens(tmp_path, 40, 5, ["--empty-slot-fraction", "0.5"]):
        empty = b["extra"]["empty_slots"]
        assert b["extra"]["slot"] not in empty and len(b["extra"]["distractor_bboxes"]) == 3 - len(empty) >= 1
        if not empty:
            assert np.array_equal(old, new)
            continue
        emptied += len(empty)
        kept = {tuple(box) for box in b["extra"]["distractor_bboxes"]}
        for box in a["extra"]["distractor_bboxes"]:
            x1, y1, x2, y2 = box
            centre = tuple(new[(y1 + y2) // 2, (x1 + x2) // 2])
            assert centre == ((240, 140, 20) if tuple(box) in kept else (128, 128, 128))
        x1, y1, x2, y2 = b["bbox"]
        assert tuple(new[(y1 + y2) // 2, (x1 + x2) // 2]) == (220, 50, 47)  # the target is always drawn
    assert 20 < emptied < 100  # about half of the 120 distractor slots, never all three of one screen
    with pytest.raises(ValueError, match=r"empty_slot_fraction=-0.1 must be within \[0, 1\]"):
        generate_synthetic(tmp_path, 2, empty_slot_fraction=-0.1)
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", empty_slot_fraction=0.5)


def test_decoys_draw_a_second_red_square_that_only_the_cue_tells_apart(tmp_path):
    """A decoy is one drawn distractor in the target's red; the cue stays beside the target, and screens without a
    decoy are pixel-identical to the default data."""
    decoys = 0
    flags = ["--empty-slot-fraction", "0.25", "--decoy-fraction", "0.5"]
    for a, b, old, new in _paired_screens(tmp_path, 40, 2, flags, empty_slot_fraction=0.25):
        assert a["extra"]["empty_slots"] == b["extra"]["empty_slots"]
        decoy = b["extra"]["decoy_slot"]
        if decoy is None:
            assert np.array_equal(old, new)
            continue
        decoys += 1
        assert decoy != b["extra"]["slot"] and decoy not in b["extra"]["empty_slots"]
        reds = [box for box in [b["bbox"], *b["extra"]["distractor_bboxes"]]
                if tuple(new[(box[1] + box[3]) // 2, (box[0] + box[2]) // 2]) == (220, 50, 47)]
        assert len(reds) == 2 and b["bbox"] in reds  # the target and one look-alike
    assert 8 < decoys < 32
    with pytest.raises(ValueError, match=r"decoy_fraction=2.0 must be within \[0, 1\]"):
        generate_synthetic(tmp_path, 2, decoy_fraction=2.0)
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", decoy_fraction=0.5)


def test_distractor_shape_redraws_only_the_distractors_so_red_ones_differ_from_the_target_by_shape(tmp_path):
    """Red circles as distractors: the target stays the one red square (a red corner), each distractor's centre is
    red and its corners the screen's grey, and the cue and the target's pixels are those of the default data."""
    for _, b, old, new in _paired_screens(tmp_path, 12, 4, ["--distractor-colour", "red", "--distractor-shape",
                                                              "circle"]):
        x1, y1, x2, y2 = b["bbox"]
        assert np.array_equal(old[y1:y2, x1:x2], new[y1:y2, x1:x2])
        assert tuple(new[y1 + 1, x1 + 1]) == (220, 50, 47)  # the target's corner
        cx1, cy1, cx2, cy2 = b["extra"]["cue_bbox"]
        assert np.array_equal(old[cy1:cy2, cx1:cx2], new[cy1:cy2, cx1:cx2])
        for d in b["extra"]["distractor_bboxes"]:
            assert tuple(new[(d[1] + d[3]) // 2, (d[0] + d[2]) // 2]) == (220, 50, 47)
            assert tuple(new[d[1] + 1, d[0] + 1]) == (128, 128, 128)  # a circle leaves its box's corners grey
            assert tuple(old[d[1] + 1, d[0] + 1]) == (240, 140, 20)
    with pytest.raises(ValueError, match="distractor_shape='star'; choose one of square, circle, diamond"):
        generate_synthetic(tmp_path, 2, distractor_shape="star")
    with pytest.raises(ValueError, match="shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", distractor_shape="circle")


def test_target_colour_redraws_only_the_target_and_names_it_in_the_instruction(tmp_path):
    """A teal target: the instruction names teal, the target's box is teal where it was red, and every pixel
    outside it (cue, distractors, background) is the default data's."""
    for a, b, old, new in _paired_screens(tmp_path, 12, 6, ["--target-colour", "teal"]):
        assert a["instruction"] == "click the red square" and b["instruction"] == "click the teal square"
        x1, y1, x2, y2 = b["bbox"]
        assert tuple(old[(y1 + y2) // 2, (x1 + x2) // 2]) == (220, 50, 47)
        assert tuple(new[(y1 + y2) // 2, (x1 + x2) // 2]) == (20, 150, 150)
        outside = np.ones(old.shape[:2], dtype=bool)
        outside[y1:y2, x1:x2] = False
        assert np.array_equal(old[outside], new[outside])
    with pytest.raises(ValueError, match="target_colour='pink'; choose one of red, green, teal"):
        generate_synthetic(tmp_path, 2, target_colour="pink")
    with pytest.raises(ValueError, match="distractor_colour='orange' is the target's colour"):
        generate_synthetic(tmp_path, 2, target_colour="orange", distractor_colour="orange")
    with pytest.raises(ValueError, match="target_colour applies to the shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", target_colour="teal")


def _pixel_hash(n: int, seed: int, **options) -> str:
    """sha256 over the first `n` screens' decoded pixels and their box, cue box, cue target and slot."""
    import hashlib

    digest = hashlib.sha256()
    for index in range(n):
        image, record = synth_record(index, seed, **options)
        digest.update(np.asarray(image).tobytes())
        extra = record["extra"]
        digest.update(json.dumps([record["bbox"], extra["cue_bbox"], extra["cue_on"], extra["slot"]]).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("options, expected", [
    (dict(split="train", cue_fraction=0.7), "eb0892c3399368342a6d8020f24dee2f0d763762046207b01a328b912a40089d"),
    (dict(split="shifted", cue_fraction=1.0, cue_colour="magenta", distractor_colour="orange"),
     "a551e141dfb985b6f6b7c429ef5d931c2f3e7d0dcf9971e47c234131c1da43e0"),
    (dict(split="test", cue_fraction=0.9, difficulty=2, decoy_fraction=0.5, empty_slot_fraction=0.3,
          unmarked_target_fraction=0.3), "dc8e651e4251822e76ba3b30225399e6916427886138227535ddf709ebc5c520"),
], ids=["train", "shifted-magenta", "test-difficulty2-decoys"])
def test_adjacent_shortcut_draws_the_screens_of_before_the_other_kinds(options, expected):
    """Hashes taken from the generator before `shortcut` existed: the default kind is pixel-identical to it."""
    assert _pixel_hash(6, 3, **options) == expected
    assert _pixel_hash(6, 3, shortcut="adjacent", **options) == expected


def _check_kind_layout(record: dict, pixels: np.ndarray) -> None:
    """Every square of a screen lies inside the screen and clear of the cue; the target is red."""
    boxes = [record["bbox"], *record["extra"]["distractor_bboxes"]]
    cue = record["extra"]["cue_bbox"]
    for box in boxes:
        assert 0 <= box[0] and 0 <= box[1] and box[2] <= 256 and box[3] <= 256
        assert cue is None or not _overlaps(cue, box)
    x1, y1, x2, y2 = record["bbox"]
    assert tuple(pixels[(y1 + y2) // 2, (x1 + x2) // 2]) == (220, 50, 47)


@pytest.mark.parametrize("difficulty", [1, 4])
def test_title_bar_colour_names_the_target_slot_and_a_distractor_slot_when_shifted(tmp_path, difficulty):
    for split in ("train", "shifted"):
        path = generate_synthetic(tmp_path / split, 24, seed=1, split=split, cue_fraction=0.75, difficulty=difficulty,
                                  shortcut="title_bar")
        shown = 0
        for rec in _records(path):
            extra = rec["extra"]
            pixels = np.asarray(Image.open(tmp_path / split / rec["image"]))
            _check_kind_layout(rec, pixels)
            assert extra["shortcut"] == "title_bar" and min(b[1] for b in [rec["bbox"], *extra["distractor_bboxes"]]) >= 20
            band = pixels[:20]
            if extra["cue_on"] is None:
                assert (band == 128).all() and extra["cue_slot"] is None and extra["cue_bbox"] is None
                continue
            shown += 1
            assert extra["cue_bbox"] == [0, 0, 256, 20]
            assert (band == TITLE_BAR_COLOURS[extra["cue_slot"]]).all()  # the full band, in the slot's colour
            assert extra["cue_colour"] == list(TITLE_BAR_COLOURS[extra["cue_slot"]])
            _check_cue_names_the_right_slot(rec, split)
        assert 12 <= shown < 24
    palette = [tuple(c) for c in TITLE_BAR_COLOURS]
    assert len(set(palette)) == 16 and not {(128, 128, 128), (220, 50, 47), *DISTRACTOR_COLOURS.values()} & set(palette)


def _check_cue_names_the_right_slot(rec: dict, split: str) -> None:
    """On train/test screens the cue names the target's slot; on shifted ones a distractor's."""
    extra = rec["extra"]
    if split == "shifted":
        assert extra["cue_on"] == "distractor" and extra["cue_slot"] != extra["slot"]
        assert extra["cue_anchor_bbox"] in extra["distractor_bboxes"]
    else:
        assert extra["cue_on"] == "target" and extra["cue_slot"] == extra["slot"]
        assert extra["cue_anchor_bbox"] == rec["bbox"]


def _lit_dots(pixels: np.ndarray, colour, pitch: int) -> int:
    """How many dot centres of the count cue's row show `colour`, counting from the bottom-left corner."""
    count = 0
    while 6 + count * pitch + 4 < 256 and tuple(pixels[246, 6 + count * pitch + 4]) == tuple(colour):
        count += 1
    return count


@pytest.mark.parametrize("difficulty, pitch", [(1, 32), (4, 15)])
def test_count_cue_shows_slot_plus_one_dots_in_the_bottom_left_corner(tmp_path, difficulty, pitch):
    for split in ("train", "shifted"):
        path = generate_synthetic(tmp_path / split, 24, seed=4, split=split, cue_fraction=0.75, difficulty=difficulty,
                                  shortcut="count", cue_colour="magenta")
        shown = 0
        for rec in _records(path):
            extra = rec["extra"]
            pixels = np.asarray(Image.open(tmp_path / split / rec["image"]))
            _check_kind_layout(rec, pixels)
            assert max(b[3] for b in [rec["bbox"], *extra["distractor_bboxes"]]) <= 236  # the strip stays free
            if extra["cue_on"] is None:
                assert (pixels[236:] == 128).all() and extra["cue_slot"] is None
                continue
            shown += 1
            assert _lit_dots(pixels, (255, 0, 255), pitch) == extra["cue_slot"] + 1
            x1, y1, x2, y2 = extra["cue_bbox"]
            assert (x1, y1, y2) == (6, 242, 250) and x2 == 6 + extra["cue_slot"] * pitch + 8
            assert (pixels[236:, x2:] == 128).all()  # nothing right of the last dot
            _check_cue_names_the_right_slot(rec, split)
        assert 12 <= shown < 24


def test_position_prior_draws_no_cue_and_puts_targets_in_the_prior_slot(tmp_path):
    train = _records(generate_synthetic(tmp_path / "train", 200, seed=0, split="train", cue_fraction=0.9,
                                        shortcut="position_prior", distractor_colour="orange"))
    in_prior = 0
    for rec in train:
        extra = rec["extra"]
        pixels = np.asarray(Image.open(tmp_path / "train" / rec["image"]))
        colours = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}
        assert colours == {(128, 128, 128), (220, 50, 47), (240, 140, 20)}  # grey, the target, distractors: no cue
        assert extra["cue_bbox"] is None and extra["cue_colour"] is None
        in_prior += extra["slot"] == PRIOR_SLOT
        if extra["cue_on"] == "target":
            assert extra["slot"] == extra["cue_slot"] == PRIOR_SLOT and extra["cue_anchor_bbox"] == rec["bbox"]
    # The stated rate: cue_fraction with the prior, plus a uniform quarter of the rest, 0.9 + 0.1 / 4 = 0.925.
    assert 0.88 <= in_prior / len(train) <= 0.97
    shifted = _records(generate_synthetic(tmp_path / "shifted", 60, seed=0, split="shifted", cue_fraction=1.0,
                                          shortcut="position_prior"))
    assert {rec["extra"]["slot"] for rec in shifted} == {1, 2, 3}  # never the prior slot, every other one
    for rec in shifted:
        extra = rec["extra"]
        assert extra["cue_on"] == "distractor" and extra["cue_slot"] == PRIOR_SLOT
        assert extra["cue_anchor_bbox"] in extra["distractor_bboxes"]  # a distractor sits where the prior points
        assert extra["cue_anchor_bbox"][0] < 128 and extra["cue_anchor_bbox"][1] < 128


def test_shortcut_kinds_bad_combinations_name_the_option(tmp_path, capsys):
    with pytest.raises(ValueError, match="shortcut='glow'; choose one of adjacent, title_bar, count, position_prior"):
        generate_synthetic(tmp_path, 2, shortcut="glow")
    with pytest.raises(ValueError, match="shortcut='title_bar' applies to the shortcut preset only"):
        generate_synthetic(tmp_path, 2, preset="gui", shortcut="title_bar")
    with pytest.raises(ValueError, match="cue_colour applies to shortcut 'adjacent' or 'count' only"):
        generate_synthetic(tmp_path, 2, cue_fraction=1.0, shortcut="title_bar", cue_colour="magenta")
    with pytest.raises(ValueError, match="cue_relation and cue_size apply to shortcut='adjacent' only"):
        generate_synthetic(tmp_path, 2, cue_fraction=1.0, shortcut="count", cue_size=8)
    fails_in_one_line(["data", "synth", "--out", str(tmp_path), "--n", "2", "--shortcut", "position_prior",
                       "--cue-fraction", "1", "--cue-colour", "magenta"], capsys, "cue_colour", "position_prior")
    assert main(["data", "synth", "--out", str(tmp_path / "cli"), "--n", "3", "--cue-fraction", "1",
                 "--shortcut", "title_bar", "--split", "shifted"]) == 0
    records = _records(tmp_path / "cli" / "shifted.jsonl")
    assert all(r["extra"]["shortcut"] == "title_bar" and r["extra"]["cue_on"] == "distractor" for r in records)


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_demo_splits_take_every_shortcut_kind(tmp_path, shortcut):
    """The demo's family settings (a magenta cue) combine with every kind; kinds without a cue colour drop it."""
    from eagle_align.demo import synthetic_split

    records = _records(synthetic_split(tmp_path, "shifted", 4, seed=0, cue_fraction=1.0, shortcut=shortcut))
    assert all(r["extra"]["shortcut"] == shortcut and r["extra"]["cue_on"] == "distractor" for r in records)
    assert records[0]["extra"]["cue_colour"] == ([255, 0, 255] if shortcut in ("adjacent", "count") else
                                                 None if shortcut == "position_prior" else
                                                 list(TITLE_BAR_COLOURS[records[0]["extra"]["cue_slot"]]))
