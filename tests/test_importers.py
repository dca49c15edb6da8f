"""Your data in: box conventions, LLaMA-Factory / ShareGPT and column-mapped imports, point-only records,
`data convert`, and the one-line refusals of what cannot be read safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_checks import fails_in_one_line as _fails
from PIL import Image

from eagle_align.cli import main
from eagle_align.data import DataError, GroundingCollator, load_examples
from eagle_align.train import load_config, load_training_data, parse_config

# One 1920x1080 screen; TRUE_BOX in pixels and in 0-1000 space (x/1920·1000, y/1080·1000).
SCREEN = (1920, 1080)
TRUE_BOX = (124.8, 750.6, 756.48, 795.96)
BOX_1000 = [65, 695, 394, 737]


def _png(path: Path, size, colour=(30, 90, 160)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path




@pytest.fixture
def screen_1000(tmp_path) -> Path:
    """A JSONL of two 0-1000 records (one with a point) on 1920x1080 screenshots: every value is below 1000."""
    _png(tmp_path / "img" / "s.png", SCREEN)
    return _jsonl(tmp_path / "grounding.jsonl", [
        {"image": "img/s.png", "instruction": "open settings", "bbox": BOX_1000, "id": "a"},
        {"image": "img/s.png", "instruction": "close", "bbox": [900, 10, 990, 60], "point": [950, 40], "id": "b"},
    ])


def test_0_1000_boxes_on_large_screens_are_refused_until_named_then_land_on_the_right_pixels(screen_1000):
    with pytest.raises(DataError, match=r"grounding.jsonl: every coordinate is at most 1000 on screens up to "
                                        r"1920x1080.*bbox_format=.*xyxy_1000"):
        load_examples(screen_1000)
    with pytest.raises(DataError, match="bbox_format"):  # skip mode cannot drop a whole file's convention
        load_examples(screen_1000, on_error="skip")
    first, second = load_examples(screen_1000, bbox_format="xyxy_1000")
    assert first.bbox == pytest.approx(TRUE_BOX)
    assert second.point == pytest.approx((950 * 1.92, 40 * 1.08))  # the point follows its box's convention
    pixels = load_examples(screen_1000, bbox_format="xyxy")[0].bbox  # told pixels: read as pixels
    assert pixels == (65.0, 695.0, 394.0, 737.0)


def test_a_pixel_file_with_a_coordinate_above_1000_needs_no_option(tmp_path):
    _png(tmp_path / "s.png", SCREEN)
    path = _jsonl(tmp_path / "p.jsonl", [{"image": "s.png", "instruction": "a", "bbox": [10, 10, 60, 40]},
                                          {"image": "s.png", "instruction": "b", "bbox": [1500, 900, 1600, 950]}])
    assert [ex.bbox for ex in load_examples(path)] == [(10, 10, 60, 40), (1500, 900, 1600, 950)]


def test_a_record_that_states_its_bbox_format_is_read_as_stated(tmp_path):
    _png(tmp_path / "s.png", SCREEN)
    path = _jsonl(tmp_path / "s.jsonl", [
        {"image": "s.png", "instruction": "a", "bbox": BOX_1000, "bbox_format": "xyxy_1000"},
        {"image": "s.png", "instruction": "b", "bbox": [10, 10, 60, 40], "bbox_format": "xyxy"}])
    first, second = load_examples(path)
    assert first.bbox == pytest.approx(TRUE_BOX) and second.bbox == (10, 10, 60, 40)
    assert "bbox_format" not in first.extra
    with pytest.raises(DataError, match=r"s.jsonl:2.*states bbox_format 'xyxy' but bbox_format='xyxy_1000'"):
        load_examples(path, bbox_format="xyxy_1000")


def test_recipe_eval_and_validate_read_0_1000_files_alike(screen_1000, tmp_path, capsys):
    # Recipe: the data path of run_training (parse of a recipe dict, then load_training_data).
    config = {"model_name_or_path": "m", "train_data": str(screen_1000), "eval_data": str(screen_1000)}
    with pytest.raises(DataError, match="bbox_format"):
        load_training_data(parse_config(config)[1])
    train, evaluation = load_training_data(parse_config({**config, "bbox_format": "xyxy_1000"})[1])
    assert train[0].bbox == pytest.approx(TRUE_BOX) and evaluation[0].bbox == pytest.approx(TRUE_BOX)
    data_args = parse_config({**config, "train_bbox_format": "xyxy_1000", "eval_bbox_format": "xyxy"})[1]
    train, evaluation = load_training_data(data_args)  # per source: eval read as pixels
    assert train[0].bbox == pytest.approx(TRUE_BOX) and evaluation[0].bbox == (65, 695, 394, 737)

    # eval (scoring-only mode, so no model is needed): the boxes it scores against.
    predictions = _jsonl(tmp_path / "pred.jsonl", [{"id": "a", "point": [400, 770]}, {"id": "b", "point": [5, 5]}])
    argv = ["eval", "--predictions", str(predictions), "--data", str(screen_1000), "--out", str(tmp_path / "ev"),
            "--no-plots"]
    _fails(argv, capsys, "bbox_format=", "xyxy_1000")
    assert main([*argv, "--bbox-format", "xyxy_1000"]) == 0
    scored = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    by_id = {line["id"]: line for line in scored}
    assert by_id["a"]["bbox"] == pytest.approx(list(TRUE_BOX)) and by_id["a"]["hit"] is True
    assert by_id["b"]["hit"] is False

    # data validate
    _fails(["data", "validate", str(screen_1000)], capsys, "every coordinate is at most 1000", "bbox_format=")
    assert main(["data", "validate", str(screen_1000), "--bbox-format", "xyxy_1000"]) == 0
    assert "2 valid examples, 0 skipped" in capsys.readouterr().out


def test_a_point_outside_its_own_box_is_a_bad_record(tmp_path, capsys):
    _png(tmp_path / "s.png", (400, 300))
    path = _jsonl(tmp_path / "p.jsonl", [
        {"image": "s.png", "instruction": "a", "bbox": [100, 100, 200, 150], "point": [150, 120], "id": "in"},
        {"image": "s.png", "instruction": "b", "bbox": [100, 100, 200, 150], "point": [0, 0], "id": "off"}])
    examples = load_examples(path, on_error="skip")
    assert [ex.id for ex in examples] == ["in"]
    assert examples.problems == [f"{path}:2 (id=off): point [0.0, 0.0] lies outside its bbox "
                                 "[100.0, 100.0, 200.0, 150.0]"]
    assert main(["data", "validate", str(path)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    _fails(["data", "convert", str(path), "--to", "jsonl", "--out", str(tmp_path / "o.jsonl")], capsys,
           f"{path}:2 (id=off): point [0.0, 0.0] lies outside its bbox")


# --- Imports: one dataset in four shapes --------------------------------------------------------------------


@pytest.fixture
def four_shapes(tmp_path) -> dict[str, Path]:
    """The same three targets (two boxes, one click only) as eagle-align JSONL, a LLaMA-Factory JSON with
    Qwen2-VL answers (0-1000), a ShareGPT JSONL with Qwen2.5-VL answers (pixels) and an HF dataset with
    other column names."""
    import datasets

    sizes = {"a.png": (1280, 720), "b.png": (800, 600), "c.png": (640, 480)}
    for name, size in sizes.items():
        _png(tmp_path / "shots" / name, size, colour=(len(name) * 20, 100, 50))
    targets = [("a.png", "open the File menu", [128, 72, 256, 144], None),
               ("b.png", "press OK", [400, 300, 480, 360], None),
               ("c.png", "tap the avatar", None, [320, 240])]
    canonical = []
    for i, (name, instruction, box, point) in enumerate(targets):
        record = {"image": f"shots/{name}", "instruction": instruction, "id": f"t{i}", "bbox_format": "xyxy"}
        record.update({"bbox": box} if box else {"point": point})
        canonical.append(record)

    def per_1000(values, size):  # exact here: every value is a multiple of W/1000 and H/1000
        return [round(v * 1000 / size[k % 2]) for k, v in enumerate(values)]

    llama_factory = []
    for i, (name, instruction, box, point) in enumerate(targets):
        size = sizes[name]
        if box:
            (x1, y1), (x2, y2) = per_1000(box[:2], size), per_1000(box[2:], size)
            answer = f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
        else:
            answer = "<|box_start|>({},{})<|box_end|>".format(*per_1000(point, size))
        llama_factory.append({"messages": [{"role": "user", "content": f"<image>{instruction}"},
                                           {"role": "assistant", "content": answer}],
                              "images": [f"shots/{name}"], "id": f"t{i}"})
    (tmp_path / "llama_factory.json").write_text(json.dumps(llama_factory))

    sharegpt = []
    for i, (name, instruction, box, point) in enumerate(targets):
        answer = (json.dumps([{"bbox_2d": box, "label": instruction}]) if box
                  else json.dumps({"action": "click", "coordinate": point}))
        sharegpt.append({"conversations": [{"from": "system", "value": "You are a GUI agent."},
                                           {"from": "human", "value": f"{instruction}\n<image>"},
                                           {"from": "gpt", "value": answer}],
                         "images": [f"shots/{name}"], "id": f"t{i}"})
    _jsonl(tmp_path / "sharegpt.jsonl", sharegpt)

    table = datasets.Dataset.from_dict(
        {"screenshot": [Image.open(tmp_path / "shots" / t[0]).copy() for t in targets],
         "query": [t[1] for t in targets], "target": [t[2] for t in targets], "click": [t[3] for t in targets],
         "uid": [f"t{i}" for i in range(3)]},
        features=datasets.Features({"screenshot": datasets.Image(), "query": datasets.Value("string"),
                                    "target": datasets.Sequence(datasets.Value("float32")),
                                    "click": datasets.Sequence(datasets.Value("float32")),
                                    "uid": datasets.Value("string")}))
    table.save_to_disk(str(tmp_path / "hf"))
    return {"jsonl": _jsonl(tmp_path / "canonical.jsonl", canonical), "llama_factory": tmp_path / "llama_factory.json",
            "sharegpt": tmp_path / "sharegpt.jsonl", "hf": tmp_path / "hf"}


HF_COLUMNS = {"image": "screenshot", "instruction": "query", "bbox": "target", "point": "click", "id": "uid"}


def _facts(examples, approx: bool = False) -> list[tuple]:
    """What must agree between two loads of the same targets; `approx` for the side compared against."""
    near = pytest.approx if approx else tuple
    return [(ex.id, ex.instruction, tuple(ex.image_size), None if ex.bbox is None else near(ex.bbox),
             near(ex.point)) for ex in examples]


def _pixels(examples) -> list[bytes]:
    return [(Image.open(ex.image) if isinstance(ex.image, str) else ex.image).convert("RGB").tobytes()
            for ex in examples]


def test_llama_factory_sharegpt_and_column_mapped_hf_load_to_the_same_examples(four_shapes):
    expected = load_examples(four_shapes["jsonl"])
    assert expected.point_only == 1 and expected[2].bbox is None and expected[2].point == (320.0, 240.0)
    loaded = {
        "llama_factory": load_examples(four_shapes["llama_factory"], action_format="qwen2_vl"),
        "sharegpt": load_examples(four_shapes["sharegpt"], action_format="qwen2_5_vl"),
        "hf": load_examples(four_shapes["hf"], columns=HF_COLUMNS, bbox_format="xyxy"),
    }
    for name, examples in loaded.items():
        assert _facts(examples) == _facts(expected, approx=True), name
        assert _pixels(examples) == _pixels(expected), name
    assert loaded["sharegpt"][0].extra["system"] == "You are a GUI agent."
    assert loaded["sharegpt"][0].instruction == "open the File menu"  # <image> and surrounding space removed


def test_data_convert_writes_jsonl_that_round_trips(four_shapes, tmp_path, capsys):
    expected = load_examples(four_shapes["jsonl"])
    sources = {"llama_factory": ["--action-format", "qwen2_vl"], "sharegpt": ["--action-format", "qwen2_5_vl"],
               "hf": ["--columns", ",".join(f"{k}={v}" for k, v in HF_COLUMNS.items()), "--bbox-format", "xyxy"]}
    for name, options in sources.items():
        first, second = tmp_path / "out" / f"{name}.jsonl", tmp_path / "again" / f"{name}.jsonl"
        assert main(["data", "convert", str(four_shapes[name]), "--to", "jsonl", "--out", str(first), *options]) == 0
        assert f"wrote 3 examples (1 point-only) to {first}" in capsys.readouterr().out
        converted = load_examples(first)
        assert _facts(converted) == _facts(expected, approx=True), name
        assert _pixels(converted) == _pixels(expected), name
        assert main(["data", "convert", str(first), "--to", "jsonl", "--out", str(second)]) == 0
        again = load_examples(second)
        assert [(ex.id, ex.instruction, ex.image_size, ex.bbox, ex.point, ex.extra) for ex in again] == \
            [(ex.id, ex.instruction, ex.image_size, ex.bbox, ex.point, ex.extra) for ex in converted]
        assert [Path(ex.image).resolve() for ex in again] == [Path(ex.image).resolve() for ex in converted]
    assert (tmp_path / "out" / "hf_images").is_dir()  # HF image bytes written beside the JSONL
    _fails(["data", "convert", str(four_shapes["jsonl"]), "--to", "jsonl", "--out", str(first)], capsys,
           f"--out {first} exists", "--overwrite")


def test_a_json_list_with_eagle_align_field_names_loads_like_jsonl(four_shapes, tmp_path):
    records = [json.loads(line) for line in four_shapes["jsonl"].read_text().splitlines()]
    listed = four_shapes["jsonl"].parent / "listed.json"
    listed.write_text(json.dumps(records))
    assert _facts(load_examples(listed)) == _facts(load_examples(four_shapes["jsonl"]), approx=True)


def test_recipe_columns_and_data_action_format(four_shapes):
    data_args = parse_config({"model_name_or_path": "m", "train_data": str(four_shapes["hf"]),
                              "train_columns": HF_COLUMNS, "bbox_format": "xyxy",
                              "eval_data": str(four_shapes["sharegpt"]), "data_action_format": "qwen2_5_vl"})[1]
    train, evaluation = load_training_data(data_args)
    assert train.point_only == 1 and _facts(train) == _facts(evaluation, approx=True)


# --- Point-only records ---------------------------------------------------------------------------------------


def test_point_only_records_collate_with_no_box_mask(four_shapes, tiny_checkpoints):
    from eagle_align.families import load_processor

    examples = load_examples(four_shapes["jsonl"])
    processor = load_processor(tiny_checkpoints["qwen2_vl"])
    batch = GroundingCollator(processor, "qwen2_vl")(list(examples))
    metas = batch["meta"]
    assert [m.box_mask is None for m in metas] == [False, False, True]
    assert metas[2].bbox_resized is None and metas[0].box_mask.any()
    assert metas[2].decision_positions.numel() > 0  # the click is still trained
    labels = batch["labels"][2]
    assert (labels != -100).sum() > 0


def test_point_only_records_are_counted_and_refused_where_a_box_is_needed(four_shapes, tmp_path, capsys):
    assert main(["data", "validate", str(four_shapes["jsonl"])]) == 0
    assert "point_only: 1" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"canonical.jsonl:3 \(id=t2\): has a click point but no bbox"):
        load_examples(four_shapes["jsonl"], require_box=True)
    predictions = _jsonl(tmp_path / "pred.jsonl", [{"id": f"t{i}", "point": [1, 1]} for i in range(3)])
    _fails(["eval", "--predictions", str(predictions), "--data", str(four_shapes["jsonl"]), "--out",
            str(tmp_path / "ev")], capsys, "(id=t2): has a click point but no bbox")
    data_args = parse_config({"model_name_or_path": "m", "train_data": str(four_shapes["jsonl"]),
                              "eval_data": str(four_shapes["jsonl"]), "click_eval": True})[1]
    with pytest.raises(DataError, match="no bbox"):  # click eval during training needs boxes too
        load_training_data(data_args)


# --- Refusals ---------------------------------------------------------------------------------------------


def test_sharegpt_refusals_name_the_option_or_the_record(four_shapes, tmp_path, capsys):
    _fails(["data", "validate", str(four_shapes["sharegpt"])], capsys, "sharegpt.jsonl: LLaMA-Factory",
           "need the action format", "--action-format")
    multi = tmp_path / "multi.jsonl"
    _jsonl(multi, [{"messages": [{"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "(1,2)"},
                                 {"role": "user", "content": "b"}, {"role": "assistant", "content": "(3,4)"}],
                    "images": ["shots/a.png"]}])
    _fails(["data", "convert", str(multi), "--to", "jsonl", "--out", str(tmp_path / "m.jsonl"), "--action-format",
            "qwen2_vl"], capsys, "multi.jsonl:1", "2 user and 2 assistant turns")
    nothing = _jsonl(tmp_path / "nothing.jsonl", [{"messages": [{"role": "user", "content": "<image>a"},
                                                                {"role": "assistant", "content": "no idea"}],
                                                   "images": ["shots/a.png"]}])
    _fails(["data", "convert", str(nothing), "--to", "jsonl", "--out", str(tmp_path / "n.jsonl"), "--action-format",
            "qwen3_vl"], capsys, "nothing.jsonl:1", "no click or box in the answer 'no idea'")


def test_column_refusals(four_shapes, tmp_path, capsys):
    _fails(["data", "validate", str(four_shapes["hf"]), "--columns", "image"], capsys, "--columns='image'",
           "FIELD=COLUMN")
    _fails(["data", "validate", str(four_shapes["hf"]), "--columns", "picture=screenshot"], capsys,
           "'picture' is not a field to map")
    _fails(["data", "convert", str(four_shapes["hf"]), "--to", "jsonl", "--out", str(tmp_path / "x.jsonl")], capsys,
           "row 0", "missing field 'image'", "columns={image: NAME}")
    _fails(["data", "convert", str(four_shapes["hf"]), "--to", "jsonl", "--out", str(tmp_path / "x.jsonl"),
            "--columns", "image=shot"], capsys, "no column 'shot' (for image)")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "train_data": str(four_shapes["hf"]),
                                      "columns": ["screenshot"]}))
    _fails(["train", str(recipe)], capsys, "columns=['screenshot'] must map")
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "train_data": str(four_shapes["hf"]),
                                      "bbox_format": "yxyx"}))
    _fails(["train", str(recipe)], capsys, "bbox_format='yxyx'", "xyxy_1000")


def test_recipe_relative_data_paths_get_a_hint(tmp_path, monkeypatch, capsys):
    recipes = tmp_path / "project" / "recipes"
    _png(recipes / "data" / "s.png", (200, 100))
    _jsonl(recipes / "data" / "train.jsonl", [{"image": "s.png", "instruction": "a", "bbox": [1, 1, 9, 9]}])
    recipe = recipes / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "train_data": "data/train.jsonl"}))
    monkeypatch.chdir(tmp_path)
    err = _fails(["train", str(recipe)], capsys, "train_data data/train.jsonl: no such file or directory",
                 "resolve from the current directory")
    assert f"hint: relative to the recipe's folder it is {recipes / 'data' / 'train.jsonl'}" in err
    monkeypatch.chdir(recipes)  # from the recipe's folder the same path is found: no error from the check
    assert load_config(recipe)["train_data"] == "data/train.jsonl"
    monkeypatch.chdir(tmp_path)  # an override that replaces the path is not checked against the recipe
    assert load_config(recipe, {"train_data": "elsewhere.jsonl"})["train_data"] == "elsewhere.jsonl"


def test_synth_cue_options_without_a_cue_fraction_are_refused(tmp_path, capsys):
    _fails(["data", "synth", "--out", str(tmp_path / "s"), "--n", "2", "--cue-colour", "magenta"], capsys,
           "--cue-colour without --cue-fraction draws no cue")
    assert not (tmp_path / "s").exists()
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "2", "--cue-colour", "magenta",
                 "--cue-fraction", "1.0"]) == 0
    records = [json.loads(line) for line in (tmp_path / "s" / "train.jsonl").read_text().splitlines()]
    assert all(r["extra"]["cue_colour"] == [255, 0, 255] for r in records)
