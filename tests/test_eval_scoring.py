"""Click scoring on benchmark fixtures with known answers, report files, and scoring-only `eagle-align eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from eagle_align.answer_formats import clamp_point, get_action_format
from eagle_align.cli import main
from eagle_align.data import load_examples
from eagle_align.eval import (
    point_in_box,
    read_predictions,
    score_predictions,
    score_records,
    summarize,
    write_report,
)

# ScreenSpot layout: per-platform files, bbox = [x, y, w, h] on 200×100 screenshots. Each entry: instruction,
# platform, record, predicted point (original px, None = unparseable) and its verdict.
SCREENSPOT = [
    ("open the inbox", "mobile", {"bbox": [10, 10, 40, 20], "data_type": "text", "data_source": "ios"}, (30, 20), True),
    # the box's bottom-right corner exactly: edges are inclusive
    ("tap the gear icon", "mobile", {"bbox": [100, 50, 20, 20], "data_type": "icon", "data_source": "android"},
     (120, 70), True),
    # far outside the screen: out of range, a miss
    ("close the window", "desktop", {"bbox": [0, 0, 50, 50], "data_type": "text", "data_source": "windows"},
     (-30, 500), False),
    # past the right edge, whose box touches that edge: out of range, a miss (never clamped onto the box)
    ("click the search icon", "desktop", {"bbox": [150, 0, 50, 30], "data_type": "icon", "data_source": "macos"},
     (250, 10), False),
    ("go to the next page", "web", {"bbox": [20, 60, 30, 30], "data_type": "text", "data_source": "gitlab"},
     None, False),
    ("press the cart icon", "web", {"bbox": [100, 50, 20, 20], "data_type": "icon", "data_source": "shop"},
     (0, 0), False),
]
# Distances from the box centre in 0–1000 units (x ·1000/200, y ·1000/100); none for points off the image.
SCREENSPOT_DISTANCES = [0.0, math.hypot(50, 100), None, None, None, math.hypot(550, 600)]

# ScreenSpot-Pro layout: annotations/<app>.json, bbox = [x1, y1, x2, y2] on 400×300 screenshots.
PRO = [
    ("select the explorer tab", "vscode", "Dev", "text", [10, 10, 110, 60], (110, 60), True),
    ("toggle the terminal", "vscode", "Dev", "icon", [200, 100, 220, 120], (221, 110), False),
    ("open the layer panel", "autocad", "CAD", "text", [300, 200, 400, 300], (1000, 1000), False),  # off the image
    ("pick the line tool", "autocad", "CAD", "icon", [0, 250, 40, 290], None, False),
]
PRO_DISTANCES = [math.hypot(125, 25 * 1000 / 300), 27.5, None, None]


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def write_screenspot(root: Path) -> Path:
    """A ScreenSpot (v1) folder: screenspot_{platform}.json + screenspot_imgs/."""
    by_platform: dict[str, list[dict]] = {}
    for i, (instruction, platform, record, _, _) in enumerate(SCREENSPOT):
        name = f"{platform}_{i}.png"
        _png(root / "screenspot_imgs" / name, (200, 100))
        by_platform.setdefault(platform, []).append({"img_filename": name, "instruction": instruction, **record})
    for platform, records in by_platform.items():
        (root / f"screenspot_{platform}.json").write_text(json.dumps(records))
    return root


def write_screenspot_pro(root: Path) -> Path:
    """A ScreenSpot-Pro folder: annotations/<application>.json + images/<application>/."""
    by_app: dict[str, list[dict]] = {}
    for i, (instruction, app, group, ui_type, bbox, _, _) in enumerate(PRO):
        name = f"{app}/shot_{i}.png"
        _png(root / "images" / name, (400, 300))
        by_app.setdefault(app, []).append({
            "img_filename": name, "bbox": bbox, "instruction": instruction, "img_size": [400, 300],
            "ui_type": ui_type, "platform": "windows" if app == "vscode" else "macos", "application": app,
            "group": group,
        })
    (root / "annotations").mkdir(parents=True)
    for app, records in by_app.items():
        (root / "annotations" / f"{app}.json").write_text(json.dumps(records))
    return root


def _points_by_id(examples, table, point_index):
    by_instruction = {row[0]: row[point_index] for row in table}
    return {ex.id: by_instruction[ex.instruction] for ex in examples}


def test_hit_edges_inclusive_and_clamping_only_for_ground_truth():
    box = (10.0, 20.0, 30.0, 40.0)
    for corner in [(10, 20), (30, 20), (10, 40), (30, 40), (20, 40)]:
        assert point_in_box(corner, box)
    for outside in [(9.999, 30), (30.001, 30), (20, 19.99), (20, 40.01)]:
        assert not point_in_box(outside, box)
    assert clamp_point((-5, 250), (200, 100)) == (0.0, 100.0)
    assert clamp_point((12.5, 7), (200, 100)) == (12.5, 7.0)


def test_screenspot_known_answers(tmp_path):
    examples = load_examples(write_screenspot(tmp_path / "ss"))
    assert len(examples) == 6
    predictions = _points_by_id(examples, SCREENSPOT, 3)
    metrics = score_predictions(examples, predictions)
    assert metrics["n"] == 6 and metrics["hits"] == 2 and metrics["wrong_format"] == 1
    assert metrics["out_of_range"] == 2 and metrics["missing"] == 0
    assert metrics["click_accuracy"] == pytest.approx(2 / 6)
    expected_distances = [d for d in SCREENSPOT_DISTANCES if d is not None]
    assert metrics["mean_distance"] == pytest.approx(sum(expected_distances) / 3, abs=1e-3)

    records = {r["instruction"]: r for r in score_records(examples, predictions)}
    for (instruction, _, record, _, hit), distance in zip(SCREENSPOT, SCREENSPOT_DISTANCES):
        x, y, w, h = record["bbox"]
        assert records[instruction]["bbox"] == [x, y, x + w, y + h]  # xywh converted to xyxy
        assert records[instruction]["hit"] is hit, instruction
        assert records[instruction]["distance"] == (None if distance is None else pytest.approx(distance, abs=1e-3))
    assert records["close the window"]["point"] is None and records["close the window"]["out_of_range"] is True
    assert records["close the window"]["raw_point"] == [-30.0, 500.0]
    assert records["click the search icon"]["out_of_range"] is True
    assert records["go to the next page"]["wrong_format"] is True
    assert records["go to the next page"]["out_of_range"] is False

    platform = metrics["breakdown"]["platform"]
    assert {k: (v["n"], v["hits"], v["wrong_format"]) for k, v in platform.items()} == {
        "desktop": (2, 0, 0), "mobile": (2, 2, 0), "web": (2, 0, 1)}
    assert platform["desktop"]["out_of_range"] == 2
    ui_type = metrics["breakdown"]["ui_type"]
    assert ui_type["text"]["click_accuracy"] == pytest.approx(1 / 3)
    assert ui_type["icon"]["click_accuracy"] == pytest.approx(1 / 3)
    assert {k: v["hits"] for k, v in metrics["breakdown"]["source"].items()} == {
        "android": 1, "gitlab": 0, "ios": 1, "macos": 0, "shop": 0, "windows": 0}
    assert set(metrics["breakdown"]) == {"platform", "ui_type", "source"}  # split = platform here
    assert metrics["tables"]["screenspot"] == {
        "mobile": {"text": 1.0, "icon": 1.0, "all": 1.0, "n": 2},
        "desktop": {"text": 0.0, "icon": 0.0, "all": 0.0, "n": 2},
        "web": {"text": 0.0, "icon": 0.0, "all": 0.0, "n": 2},
        "average": {"text": pytest.approx(1 / 3), "icon": pytest.approx(1 / 3), "all": pytest.approx(1 / 3), "n": 6},
    }
    assert "screenspot_pro" not in metrics["tables"]


def test_screenspot_pro_known_answers(tmp_path):
    examples = load_examples(write_screenspot_pro(tmp_path / "pro"))
    assert len(examples) == 4
    metrics = score_predictions(examples, _points_by_id(examples, PRO, 5))
    assert (metrics["n"], metrics["hits"], metrics["wrong_format"], metrics["out_of_range"]) == (4, 1, 1, 1)
    expected = [d for d in PRO_DISTANCES if d is not None]
    assert metrics["mean_distance"] == pytest.approx(sum(expected) / 2, abs=1e-3)
    records = {r["instruction"]: r for r in score_records(examples, _points_by_id(examples, PRO, 5))}
    for (instruction, *_, bbox, _, hit), distance in zip(PRO, PRO_DISTANCES):
        assert records[instruction]["bbox"] == bbox  # xyxy kept
        assert records[instruction]["hit"] is hit, instruction
        assert records[instruction]["distance"] == (None if distance is None else pytest.approx(distance, abs=1e-3))
    assert records["open the layer panel"]["point"] is None  # (1000, 1000) on 400×300: not clamped to the corner
    assert records["open the layer panel"]["raw_point"] == [1000.0, 1000.0]
    assert metrics["tables"]["screenspot_pro"] == {
        "CAD": {"text": 0.0, "icon": 0.0, "all": 0.0, "n": 2},
        "Dev": {"text": 1.0, "icon": 0.0, "all": 0.5, "n": 2},
        "average": {"text": 0.5, "icon": 0.0, "all": 0.25, "n": 4},
    }
    assert "screenspot" not in metrics["tables"]  # platforms are operating systems here
    assert {k: v["hits"] for k, v in metrics["breakdown"]["application"].items()} == {"autocad": 0, "vscode": 1}
    # source and split repeat the application here, so they are not listed twice
    assert set(metrics["breakdown"]) == {"platform", "ui_type", "application", "group"}
    assert metrics["breakdown"]["group"]["CAD"]["wrong_format"] == 1


def test_report_files_reload_and_agree(tmp_path):
    examples = load_examples(write_screenspot(tmp_path / "ss"))
    records = score_records(examples, _points_by_id(examples, SCREENSPOT, 3))
    metrics = {**summarize(records), "settings": {"action_format": "qwen2_5_vl"}, "versions": {"torch": "x"}}
    paths = write_report(metrics, records, tmp_path / "out")
    assert json.loads(paths["metrics"].read_text()) == json.loads(json.dumps(metrics))
    reloaded = read_predictions(paths["predictions"])
    assert reloaded == json.loads(json.dumps(records))
    assert json.loads(json.dumps(summarize(reloaded))) == json.loads(json.dumps(summarize(records)))
    report = paths["report"].read_text()
    assert "| mobile | 100.00 | 100.00 | 100.00 | 2 |" in report
    assert "| **average** | 33.33 | 33.33 | 33.33 | 6 |" in report
    assert "**click accuracy 33.33% on 6 samples (1 wrong format, 2 out of range)**" in report


def _answer(coordinate, resized):
    return {"answer": json.dumps({"action": "click", "coordinate": coordinate}), "action_format": "qwen2_5_vl",
            "resized_size": resized}


def test_scoring_only_cli_parses_answers(tmp_path):
    data = write_screenspot(tmp_path / "ss")
    examples = load_examples(data)
    ids = {ex.instruction: ex.id for ex in examples}
    lines = [
        {"id": ids["open the inbox"], "point": [30, 20]},
        # resized pixels of a 240×140 view: (144, 98) → (120, 70), the box corner
        {"id": ids["tap the gear icon"], **_answer([144, 98], [240, 140])},
        {"id": ids["close the window"], "point": [-30, 500]},
        # x far past the right edge → out of range (not clamped onto the box at the edge)
        {"id": ids["click the search icon"], **_answer([5000, 12], [240, 120])},
        {"id": ids["go to the next page"], "answer": "the next page link, I think", "action_format": "qwen2_5_vl",
         "resized_size": [224, 112]},
        {"id": ids["press the cart icon"], "point": [0, 0]},
    ]
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    expected = score_predictions(examples, _points_by_id(examples, SCREENSPOT, 3))
    for key in ("n", "hits", "click_accuracy", "wrong_format", "mean_distance", "breakdown", "tables"):
        assert metrics[key] == json.loads(json.dumps(expected[key])), key
    assert {"settings", "versions"} <= set(metrics) and metrics["missing_predictions"] == 0
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == 6 and sum(r["hit"] for r in records) == metrics["hits"]
    assert next(r for r in records if r["instruction"] == "tap the gear icon")["point"] == [120.0, 70.0]
    assert (out / "report.md").read_text().startswith("# Evaluation report")
    for name in ("accuracy.png", "examples.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 100


def test_scoring_only_rejects_foreign_ids_and_counts_missing(tmp_path, capsys):
    data = write_screenspot(tmp_path / "ss")
    first = load_examples(data)[0]
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(json.dumps({"id": first.id, "point": [1, 1]}) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    assert json.loads((out / "metrics.json").read_text())["missing_predictions"] == 5
    assert "5 of 6 examples have no prediction; each is scored as a miss" in capsys.readouterr().err

    for line, words in (({"id": "not-an-example", "point": [1, 1]}, "line 1: id 'not-an-example'"),
                        ({"id": first.id, "answer": "(1, 2)"}, "without `action_format`"),
                        ({"id": first.id, "answer": "[1, 2]", "action_format": "qwen2_5_vl"},
                         f"line 1 (id {first.id!r}): action_format qwen2_5_vl answers in pixels of the resized "
                         "image, so the line needs `resized_size`")):
        predictions.write_text(json.dumps(line) + "\n")
        assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"eagle-align eval: {predictions}") and words in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["qwen2_vl", "qwen3_vl", "pyautogui", "agentcpm"])
def test_scoring_only_relative_formats_need_no_resized_size(fmt, tmp_path):
    data = write_screenspot(tmp_path / "ss")
    examples = load_examples(data)
    action_format = get_action_format(fmt)
    # Each answer rendered for the target's centre, as a model of that format would write it.
    lines = [{"id": ex.id, "answer": action_format.render(ex.point, ex.image_size, (1, 1)), "action_format": fmt}
             for ex in examples[:4]]
    lines.append({"id": examples[4].id, "answer": "I would click the next page link", "action_format": fmt})
    lines.append({"id": examples[5].id, "answer": None, "action_format": fmt})
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n"], metrics["hits"], metrics["wrong_format"]) == (6, 4, 2)


def test_scoring_only_split_scores_one_platform(tmp_path):
    data = write_screenspot(tmp_path / "ss")
    mobile = load_examples(data, split="mobile")
    assert {ex.platform for ex in mobile} == {"mobile"} and len(mobile) == 2
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps({"id": ex.id, "point": list(ex.point)}) + "\n" for ex in mobile))
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--split", "mobile", "--out",
                 str(out), "--no-plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n"], metrics["hits"], metrics["missing_predictions"]) == (2, 2, 0)


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_missing_predictions_are_misses_in_the_headline_unless_scored_as_a_subset(tmp_path, capsys):
    data = write_screenspot(tmp_path / "ss")
    examples = load_examples(data)
    # Two correct predictions (box centres) for six examples: four are missing.
    predictions = _write_lines(tmp_path / "preds.jsonl", [{"id": ex.id, "point": list(ex.point)} for ex in examples[:2]])
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    console = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n"], metrics["hits"], metrics["missing"], metrics["missing_predictions"]) == (6, 2, 4, 4)
    assert metrics["click_accuracy"] == pytest.approx(2 / 6) and metrics["scored_subset"] is False
    headline = "click accuracy 33.33% on 6 samples (4 missing predictions scored as misses, 0 wrong format)"
    assert headline in console.out
    report = (out / "report.md").read_text()
    assert f"**{headline}**" in report and "100.00" not in report.split("## ")[0]
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == 6 and sum(bool(r["missing"]) for r in records) == 4
    assert all(r["hit"] is False and r["point"] is None for r in records if r["missing"])
    # Re-scoring the written predictions gives the same numbers: missing lines stay missing.
    again = tmp_path / "again"
    assert main(["eval", "--predictions", str(out / "predictions.jsonl"), "--data", str(data), "--out", str(again),
                 "--no-plots"]) == 0
    assert json.loads((again / "metrics.json").read_text())["click_accuracy"] == metrics["click_accuracy"]
    capsys.readouterr()

    subset = tmp_path / "subset"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(subset), "--no-plots",
                 "--score-subset"]) == 0
    console = capsys.readouterr()
    metrics = json.loads((subset / "metrics.json").read_text())
    assert (metrics["n"], metrics["hits"], metrics["missing_predictions"], metrics["examples"]) == (2, 2, 4, 6)
    assert metrics["scored_subset"] is True
    headline = "click accuracy 100.00% on 2 of 6 samples (4 missing, scored as a subset, 0 wrong format)"
    assert headline in console.out and "scoring the other 2 as a subset" in console.err
    assert f"**{headline}**" in (subset / "report.md").read_text()
    assert len(read_predictions(subset / "predictions.jsonl")) == 2


def test_answer_outside_the_coordinate_range_is_out_of_range_not_clamped(tmp_path, capsys):
    data = write_screenspot(tmp_path / "ss")
    examples = load_examples(data)
    inbox = next(ex for ex in examples if ex.instruction == "open the inbox")
    # A Qwen3-style 0-999 answer read as pixels of a 308×154 resized view (qwen2_5_vl): x = 900 is far past
    # the right edge, y = 900 past the bottom. Clamping would put it on the corner (200, 100).
    lines = [{"id": inbox.id, "answer": json.dumps({"action": "click", "coordinate": [900, 900]}),
              "action_format": "qwen2_5_vl", "resized_size": [308, 154]}]
    lines += [{"id": ex.id, "point": list(ex.point)} for ex in examples if ex.id != inbox.id]
    predictions = _write_lines(tmp_path / "preds.jsonl", lines)
    out = tmp_path / "out"
    assert main(["eval", "--predictions", str(predictions), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n"], metrics["hits"], metrics["out_of_range"], metrics["wrong_format"]) == (6, 5, 1, 0)
    record = next(r for r in read_predictions(out / "predictions.jsonl") if r["id"] == inbox.id)
    assert record["point"] is None and record["out_of_range"] is True and record["hit"] is False
    assert record["raw_point"] == pytest.approx([900 * 200 / 308, 900 * 100 / 154], abs=1e-3)
    headline = "click accuracy 83.33% on 6 samples (0 wrong format, 1 out of range)"
    assert headline in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert f"**{headline}**" in report
    assert "| 6 | 83.33 | 5 | 0 | 1 | 0 |" in report  # samples, accuracy, hits, wrong format, out of range, missing
    # The written predictions re-score to the same verdict.
    again = tmp_path / "again"
    assert main(["eval", "--predictions", str(out / "predictions.jsonl"), "--data", str(data), "--out", str(again),
                 "--no-plots"]) == 0
    assert json.loads((again / "metrics.json").read_text())["out_of_range"] == 1


def test_score_subset_needs_a_predictions_file(tmp_path, capsys):
    data = write_screenspot(tmp_path / "ss")
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--score-subset"]) == 2
    assert "eagle-align eval: --score-subset applies to scoring a predictions file" in capsys.readouterr().err
