"""AttributionSettings: validation, the record in eagle_align.json, how eval / explain choose settings, and
RegionAttribution against the pipeline composed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.attribution import (
    AttributionSettings,
    RegionAttribution,
    attribute_samples,
    make_partition,
    recorded_attribution_settings,
    resolve_attribution_settings,
)
from eagle_align.attribution.settings import PAPER, SettingError, check_attribution_flags
from eagle_align.errors import UsageError
from eagle_align.families.space import COORDINATE_SPACE_FILE, CoordinateSpace, read_coordinate_space

RECORDED = AttributionSettings(n_regions=4, region_method="grid", baseline="black", search="exact")


def test_defaults_are_the_training_defaults_and_paper_the_papers():
    assert AttributionSettings().to_dict() == {
        "n_regions": 16, "region_method": "slic", "baseline": "background", "search": "bounded",
        "insertion_weight": 0.0, "deletion_weight": 1.0, "score_reduction": "mean", "box_overlap": 0.15,
        "max_regions": 10,
    }
    assert (PAPER.n_regions, PAPER.region_method, PAPER.baseline, PAPER.search) == (64, "grid", "black", "efficient")
    assert (PAPER.insertion_weight, PAPER.deletion_weight, PAPER.max_regions) == (2.0, 1.0, 10)
    assert AttributionSettings.PAPER is PAPER
    assert AttributionSettings.field_names() == tuple(AttributionSettings().to_dict())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n_regions", 0, "n_regions=0 must be"),
    ("n_regions", 2.5, "n_regions=2.5 must be"),
    ("region_method", "voronoi", "region_method='voronoi'; choose one of grid, slic"),
    ("baseline", "white", "baseline='white'; choose one of"),
    ("search", "beam", "search='beam'; choose one of"),
    ("score_reduction", "max", "score_reduction='max'; choose one of"),
    ("insertion_weight", -1.0, "insertion_weight=-1.0 must be ≥ 0"),
    ("deletion_weight", float("nan"), "deletion_weight=nan must be ≥ 0"),
    ("box_overlap", 1.5, r"box_overlap=1.5 must lie in \[0, 1\]"),
    ("max_regions", 0, "max_regions=0 must be"),
])
def test_each_invalid_setting_is_named(field, value, message):
    with pytest.raises(SettingError, match=message) as error:
        AttributionSettings(**{field: value})
    assert error.value.field == field and isinstance(error.value, ValueError)


def test_weights_must_not_both_be_zero_and_max_regions_may_be_none():
    with pytest.raises(ValueError, match=r"insertion_weight \+ deletion_weight must be > 0"):
        AttributionSettings(insertion_weight=0.0, deletion_weight=0.0)
    assert AttributionSettings(max_regions=None).max_regions is None
    with pytest.raises(ValueError, match="max_regions=0"):
        AttributionSettings().replace(max_regions=0)


def test_dict_round_trip_refuses_unknown_names():
    assert AttributionSettings.from_dict(RECORDED.to_dict()) == RECORDED
    assert AttributionSettings.from_dict({"n_regions": 8}) == AttributionSettings(n_regions=8)
    with pytest.raises(SettingError, match="unknown attribution setting 'strategy'"):
        AttributionSettings.from_dict({"strategy": "exact"})
    with pytest.raises(SettingError, match="unknown attribution setting 'prior_overlap'"):
        AttributionSettings.from_dict({**RECORDED.to_dict(), "prior_overlap": 0.2})


def test_eagle_align_json_records_the_settings_and_older_files_read_as_none(tmp_path):
    space = CoordinateSpace("qwen3_vl", "qwen3_vl", 1024, 4096, attribution=RECORDED.to_dict())
    space.save(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / COORDINATE_SPACE_FILE).read_text())
    assert saved["attribution"] == RECORDED.to_dict() and "origin" not in saved
    read = read_coordinate_space(tmp_path / "adapter")
    assert read == space and read.origin == str(tmp_path / "adapter" / COORDINATE_SPACE_FILE)
    assert recorded_attribution_settings(tmp_path / "adapter") == RECORDED
    assert recorded_attribution_settings(read) == RECORDED

    older = {k: v for k, v in saved.items() if k != "attribution"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / COORDINATE_SPACE_FILE).write_text(json.dumps(older))
    assert read_coordinate_space(tmp_path / "old").attribution is None
    assert recorded_attribution_settings(tmp_path / "old") is None
    assert recorded_attribution_settings(tmp_path / "nothing_here") is None


def test_an_invalid_record_names_its_file(tmp_path):
    CoordinateSpace("qwen3_vl", "qwen3_vl", 1, 2, attribution={"n_regions": 0}).save(tmp_path)
    with pytest.raises(UsageError, match=f"{COORDINATE_SPACE_FILE}: recorded attribution settings are invalid"):
        recorded_attribution_settings(tmp_path)


def test_resolve_records_source_overrides_and_the_complete_ranking(tmp_path):
    settings, record = resolve_attribution_settings(None)
    assert settings == AttributionSettings(max_regions=None)
    assert record == {"settings": settings.to_dict(), "source": "library defaults", "overrides": {},
                      "complete_ranking": True}

    CoordinateSpace("qwen3_vl", "qwen3_vl", 1, 2, attribution=RECORDED.to_dict()).save(tmp_path)
    settings, record = resolve_attribution_settings(tmp_path, {"baseline": "mean", "n_regions": None})
    assert settings == RECORDED.replace(baseline="mean", max_regions=None)
    assert record["source"] == f"recorded in {tmp_path / COORDINATE_SPACE_FILE}"
    assert record["overrides"] == {"baseline": "mean"}  # None: not given

    settings, record = resolve_attribution_settings(tmp_path, {"max_regions": 3})
    assert settings.max_regions == 3 and record["complete_ranking"] is False
    given = AttributionSettings(n_regions=9)
    assert resolve_attribution_settings(tmp_path, given) == (given, {
        "settings": given.to_dict(), "source": "given by the caller", "overrides": {}, "complete_ranking": False})

    with pytest.raises(UsageError, match="^--n-regions: n_regions=0 must be"):
        check_attribution_flags(tmp_path, {"n_regions": 0})
    with pytest.raises(UsageError, match="^--deletion-weight: insertion_weight"):
        check_attribution_flags(None, {"deletion_weight": 0.0})


@pytest.fixture(scope="module")
def model_and_batch(tiny_checkpoints):
    """A tiny Qwen3-VL and a batch of two screens with a red button each."""
    from eagle_align.data.collator import GroundingCollator
    from eagle_align.data.schema import GroundingExample
    from eagle_align.families import load_model_and_processor

    model, processor = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    examples = []
    for i, (x, y) in enumerate([(32, 40), (120, 72)]):
        pixels = np.full((160, 224, 3), 235, dtype=np.uint8)
        pixels[y : y + 40, x : x + 56] = (220, 30, 30)
        examples.append(GroundingExample(image=Image.fromarray(pixels), image_size=(224, 160), id=f"s{i}",
                                         instruction="click the red button", bbox=(x, y, x + 56, y + 40)))
    return model, GroundingCollator(processor, "qwen3_vl")(examples)


@pytest.mark.parametrize("search", ["bounded", "exact"])
def test_region_attribution_equals_the_pipeline_composed_by_hand(model_and_batch, search):
    from eagle_align.attribution import DecisionScorer, greedy_search, set_prob_for, slice_sample
    from eagle_align.attribution.bound import build_hierarchy, region_centroids
    from eagle_align.attribution.masking import pixel_values_to_image

    model, batch = model_and_batch
    settings = AttributionSettings(n_regions=6, search=search, insertion_weight=1.0, max_regions=3)
    attributions = RegionAttribution(model, settings, batch_size=8).attribute(batch)
    assert len(attributions) == 2
    for index, attribution in enumerate(attributions):
        meta, sample = batch["meta"][index], slice_sample(batch, index)
        with torch.no_grad():
            image = pixel_values_to_image(model, sample["pixel_values"], sample["image_grid_thw"][0])
        partition = make_partition(meta.grid_hw, 6, "slic", image=image)
        scorer = DecisionScorer(model, sample, meta, baseline="background", batch_size=8)
        hierarchy = build_hierarchy(partition.n_regions, partition.on_box(meta.box_mask, 0.15).tolist(),
                                    region_centroids(partition.cell_masks))
        model.eval()
        with torch.no_grad():
            by_hand = greedy_search(set_prob_for(scorer, partition), partition.n_regions, search, max_regions=3,
                                    insertion_weight=1.0, deletion_weight=1.0, hierarchy=hierarchy)
        assert torch.equal(attribution.partition.region_of_cell, partition.region_of_cell)
        assert attribution.ranking == by_hand.ranking and len(attribution.ranking) == 3
        assert attribution.forwards == by_hand.forwards
        assert attribution.prefix_scores == pytest.approx(by_hand.prefix_scores, abs=1e-5)
        assert attribution.search == search
    # The function form is the same call.
    again = attribute_samples(model, batch, [1], settings, batch_size=8)
    assert again[0].ranking == attributions[1].ranking


def test_attribute_takes_partitions_baselines_and_a_ranking_cap(model_and_batch):
    model, batch = model_and_batch
    grid = [make_partition(meta.grid_hw, 4, "grid") for meta in batch["meta"][:1]]
    attributor = RegionAttribution(model, AttributionSettings(search="exact", max_regions=None))
    [first] = attributor.attribute(batch, 0, feature_mask=grid, baselines="black", max_regions=2)
    assert first.partition is grid[0] and first.n_regions == 4 and len(first.ranking) == 2
    assert first.forwards == 2 * (4 + 3) + 2  # two greedy steps, then P(x) and P(x_∅)
    with pytest.raises(ValueError, match="1 target samples need as many feature_mask, got 2"):
        attributor.attribute(batch, [0], feature_mask=grid * 2)
    with pytest.raises(ValueError, match="cuts a"):
        attributor.attribute(batch, [0], feature_mask=[make_partition((2, 2), 4, "grid")])
    with pytest.raises(IndexError, match="target sample 5"):
        attributor.attribute(batch, [5])
    with pytest.raises(ValueError, match="collated batch with 'meta'"):
        attributor.attribute({k: v for k, v in batch.items() if k != "meta"})
