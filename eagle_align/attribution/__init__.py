"""EAGLE subset attribution over screenshot regions: which parts of the screenshot a click answer relies on."""

from eagle_align.attribution.explain import Explanation, explain
from eagle_align.attribution.masking import BASELINES, baseline_row, mask_image_rows, pixel_values_to_image
from eagle_align.attribution.metrics import (
    attribution_metrics,
    box_hit_at_k,
    deletion_auc,
    insertion_auc,
    point_game,
)
from eagle_align.attribution.overlay import render_overlay
from eagle_align.attribution.regions import REGION_METHODS, RegionPartition, make_partition
from eagle_align.attribution.scoring import DecisionScorer, attribution_mode, score_jointly, slice_sample
from eagle_align.attribution.search import (
    SEARCHES,
    Attribution,
    RegionAttribution,
    attribute_sample,
    attribute_samples,
    evaluate_prefixes,
    greedy_search,
    run_search,
    run_searches,
    search_regions,
    set_prob_for,
)
from eagle_align.attribution.settings import (
    AttributionSettings,
    recorded_attribution_settings,
    resolve_attribution_settings,
)

__all__ = [
    "BASELINES",
    "REGION_METHODS",
    "SEARCHES",
    "Attribution",
    "AttributionSettings",
    "DecisionScorer",
    "Explanation",
    "RegionAttribution",
    "RegionPartition",
    "attribute_sample",
    "attribute_samples",
    "attribution_metrics",
    "attribution_mode",
    "baseline_row",
    "deletion_auc",
    "evaluate_prefixes",
    "explain",
    "greedy_search",
    "insertion_auc",
    "make_partition",
    "mask_image_rows",
    "pixel_values_to_image",
    "point_game",
    "recorded_attribution_settings",
    "box_hit_at_k",
    "render_overlay",
    "resolve_attribution_settings",
    "run_search",
    "run_searches",
    "score_jointly",
    "search_regions",
    "set_prob_for",
    "slice_sample",
]
