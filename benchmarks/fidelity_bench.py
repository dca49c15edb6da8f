"""Fidelity of every attribution strategy on the decisions training needs, measured against `exact`.

Training asks the attribution of each selected sample for few decisions: is the rank-1 region off-box (the
deviation gate), which region is it, and, with redundancy, the top ranks with their prefix scores. This
benchmark measures, for every search in `eagle_align.attribution.settings.SEARCHES`, how often it makes the
same decisions as `exact` on the same regions, and what it pays for them.

The fidelity set (built once, cached under `--root`, default outputs/fidelity): tiny Qwen3-VL models trained
as plain SFT on the demo's shortcut data (the demo's checkpoint, data and recipe for seeds 0-2, so the step-300
model is the demo's SFT model), saved at steps 100 / 200 / 300. Seeds differ in how much they lean on the
cue: at N = 16 both off-box and on-box rank-1 decisions occur (at N = 64 the cue's single cell outranks
any one cell of the target on every screen measured, see benchmarks/README.md). On each model: its first
confident-correct training screens (argmax right at every decision token and P(x) >= min_confidence, the
trainer's own selection), at N = 16 SLIC and N = 64 grid regions, with the demo recipe's baseline and weights.

Every strategy runs with the arguments the trainer passes it (max_regions 10, the trainer's stop_confidence,
the search's own tuning constants, P(x) from the selection): its forwards, seconds, rank-1 region and gate are what training pays
and decides. max_regions 10 is enough: the gate and the top-1 need rank 1 only, and the AUC compares the top
10. For the top-10 insertion AUC, a ranking that stopped early at stop_confidence is ranked again without the
stop (not counted in its forwards), and prefixes the search did not score are scored apart; the curve runs over
the ranked regions and closes at the full screenshot. exact, efficient and single_round share one memo of
scored region sets per sample (each is charged the forwards it asks for; see `SampleLayout`); any other
strategy runs through `attribute_sample` exactly as the trainer calls it. Results are cached per strategy,
model, layout and sample (results.json, with the settings they were made with; strategies other than exact
also by a hash of the attribution package's source), so a re-run pays only for what changed.
`--auc-samples K` measures the top-10 AUC on each model's first K screens only (exact's top 10 at N = 64 costs
about 1,190 forwards).

    python benchmarks/fidelity_bench.py                 # build the set if missing, then measure
    python benchmarks/fidelity_bench.py --build-only    # just the set
    python benchmarks/fidelity_bench.py --samples 4 --seeds 0 --steps 300   # a quick look

The last output line is one JSON object: per strategy (and per layout, "grid64" / "slic16") forwards per
sample, gate agreement, top-1 agreement, top-10 insertion-AUC ratio and seconds, the N = 64 figures also at the
top level, a per-model breakdown, and `default_strategy` (PriorAlignedConfig's search).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

FIDELITY_STEPS = (100, 200, 300)
FIDELITY_SEEDS = (0, 1, 2)
SAMPLES_PER_MODEL = 8
# Screens scanned per model for confident-correct ones (the training set's first ones, in order).
SCAN_LIMIT = 128
LAYOUTS = {"grid64": ("grid", 64), "slic16": ("slic", 16)}
README = """Fidelity set of benchmarks/fidelity_bench.py (tiny Qwen3-VL, plain SFT on the demo's shortcut data).

manifest.json lists every model: {"key": "seed0-step100", "seed": 0, "step": 100, "path": ".../checkpoint-100",
"train_data": ".../data/train.jsonl", "samples": [indices of confident-correct training screens]}.

Load one model as the trainer sees it:
    from eagle_align.families import load_model_and_processor
    from eagle_align.data import GroundingCollator, load_examples
    model, processor = load_model_and_processor(path, dtype="float32", min_pixels=65536, max_pixels=65536)
    examples = load_examples(train_data)
    batch = GroundingCollator(processor, "qwen3_vl")([examples[i] for i in samples])
The demo recipe (tiny_synthetic_cpu) holds the baseline, weights and min_confidence used.
results.json caches every strategy's results per model, layout and sample (with the settings they were made with;
strategies other than exact also keyed by a hash of eagle_align/attribution's source).
Re-measure: .venv/bin/python benchmarks/fidelity_bench.py (the set and the cached results are reused).
Each seed-S/benchmark.json records the demo data settings the set was built from; when the demo's change, the
benchmark stops and asks for --rebuild (which retrains every seed, ~3 minutes each on a quiet 2-core CPU).
"""


def recipe_config(output_dir: str | Path, search: str | None = None):
    """The demo recipe as a PriorAlignedConfig (baseline, weights, selection, search settings), `search` swapped in."""
    from eagle_align.demo import RECIPE
    from eagle_align.train import load_config, parse_config

    config = load_config(RECIPE, {"model_name_or_path": "unused", "train_data": "unused",
                                  "output_dir": str(output_dir), "use_cpu": True, **({"search": search} if search else {})})
    return parse_config(config)[3]


def build_set(root: Path, seeds: tuple[int, ...], steps: tuple[int, ...], rebuild: bool = False) -> list[dict]:
    """Train one SFT run per seed with the demo's settings, saving the model at each of `steps`.

    Each seed's folder records the benchmark it was built from (benchmark.json); a set built from other
    settings than the demo's current ones is an error unless `rebuild` (others may be reading it).
    """
    from eagle_align.demo import (
        FAMILIES,
        FAMILY,
        PIXELS,
        RECIPE,
        SIZES,
        TRAIN_CUE_FRACTION,
        synthetic_split,
        training_config,
    )
    from eagle_align.families import build_tiny_checkpoint
    from eagle_align.train import run_training

    bench = {"family": FAMILY, **FAMILIES[FAMILY], "train_examples": SIZES["full"]["train"],
             "cue_fraction": TRAIN_CUE_FRACTION}
    models = []
    for seed in seeds:
        out = root / f"seed-{seed}"
        paths = {step: out / f"checkpoint-{step}" for step in steps}
        train, marker = out / "data" / "train.jsonl", out / "benchmark.json"
        built = all((path / "config.json").is_file() for path in paths.values())
        if built and marker.is_file() and json.loads(marker.read_text()) != bench and not rebuild:
            raise SystemExit(f"{out} was built from {marker.read_text().strip()}, the demo now uses {json.dumps(bench)}; "
                             "pass --rebuild to train the set again")
        if not built or rebuild or not marker.is_file():
            start = time.perf_counter()
            checkpoint = build_tiny_checkpoint(FAMILY, out / "checkpoint", seed=seed, min_pixels=PIXELS,
                                               max_pixels=PIXELS)
            train = synthetic_split(out / "data", "train", SIZES["full"]["train"], seed, TRAIN_CUE_FRACTION)
            overrides = {"max_steps": max(steps), "save_strategy": "steps", "save_steps": min(steps),
                         "save_only_model": True, "disable_tqdm": True}
            run_training(training_config(RECIPE, checkpoint, train, out, seed, False, overrides))
            marker.write_text(json.dumps(bench) + "\n")
            print(f"seed {seed}: trained {max(steps)} SFT steps in {time.perf_counter() - start:.0f}s", flush=True)
        for step, path in paths.items():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path}: no model saved at step {step} (save_steps must divide it)")
            models.append({"key": f"seed{seed}-step{step}", "seed": seed, "step": step, "path": str(path),
                           "train_data": str(train), "benchmark": bench})
    return models


def write_manifest(root: Path, models: list[dict]) -> None:
    """Record `models` in root/manifest.json, keeping the entries of models this run did not touch."""
    path = root / "manifest.json"
    known = {m["key"]: m for m in json.loads(path.read_text())["models"]} if path.is_file() else {}
    for model in models:
        known[model["key"]] = {**known.get(model["key"], {}), **model}
    path.write_text(json.dumps({"models": sorted(known.values(), key=lambda m: (m["seed"], m["step"]))}, indent=2)
                    + "\n")


def confident_correct(model, processor, config, train_data: str, limit: int) -> tuple[list[int], list[float]]:
    """Indices (and P(x)) of the first `limit` training screens the trainer's selection would align."""
    from eagle_align.attribution import attribution_mode
    from eagle_align.data import GroundingCollator, load_examples
    from eagle_align.trainer import PriorAlignedTrainer

    examples = load_examples(train_data)
    collator = GroundingCollator(processor, "qwen3_vl")
    trainer = PriorAlignedTrainer(model=model, args=config, data_collator=collator)
    chosen, probs = [], []
    width = config.per_device_train_batch_size
    for begin in range(0, min(SCAN_LIMIT, len(examples)), width):
        batch = collator([examples[i] for i in range(begin, min(begin + width, len(examples)))])
        metas = batch.pop("meta")
        with attribution_mode(model):
            selected, full_probs = trainer._select(model, batch, metas)
        chosen += [begin + i for i in selected]
        probs += [full_probs[i] for i in selected]
        if len(chosen) >= limit:
            break
    return chosen[:limit], probs[:limit]


def search_kwargs(config) -> dict:
    """What the trainer passes the search besides the model and sample (settings of the recipe)."""
    from eagle_align.trainer import TRAINING_STOP_CONFIDENCE

    return dict(baseline=config.baseline, batch_size=config.attribution_batch_size, reduction=config.score_reduction,
                max_regions=config.ranked_regions, stop_confidence=TRAINING_STOP_CONFIDENCE,
                insertion_weight=config.insertion_weight, deletion_weight=config.deletion_weight)


class SampleLayout:
    """One sample at one layout: its partition and a memo of the region sets the model has scored.

    exact, efficient and single_round are fully defined by `greedy_search` over the partition, so they run on
    this memo: each strategy asks for (and is charged) its own forwards, but the model scores every set once
    (their first rounds are the same 2N sets). Their seconds are their forwards times the memo's measured
    seconds per scored set. Any other strategy runs through `attribute_sample` as the trainer calls it, timed.
    """

    def __init__(self, model, batch, meta, config, layout: str) -> None:
        from attribution_bench import CachedSetProb

        from eagle_align.attribution import (
            DecisionScorer,
            make_partition,
            pixel_values_to_image,
            set_prob_for,
            slice_sample,
        )

        method, n_regions = LAYOUTS[layout]
        sample = slice_sample(batch, 0)
        image = pixel_values_to_image(model, sample["pixel_values"], sample["image_grid_thw"][0]) \
            if method == "slic" else None
        self.partition = make_partition(meta.grid_hw, n_regions, method, image=image)
        scorer = DecisionScorer(model, sample, meta, baseline=config.baseline,
                                batch_size=config.attribution_batch_size, reduction=config.score_reduction)
        score = set_prob_for(scorer, self.partition)
        self.scored, self.scoring_seconds = 0, 0.0

        def timed(sets):
            start = time.perf_counter()
            values = score(sets)
            self.scoring_seconds += time.perf_counter() - start
            self.scored += sets.shape[0]
            return values

        self.memo = CachedSetProb(timed)
        self.model, self.batch, self.meta, self.layout = model, batch, meta, layout

    def seconds_per_set(self) -> float:
        return self.scoring_seconds / max(self.scored, 1)


MEMO_STRATEGIES = ("exact", "efficient", "single_round")
PER_MODEL_KEYS = ("forwards_per_sample", "gate_agreement", "top1_agreement", "top1_gain_shortfall_max")


def run_strategy(view: SampleLayout, config, full_prob: float, top10: bool) -> dict:
    """`config.search` on one sample: its decisions, its cost, and (top10) the insertion AUC of its top 10."""
    from eagle_align.attribution import (
        attribute_sample,
        attribution_mode,
        evaluate_prefixes,
        greedy_search,
        insertion_auc,
        point_game,
    )

    method, n_regions = LAYOUTS[view.layout]
    kwargs = {**search_kwargs(config), "full_prob": full_prob}
    memo = config.search in MEMO_STRATEGIES

    def attribute(**changes):
        settings = {**kwargs, **changes}
        if not memo:
            chosen = config.attribution_settings().replace(n_regions=n_regions, region_method=method,
                                                           max_regions=settings["max_regions"])
            return attribute_sample(view.model, view.batch, 0, chosen, settings["batch_size"],
                                    full_prob=settings["full_prob"], stop_confidence=settings["stop_confidence"])
        for key in ("baseline", "batch_size", "reduction"):  # the scorer's settings, already in the memo
            settings.pop(key)
        with attribution_mode(view.model):
            attribution = greedy_search(view.memo, view.partition.n_regions, config.search, **settings)
        attribution.partition = view.partition
        return attribution

    start = time.perf_counter()
    attribution = attribute()
    seconds = attribution.forwards * view.seconds_per_set() if memo else time.perf_counter() - start
    decided = {"forwards": attribution.forwards, "seconds": seconds, "rank1": attribution.ranking[0],
               "off_box": not point_game(attribution, view.meta.box_mask, config.box_overlap),
               # F({rank 1}) / (a + b): how much worse than exact's choice a different top-1 is
               "rank1_gain": attribution.prefix_scores[0] / (config.insertion_weight + config.deletion_weight)}
    if not top10:
        return {**decided, "auc": None, "top10": None, "top10_forwards": None}
    ranked = attribution
    if len(ranked.ranking) < min(config.max_regions, ranked.n_regions):  # stopped early, or ranks fewer
        ranked = attribute(stop_confidence=None, max_regions=config.max_regions)
    if not torch.equal(ranked.partition.region_of_cell, view.partition.region_of_cell):
        raise RuntimeError(f"{config.search}: attribute_sample cut other regions than the benchmark's partition")
    with attribution_mode(view.model):
        evaluate_prefixes(ranked, view.memo)  # the curve, not the search's cost
    return {**decided, "auc": insertion_auc(ranked), "top10": ranked.ranking, "top10_forwards": ranked.forwards}


def summarise(rows: list[dict]) -> dict:
    """Agreement with exact and mean cost over (sample, strategy result, exact result) rows."""
    n = len(rows)
    ranked = [row for row in rows if row["run"]["auc"] is not None and row["exact"]["auc"] is not None]
    exact_auc = sum(row["exact"]["auc"] for row in ranked)
    return {
        "forwards_per_sample": round(sum(row["run"]["forwards"] for row in rows) / n, 2),
        "gate_agreement": round(sum(row["run"]["off_box"] == row["exact"]["off_box"] for row in rows) / n, 4),
        "top1_agreement": round(sum(row["run"]["rank1"] == row["exact"]["rank1"] for row in rows) / n, 4),
        # Largest shortfall of the chosen top-1's normalised gain against exact's (near-ties show as ~0).
        "top1_gain_shortfall_max": float(f"{max(row['exact']['rank1_gain'] - row['run']['rank1_gain'] for row in rows):.3g}"),
        "top10_auc_ratio": round(sum(row["run"]["auc"] for row in ranked) / exact_auc, 4) if ranked else None,
        # What a full top-10 ranking without early stop costs (redundancy reads every rank).
        "top10_forwards_per_sample": round(sum(row["run"]["top10_forwards"] for row in ranked) / len(ranked), 2)
        if ranked else None,
        "seconds_per_sample": round(sum(row["run"]["seconds"] for row in rows) / n, 3),
        "samples": n,
        "auc_samples": len(ranked),
    }


def code_fingerprint() -> str:
    """Hash of the attribution package's source: cached results of strategies other than exact depend on it."""
    import hashlib

    import eagle_align.attribution

    folder = Path(eagle_align.attribution.__file__).parent
    return hashlib.sha1(b"".join(path.read_bytes() for path in sorted(folder.glob("*.py")))).hexdigest()[:12]


def measure(root: Path, models: list[dict], samples: int, strategies: tuple[str, ...],
            auc_samples: int | None) -> dict:
    """Every strategy on every model's confident-correct screens, at each layout, against exact (cached)."""
    from tqdm import tqdm

    from eagle_align.data import GroundingCollator, load_examples
    from eagle_align.demo import PIXELS
    from eagle_align.families import load_model_and_processor

    configs = {strategy: recipe_config(root / "trainer", strategy) for strategy in strategies}
    config = configs["exact"]
    settings = {**search_kwargs(config), "box_overlap": config.box_overlap, "pixels": PIXELS,
                "benchmark": models[0]["benchmark"] if models else None,
                "min_confidence": config.min_confidence, "layouts": {k: list(v) for k, v in LAYOUTS.items()}}
    cache_path = root / "results.json"
    fingerprint = code_fingerprint()
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if cache.get("settings") != settings:
        cache = {"settings": settings, "entries": {}}
    rows: dict[tuple[str, str, str], list[dict]] = {}
    progress = tqdm(total=len(models) * samples, desc="fidelity", unit="sample", mininterval=10)
    for entry in models:
        model, processor = load_model_and_processor(entry["path"], dtype="float32", min_pixels=PIXELS,
                                                    max_pixels=PIXELS)
        indices, full_probs = confident_correct(model, processor, config, entry["train_data"], samples)
        entry["samples"] = indices
        examples = load_examples(entry["train_data"])
        collator = GroundingCollator(processor, "qwen3_vl")
        for position, (index, full_prob) in enumerate(zip(indices, full_probs)):
            batch = collator([examples[index]])
            meta = batch["meta"][0]
            top10 = auc_samples is None or position < auc_samples
            for layout in LAYOUTS:
                view = SampleLayout(model, batch, meta, config, layout)
                results = {}
                for strategy in strategies:  # exact first
                    version = "" if strategy == "exact" else f":{configs[strategy].ranked_regions}@{fingerprint}"
                    key = f"{strategy}{version}/{entry['key']}/{layout}/{index}"
                    cached = cache["entries"].get(key)
                    if cached is None or "rank1_gain" not in cached or (top10 and cached["auc"] is None):
                        cache["entries"][key] = run_strategy(view, configs[strategy], full_prob, top10)
                    results[strategy] = cache["entries"][key]
                    rows.setdefault((entry["key"], layout, strategy), []).append(
                        {"run": results[strategy], "exact": results["exact"]})
            progress.update()
        cache_path.write_text(json.dumps(cache) + "\n")
        skipped = samples - len(indices)
        progress.write(f"{entry['key']}: {len(indices)} confident-correct screens"
                       + (f" ({skipped} short of {samples} within the first {SCAN_LIMIT})" if skipped else "")
                       + "; exact rank-1 off-box: "
                       + ", ".join(f"{layout} {sum(r['exact']['off_box'] for r in rows.get((entry['key'], layout, 'exact'), []))}"
                                   for layout in LAYOUTS))
    progress.close()

    def pooled(layout: str, strategy: str, keys=None) -> list[dict]:
        return [row for (key, lay, strat), group in rows.items() if lay == layout and strat == strategy
                and (keys is None or key in keys) for row in group]

    fidelity = {}
    for strategy in strategies:
        per_layout = {layout: summarise(pooled(layout, strategy)) for layout in LAYOUTS if pooled(layout, strategy)}
        fidelity[strategy] = {**per_layout.get("grid64", {}), **per_layout}
    per_model = {}
    for entry in models:
        exact_rows = {layout: pooled(layout, "exact", {entry["key"]}) for layout in LAYOUTS}
        if not exact_rows["grid64"]:
            per_model[entry["key"]] = {"samples": 0}
            continue
        per_model[entry["key"]] = {
            "samples": len(exact_rows["grid64"]),
            "exact_off_box_share": {layout: round(sum(r["exact"]["off_box"] for r in group) / len(group), 4)
                                      for layout, group in exact_rows.items()},
            **{layout: {strategy: {k: v for k, v in summarise(pooled(layout, strategy, {entry["key"]})).items()
                                   if k in PER_MODEL_KEYS}
                        for strategy in strategies} for layout in LAYOUTS},
        }
    write_manifest(root, models)
    recipe = recipe_config(root / "trainer")
    ranked = {strategy: c.ranked_regions for strategy, c in configs.items()}
    return {"fidelity": fidelity, "per_model": per_model, "settings": {**settings, "ranked_regions": ranked},
            "demo_recipe_search": recipe.search}


def main() -> None:
    from eagle_align.attribution.settings import SEARCHES
    from eagle_align.config import PriorAlignedConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="outputs/fidelity", help="where the fidelity set is built and cached")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(FIDELITY_SEEDS))
    parser.add_argument("--steps", type=int, nargs="+", default=list(FIDELITY_STEPS),
                        help="SFT steps at which models are saved (the smallest must divide the others)")
    parser.add_argument("--samples", type=int, default=SAMPLES_PER_MODEL, help="confident-correct screens per model")
    parser.add_argument("--strategies", nargs="+", default=list(SEARCHES), choices=SEARCHES)
    parser.add_argument("--build-only", action="store_true", help="build (or check) the set and stop")
    parser.add_argument("--rebuild", action="store_true", help="train the set again (e.g. after the demo's data changed)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps a shared machine usable)")
    parser.add_argument("--auc-samples", type=int, default=None,
                        help="top-10 AUC on each model's first K screens only (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text(README)
    start = time.perf_counter()
    models = build_set(root, tuple(args.seeds), tuple(sorted(args.steps)), args.rebuild)
    if args.build_only:
        write_manifest(root, models)
        print(json.dumps({"models": [m["key"] for m in models], "root": str(root)}))
        return
    strategies = tuple(dict.fromkeys(["exact", *args.strategies]))
    result = measure(root, models, args.samples, strategies, args.auc_samples)
    for strategy, figures in result["fidelity"].items():
        for layout in LAYOUTS:
            if layout in figures:
                f = figures[layout]
                auc = "–" if f["auc_samples"] == 0 else (
                    f"{f['top10_auc_ratio']:.4f} ({f['top10_forwards_per_sample']:.0f} forwards, {f['auc_samples']} samples)")
                print(f"{strategy:>14} {layout}: {f['forwards_per_sample']:7.1f} forwards, gate {f['gate_agreement']:.3f}, "
                      f"top-1 {f['top1_agreement']:.3f}, top-10 AUC ratio {auc}, {f['seconds_per_sample']:.2f} s/sample",
                      flush=True)
    print(json.dumps({"default_strategy": PriorAlignedConfig.search, **result,
                      "minutes": round((time.perf_counter() - start) / 60, 2)}))


if __name__ == "__main__":
    main()
