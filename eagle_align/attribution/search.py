"""Greedy subset-selection ranking of screenshot regions (EAGLE), and `RegionAttribution`, the one call that
partitions, masks, scores and searches for a batch of samples.

F(S) = a·P(x_S) + b·(1 − P(x_¬S)) rewards regions that suffice for the answer (insertion) and whose removal
destroys it (deletion). The greedy search picks, step by step, the region that maximises F of the growing
set; the searches `exact`, `efficient` and `single_round` differ only in which candidates they pay to score
(docs/method.md).
`bounded` makes exact's choice at every step but scores groups of candidates first and skips every group that
provably holds no better one when the model is monotone in the kept set (`eagle_align.attribution.bound`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import torch

from eagle_align.attribution.bound import (
    DEFAULT_LEAF_SIZE,
    DEFAULT_STEP_BUDGET,
    DEFAULT_TIE_TOLERANCE,
    MemoProb,
    RegionGroup,
    bounded_best,
    build_hierarchy,
    region_centroids,
)
from eagle_align.attribution.regions import RegionPartition, make_partition
from eagle_align.attribution.scoring import DecisionScorer, attribution_mode, score_jointly, slice_sample
from eagle_align.attribution.settings import SEARCHES, AttributionSettings

# `efficient` is EAGLE's search: between full re-sorts every 5 steps it scores the best 10 of the last sort.
# On full N=64 rankings (benchmarks/attribution_bench.py, 3 screenshots, trained tiny Qwen3-VL) that kept 1.001
# of exact's insertion AUC at 44 % of its forwards; cheaper tunings are keyword arguments of the search
# functions (scope 1 / re-sort every 21: 0.989 at 9.1 %; single_round: 0.938 at 3.1 %).
DEFAULT_SEARCH_SCOPE = 10
DEFAULT_RESORT_EVERY: int | None = 5
# Where the greedy search stops on its own when asked to (None: never; training passes its own threshold).
DEFAULT_STOP_CONFIDENCE: float | None = None

SetProb = Callable[[torch.Tensor], torch.Tensor]
# A search coroutine: yields Bool[B, R] region sets, is sent P(x_S) for them (float [B]), returns its Attribution.
Search = Generator[torch.Tensor, torch.Tensor, "Attribution"]


@dataclass
class Attribution:
    """A ranking of regions with the curves the search measured on the way.

    `prefix_scores[r]`, `insertion_probs[r]`, `deletion_probs[r]` are F(S), P(x_S), P(x_¬S) for the prefix
    S of the first r+1 ranked regions. Greedy strategies measure every prefix of `ranking`; `single_round`
    measures only the first and ranks the rest by their singleton scores F({v}) (`singleton_scores`). `search`
    names the search that made it.
    """

    ranking: list[int]
    prefix_scores: list[float]
    insertion_probs: list[float]
    deletion_probs: list[float]
    full_prob: float
    empty_prob: float
    forwards: int
    seconds: float
    search: str
    n_regions: int
    insertion_weight: float = 2.0
    deletion_weight: float = 1.0
    singleton_scores: list[float] | None = None
    partition: RegionPartition | None = field(default=None, repr=False)

    @property
    def gains(self) -> list[float]:
        """Normalised gains g_1 = F(S_1)/Z, g_r = (F(S_r) − F(S_{r−1}))/Z, Z = a + b."""
        z = self.insertion_weight + self.deletion_weight
        previous = [0.0] + self.prefix_scores[:-1]
        return [(score - before) / z for score, before in zip(self.prefix_scores, previous)]

    def region_importance(self) -> torch.Tensor:
        """float [R]: each ranked region's normalised gain (singleton score / Z for single_round); 0 if unranked."""
        importance = torch.zeros(self.n_regions)
        if self.singleton_scores is not None:
            z = self.insertion_weight + self.deletion_weight
            values = [score / z for score in self.singleton_scores]
        else:
            values = self.gains
        for region, value in zip(self.ranking, values):
            importance[region] = value
        return importance

    def cell_importance(self) -> torch.Tensor:
        """float [rows, cols]: the importance of the region each merged cell belongs to."""
        if self.partition is None:
            raise ValueError("cell_importance needs the attribution's partition (use RegionAttribution)")
        return self.region_importance()[self.partition.region_of_cell]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        data = {
            key: getattr(self, key)
            for key in (
                "search", "n_regions", "ranking", "prefix_scores", "insertion_probs", "deletion_probs",
                "full_prob", "empty_prob", "forwards", "seconds", "insertion_weight", "deletion_weight",
                "singleton_scores",
            )
        }
        data["gains"] = self.gains
        if self.partition is not None:
            data["grid_hw"] = list(self.partition.grid_hw)
            data["region_method"] = self.partition.method
            data["region_of_cell"] = self.partition.region_of_cell.tolist()
        return data


class _Ask:
    """The one way a search reaches the model: `probs = yield from ask(sets)` yields the region sets and
    receives P(x_S) for them; it counts them as masked forwards and reports them to an optional progress
    callback."""

    def __init__(self, progress: Callable[[int], Any] | None) -> None:
        self.progress, self.forwards = progress, 0

    def __call__(self, region_sets: torch.Tensor) -> Generator[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = yield region_sets
        probs = torch.as_tensor(probs).detach().float().cpu().view(-1)
        if probs.numel() != region_sets.shape[0]:
            raise ValueError(f"set_prob returned {probs.numel()} values for {region_sets.shape[0]} sets")
        self.forwards += region_sets.shape[0]
        if self.progress is not None:
            self.progress(region_sets.shape[0])
        return probs


def _score_candidates(
    prob, selected: torch.Tensor, candidates: list[int], a: float, b: float
) -> Generator[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """F(S ∪ {v}) for every candidate v, with the insertion and deletion probabilities behind it."""
    sets = selected.repeat(len(candidates), 1)
    sets[torch.arange(len(candidates)), torch.tensor(candidates)] = True
    probs = yield from prob(torch.cat([sets, ~sets]))
    insertion, deletion = probs[: len(candidates)], probs[len(candidates) :]
    return a * insertion + b * (1 - deletion), insertion, deletion


def run_search(search: Search, set_prob: SetProb) -> Attribution:
    """Answer one search coroutine's region sets with `set_prob` until it returns its attribution."""
    return run_searches([search], lambda requests: [set_prob(sets) for _, sets in requests])[0]


def run_searches(
    searches: Sequence[Search], score: Callable[[list[tuple[int, torch.Tensor]]], list[torch.Tensor]]
) -> list[Attribution]:
    """Run search coroutines side by side: each round, every unfinished search's pending region sets go to
    `score` together (as (search index, Bool[B, R]) pairs, answered by P(x_S) per set), so one model call can
    serve all of them (`attribute_samples`). Returns the attributions in the searches' order."""
    results: list[Attribution | None] = [None] * len(searches)
    pending: dict[int, torch.Tensor] = {}

    def advance(k: int, answer: torch.Tensor | None) -> None:
        try:
            pending[k] = next(searches[k]) if answer is None else searches[k].send(answer)
        except StopIteration as done:
            results[k] = done.value
            pending.pop(k, None)

    for k in range(len(searches)):
        advance(k, None)
    while pending:
        requests = list(pending.items())
        answers = score(requests)
        for (k, _), answer in zip(requests, answers):
            advance(k, answer)
    return results


def greedy_search(set_prob: SetProb, n_regions: int, search: str = "efficient", **settings: Any) -> Attribution:
    """Rank regions by greedy maximisation of F; `set_prob(Bool[B, R]) -> P(x_S)` is the only model access.

    `exact` scores every remaining region at every step; `efficient` scores all of them at step 1 and every
    `resort_every` steps (None: only at step 1) and in between only the best `search_scope` of the last
    sort; `single_round` ranks by singleton scores F({v}) in one batch of 2N. Greedy searches stop after
    `max_regions` (None: all) or once P(x_{S_r}) ≥ `stop_confidence` (None: never). P(x) and P(x_∅) come
    from the last step of a complete ranking, else cost one forward each unless given.

    `bounded` makes each greedy step's choice by branch-and-bound over `hierarchy`'s region groups (default:
    index halves; `RegionAttribution` groups the on-box regions and halves the others), with at most
    `step_budget` forwards per step before it scores the open groups flat, and without separating regions on
    the same side of the box whose scores lie within `tie_tolerance`·(a + b) of each other
    (`eagle_align.attribution.bound`). It never asks for a set twice, so P(x) and P(x_∅) are free when a step
    already scored them. `settings` are `search_regions`'s (max_regions, stop_confidence, ...).
    """
    return run_search(search_regions(n_regions, search, **settings), set_prob)


def search_regions(
    n_regions: int,
    search: str = "efficient",
    max_regions: int | None = 10,
    stop_confidence: float | None = DEFAULT_STOP_CONFIDENCE,
    search_scope: int = DEFAULT_SEARCH_SCOPE,
    resort_every: int | None = DEFAULT_RESORT_EVERY,
    insertion_weight: float = 2.0,
    deletion_weight: float = 1.0,
    full_prob: float | None = None,
    empty_prob: float | None = None,
    progress: Callable[[int], Any] | None = None,
    hierarchy: RegionGroup | None = None,
    step_budget: int | None = DEFAULT_STEP_BUDGET,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    measure_ends: bool = True,
) -> Search:
    """The search of `greedy_search` as a coroutine that yields the region sets it needs scored and is sent
    their P(x_S): `run_search` answers it from one set function, `run_searches` answers several at once so
    that their sets share forwards. Settings are checked here, before anything runs; `greedy_search`
    documents them. `measure_ends=False` leaves P(x) and P(x_∅) NaN unless given or found on the way, saving
    up to two forwards where nothing reads them (the trainer's losses other than adaptive_log).
    """
    if search not in SEARCHES:
        raise ValueError(f"search={search!r}; choose one of {', '.join(SEARCHES)}")
    if n_regions < 1:
        raise ValueError(f"n_regions={n_regions} must be at least 1")
    if max_regions is not None and max_regions < 1:
        raise ValueError(f"max_regions={max_regions} must be at least 1 (or None for a full ranking)")
    if search_scope < 1:
        raise ValueError(f"search_scope={search_scope} must be at least 1")
    if resort_every is not None and resort_every < 1:
        raise ValueError(f"resort_every={resort_every} must be at least 1 (or None: sort only at step 1)")
    if search == "bounded":
        hierarchy = hierarchy or build_hierarchy(n_regions)
        if sorted(hierarchy.members) != list(range(n_regions)):
            raise ValueError(f"the region hierarchy covers {len(hierarchy.members)} regions, not {n_regions}")
    return _search(n_regions, search, max_regions, stop_confidence, search_scope, resort_every,
                   float(insertion_weight), float(deletion_weight), full_prob, empty_prob, progress, hierarchy,
                   step_budget, tie_tolerance, measure_ends)


def _search(
    n_regions, search, max_regions, stop_confidence, search_scope, resort_every, a, b, full_prob, empty_prob,
    progress, hierarchy, step_budget, tie_tolerance, measure_ends,
) -> Search:
    """The body of `search_regions` (settings already checked)."""
    limit = n_regions if max_regions is None else min(max_regions, n_regions)
    prob = _Ask(progress)
    if search == "bounded":
        prob = MemoProb(prob)
    start = time.perf_counter()
    selected = torch.zeros(n_regions, dtype=torch.bool)
    ranking, scores, insertions, deletions = [], [], [], []
    singleton_scores = None

    if search == "single_round":
        values, insertion, deletion = yield from _score_candidates(prob, selected, list(range(n_regions)), a, b)
        order = torch.argsort(values, descending=True, stable=True)[:limit].tolist()
        ranking, singleton_scores = order, [float(values[v]) for v in order]
        scores, insertions, deletions = [singleton_scores[0]], [float(insertion[order[0]])], [float(deletion[order[0]])]
    else:
        sorted_candidates: list[int] = []
        while len(ranking) < limit:
            step = len(ranking)
            if search == "bounded":
                found = yield from bounded_best(prob, selected, hierarchy, a, b, step_budget, tie_tolerance)
                region, value, p_insert, p_delete = found.region, found.score, found.insertion, found.deletion
            else:
                resort = search == "exact" or step == 0 or (resort_every is not None and step % resort_every == 0)
                if resort:
                    candidates = [v for v in range(n_regions) if not selected[v]]
                else:
                    candidates = [v for v in sorted_candidates if not selected[v]][:search_scope]
                values, insertion, deletion = yield from _score_candidates(prob, selected, candidates, a, b)
                if resort:
                    sorted_candidates = [candidates[i] for i in torch.argsort(values, descending=True, stable=True)]
                best = int(values.argmax())
                region, value, p_insert, p_delete = candidates[best], values[best], insertion[best], deletion[best]
            selected[region] = True
            ranking.append(region)
            scores.append(float(value))
            insertions.append(float(p_insert))
            deletions.append(float(p_delete))
            if stop_confidence is not None and insertions[-1] >= stop_confidence:
                break

    if len(ranking) == n_regions and search != "single_round":
        full_prob = insertions[-1] if full_prob is None else full_prob
        empty_prob = deletions[-1] if empty_prob is None else empty_prob
    missing = [full_prob is None, empty_prob is None]
    if not measure_ends:
        full_prob = float("nan") if full_prob is None else full_prob
        empty_prob = float("nan") if empty_prob is None else empty_prob
    elif any(missing):
        boundary = torch.stack([torch.ones(n_regions, dtype=torch.bool), torch.zeros(n_regions, dtype=torch.bool)])
        values = yield from prob(boundary[torch.tensor(missing)])
        if full_prob is None:
            full_prob = float(values[0])
        if empty_prob is None:
            empty_prob = float(values[-1])
    return Attribution(
        ranking=ranking, prefix_scores=scores, insertion_probs=insertions, deletion_probs=deletions,
        full_prob=float(full_prob), empty_prob=float(empty_prob), forwards=prob.forwards,
        seconds=time.perf_counter() - start, search=search, n_regions=n_regions,
        insertion_weight=a, deletion_weight=b, singleton_scores=singleton_scores,
    )


def evaluate_prefixes(attribution: Attribution, set_prob: SetProb) -> int:
    """Measure the prefixes of `ranking` a single_round search did not (2 forwards each); returns forwards used.

    Needed only to draw complete insertion/deletion curves for a single-round ranking; the prefix scores
    then describe the sets S_r = {π_1..π_r} exactly as for greedy strategies.
    """
    done = len(attribution.prefix_scores)
    todo = len(attribution.ranking) - done
    if todo <= 0:
        return 0
    sets = torch.zeros(todo, attribution.n_regions, dtype=torch.bool)
    for i in range(todo):
        sets[i, attribution.ranking[: done + i + 1]] = True
    probs = set_prob(torch.cat([sets, ~sets])).detach().float().cpu().view(-1)
    a, b = attribution.insertion_weight, attribution.deletion_weight
    for insertion, deletion in zip(probs[:todo].tolist(), probs[todo:].tolist()):
        attribution.insertion_probs.append(insertion)
        attribution.deletion_probs.append(deletion)
        attribution.prefix_scores.append(a * insertion + b * (1 - deletion))
    attribution.forwards += 2 * todo
    return 2 * todo


def set_prob_for(scorer: DecisionScorer, partition: RegionPartition) -> SetProb:
    """Region-set probability function of one scorer on one partition (what greedy_search consumes)."""
    return lambda region_sets: scorer.score(partition.cells_of(region_sets))


class RegionAttribution:
    """Attribution of click answers to screenshot regions, shaped like Captum's attribution classes.

    `RegionAttribution(model, settings).attribute(inputs, target)` partitions each target sample's screenshot,
    masks regions with the baseline, scores the decision tokens and runs the search that `settings` name;
    training, `eagle-align eval --attribution-samples`, `explain` and users all attribute through it, so their
    point games measure the same thing. `settings` default to `AttributionSettings()` (the training defaults);
    `batch_size` is how many masked inputs share one forward (throughput only, never the result).
    """

    def __init__(
        self, model: torch.nn.Module, settings: AttributionSettings | None = None, batch_size: int = 16
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.model = model
        self.settings = settings if settings is not None else AttributionSettings()
        self.batch_size = batch_size

    def attribute(
        self,
        inputs: dict[str, Any],
        target: int | Sequence[int] | None = None,
        feature_mask: Sequence[RegionPartition] | None = None,
        baselines: str | torch.Tensor | Sequence[str | torch.Tensor] | None = None,
        *,
        max_regions: int | None | EllipsisType = ...,
        full_probs: Sequence[float | None] | None = None,
        progress: Callable[[int], Any] | None = None,
        leaf_size: int = DEFAULT_LEAF_SIZE,
        **search_options: Any,
    ) -> list[Attribution]:
        """One Attribution (with its partition) per target sample of `inputs`.

        `inputs` is a collated batch with `meta` (GroundingCollator output): each meta's decision tokens are
        the tokens attributed, its box mask the target box. `target` picks the samples (None: all).
        `feature_mask` gives each target sample's RegionPartition (None: cut by the settings' region_method
        and n_regions). `baselines` is a baseline name, one ready row for all samples, or one name or row per
        sample (None: the settings' baseline). `max_regions` (default: the settings') caps the ranking, e.g.
        at what a loss reads; `full_probs` holds each sample's P(x) where known (None: measured);
        `progress(n)` hears of every n masked forwards. For `bounded`, the regions the box covers by at least
        `box_overlap` form one group and region centroids halve each side down to `leaf_size` regions.
        `search_options` go to `search_regions` (stop_confidence, search_scope, resort_every, measure_ends).

        Each sample gets its own partition, scorer and search, as if attributed alone; the searches run side
        by side (`run_searches`) and the region sets they ask for in a round share forwards of up to
        `batch_size` masked inputs (`score_jointly`). Runs in eval mode without gradient on whatever weights
        the model holds (LoRA included) and restores its train/eval mode; each `seconds` is the wall time while
        its search ran, shared with the searches beside it.
        """
        from eagle_align.attribution.masking import pixel_values_to_image

        if "meta" not in inputs:
            raise ValueError("RegionAttribution needs a collated batch with 'meta' (GroundingCollator output)")
        settings = self.settings
        indices = _targets(target, len(inputs["meta"]))
        rows = _per_sample(baselines if baselines is not None else settings.baseline, len(indices), "baselines")
        full_probs = list(full_probs) if full_probs is not None else [None] * len(indices)
        partitions = list(feature_mask) if feature_mask is not None else [None] * len(indices)
        for name, values in (("full_probs", full_probs), ("feature_mask", partitions)):
            if len(values) != len(indices):
                raise ValueError(f"{len(indices)} target samples need as many {name}, got {len(values)}")
        limit = settings.max_regions if max_regions is ... else max_regions
        scorers, searches = [], []
        with attribution_mode(self.model):
            for k, (index, row, full_prob) in enumerate(zip(indices, rows, full_probs)):
                meta = inputs["meta"][index]
                sample = slice_sample(inputs, index)
                if partitions[k] is None:
                    image = None
                    if settings.region_method == "slic":
                        image = pixel_values_to_image(self.model, sample["pixel_values"], sample["image_grid_thw"][0])
                    partitions[k] = make_partition(meta.grid_hw, settings.n_regions, settings.region_method,
                                                   image=image)
                elif tuple(partitions[k].grid_hw) != tuple(meta.grid_hw):
                    raise ValueError(f"feature_mask[{k}] cuts a {tuple(partitions[k].grid_hw)} grid, but sample "
                                     f"{index}'s image has {tuple(meta.grid_hw)} merged cells")
                partition = partitions[k]
                options = dict(search_options, max_regions=limit, full_prob=full_prob, progress=progress,
                               insertion_weight=settings.insertion_weight, deletion_weight=settings.deletion_weight)
                if settings.search == "bounded":
                    on_box = partition.on_box(meta.box_mask, settings.box_overlap).tolist()
                    options["hierarchy"] = build_hierarchy(
                        partition.n_regions, on_box, region_centroids(partition.cell_masks), leaf_size
                    )
                scorers.append(DecisionScorer(self.model, sample, meta, baseline=row, batch_size=self.batch_size,
                                              reduction=settings.score_reduction))
                searches.append(search_regions(partition.n_regions, settings.search, **options))

            def score(requests: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
                pairs = [(scorers[k], partitions[k].cells_of(sets)) for k, sets in requests]
                return score_jointly(pairs, self.batch_size)

            attributions = run_searches(searches, score)
        for attribution, partition in zip(attributions, partitions):
            attribution.partition = partition
        return attributions


def _targets(target: int | Sequence[int] | None, n_samples: int) -> list[int]:
    """The sample indices `target` names (None: every sample of the batch)."""
    if target is None:
        return list(range(n_samples))
    indices = [int(target)] if isinstance(target, int) else [int(i) for i in target]
    for index in indices:
        if not 0 <= index < n_samples:
            raise IndexError(f"target sample {index} out of range for a batch of {n_samples}")
    return indices


def _per_sample(value, n: int, name: str) -> list:
    """One value per target sample: a list / tuple is per sample already; anything else is shared."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{n} target samples need as many {name}, got {len(value)}")
        return list(value)
    return [value] * n


def attribute_samples(
    model: torch.nn.Module,
    batch: dict[str, Any],
    indices: Sequence[int] | None = None,
    settings: AttributionSettings | None = None,
    batch_size: int = 16,
    **options: Any,
) -> list[Attribution]:
    """`RegionAttribution(model, settings, batch_size).attribute(batch, indices, **options)` as one function
    (the form the trainer calls); `options` are `RegionAttribution.attribute`'s keyword arguments."""
    return RegionAttribution(model, settings, batch_size).attribute(batch, indices, **options)


def attribute_sample(
    model: torch.nn.Module,
    batch: dict[str, Any],
    index: int,
    settings: AttributionSettings | None = None,
    batch_size: int = 16,
    full_prob: float | None = None,
    **options: Any,
) -> Attribution:
    """Attribute sample `index` of a collated batch (with its `meta`) alone: `attribute_samples` for one
    sample, with its P(x) as `full_prob` if known."""
    return attribute_samples(model, batch, [index], settings, batch_size, full_probs=[full_prob], **options)[0]
