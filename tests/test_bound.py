"""The `bounded` search on hand-built set functions: analytic forward counts, exact's decisions, sound pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eagle_align.attribution import AttributionSettings, attribute_sample, greedy_search
from eagle_align.attribution.bound import DEFAULT_TIE_TOLERANCE, build_hierarchy, region_centroids
from eagle_align.experimental import ExperimentalAlignmentConfig


class SetFunction:
    """P(x_S) from a function of the kept set, counting the sets asked and remembering which."""

    def __init__(self, value) -> None:
        self.value, self.rows, self.asked = value, 0, []

    def __call__(self, sets: torch.Tensor) -> torch.Tensor:
        self.rows += sets.shape[0]
        self.asked += [tuple(row.nonzero().view(-1).tolist()) for row in sets]
        return torch.stack([self.value(row) for row in sets]).float()


def additive(weights: torch.Tensor) -> SetFunction:
    """P(x_S) = Σ_{v∈S} w_v with Σ w = 1, so F(S) = a·W(S) + b·W(S) = (a + b)·W(S)."""
    return SetFunction(lambda row: (row.float() * weights).sum())


def on_box(n: int, regions: list[int]) -> list[bool]:
    return [v in regions for v in range(n)]


# 16 regions, 0-3 on-box. Index order is the spatial order (no centroids). The search starts from the
# on-box side 0..3 and the two halves of the off-box side, 4..9 | 10..15; below, 10..15 halves into
# 10..12 | 13..15, then 13 | 14..15 (leaf size 2), and 0..3 into 0..1 | 2..3.
N = 16
OFF_SHORTCUT = torch.tensor([0.025] * 4 + [0.03, 0.04, 0.035, 0.045, 0.03, 0.04, 0.035, 0.045, 0.03, 0.5, 0.025, 0.05])
ON_TARGET = torch.tensor([0.05, 0.03, 0.5, 0.02] + [0.4 / 12] * 12)


def test_shortcut_region_is_found_along_one_path_with_analytic_forwards():
    weights = OFF_SHORTCUT / OFF_SHORTCUT.sum()
    prob = additive(weights)
    result = greedy_search(prob, N, "bounded", max_regions=1, stop_confidence=None,
                           hierarchy=build_hierarchy(N, on_box(N, [0, 1, 2, 3])))
    exact = greedy_search(additive(weights), N, "exact", max_regions=1, stop_confidence=None)
    assert result.ranking == exact.ranking == [13]
    assert result.prefix_scores == pytest.approx(exact.prefix_scores)
    # Insertions of 0..3, 4..9, 10..15 (3); the dive follows the highest insertion: 10..12 | 13..15 (2), then
    # 13 | 14..15 (2); region 13's deletion (1) makes it the best, F = 3·w_13 = 1.49. Every open group's bound
    # 2·W(G) + 1 (its deletion unmeasured: P(x_¬G) ≥ 0) is below that, the largest 2·0.22 + 1 for 4..9.
    # P(x) and P(x_∅) close the attribution (2).
    assert result.forwards == prob.rows == 3 + 2 + 2 + 1 + 2
    assert exact.forwards == 2 * N + 2
    # Where nothing reads the curves' end points (the trainer without adaptive_log), they are not measured.
    unended = greedy_search(additive(weights), N, "bounded", max_regions=1, stop_confidence=None,
                            hierarchy=build_hierarchy(N, on_box(N, [0, 1, 2, 3])), measure_ends=False)
    assert unended.ranking == [13] and unended.forwards == 3 + 2 + 2 + 1
    assert np.isnan(unended.full_prob) and np.isnan(unended.empty_prob)


def test_target_evidence_settles_without_scoring_an_off_box_region():
    weights = ON_TARGET / ON_TARGET.sum()
    prob = additive(weights)
    result = greedy_search(prob, N, "bounded", max_regions=1, stop_confidence=None, full_prob=1.0,
                           hierarchy=build_hierarchy(N, on_box(N, [0, 1, 2, 3])))
    assert result.ranking == [2]
    # Insertions of the three starting groups (3); dive 0..1 | 2..3 (2), 2 | 3 (2); region 2's deletion (1):
    # F = 1.5 against the off-box halves' bounds 2·0.2 + 1 = 1.4. P(x_∅) (1); P(x) was given.
    assert result.forwards == prob.rows == 3 + 2 + 2 + 1 + 1
    assert not any(len(s) == 1 and s[0] >= 4 for s in prob.asked)


def test_a_pair_that_only_helps_together_is_found_as_exact_finds_it():
    # 8 regions, 0-1 on-box (1 the target). Regions 6 and 7 add 0.5 only together. Alone each is weak, but
    # removing either breaks the pair, so the deletion term ranks them above the target: F({6}) = 2·0.06 +
    # 1 − 0.45 = 0.67, F({7}) = 0.64, F({1}) = 2·0.15 + 1 − 0.86 = 0.44, every other region 0.14.
    weights = torch.tensor([1, 3, 1, 1, 1, 1, 1.2, 1]) / 20

    def value(row: torch.Tensor) -> torch.Tensor:
        return (row.float() * weights).sum() + 0.5 * (row[6] & row[7]).float()

    prob = SetFunction(value)
    result = greedy_search(prob, 8, "bounded", max_regions=1, stop_confidence=None,
                           hierarchy=build_hierarchy(8, on_box(8, [0, 1])))
    exact = greedy_search(SetFunction(value), 8, "exact", max_regions=1, stop_confidence=None)
    assert result.ranking == exact.ranking == [6]
    assert result.prefix_scores == pytest.approx(exact.prefix_scores)
    # Insertions of 0..1, 2..4, 5..7 (3); 5..7 holds the pair, so the dive goes 5 | 6..7 (2), 6 | 7 (2), and
    # region 6's deletion (1) sets the best, 0.67. With unmeasured deletions every open bound is still above it
    # (2·W + 1 ≥ 1), so each gets its deletion (1 each: 7, 5, 0..1, 2..4), which settles all of them:
    # 0.64, 0.14, 2·0.2 + 1 − 0.81 = 0.59, 2·0.15 + 1 − 0.86 = 0.44. P(x) and P(x_∅) (2).
    assert result.forwards == prob.rows == 3 + 2 + 2 + 1 + 4 + 2
    assert exact.forwards == 2 * 8 + 2


def test_where_grouping_cannot_help_the_search_still_agrees_with_exact():
    # The pair 3 and 6 sits in different off-box halves (2..4 | 5..7): no group's insertion shows it, and
    # the search ends up measuring almost every set exact measures, and more.
    weights = torch.tensor([1, 3, 1, 1.2, 1, 1, 1, 1]) / 20

    def value(row: torch.Tensor) -> torch.Tensor:
        return (row.float() * weights).sum() + 0.5 * (row[3] & row[6]).float()

    prob = SetFunction(value)
    result = greedy_search(prob, 8, "bounded", max_regions=1, stop_confidence=None,
                           hierarchy=build_hierarchy(8, on_box(8, [0, 1])))
    assert result.ranking == greedy_search(SetFunction(value), 8, "exact", max_regions=1).ranking == [3]
    assert result.forwards > 2 * 8 + 2


def test_a_near_tie_across_the_prior_is_separated_one_on_the_same_side_is_not():
    # The on-box target 2 beats the off-box cue 13 by 5e-4 of P, inside the tie tolerance. The dive goes
    # off-box first (10..15 holds more weight than 0..3) and finds 13; the on-box group's bound then beats
    # it by less than the tolerance, but the gate depends on which side wins, so the group is opened.
    weights = torch.tensor([3e-4, 3e-4, 0.3, 3e-4] + [0.03] * 6 + [0.02] * 3 + [0.2995, 0.02, 0.02])
    weights = weights / weights.sum()
    hierarchy = build_hierarchy(N, on_box(N, [0, 1, 2, 3]))
    bounded = greedy_search(additive(weights), N, "bounded", max_regions=1, stop_confidence=None, hierarchy=hierarchy)
    exact = greedy_search(additive(weights), N, "exact", max_regions=1, stop_confidence=None)
    assert bounded.ranking == exact.ranking == [2]
    # Swap the roles inside one side: region 12 (off-box, beside 13) beats 13 by the same hair. That near-tie
    # does not decide the gate, so the search keeps 13 (within the tolerance of exact's 12) without opening it.
    weights = torch.tensor([3e-4] * 4 + [0.03] * 6 + [0.02, 0.02, 0.3, 0.2995, 0.02, 0.02])
    weights = weights / weights.sum()
    bounded = greedy_search(additive(weights), N, "bounded", max_regions=1, stop_confidence=None, hierarchy=hierarchy)
    exact = greedy_search(additive(weights), N, "exact", max_regions=1, stop_confidence=None)
    assert exact.ranking == [12]
    assert not on_box(N, [0, 1, 2, 3])[bounded.ranking[0]]
    assert bounded.prefix_scores[0] >= exact.prefix_scores[0] - DEFAULT_TIE_TOLERANCE * 3


def _random_case(seed: int):
    """Random nonnegative weights (some dominant), a random prior, random centroids, leaf size and budget."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 33))
    weights = torch.tensor(rng.random(n) ** rng.uniform(1, 8), dtype=torch.float64)
    prior = on_box(n, rng.choice(n, size=int(rng.integers(0, n // 2 + 1)), replace=False).tolist())
    centroids = torch.tensor(rng.random((n, 2)), dtype=torch.float32)
    hierarchy = build_hierarchy(n, prior, centroids, leaf_size=int(rng.integers(1, 5)))
    budget = None if rng.random() < 0.5 else int(rng.integers(0, 3 * n))
    return n, weights / weights.sum(), prior, hierarchy, budget


@pytest.mark.parametrize("seed", range(40))
def test_pruning_is_sound_on_additive_and_monotone_functions(seed):
    """Whatever the search skips, it skips soundly: the rank-1 region, its gate and every later greedy choice
    equal exact's, on additive functions and on a monotone non-additive one (noisy-or), budget or not."""
    n, weights, prior, hierarchy, budget = _random_case(seed)
    functions = {
        "additive": lambda row: (row.double() * weights).sum(),
        "noisy_or": lambda row: 1 - torch.prod(1 - weights * row.double()),  # each kept region may suffice
    }
    for name, value in functions.items():
        steps = min(4, n)
        bounded = greedy_search(SetFunction(value), n, "bounded", max_regions=steps, stop_confidence=None,
                                hierarchy=hierarchy, step_budget=budget, tie_tolerance=0.0)
        exact = greedy_search(SetFunction(value), n, "exact", max_regions=steps, stop_confidence=None)
        assert bounded.ranking == exact.ranking, name
        assert prior[bounded.ranking[0]] == prior[exact.ranking[0]], f"{name}: gate differs"
        assert bounded.prefix_scores == pytest.approx(exact.prefix_scores), name
        # With the default tie tolerance, rank 1 may be another region only if it scores within it of exact's.
        tolerant = greedy_search(SetFunction(value), n, "bounded", max_regions=1, stop_confidence=None,
                                 hierarchy=hierarchy, step_budget=budget)
        assert tolerant.prefix_scores[0] >= exact.prefix_scores[0] - DEFAULT_TIE_TOLERANCE * 3 - 1e-9, name
        assert prior[tolerant.ranking[0]] == prior[exact.ranking[0]], f"{name}: the tolerance changed the gate"


def test_a_spent_budget_scores_the_open_regions_flat_and_stays_exact():
    weights = torch.tensor([1, 3, 1, 1, 1, 1, 1.2, 1]) / 20
    prob = SetFunction(lambda row: (row.float() * weights).sum() + 0.5 * (row[6] & row[7]).float())
    result = greedy_search(prob, 8, "bounded", max_regions=1, stop_confidence=None, full_prob=1.0, empty_prob=0.0,
                           hierarchy=build_hierarchy(8, on_box(8, [0, 1])), step_budget=8)
    assert result.ranking == [6]
    # The pair test's dive costs 8 and spends the budget. The groups still open hold regions 0-5 and 7: their
    # 7 deletions and 5 insertions (those of 5 and 7 are known) are scored in one flat round.
    assert result.forwards == prob.rows == 8 + 7 + 5


def test_hierarchy_splits_the_prior_first_then_space():
    prior = on_box(6, [1, 4])
    centroids = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]], dtype=torch.float32)
    root = build_hierarchy(6, prior, centroids, leaf_size=2)
    # The on-box side whole, the off-box side as its halves: 0, 2, 3, 5 spread more along columns (0..2)
    # than rows (0..1), so they halve by column.
    assert [child.members for child in root.children] == [(1, 4), (0, 3), (2, 5)]
    assert [c.members for c in root.children[0].children] == [(1,), (4,)]
    for flags in ([False] * 3, [True] * 3):  # one side empty: no prior split
        assert build_hierarchy(3, flags).members == (0, 1, 2)
        assert greedy_search(additive(torch.tensor([0.2, 0.5, 0.3])), 3, "bounded", max_regions=1,
                             hierarchy=build_hierarchy(3, flags)).ranking == [1]
    grid = torch.zeros(2, 2, 3, dtype=torch.bool)
    grid[0, :, :2], grid[1, :, 2] = True, True
    assert region_centroids(grid).tolist() == [[0.5, 0.5], [0.5, 2.0]]
    with pytest.raises(ValueError, match="leaf_size=0"):
        build_hierarchy(4, leaf_size=0)
    with pytest.raises(ValueError, match="3 flags for 4 regions"):
        build_hierarchy(4, [True, False, False])
    with pytest.raises(ValueError, match="covers 3 regions, not 4"):
        greedy_search(additive(torch.ones(4) / 4), 4, "bounded", hierarchy=build_hierarchy(3))


def _counted_model_and_batch(checkpoint: str, n_samples: int) -> tuple[torch.nn.Module, dict, list[int]]:
    """A tiny Qwen3-VL, a batch of small grey screens with one red button, and the rows of every forward."""
    from scripts.ddp_align import examples

    from eagle_align.data.collator import GroundingCollator
    from eagle_align.families import load_model_and_processor

    model, processor = load_model_and_processor(checkpoint, dtype="float32")
    batch = GroundingCollator(processor, "qwen3_vl")(examples(n_samples))
    rows: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    return model, batch, rows


def test_attribute_sample_counts_every_forward_of_the_bounded_search(tiny_checkpoints):
    model, batch, rows = _counted_model_and_batch(tiny_checkpoints["qwen3_vl"], 1)
    result = attribute_sample(model, batch, 0, AttributionSettings(region_method="grid", max_regions=2), batch_size=4)
    assert result.search == "bounded" and len(result.ranking) == 2 and len(result.prefix_scores) == 2
    assert result.forwards == sum(rows) > 0
    assert len(set(result.ranking)) == 2 and all(0 <= v < result.partition.n_regions for v in result.ranking)


def test_trainer_logs_the_bounded_search_forwards_it_ran(tiny_checkpoints, tmp_path):
    from scripts.ddp_align import examples

    from eagle_align.data.collator import GroundingCollator
    from eagle_align.families import get_family, load_model_and_processor
    from eagle_align.families.lora import apply_lora
    from eagle_align.trainer import BOX_HIT_K, PriorAlignedTrainer

    torch.manual_seed(0)
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], dtype="float32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    cfg = ExperimentalAlignmentConfig(
        output_dir=str(tmp_path), search="bounded", lambda_redundancy=0.0, region_method="grid", n_regions=16,
        selection="all", per_device_train_batch_size=2, max_steps=1, align_every=1, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=1,
    )
    collator = GroundingCollator(processor, get_family("qwen2_5_vl").default_action_format)
    trainer = PriorAlignedTrainer(model=model, args=cfg, train_dataset=examples(2), data_collator=collator)
    rows = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]) if not torch.is_grad_enabled() else None,
        with_kwargs=True,
    )
    trainer.train()
    log = next(h for h in trainer.state.log_history if "align/attribution_forwards" in h)
    # selection "all" runs no selection forward: every no-grad row is an attribution forward.
    assert log["align/attribution_forwards"] == sum(rows) > 0
    assert log["align/attribution_seconds"] > 0 and log["align/selected"] == 2
    # One ranked region per sample (the deviation gate's), so box_hit@k is over that rank.
    assert log["align/point_game"] == log[f"align/box_hit@{BOX_HIT_K}"]


@pytest.mark.parametrize("search", ["bounded", "efficient", "single_round"])
def test_searches_run_side_by_side_each_get_their_own_answers(search):
    from eagle_align.attribution import run_searches, search_regions

    weights = [OFF_SHORTCUT / OFF_SHORTCUT.sum(), ON_TARGET / ON_TARGET.sum(), torch.linspace(1, 2, N) / 24]
    hierarchy = build_hierarchy(N, on_box(N, [0, 1, 2, 3]))
    options = dict(max_regions=3, stop_confidence=None, hierarchy=hierarchy)
    alone = [greedy_search(additive(w), N, search, **options) for w in weights]
    functions = [additive(w) for w in weights]
    rounds = []

    def score(requests):
        rounds.append([k for k, _ in requests])
        return [functions[k](sets) for k, sets in requests]

    together = run_searches([search_regions(N, search, **options) for _ in weights], score)
    for single, joint, function in zip(alone, together, functions):
        assert joint.ranking == single.ranking and joint.prefix_scores == single.prefix_scores
        assert joint.forwards == single.forwards == function.rows
    # Every round serves every search still running: as many rounds as the longest search asks.
    asks = [sum(k in r for r in rounds) for k in range(3)]
    assert len(rounds) == max(asks) and all(rounds[r] == [k for k in range(3) if asks[k] > r] for r in range(len(rounds)))


def test_samples_attributed_together_share_forwards(tiny_checkpoints):
    from eagle_align.attribution import RegionAttribution

    model, batch, calls = _counted_model_and_batch(tiny_checkpoints["qwen3_vl"], 3)
    # Rank 1 by exhaustive scoring: its score is the maximum of F, which float rounding cannot reorder.
    settings = AttributionSettings(region_method="grid", search="efficient", baseline="mean", max_regions=1)
    alone = [attribute_sample(model, batch, i, settings, batch_size=64) for i in range(3)]
    alone_calls, calls[:] = len(calls), []
    together = RegionAttribution(model, settings, batch_size=64).attribute(batch)
    for single, joint in zip(alone, together):
        assert joint.forwards == single.forwards == 2 * 16 + 2 and joint.partition is not None
        assert joint.prefix_scores[0] == pytest.approx(single.prefix_scores[0], abs=1e-5)
    assert sum(calls) == 3 * (2 * 16 + 2) and len(calls) < alone_calls
    calls[:] = []
    bounded = RegionAttribution(model, settings.replace(search="bounded"), batch_size=8).attribute(batch, [0, 1, 2])
    assert sum(calls) == sum(a.forwards for a in bounded) and max(calls) <= 8
    with pytest.raises(ValueError, match="3 target samples need as many baselines"):
        RegionAttribution(model, settings).attribute(batch, [0, 1, 2], baselines=[torch.zeros(1)] * 2)
