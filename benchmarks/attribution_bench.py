"""Attribution cost and fidelity: exact vs efficient vs single_round, and pixel-space vs re-processing.

A tiny Qwen3-VL is first trained for a few dozen steps to click the red square among blue ones (so its
answer depends on where things are and the set function has structure worth ranking), then every strategy
ranks all N = 64 merged cells (8×8 grid of a 256×256 screenshot) of a few held-out screenshots with no early
stop, so insertion AUCs compare complete curves. The efficient trade-off curve sweeps search_scope and
resort_every; the sweep reuses a cache of already-scored region sets (forward counts are those each
configuration asks for, seconds are measured only for the uncached default runs).

The pixel-space speed-up is then broken down (milliseconds per masked variant: the processor call alone, one
full forward, the reference path, the batched path) and repeated on larger screenshots (`--speed-sizes`), which
shows where the speed-up comes from on this machine: the reference pays per-call overhead that batching
amortises, while both paths pay the same model compute, so the ratio falls as that compute grows.

    python benchmarks/attribution_bench.py [--samples 3] [--train-steps 60] [--speed-sizes 256x256,512x512]

The last output line is one JSON object with the figures, so runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from eagle_align.attribution import (
    DecisionScorer,
    attribution_mode,
    evaluate_prefixes,
    greedy_search,
    insertion_auc,
    make_partition,
    set_prob_for,
    slice_sample,
)
from eagle_align.attribution.search import DEFAULT_RESORT_EVERY, DEFAULT_SEARCH_SCOPE
from eagle_align.data.collator import GroundingCollator
from eagle_align.data.images import image_for_processor
from eagle_align.data.schema import GroundingExample
from eagle_align.families import build_tiny_checkpoint, load_model_and_processor

SIZE = 256  # 16×16 patches of 16 px → 8×8 merged cells for Qwen3-VL
SLOTS = [(32, 32), (160, 32), (32, 160), (160, 160)]  # top-left corners of the four 64-px squares
# (search_scope, resort_every): the cheap end of the curve, where a default under 10 % of exact can live, and
# EAGLE's own (10, 5) for reference.
SWEEP = [(1, None), (1, 32), (1, 21), (1, 16), (2, None), (2, 32), (3, None), (2, 16), (4, None), (10, 5)]
BUDGET = 0.10  # share of exact's forwards the default may use


def screenshot(target: int, seed: int) -> GroundingExample:
    """Grey screen, four squares, the red one at slot `target`, the rest blue; small jitter per seed."""
    rng = np.random.RandomState(seed)
    image = Image.new("RGB", (SIZE, SIZE), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    for slot, (x, y) in enumerate(SLOTS):
        dx, dy = rng.randint(-8, 9, 2)
        box = (x + dx, y + dy, x + dx + 64, y + dy + 64)
        draw.rectangle(box, fill=(220, 30, 30) if slot == target else (40, 60, 220))
        if slot == target:
            bbox = tuple(float(v) for v in box)
    return GroundingExample(image=image, image_size=(SIZE, SIZE), instruction="click the red square", bbox=bbox,
                            id=f"s{seed}")


def train(model, collator, steps: int, batch_size: int = 8) -> float:
    """A few AdamW steps on random screenshots; returns the last loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.RandomState(0)
    loss = float("nan")
    for step in range(steps):
        batch = collator([screenshot(int(rng.randint(4)), 1000 + step * batch_size + i) for i in range(batch_size)])
        batch.pop("meta")
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = output.loss.item()
        if step % 10 == 0 or step == steps - 1:
            print(f"train step {step:3d} loss {loss:.3f}", flush=True)
    model.eval()
    return loss


class CachedSetProb:
    """Memoises P(x_S) by region set so the trade-off sweep only pays for sets no run has scored yet."""

    def __init__(self, set_prob) -> None:
        self.set_prob, self.cache = set_prob, {}

    def fresh(self, sets: torch.Tensor) -> torch.Tensor:
        """Always runs the model (for timed runs) and remembers the answers."""
        values = self.set_prob(sets)
        self.cache.update(zip(self._keys(sets), values.tolist()))
        return values

    @staticmethod
    def _keys(sets: torch.Tensor) -> list[bytes]:
        return [bytes(row.numpy()) for row in sets.to(torch.uint8)]

    def __call__(self, sets: torch.Tensor) -> torch.Tensor:
        keys = self._keys(sets)
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        if todo:
            for i, value in zip(todo, self.set_prob(sets[todo]).tolist()):
                self.cache[keys[i]] = value
        return torch.tensor([self.cache[key] for key in keys])


def reprocess_probs(model, processor, collator, example, meta, keep_cells, factor: int) -> torch.Tensor:
    """Reference path: paint masked cells black on the resized screenshot, run the processor, score alone."""
    image = np.asarray(image_for_processor(example, processor)).copy()
    prompt = collator.messages(example, meta.answer)
    text = processor.apply_chat_template(prompt, tokenize=False)
    rows = []
    for keep in keep_cells:
        masked = image.copy()
        for r, c in (~keep).nonzero().tolist():
            masked[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor] = 0
        inputs = processor(text=[text], images=[Image.fromarray(masked)], return_tensors="pt").to(model.device)
        logits = model(**inputs).logits[0]
        probs = logits[meta.decision_positions.to(logits.device) - 1].float().softmax(-1)
        rows.append(probs.gather(-1, meta.decision_token_ids.to(logits.device)[:, None])[:, 0])
    return torch.stack(rows)


def per_variant_ms(model, processor, collator, example: GroundingExample, n_variants: int, batch_size: int):
    """Milliseconds per masked variant of one screenshot: processor alone, one full forward, reference, batched.

    Also used by gpu_check.py; CUDA work is synchronised before each clock read.
    """
    device = next(model.parameters()).device
    batch = collator([example])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    meta, sample = batch["meta"][0], slice_sample(batch, 0)
    partition = make_partition(meta.grid_hw, 64)
    keep = partition.cells_of(torch.rand(n_variants, partition.n_regions) > 0.5)
    image = image_for_processor(example, processor)
    text = processor.apply_chat_template(collator.messages(example, meta.answer), tokenize=False)
    factor = round(image.size[0] / meta.grid_hw[1])

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    with attribution_mode(model):
        scorer = DecisionScorer(model, sample, meta, batch_size=batch_size)
        scorer.token_probs(keep[:2])  # warm-up (and the cached row embeddings)
        timings = {}
        tic = clock()
        inputs = [processor(text=[text], images=[image], return_tensors="pt") for _ in range(n_variants)]
        timings["processor_ms"] = clock() - tic
        tic = clock()
        for one in inputs:
            model(**one.to(device))
        timings["forward_ms"] = clock() - tic
        tic = clock()
        slow = reprocess_probs(model, processor, collator, example, meta, keep, factor)
        timings["reference_ms"] = clock() - tic
        tic = clock()
        fast = scorer.token_probs(keep)
        timings["batched_ms"] = clock() - tic
    out = {key: round(1000 * value / n_variants, 2) for key, value in timings.items()}
    out["speedup"] = round(out["reference_ms"] / out["batched_ms"], 2)
    out["max_prob_diff"] = float((fast.float() - slow.float()).abs().max())
    return out


def speed_by_size(sizes: list[tuple[int, int]], n_variants: int, batch_size: int) -> dict[str, dict]:
    """The breakdown on an untrained tiny Qwen3-VL at each screenshot size (timing does not need training)."""
    results = {}
    for width, height in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_checkpoint("qwen3_vl", os.path.join(tmp, "tiny"), seed=0, min_pixels=width * height,
                                         max_pixels=width * height)
            model, processor = load_model_and_processor(str(path), dtype="float32")
        example = screenshot(0, 0)
        scale_x, scale_y = width / SIZE, height / SIZE
        x1, y1, x2, y2 = example.bbox
        example = GroundingExample(image=example.image.resize((width, height)), image_size=(width, height),
                                   instruction=example.instruction, id=example.id,
                                   bbox=(x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y))
        collator = GroundingCollator(processor, "qwen3_vl")
        results[f"{width}x{height}"] = per_variant_ms(model, processor, collator, example, n_variants, batch_size)
        print(f"speed at {width}x{height}: {results[f'{width}x{height}']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32, help="masked variants per forward")
    parser.add_argument("--speed-variants", type=int, default=64, help="variants timed for the speed-up")
    parser.add_argument("--speed-sizes", default="256x256,512x512,1024x576",
                        help="screenshot sizes (WxH, comma-separated) for the speed breakdown; '' skips it")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint("qwen3_vl", os.path.join(tmp, "tiny"), seed=0, min_pixels=SIZE * SIZE,
                                     max_pixels=SIZE * SIZE)
        model, processor = load_model_and_processor(str(path), dtype="float32")
    collator = GroundingCollator(processor, "qwen3_vl")
    start = time.perf_counter()
    final_loss = train(model, collator, args.train_steps)
    print(f"trained {args.train_steps} steps in {time.perf_counter() - start:.0f}s, loss {final_loss:.3f}")

    totals = {name: {"forwards": 0, "seconds": 0.0, "auc": 0.0} for name in ("exact", "efficient", "single_round")}
    sweep_auc = {config: 0.0 for config in SWEEP}
    sweep_forwards = {config: 0 for config in SWEEP}
    speeds, n_regions = [], 0
    for i in range(args.samples):
        batch = collator([screenshot(i % 4, i)])
        meta, sample = batch["meta"][0], slice_sample(batch, 0)
        partition = make_partition(meta.grid_hw, 64)
        n_regions = partition.n_regions
        with attribution_mode(model):
            scorer = DecisionScorer(model, sample, meta, batch_size=args.batch_size)
            cached = CachedSetProb(set_prob_for(scorer, partition))
            # P(x) and P(x_∅) are the same for every strategy: measured once, outside the search costs.
            boundary = cached.fresh(torch.stack([torch.ones(n_regions), torch.zeros(n_regions)]).bool()).tolist()
            full = dict(max_regions=None, stop_confidence=None, full_prob=boundary[0], empty_prob=boundary[1])
            runs = {
                name: greedy_search(cached.fresh, n_regions, name, **full)
                for name in ("exact", "efficient", "single_round")
            }
            for name, result in runs.items():
                totals[name]["forwards"] += result.forwards
                totals[name]["seconds"] += result.seconds
            evaluate_prefixes(runs["single_round"], cached)  # its curve only, not part of its ranking cost
            for config in SWEEP:
                result = greedy_search(cached, n_regions, "efficient", search_scope=config[0],
                                       resort_every=config[1], **full)
                sweep_auc[config] += insertion_auc(result)
                sweep_forwards[config] += result.forwards
        speeds.append(per_variant_ms(model, processor, collator, meta.example, args.speed_variants, args.batch_size))
        for name, result in runs.items():
            totals[name]["auc"] += insertion_auc(result)
        print(f"sample {i}: P(x)={runs['exact'].full_prob:.3f} P(empty)={runs['exact'].empty_prob:.3f} "
              + " ".join(f"{k}: auc {insertion_auc(r):.4f} {r.seconds:.1f}s" for k, r in runs.items())
              + f" speedup {speeds[-1]['speedup']:.1f}x", flush=True)

    exact_forwards = totals["exact"]["forwards"] / args.samples
    print("\nefficient trade-off (mean over samples): scope resort -> AUC/exact, forwards, share of exact")
    for config in SWEEP:
        forwards = sweep_forwards[config] / args.samples
        ratio = sweep_auc[config] / totals["exact"]["auc"]
        print(f"  scope {config[0]:2d} resort {config[1]!s:>4}: auc ratio {ratio:.4f} "
              f"forwards {forwards:6.0f} ({forwards / exact_forwards:.1%})")
    affordable = [c for c in SWEEP if sweep_forwards[c] / args.samples <= BUDGET * exact_forwards]
    best = max(affordable, key=lambda c: sweep_auc[c])
    print(f"best within {BUDGET:.0%} of exact's forwards: search_scope={best[0]} resort_every={best[1]}; "
          f"defaults: search_scope={DEFAULT_SEARCH_SCOPE} resort_every={DEFAULT_RESORT_EVERY}")

    breakdown = {key: round(float(np.mean([speed[key] for speed in speeds])), 2) for key in speeds[0]}
    breakdown["max_prob_diff"] = max(speed["max_prob_diff"] for speed in speeds)
    print(f"per-variant breakdown of the trained model at {SIZE}x{SIZE} (mean over samples): {breakdown}")
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.speed_sizes.split(",") if size]
    by_size = speed_by_size(sizes, args.speed_variants // 2, args.batch_size)

    def mean(name: str, key: str) -> float:
        return totals[name][key] / args.samples

    print(json.dumps({
        "n_regions": n_regions,
        "exact_forwards": mean("exact", "forwards"),
        "efficient_forwards": mean("efficient", "forwards"),
        "single_round_forwards": mean("single_round", "forwards"),
        "exact_seconds": round(mean("exact", "seconds"), 3),
        "efficient_seconds": round(mean("efficient", "seconds"), 3),
        "single_round_seconds": round(mean("single_round", "seconds"), 3),
        "efficient_auc_ratio": round(mean("efficient", "auc") / mean("exact", "auc"), 4),
        "single_round_auc_ratio": round(mean("single_round", "auc") / mean("exact", "auc"), 4),
        "pixel_space_speedup": breakdown["speedup"],
        "max_prob_diff": breakdown["max_prob_diff"],
        "speed_breakdown_ms": breakdown,
        "speedup_by_size": {size: figures["speedup"] for size, figures in by_size.items()},
    }))


if __name__ == "__main__":
    main()
