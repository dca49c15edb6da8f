"""eagle_align.json: what a trained folder records, how it is read back, and how options are settled against it."""

from __future__ import annotations

import json
import logging

import pytest

from eagle_align.errors import UsageError
from eagle_align.families import CoordinateSpace, read_coordinate_space
from eagle_align.families.space import COORDINATE_SPACE_FILE, settle

SPACE = CoordinateSpace("qwen2_5_vl", "qwen2_5_vl", 3136, 65536, system_prompt="Be brief.", base_model_id="Q/B")


def test_record_round_trips_and_a_folder_without_one_has_none(tmp_path):
    SPACE.save(tmp_path / "adapter")
    assert read_coordinate_space(tmp_path / "adapter") == SPACE
    assert read_coordinate_space(tmp_path) is None
    assert SPACE.is_adapter
    assert not CoordinateSpace("qwen3_vl", "qwen3_vl", 1, 2, finetuning="full").is_adapter
    merged = CoordinateSpace("qwen3_vl", "qwen3_vl", 1, 2, merged_from="me/adapter")
    assert not merged.is_adapter


def test_a_broken_record_is_named(tmp_path):
    (tmp_path / COORDINATE_SPACE_FILE).write_text(json.dumps({"family": "qwen3_vl", "action_format": "qwen3_vl"}))
    with pytest.raises(UsageError, match="missing min_pixels, max_pixels"):
        read_coordinate_space(tmp_path)
    (tmp_path / COORDINATE_SPACE_FILE).write_text("{not json")
    with pytest.raises(UsageError, match=f"{COORDINATE_SPACE_FILE}: cannot read"):
        read_coordinate_space(tmp_path)


def test_hub_id_without_a_reachable_record_is_none():
    # HF_HUB_OFFLINE=1 (conftest) and nothing cached: no record, no error.
    assert read_coordinate_space("nobody/no-such-adapter") is None


def test_settle_takes_agreeing_and_missing_values_from_the_record():
    assert settle(None, max_pixels=100) == {"min_pixels": None, "max_pixels": 100, "action_format": None,
                                             "system_prompt": None}
    settled = settle(SPACE, "dir", max_pixels=65536, action_format=None)
    assert settled == {"min_pixels": 3136, "max_pixels": 65536, "action_format": "qwen2_5_vl",
                       "system_prompt": "Be brief."}


def test_settle_refuses_a_contradiction_unless_forced(caplog):
    with pytest.raises(UsageError, match=r"system_prompt 'Other\.' contradicts system_prompt 'Be brief\.'") as error:
        settle(SPACE, "dir", system_prompt="Other.")
    assert "dir/eagle_align.json" in str(error.value) and "--force-coordinate-space" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="eagle_align.families.space"):
        settled = settle(SPACE, "dir", force=True, min_pixels=4096)
    assert settled["min_pixels"] == 4096 and settled["max_pixels"] == 65536
    assert "min_pixels 4096 contradicts min_pixels 3136" in caplog.text
    with pytest.raises(TypeError, match="unexpected settings"):
        settle(SPACE, "dir", max_pixel=1)
