"""Greedy search on hand-built set functions (known answers), forward accounting, metrics, attribute_sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eagle_align.attribution import (
    AttributionSettings,
    attribute_sample,
    box_hit_at_k,
    deletion_auc,
    evaluate_prefixes,
    greedy_search,
    insertion_auc,
    make_partition,
    point_game,
)

N = 12
WEIGHTS = torch.tensor([0.02, 0.2, 0.05, 0.11, 0.01, 0.15, 0.08, 0.03, 0.12, 0.06, 0.13, 0.04])


class Additive:
    """P(x_S) = Σ_{v ∈ S} w_v (+ an optional pairwise bonus), so the right ranking is known; counts rows."""

    def __init__(self, weights: torch.Tensor = WEIGHTS, bonus: float = 0.0) -> None:
        self.weights, self.bonus, self.rows = weights, bonus, 0

    def __call__(self, sets: torch.Tensor) -> torch.Tensor:
        self.rows += sets.shape[0]
        value = sets.float() @ self.weights
        if not self.bonus:
            return value
        # Interaction: regions 4 and 7 are worth `bonus` only together.
        return (value + self.bonus * (sets[:, 4] & sets[:, 7]).float()) / (1 + self.bonus)


def _exact_count(n: int, steps: int) -> int:
    return sum(2 * (n - r) for r in range(steps))


def _efficient_count(n: int, steps: int, scope: int, resort: int | None) -> int:
    total = 0
    for r in range(steps):
        full = r == 0 or (resort is not None and r % resort == 0)
        total += 2 * (n - r if full else min(scope, n - r))
    return total


def test_exact_recovers_the_additive_order_with_analytic_forwards():
    prob = Additive()
    result = greedy_search(prob, N, "exact", max_regions=None, stop_confidence=None)
    assert result.ranking == torch.argsort(WEIGHTS, descending=True).tolist()
    assert result.forwards == prob.rows == _exact_count(N, N) == N * (N + 1)
    assert result.full_prob == pytest.approx(1.0) and result.empty_prob == pytest.approx(0.0)
    cumulative = torch.cumsum(WEIGHTS.sort(descending=True).values, 0)
    assert result.insertion_probs == pytest.approx(cumulative.tolist())
    assert result.deletion_probs == pytest.approx((1 - cumulative).tolist(), abs=1e-6)
    # F(S) = 2·P(x_S) + 1·(1 − P(x_¬S)) = 3·P(x_S) here, so normalised gains are the weights themselves.
    assert result.prefix_scores == pytest.approx((3 * cumulative).tolist())
    assert result.gains == pytest.approx(WEIGHTS.sort(descending=True).values.tolist(), abs=1e-6)


def test_exact_sees_interactions_single_round_ranks_by_singletons():
    # Distinct weights: equal singleton scores would leave their order to float rounding, which differs by CPU.
    weights = torch.linspace(0.06, 0.04, N)
    weights[0] = 0.4
    prob = Additive(weights, bonus=1.0)
    exact = greedy_search(prob, N, "exact", max_regions=3, stop_confidence=None)
    assert exact.ranking[0] == 0 and set(exact.ranking[1:]) == {4, 7}
    rounds = Additive(weights, bonus=1.0)
    single = greedy_search(rounds, N, "single_round", max_regions=None, stop_confidence=0.1)
    # F({v}) = 2·P(x_{v}) + 1 − P(x_¬{v}); the complement of a region other than 4 or 7 keeps the bonus.
    keeps_bonus = torch.ones(N)
    keeps_bonus[[4, 7]] = 0
    singleton = 2 * weights / 2 + 1 - (weights.sum() - weights + keeps_bonus) / 2
    assert single.ranking == torch.argsort(singleton, descending=True, stable=True).tolist()
    assert single.singleton_scores == pytest.approx(singleton.sort(descending=True).values.tolist(), abs=1e-6)
    assert len(single.ranking) == N, "single_round ignores stop_confidence"
    assert single.forwards == rounds.rows == 2 * N + 2  # + P(x) and P(x_∅)
    given = greedy_search(Additive(weights, 1.0), N, "single_round", max_regions=4, full_prob=1.0, empty_prob=0.0)
    assert given.forwards == 2 * N and len(given.ranking) == 4 and len(given.prefix_scores) == 1
    added = evaluate_prefixes(given, Additive(weights, 1.0))
    assert added == 6 and given.forwards == 2 * N + 6
    assert given.ranking == [0, 4, 7, 1]
    cumulative = torch.cumsum(weights[[0, 4, 7, 1]], 0) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # bonus once 4, 7 in
    assert given.insertion_probs == pytest.approx((cumulative / 2).tolist(), abs=1e-6)


def test_early_stop_and_max_regions_are_honoured():
    prob = Additive()
    stopped = greedy_search(prob, N, "exact", max_regions=None, stop_confidence=0.5)
    # Sorted weights 0.2, 0.15, 0.13, 0.12 reach 0.6 at the 4th region (0.48 after three).
    assert len(stopped.ranking) == 4 and stopped.insertion_probs[-1] >= 0.5 > stopped.insertion_probs[-2]
    assert stopped.forwards == prob.rows == _exact_count(N, 4) + 2
    capped = greedy_search(Additive(), N, "efficient", max_regions=3, stop_confidence=None)
    assert len(capped.ranking) == 3


@pytest.mark.parametrize("scope,resort", [(1, None), (2, None), (3, 4), (10, 5), (N, 1)])
def test_efficient_forward_counts_are_analytic(scope, resort):
    prob = Additive()
    result = greedy_search(prob, N, "efficient", max_regions=None, stop_confidence=None,
                           search_scope=scope, resort_every=resort)
    assert result.forwards == prob.rows == _efficient_count(N, N, scope, resort)
    assert sorted(result.ranking) == list(range(N))
    # On an additive function the sorted singletons already give the greedy order.
    assert result.ranking == torch.argsort(WEIGHTS, descending=True).tolist()


def test_bad_search_options_are_refused():
    with pytest.raises(ValueError, match="search='beam'"):
        greedy_search(Additive(), N, "beam")
    with pytest.raises(ValueError, match="search_scope=0"):
        greedy_search(Additive(), N, search_scope=0)
    with pytest.raises(ValueError, match="resort_every=0"):
        greedy_search(Additive(), N, resort_every=0)


def test_metrics_on_a_known_ranking():
    partition = make_partition((2, 2), 4)  # one cell per region, each a quarter of the area
    weights = torch.tensor([0.1, 0.6, 0.0, 0.3])
    result = greedy_search(Additive(weights), 4, "exact", max_regions=None, stop_confidence=None)
    result.partition = partition
    assert result.ranking == [1, 3, 0, 2]
    # Insertion: (0, 0) (.25, .6) (.5, .9) (.75, 1) (1, 1); deletion mirrors it from 1 down to 0.
    assert insertion_auc(result) == pytest.approx(0.25 * (0.3 + 0.75 + 0.95 + 1.0))
    assert deletion_auc(result) == pytest.approx(0.25 * (0.7 + 0.25 + 0.05 + 0.0))
    prior = torch.tensor([[False, True], [False, False]])  # region 1 only
    assert point_game(result, prior) is True
    assert box_hit_at_k(result, prior, k=2) == 0.5
    assert box_hit_at_k(result, torch.tensor([[True, False], [False, False]]), k=1) == 0.0
    early = greedy_search(Additive(weights), 4, "exact", max_regions=1, stop_confidence=None)
    early.partition = partition
    # Closed by revealing the rest at once: (0, 0) (.25, .6) (1, 1).
    assert insertion_auc(early) == pytest.approx(0.25 * 0.3 + 0.75 * 0.8)
    importance = result.cell_importance()
    assert importance.shape == (2, 2) and float(importance[0, 1]) == pytest.approx(0.6)


def test_attribute_sample_on_a_collated_batch(tiny_checkpoints):
    from eagle_align.data.collator import GroundingCollator
    from eagle_align.data.schema import GroundingExample
    from eagle_align.families import load_model_and_processor

    model, processor = load_model_and_processor(tiny_checkpoints["qwen3_vl"], dtype="float32")
    pixels = np.full((160, 224, 3), 240, dtype=np.uint8)
    pixels[32:96, 64:128] = (220, 30, 30)
    example = GroundingExample(image=Image.fromarray(pixels), image_size=(224, 160), instruction="click the red square",
                               bbox=(64, 32, 128, 96), id="red")
    batch = GroundingCollator(processor, "qwen3_vl")([example])
    model.train()
    result = attribute_sample(model, batch, 0, AttributionSettings(n_regions=6, region_method="grid", search="exact",
                                                                   insertion_weight=2.0, max_regions=None), 8)
    assert model.training
    assert result.partition.n_regions == 6 and sorted(result.ranking) == list(range(6))
    assert result.forwards == 6 * 7
    assert result.cell_importance().shape == batch["meta"][0].grid_hw
    assert 0.0 <= insertion_auc(result) <= 1.0
    assert isinstance(point_game(result, batch["meta"][0].box_mask), bool)
    slic = attribute_sample(model, batch, 0, AttributionSettings(n_regions=5, search="single_round", max_regions=3))
    assert slic.partition.method == "slic" and len(slic.ranking) == 3
    assert slic.forwards == 2 * slic.partition.n_regions + 2
