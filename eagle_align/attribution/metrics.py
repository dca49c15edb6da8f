"""Attribution quality measures shared by eval, the trainer's logs and the benchmark.

Point game and box-hit@k ask whether the evidence lies in the target box (coverage ≥ box_overlap, the
same on-box rule as the alignment losses); insertion / deletion AUC ask whether the ranking is faithful
to the model (revealing top regions first should restore the answer fast, removing them should kill it).
"""

from __future__ import annotations

import torch

from eagle_align.attribution.search import Attribution


def on_box_regions(attribution: Attribution, box_mask: torch.Tensor, box_overlap: float = 0.15) -> list[bool]:
    """On-box flag of each ranked region: the box covers at least ``box_overlap`` of it (|v ∩ B| / |v|)."""
    if attribution.partition is None:
        raise ValueError("box metrics need the attribution's partition (use attribute_sample)")
    on_box = attribution.partition.on_box(box_mask, box_overlap)
    return [bool(on_box[region]) for region in attribution.ranking]


def point_game(attribution: Attribution, box_mask: torch.Tensor, box_overlap: float = 0.15) -> bool:
    """Is the top-1 region on-box (|v ∩ B| / |v| ≥ box_overlap)?"""
    if not attribution.ranking:
        raise ValueError("point_game: the attribution ranks no region")
    return on_box_regions(attribution, box_mask, box_overlap)[0]


def box_hit_at_k(
    attribution: Attribution, box_mask: torch.Tensor, k: int, box_overlap: float = 0.15
) -> float:
    """Share of the top-k ranked regions (fewer if the ranking is shorter) that are on-box."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    hits = on_box_regions(attribution, box_mask, box_overlap)[:k]
    if not hits:
        raise ValueError("box_hit_at_k: the attribution ranks no region")
    return sum(hits) / len(hits)


def _area_axis(attribution: Attribution, count: int) -> list[float]:
    """Cumulative share of the screenshot area of the first 1..count ranked regions."""
    if attribution.partition is not None:
        areas = attribution.partition.areas.tolist()
    else:
        areas = [1.0 / attribution.n_regions] * attribution.n_regions
    shares, total = [], 0.0
    for region in attribution.ranking[:count]:
        total += areas[region]
        shares.append(min(total, 1.0))
    return shares


def _trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def insertion_curve(attribution: Attribution) -> tuple[list[float], list[float]]:
    """(area share revealed, P(x_S)) from the empty screenshot to the full one.

    Prefixes the search measured are the inner points; a ranking that stopped early is closed by revealing
    the rest at once (x = 1, P(x)).
    """
    count = len(attribution.insertion_probs)
    xs, ys = [0.0] + _area_axis(attribution, count), [attribution.empty_prob] + attribution.insertion_probs
    if xs[-1] < 1.0:
        xs, ys = xs + [1.0], ys + [attribution.full_prob]
    return xs, ys


def deletion_curve(attribution: Attribution) -> tuple[list[float], list[float]]:
    """(area share removed, P(x_¬S)) from the full screenshot to the empty one, closed like insertion."""
    count = len(attribution.deletion_probs)
    xs, ys = [0.0] + _area_axis(attribution, count), [attribution.full_prob] + attribution.deletion_probs
    if xs[-1] < 1.0:
        xs, ys = xs + [1.0], ys + [attribution.empty_prob]
    return xs, ys


def insertion_auc(attribution: Attribution) -> float:
    """Area under the insertion curve (higher = the top regions suffice sooner)."""
    return _trapezoid(*insertion_curve(attribution))


def deletion_auc(attribution: Attribution) -> float:
    """Area under the deletion curve (lower = removing the top regions destroys the answer sooner)."""
    return _trapezoid(*deletion_curve(attribution))


def attribution_metrics(
    attribution: Attribution, box_mask: torch.Tensor | None = None, box_overlap: float = 0.15, k: int = 3
) -> dict[str, float | bool]:
    """The metrics above in one dict (box metrics only when a box mask is given)."""
    metrics: dict[str, float | bool] = {
        "insertion_auc": insertion_auc(attribution),
        "deletion_auc": deletion_auc(attribution),
        "full_prob": attribution.full_prob,
    }
    if box_mask is not None and attribution.ranking:
        metrics["point_game"] = point_game(attribution, box_mask, box_overlap)
        metrics[f"box_hit@{k}"] = box_hit_at_k(attribution, box_mask, k, box_overlap)
    return metrics
