"""Loaders on fixtures written in each benchmark's real layout, including mirrors and broken records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from eagle_align.cli import main
from eagle_align.data import DataError, GroundingExample, load_examples, load_image
from eagle_align.data.loaders import detect_format


def _png(path: Path, size, colour=(40, 120, 200)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def _write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def jsonl_dir(tmp_path):
    _png(tmp_path / "imgs" / "a.png", (400, 300))
    _png(tmp_path / "imgs" / "b.png", (200, 500))
    good = [
        {"image": "imgs/a.png", "instruction": "click Save", "bbox": [10, 20, 110, 60], "image_size": [400, 300],
         "platform": "web", "ui_type": "text", "source": "unit", "id": "save-1", "group": "g1"},
        {"image": "imgs/b.png", "instruction": "tap the icon", "bbox": [150, 400, 199, 499], "point": [160, 410]},
    ]
    broken = [
        {"image": "imgs/missing.png", "instruction": "x", "bbox": [1, 1, 5, 5]},  # line 3: missing image
        {"image": "imgs/a.png", "instruction": "x", "bbox": [300, 200, 450, 280]},  # line 4: outside
        {"image": "imgs/a.png", "instruction": "x", "bbox": [50, 50, 50, 80]},  # line 5: zero area
        {"image": "imgs/a.png", "instruction": "x", "bbox": "10,10,20,20"},  # line 6: wrong type
        {"image": "imgs/a.png", "instruction": 7, "bbox": [10, 10, 20, 20]},  # line 7: wrong type
        "{not json",  # line 8
        {"image": "imgs/a.png", "instruction": "x", "bbox": [10, 10, 20, 20], "image_size": [401, 300]},  # line 9
        {"image": "imgs/a.png", "bbox": [10, 10, 20, 20]},  # line 10: no instruction
    ]
    _write_jsonl(tmp_path / "train.jsonl", good + broken)
    return tmp_path


def test_jsonl_skip_reports_every_broken_record(jsonl_dir):
    examples = load_examples(jsonl_dir / "train.jsonl", on_error="skip")
    assert [ex.id for ex in examples] == ["save-1", "train:1"]
    first, second = examples
    assert first.bbox == (10.0, 20.0, 110.0, 60.0) and first.point == (60.0, 40.0)
    assert (first.platform, first.ui_type, first.source) == ("web", "text", "unit")
    assert first.extra == {"group": "g1", "split": "train"}
    assert Path(first.image) == jsonl_dir / "imgs" / "a.png"
    assert second.image_size == (200, 500) and second.point == (160.0, 410.0)
    assert examples.skipped == 8 and len(examples.problems) == 8
    expected = {3: "image file not found", 4: "outside", 5: "zero or negative area", 6: "bbox must be 4 numbers",
                7: "instruction must be", 8: "invalid JSON", 9: "does not match", 10: "missing field 'instruction'"}
    for problem, (line, words) in zip(examples.problems, expected.items()):
        assert f"train.jsonl:{line}" in problem and words in problem, problem


def test_jsonl_raise_names_file_and_line(jsonl_dir):
    with pytest.raises(DataError, match=r"train\.jsonl:3.*image file not found"):
        load_examples(jsonl_dir / "train.jsonl")


def test_image_root_and_directory_source(jsonl_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    _png(other / "imgs" / "a.png", (400, 300))
    _write_jsonl(jsonl_dir / "test.jsonl", [{"image": "imgs/a.png", "instruction": "x", "bbox": [0, 0, 4, 4]}])
    examples = load_examples(jsonl_dir / "test.jsonl", image_root=other)
    assert Path(examples[0].image) == other / "imgs" / "a.png"
    both = load_examples(jsonl_dir, on_error="skip")  # a folder of JSONL files, split = file name
    assert both.by_split() == {"test": 1, "train": 2}


def test_duplicate_ids_are_refused(tmp_path):
    _png(tmp_path / "a.png", (50, 50))
    rec = {"image": "a.png", "instruction": "x", "bbox": [0, 0, 4, 4], "id": "same"}
    _write_jsonl(tmp_path / "d.jsonl", [rec, rec])
    with pytest.raises(DataError, match=r"d\.jsonl:2.*duplicate id 'same'"):
        load_examples(tmp_path / "d.jsonl")


def _screenspot(root: Path, v2: bool) -> Path:
    images = root / ("screenspotv2_image" if v2 else "screenspot_imgs")
    _png(images / "m1.png", (360, 640))
    _png(images / "w1.png", (1280, 720))
    suffix = "_v2" if v2 else ""
    mobile = [
        {"img_filename": "m1.png", "bbox": [300, 40, 50, 30], "instruction": "open menu", "data_type": "icon",
         "data_source": "android"},
        {"img_filename": "m1.png", "bbox": [20, 500, 100, 60], "instruction": "tap send", "data_type": "text",
         "data_source": "ios"},
        {"img_filename": "gone.png", "bbox": [1, 1, 2, 2], "instruction": "x", "data_type": "text",
         "data_source": "ios"},
    ]
    web = [{"img_filename": "w1.png", "bbox": [1000, 10, 200, 40], "instruction": "search", "data_type": "text",
            "data_source": "shop"}]
    (root / f"screenspot_mobile{suffix}.json").write_text(json.dumps(mobile))
    (root / f"screenspot_web{suffix}.json").write_text(json.dumps(web))
    return root


@pytest.mark.parametrize("v2", [False, True], ids=["screenspot", "screenspot_v2"])
def test_screenspot_layouts_xywh_pixels(tmp_path, v2):
    root = _screenspot(tmp_path, v2)
    assert detect_format(root) == ("screenspot_v2" if v2 else "screenspot")
    examples = load_examples(root, on_error="skip")
    stem = "screenspot_mobile_v2" if v2 else "screenspot_mobile"
    assert [ex.id for ex in examples] == [f"{stem}:0", f"{stem}:1", ("screenspot_web_v2" if v2 else "screenspot_web") + ":0"]
    assert examples[0].bbox == (300.0, 40.0, 350.0, 70.0)  # xywh → xyxy
    assert examples[2].bbox == (1000.0, 10.0, 1200.0, 50.0)
    assert [(ex.platform, ex.ui_type, ex.source) for ex in examples] == [
        ("mobile", "icon", "android"), ("mobile", "text", "ios"), ("web", "text", "shop")]
    assert examples[0].image_size == (360, 640)
    assert examples.skipped == 1 and f"{stem}.json:record 2" in examples.problems[0]
    assert "image file not found" in examples.problems[0]


def test_screenspot_normalised_boxes_in_json_layout_stay_xywh(tmp_path):
    _png(tmp_path / "screenspot_imgs" / "d.png", (1000, 500))
    records = [{"img_filename": "d.png", "bbox": [0.5, 0.1, 0.1, 0.1], "instruction": "a", "data_type": "icon",
                "data_source": "macos"},
               {"img_filename": "d.png", "bbox": [0.05, 0.5, 0.25, 0.4], "instruction": "b", "data_type": "text",
                "data_source": "windows"},
               {"img_filename": "d.png", "bbox": [500, 50, 100, 50], "instruction": "c", "data_type": "text",
                "data_source": "windows"}]
    (tmp_path / "screenspot_desktop.json").write_text(json.dumps(records))
    examples = load_examples(tmp_path, on_error="skip")
    assert [ex.bbox for ex in examples] == [(500.0, 50.0, 600.0, 100.0), (50.0, 250.0, 300.0, 450.0)]
    assert examples.skipped == 1 and "record 2" in examples.problems[0] and "normalised" in examples.problems[0]


def test_benchmark_layouts_are_trusted_where_boxes_fit_both_readings(tmp_path):
    # Every box fits both readings (x1 + x2 ≤ W, y1 + y2 ≤ H); the benchmark's own definition decides.
    v2 = tmp_path / "v2"
    _png(v2 / "screenspotv2_image" / "s.png", (800, 600))
    records = [{"img_filename": "s.png", "bbox": [10, 10, 100, 50], "instruction": "a", "data_type": "text"},
               {"img_filename": "s.png", "bbox": [200, 100, 300, 200], "instruction": "b", "data_type": "icon"}]
    (v2 / "screenspot_web_v2.json").write_text(json.dumps(records))
    assert [ex.bbox for ex in load_examples(v2)] == [(10.0, 10.0, 110.0, 60.0), (200.0, 100.0, 500.0, 300.0)]
    assert load_examples(v2, bbox_format="xyxy")[1].bbox == (200.0, 100.0, 300.0, 200.0)
    pro = tmp_path / "pro"
    _png(pro / "images" / "app" / "s.png", (2560, 1440))  # only left-half, top-half elements
    annotations = [{"img_filename": "app/s.png", "bbox": [100, 200, 400, 260], "instruction": "a", "img_size": [2560, 1440],
                    "ui_type": "text", "application": "app", "group": "Dev"},
                   {"img_filename": "app/s.png", "bbox": [900, 300, 1000, 340], "instruction": "b",
                    "img_size": [2560, 1440], "ui_type": "icon", "application": "app", "group": "Dev"}]
    (pro / "annotations").mkdir()
    (pro / "annotations" / "app_windows.json").write_text(json.dumps(annotations))
    assert [ex.bbox for ex in load_examples(pro)] == [(100.0, 200.0, 400.0, 260.0), (900.0, 300.0, 1000.0, 340.0)]
    with pytest.raises(ValueError, match="bbox_format='yxyx'"):
        load_examples(pro, bbox_format="yxyx")


def test_hf_screenspot_mirror_with_undecidable_boxes_is_refused_unless_forced(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({
        "image": [Image.new("RGB", (800, 600))] * 2, "instruction": ["a", "b"], "data_type": ["text", "icon"],
        "bbox": [[10, 10, 100, 50], [200, 100, 300, 200]],
    }, features=datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                   "data_type": datasets.Value("string"),
                                   "bbox": datasets.Sequence(datasets.Value("int32"))}))
    table.save_to_disk(str(tmp_path / "mirror"))  # not the benchmark's own layout: either reading is possible
    with pytest.raises(DataError, match=r"row 0.*could be xyxy or xywh.*bbox_format"):
        load_examples(tmp_path / "mirror")
    assert load_examples(tmp_path / "mirror", bbox_format="xywh")[1].bbox == (200.0, 100.0, 500.0, 300.0)


def test_tiny_pixel_box_is_not_read_as_normalised_without_evidence(tmp_path):
    _png(tmp_path / "a.png", (400, 300))
    lone = _write_jsonl(tmp_path / "lone.jsonl", [{"image": "a.png", "instruction": "x", "bbox": [0, 0, 1, 1]}])
    assert load_examples(lone)[0].bbox == (0.0, 0.0, 1.0, 1.0)  # one pixel, not the whole screen
    # With fractions in the file, [0, 0, 1, 1] is the whole screen in a normalised file.
    normalised = _write_jsonl(tmp_path / "norm.jsonl", [
        {"image": "a.png", "instruction": "x", "bbox": [0, 0, 1, 1]},
        {"image": "a.png", "instruction": "y", "bbox": [0.25, 0.5, 0.5, 1.0]}])
    assert [ex.bbox for ex in load_examples(normalised)] == [(0.0, 0.0, 400.0, 300.0), (100.0, 150.0, 200.0, 300.0)]


def test_screenspot_pro_layout(tmp_path):
    _png(tmp_path / "images" / "vscode" / "s1.png", (2560, 1440))
    annotations = [
        {"img_filename": "vscode/s1.png", "bbox": [2400, 10, 2450, 40], "instruction": "close the editor",
         "id": "vscode_0", "application": "vscode", "platform": "macos", "img_size": [2560, 1440],
         "ui_type": "icon", "group": "Dev"},
        {"img_filename": "vscode/s1.png", "bbox": [100, 1300, 400, 1400], "instruction": "open terminal",
         "application": "vscode", "platform": "macos", "img_size": [2560, 1440], "ui_type": "text", "group": "Dev"},
        {"img_filename": "vscode/s1.png", "bbox": [10, 10, 20, 20], "instruction": "x", "application": "vscode",
         "platform": "macos", "img_size": [1920, 1080], "ui_type": "text", "group": "Dev"},  # wrong img_size
    ]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "vscode_macos.json").write_text(json.dumps(annotations))
    assert detect_format(tmp_path) == "screenspot_pro"
    examples = load_examples(tmp_path, on_error="skip")
    assert [ex.id for ex in examples] == ["vscode_0", "vscode_macos:1"]
    assert examples[0].bbox == (2400.0, 10.0, 2450.0, 40.0)  # xyxy kept
    assert examples[0].extra["group"] == "Dev" and examples[0].extra["split"] == "vscode_macos"
    assert (examples[0].platform, examples[0].ui_type, examples[0].source) == ("macos", "icon", "vscode")
    assert "record 2" in examples.problems[0] and "does not match" in examples.problems[0]


def _hf_rows(tmp_path):
    import datasets

    images = [Image.new("RGB", (640, 400), (i * 40, 90, 90)) for i in range(3)]
    # The rootsautomation/ScreenSpot mirror: normalised xyxy boxes, Image feature, file_name column.
    mirror = datasets.Dataset.from_dict({
        "file_name": ["a.png", "b.png", "c.png"],
        "bbox": [[0.5, 0.25, 0.75, 0.5], [0.1, 0.6, 0.2, 0.7], [0.3, 0.3, 0.3, 0.4]],  # last: zero width
        "instruction": ["search", "open", "broken"],
        "data_type": ["text", "icon", "text"],
        "data_source": ["gitlab", "android", "macos"],
        "image": images,
    }, features=datasets.Features({
        "file_name": datasets.Value("string"), "bbox": datasets.Sequence(datasets.Value("float32")),
        "instruction": datasets.Value("string"), "data_type": datasets.Value("string"),
        "data_source": datasets.Value("string"), "image": datasets.Image()}))
    return datasets, mirror


def test_hf_save_to_disk_normalised_mirror(tmp_path):
    datasets, mirror = _hf_rows(tmp_path)
    datasets.DatasetDict({"test": mirror}).save_to_disk(str(tmp_path / "mirror"))
    assert detect_format(tmp_path / "mirror") == "hf"
    examples = load_examples(tmp_path / "mirror", on_error="skip")
    assert [ex.id for ex in examples] == ["test:0", "test:1"]
    assert examples[0].bbox == pytest.approx((320.0, 100.0, 480.0, 200.0))
    assert isinstance(examples[0].image, Image.Image) and examples[0].image_size == (640, 400)
    assert [(ex.platform, ex.ui_type, ex.source) for ex in examples] == [("web", "text", "gitlab"),
                                                                         ("mobile", "icon", "android")]
    assert examples.skipped == 1 and "[test] row 2" in examples.problems[0]
    assert load_image(examples[0], 64 * 64, 320 * 320).size[0] % 28 == 0
    # Cells stay compressed and undecoded (PIL drops `fp` once decoded): datasets do not fill memory.
    assert examples[0].image.fp is not None


def test_hf_canonical_columns_and_hub_style_parquet(tmp_path):
    datasets, _ = _hf_rows(tmp_path)
    table = datasets.Dataset.from_dict({
        "image": [Image.new("RGB", (300, 200))] * 2,
        "instruction": ["a", "b"], "bbox": [[10, 10, 60, 40], [200, 150, 290, 190]], "id": ["x1", "x2"],
        "platform": ["web", "web"],
    }, features=datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                   "bbox": datasets.Sequence(datasets.Value("int32")),
                                   "id": datasets.Value("string"), "platform": datasets.Value("string")}))
    table.save_to_disk(str(tmp_path / "single"))  # a plain Dataset: split "train"
    examples = load_examples(tmp_path / "single")
    assert [ex.id for ex in examples] == ["x1", "x2"] and examples.by_split() == {"train": 2}
    assert examples[1].bbox == (200.0, 150.0, 290.0, 190.0)
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    table.to_parquet(str(hub / "validation-00000-of-00001.parquet"))
    from_hub = load_examples(tmp_path / "hub")
    assert [ex.id for ex in from_hub] == ["x1", "x2"] and from_hub.by_split() == {"validation": 2}
    assert from_hub[0].image_size == (300, 200)


def test_load_image_errors_name_the_example(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    example = GroundingExample(image=str(bad), image_size=(10, 10), instruction="x", bbox=(0, 0, 5, 5), id="ex-7")
    with pytest.raises(DataError, match="ex-7"):
        load_image(example, 64 * 64, 320 * 320)
    example.image = str(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="ex-7"):
        load_image(example, 64 * 64, 320 * 320)


def test_cli_validate_prints_splits_and_problems(jsonl_dir, capsys):
    assert main(["data", "validate", str(jsonl_dir / "train.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "2 valid examples, 8 skipped" in out and "split train: 2" in out
    assert out.count("PROBLEM ") == 8 and "train.jsonl:4" in out
    clean = _write_jsonl(jsonl_dir / "clean.jsonl", [{"image": "imgs/a.png", "instruction": "x", "bbox": [1, 1, 9, 9]}])
    assert main(["data", "validate", str(clean)]) == 0
    with pytest.raises(DataError, match="cannot tell its layout"):
        load_examples(jsonl_dir / "imgs")


def _truncated_png(path: Path, size=(400, 300)) -> Path:
    """A PNG whose header is intact but whose pixel data stops halfway (an interrupted download)."""
    Image.effect_noise(size, 60).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_validate_decodes_images_and_fast_mode_reads_headers_only(jsonl_dir, capsys):
    _truncated_png(jsonl_dir / "imgs" / "cut.png")
    source = _write_jsonl(jsonl_dir / "cut.jsonl", [
        {"image": "imgs/a.png", "instruction": "x", "bbox": [1, 1, 9, 9]},
        {"image": "imgs/cut.png", "instruction": "y", "bbox": [1, 1, 9, 9], "id": "cut-1"}])
    assert load_examples(source)[1].image_size == (400, 300)  # the header alone looks fine
    assert main(["data", "validate", str(source), "--fast"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(source)]) == 1
    out = capsys.readouterr().out
    assert "1 valid examples, 1 skipped" in out
    assert "PROBLEM " in out and "cut.jsonl:2 (id=cut-1)" in out and "cannot decode image" in out


def test_hf_image_bytes_that_do_not_decode_are_reported(tmp_path):
    import datasets

    cut = _truncated_png(tmp_path / "cut.png")
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": cut.read_bytes(), "path": None}], "instruction": ["a"], "bbox": [[1, 1, 9, 9]]},
        features=datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                    "bbox": datasets.Sequence(datasets.Value("int32"))}))
    table.save_to_disk(str(tmp_path / "table"))
    assert len(load_examples(tmp_path / "table")) == 1
    with pytest.raises(DataError, match=r"\[train\] row 0.*cannot decode image"):
        load_examples(tmp_path / "table", decode_images=True)


def test_split_selection_in_a_dataset_dict_and_a_folder_of_split_files(tmp_path):
    import datasets

    def table(prefix, n):
        return datasets.Dataset.from_dict({"image": [Image.new("RGB", (64, 48))] * n, "instruction": ["x"] * n,
                                           "bbox": [[1, 1, 9, 9]] * n, "id": [f"{prefix}{i}" for i in range(n)]},
                                          features=datasets.Features({
                                              "image": datasets.Image(), "instruction": datasets.Value("string"),
                                              "bbox": datasets.Sequence(datasets.Value("int32")),
                                              "id": datasets.Value("string")}))

    datasets.DatasetDict({"train": table("tr", 3), "test": table("te", 2)}).save_to_disk(str(tmp_path / "dd"))
    assert load_examples(tmp_path / "dd").by_split() == {"train": 3, "test": 2}  # no split asked: every split
    assert [ex.id for ex in load_examples(tmp_path / "dd", split="train")] == ["tr0", "tr1", "tr2"]
    assert load_examples(tmp_path / "dd", split="train, test").by_split() == {"train": 3, "test": 2}
    with pytest.raises(DataError, match=r"no split 'validation'; it has train, test") as info:
        load_examples(tmp_path / "dd", split="validation")
    assert "train_split" in info.value.hint

    _png(tmp_path / "files" / "a.png", (64, 48))
    for name, n in (("train", 2), ("test", 1)):
        _write_jsonl(tmp_path / "files" / f"{name}.jsonl",
                     [{"image": "a.png", "instruction": "x", "bbox": [1, 1, 9, 9], "id": f"{name}{i}"} for i in range(n)])
    assert [ex.id for ex in load_examples(tmp_path / "files", split="train")] == ["train0", "train1"]
    # One file is the data itself whatever it is called; a lone test split only when asked for by name.
    assert len(load_examples(tmp_path / "files" / "train.jsonl", split="validation")) == 2
    with pytest.raises(DataError, match="no split 'train'; it has test"):
        load_examples(tmp_path / "files" / "test.jsonl", split="train")
    assert len(load_examples(tmp_path / "files" / "test.jsonl", split="test")) == 1


def test_empty_sources_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "ss").mkdir()
    (tmp_path / "ss" / "screenspot_web.json").write_text("[]")
    with pytest.raises(DataError, match="no records"):
        load_examples(tmp_path / "ss")
