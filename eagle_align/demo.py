"""`eagle-align demo`: plain SFT vs prior-aligned training on a synthetic shortcut benchmark, offline, on CPU.

What it shows: the training screens carry a spurious cue (a magenta marker beside the target), so a model can
get every training click right by following the marker. The `shifted` test split moves the marker beside a
distractor. SFT and prior-aligned training run with the same seed, data order, step count and recipe
(the shipped recipe `tiny_synthetic_cpu`, through the same `run_training` as `eagle-align train`); the eval
harness then measures click accuracy on both test splits and the point game (is the top-ranked evidence
inside the target box?) on the shifted one.

The model is a tiny random Qwen3-VL (default), Qwen2.5-VL (`--family qwen2_5_vl`) or Qwen2-VL (`--family
qwen2_vl`) built from scratch, fully fine-tuned (a random model has nothing for LoRA to adapt). Each family has
its own entry in `FAMILIES` (pixel limits and how salient the cue is), chosen so that plain SFT takes the cue:
orange distractors for Qwen3-VL; for Qwen2-VL also training targets drawn like the distractors
(`unmarked_train_fraction` 0.4), so that the cue is the more reliable evidence. The tiny Qwen2.5-VL rarely takes
the cue in any setting, so its demo runs the pipeline without a shortcut to remove. `--benchmark KEY=VALUE ...`
replaces any of a family's benchmark settings; method_comparison/ compares method settings on this benchmark.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from eagle_align.attribution.settings import AttributionSettings
from eagle_align.recipes import recipe_path

FAMILY = "qwen3_vl"
# Per family: pixel limits (256 x 256 screens -> 8 x 8 merged cells of 32 px for Qwen3-VL, 9 x 9 of 28 px for
# Qwen2.5-VL) and the cue (synthetic `shortcut` options). Magenta, not the preset's white: tiny models never
# learn a white cue here (so SFT would have no shortcut to take). Orange distractors, not blue: the red target
# stands out less, so SFT leans on the cue (Qwen3-VL seed 1: shifted 68.0 % with blue, 32.0 % with orange).
# unmarked_train_fraction: share of training targets drawn like the distractors (0: none);
# empty_train_slot_fraction and decoy_train_fraction (empty distractor slots, second red squares): 0 by default;
# target_colour (the target square's colour, every split): red.
# full_run_schedule: recipe keys a full run overrides for this family (the recipe's own: 600 steps). The tiny
# Qwen2-VL's SFT loss sits on a long plateau (one coordinate still guessed), so it trains 600 steps even under
# a recipe with fewer.
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3_vl": {"pixels": 256 * 256, "cue_colour": "magenta", "cue_size": None, "distractor_colour": "orange",
                 "distractor_shape": "square", "square_size": None, "unmarked_train_fraction": 0.0,
                 "empty_train_slot_fraction": 0.0, "decoy_train_fraction": 0.0, "target_colour": "red", "full_run_schedule": {}},
    "qwen2_5_vl": {"pixels": 252 * 252, "cue_colour": "magenta", "cue_size": None, "distractor_colour": "orange",
                   "distractor_shape": "square", "square_size": None, "unmarked_train_fraction": 0.0,
                   "empty_train_slot_fraction": 0.0, "decoy_train_fraction": 0.0, "target_colour": "red", "full_run_schedule": {}},
    "qwen2_vl": {"pixels": 252 * 252, "cue_colour": "magenta", "cue_size": None, "distractor_colour": "orange",
                 "distractor_shape": "square", "square_size": None, "unmarked_train_fraction": 0.4,
                 "empty_train_slot_fraction": 0.0, "decoy_train_fraction": 0.0, "target_colour": "red",
                 "full_run_schedule": {"max_steps": 600}},
}
# The data settings of a family's benchmark (its other keys are the model's pixels and the run's schedule).
BENCHMARK_KEYS = ("cue_colour", "cue_size", "distractor_colour", "distractor_shape", "square_size",
                  "unmarked_train_fraction", "empty_train_slot_fraction", "decoy_train_fraction", "target_colour")
PIXELS = FAMILIES[FAMILY]["pixels"]
RECIPE = recipe_path("tiny_synthetic_cpu", "train")
SPLITS = ("iid", "shifted")
MODELS = ("sft", "aligned")
# Benchmark: the `shortcut` preset at difficulty 1 (one red square in one of four quadrants, the only
# setting a tiny model learns in minutes) with the cue beside the target in every training screen.
TRAIN_CUE_FRACTION = 1.0
# Sizes: full run (about 5 minutes on 2 CPU cores) and --quick (under a minute, used by the test suite; at 60
# steps the cue is not learned yet, so --quick checks the pipeline, not the method).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"train": 1600, "iid": 128, "shifted": 128, "attribution_samples": 32, "overrides": {}},
    "quick": {"train": 480, "iid": 32, "shifted": 32, "attribution_samples": 4,
              "overrides": {"max_steps": 60, "align_start_step": 30, "max_aligned_per_step": 2}},
}
# Point game: top-1 region of the model's own click inside the target box. The masking baseline is the
# screenshot's background colour (removing a region = showing empty screen there), not black: a black cell
# on a grey screen is an artefact these models never saw (with black, SFT models that ignore the cue entirely
# scored 0 %). `single_round` ranks by singleton scores, whose top-1 is the greedy search's first pick, so the
# point game equals a greedy search's with the same baseline, at 2N forwards. The settings are complete (not read
# from the trained folder), so SFT and aligned models, and every recipe, are measured the same way: 64 grid
# cells, EAGLE's a = 2, b = 1.
ATTRIBUTION = AttributionSettings(n_regions=64, region_method="grid", baseline="background", search="single_round",
                                  insertion_weight=2.0, deletion_weight=1.0, max_regions=None)
FIGURE_SAMPLES = 4


def _stage(start: float, message: str) -> None:
    elapsed = time.perf_counter() - start
    print(f"[demo {int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)


def synthetic_split(out: Path, split: str, n: int, seed: int, cue_fraction: float, family: str = FAMILY,
                    benchmark: dict[str, Any] | None = None, shortcut: str = "adjacent") -> Path:
    """One split of the demo's shortcut benchmark for `family` under `out` (its JSONL path); `benchmark` replaces
    some of the family's cue settings (`FAMILIES`), e.g. for benchmarks/shortcut_probe.py. `shortcut` is the kind
    of cue (eagle_align.data.synth.SHORTCUTS); the family's cue colour applies only to kinds drawn in it."""
    from eagle_align.data import generate_synthetic
    from eagle_align.data.synth import COLOURED_SHORTCUTS

    bench = {**FAMILIES[family], **(benchmark or {})}

    def train_only(key: str) -> float:  # unmarked targets, empty slots and decoys: training screens only
        return bench[key] if split == "train" else 0.0

    return generate_synthetic(out, n, seed=seed, preset="shortcut", cue_fraction=cue_fraction, split=split,
                              difficulty=1, shortcut=shortcut,
                              cue_colour=bench["cue_colour"] if shortcut in COLOURED_SHORTCUTS else None,
                              cue_size=bench["cue_size"],
                              distractor_colour=bench["distractor_colour"], distractor_shape=bench["distractor_shape"],
                              square_size=bench["square_size"],
                              unmarked_target_fraction=train_only("unmarked_train_fraction"),
                              empty_slot_fraction=train_only("empty_train_slot_fraction"),
                              decoy_fraction=train_only("decoy_train_fraction"),
                              target_colour=bench["target_colour"])


def run_overrides(family: str, quick: bool) -> dict[str, Any]:
    """The recipe keys a demo run of `family` overrides: the --quick size's, or the family's full-run schedule."""
    return dict(SIZES["quick"]["overrides"]) if quick else {**SIZES["full"]["overrides"],
                                                            **FAMILIES[family]["full_run_schedule"]}


def training_config(recipe: Path, checkpoint: Path, train: Path, out: Path, seed: int, alignment: bool,
                    overrides: dict[str, Any], family: str = FAMILY, pixels: int | None = None) -> dict[str, Any]:
    """The recipe as the demo runs it: its checkpoint, data, seed, pixel limits (None: the family's) and action
    format, and size overrides."""
    from eagle_align.families import get_family
    from eagle_align.train import load_config

    pixels = pixels or FAMILIES[family]["pixels"]
    return load_config(recipe, {
        **overrides,
        "model_name_or_path": str(checkpoint),
        "train_data": str(train),
        "output_dir": str(out),
        "seed": seed,
        "alignment": alignment,
        "min_pixels": pixels,
        "max_pixels": pixels,
        "action_format": get_family(family).default_action_format,
    })


def _alignment_summary(trainer) -> dict[str, Any]:
    """Cumulative alignment counts and the last logged align/ metrics (what the losses did)."""
    counts = {k: int(v) for k, v in trainer.alignment_state.items()}
    logged = [e for e in trainer.state.log_history if any(k.startswith("align/") for k in e)]
    trace = [
        {"step": e["step"], **{k[6:]: round(float(v), 4) for k, v in e.items()
                               if k in ("align/deviation_examples", "align/loss_deviation", "align/loss_necessity",
                                        "align/insufficient_boxes", "align/blank_clicks",
                                        "align/shortcut_boxes", "align/box_share", "align/blank_share",
                                        "align/point_game")}}
        for e in logged
    ]
    return {**counts, "trace": trace}


def _comparison_figure(models: dict[str, tuple], examples, records: dict[str, list[dict]], path: Path) -> Path:
    """The same shifted screenshots, one row each: heatmap of the SFT model | of the aligned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eagle_align.data.images import image_for_processor
    from eagle_align.eval import attribute_predictions
    from eagle_align.eval.plots import overlay

    n = min(FIGURE_SAMPLES, len(examples))
    fig, axes = plt.subplots(n, len(models), figsize=(3.4 * len(models), 3.5 * n), squeeze=False)
    for col, (name, (model, processor, fmt)) in enumerate(models.items()):
        rows, attributions = attribute_predictions(
            model, processor, examples, records[name], fmt, n, progress=False, settings=ATTRIBUTION
        )
        on_box = {row["index"]: row["point_game"] for row in rows}
        for i in range(n):
            ax = axes[i, col]
            ax.axis("off")
            record = records[name][i]
            ax.imshow(overlay(image_for_processor(examples[i], processor), record, attributions.get(i)))
            verdict = "click on target" if record["hit"] else "click MISSED"
            evidence = {True: "top-1 in box", False: "top-1 outside box", None: "no click"}[on_box.get(i)]
            ax.set_title(f"{name}: {verdict}\n{evidence}", fontsize=8, color="green" if record["hit"] else "red")
    fig.suptitle("Shifted split (cue beside a distractor): green box = target, magenta = click,\n"
                 "heat = evidence for the click, 1-3 = top regions", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(report: dict[str, Any]) -> str:
    """The compact result table printed at the end of the demo (percentages)."""
    def pct(value: float | None) -> str:
        return "   –  " if value is None else f"{100 * value:6.1f}"

    lines = [
        f"{'model':<9}{'iid click %':>13}{'shifted click %':>17}{'point game %':>14}",
        *(f"{name:<9}{pct(report[name]['iid_click_accuracy']):>13}{pct(report[name]['shifted_click_accuracy']):>17}"
          f"{pct(report[name]['point_game']):>14}" for name in MODELS),
    ]
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    rows = [f"| {name} | {pct(report[name]['iid_click_accuracy'])} | {pct(report[name]['shifted_click_accuracy'])} "
            f"| {pct(report[name]['point_game'])} |" for name in MODELS]
    aligned = report["aligned"]["alignment"]
    settings = report["settings"]
    point = settings["point_game_attribution"]
    return "\n".join([
        "# eagle-align demo: SFT vs prior-aligned on a shortcut benchmark",
        "",
        f"Seed {report['seed']}, {report['minutes']:.1f} minutes{' (quick)' if report['quick'] else ''}. "
        f"Tiny from-scratch {report['family']} ({settings['trainable_parameters']:,} trainable parameters), "
        f"{settings['max_steps']} steps each on {settings['train_examples']} training screens whose "
        f"{settings['cue_colour']} cue sits beside the target.",
        "",
        f"| model | iid click acc. (%, n={settings['iid_examples']}) | shifted click acc. (%, n={settings['shifted_examples']}) "
        f"| point game on shifted (%, n={settings['attribution_samples']}) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "- **iid**: cue beside the target, as in training. **shifted**: cue beside a distractor; a model that "
        "follows the cue misses.",
        "- **point game**: the top-1 region of the attribution of the model's own click lies in the target box "
        f"(eval harness: {point['n_regions']}-region {point['region_method']}, baseline `{point['baseline']}`, "
        f"{point['search']} search); alignment attributed over {settings['alignment_regions']}.",
        f"- Alignment: {aligned.get('alignment_steps', 0)} alignment steps, {aligned.get('selected', 0)} samples "
        f"attributed, {aligned.get('deviation_examples', 0)} deviation terms (top-1 evidence off the target box).",
        f"- Training time: SFT {report['sft']['training_minutes']:.2f} min, prior-aligned "
        f"{report['aligned']['training_minutes']:.2f} min (training_overhead_ratio "
        f"{report['training_overhead_ratio']:.2f}: aligned / SFT seconds of the training loop).",
        "",
        "![attribution comparison](attribution_comparison.png)",
        "",
        "Per-split evaluation reports (predictions, metrics, plots): "
        + ", ".join(f"[{m}/{s}](eval/{m}/{s}/report.md)" for m in MODELS for s in SPLITS),
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
    ])


def run_demo(out_dir: str | Path = "outputs/demo", seed: int = 0, quick: bool = False,
             recipe: str | Path | None = None, family: str = FAMILY,
             benchmark: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the tiny `family` model and its benchmark, train SFT and prior-aligned, evaluate both, write the report.

    `benchmark` replaces some of the family's data settings (`BENCHMARK_KEYS`), so that a result measured under
    another benchmark reruns with one command. Returns the report dict (also written to
    `out_dir/report.json`).
    """
    from eagle_align.data import load_examples
    from eagle_align.eval import evaluate, read_predictions
    from eagle_align.families import build_tiny_checkpoint, load_model_and_processor
    from eagle_align.train import run_training

    start = time.perf_counter()
    recipe = recipe_path(recipe, "train") if recipe is not None else RECIPE
    if not recipe.is_file():
        raise FileNotFoundError(f"demo recipe {recipe} not found (pass recipe= / --recipe)")
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; the demo has benchmark settings for {', '.join(FAMILIES)}")
    unknown = sorted(set(benchmark or {}) - set(BENCHMARK_KEYS))
    if unknown:
        raise ValueError(f"benchmark setting(s) {', '.join(unknown)} unknown; choose from {', '.join(BENCHMARK_KEYS)}")
    bench = {**{key: FAMILIES[family][key] for key in BENCHMARK_KEYS}, **(benchmark or {})}
    pixels = FAMILIES[family]["pixels"]
    size = SIZES["quick" if quick else "full"]
    overrides = run_overrides(family, quick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    _stage(start, f"1/5 building a tiny {family} checkpoint (seed {seed})")
    checkpoint = build_tiny_checkpoint(family, out / "checkpoint", seed=seed, min_pixels=pixels, max_pixels=pixels)

    _stage(start, "2/5 generating the shortcut benchmark (train: cue beside the target; shifted: beside a distractor)")
    train = synthetic_split(out / "data", "train", size["train"], seed, TRAIN_CUE_FRACTION, family, bench)
    tests = {"iid": synthetic_split(out / "data", "test", size["iid"], seed, TRAIN_CUE_FRACTION, family, bench),
             "shifted": synthetic_split(out / "data", "shifted", size["shifted"], seed, 1.0, family, bench)}

    trained: dict[str, Any] = {}
    for step, name in enumerate(MODELS, start=3):
        _stage(start, f"{step}/5 training {name} ({'prior-aligned' if name == 'aligned' else 'plain SFT'})")
        config = training_config(recipe, checkpoint, train, out / name, seed, name == "aligned", overrides,
                                 family)
        trainer = run_training(config)
        trained[name] = {
            "config": config,
            "max_steps": trainer.state.global_step,
            # The Trainer's own training-loop time (no loading, saving or evaluation): what alignment adds.
            "training_seconds": next(e["train_runtime"] for e in reversed(trainer.state.log_history)
                                     if "train_runtime" in e),
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "alignment": _alignment_summary(trainer) if name == "aligned" else None,
            "regions": f"{trainer.args.n_regions} {trainer.args.region_method} regions",
            "loss_curve": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        }
        del trainer

    _stage(start, "5/5 evaluating both models on the iid and shifted test splits")
    examples = {split: load_examples(path) for split, path in tests.items()}
    loaded, metrics, records = {}, {}, {}
    for name in MODELS:
        model, processor = load_model_and_processor(str(out / name), dtype="float32", min_pixels=pixels,
                                                    max_pixels=pixels)
        fmt = trained[name]["config"].get("action_format")
        loaded[name] = (model, processor, fmt)
        for split in SPLITS:
            _stage(start, f"   {name} on {split}")
            metrics[name, split] = evaluate(
                model, processor, examples[split], action_format=fmt, batch_size=16,
                attribution_samples=size["attribution_samples"] if split == "shifted" else 0,
                attribution=ATTRIBUTION, out_dir=out / "eval" / name / split,
            )
        records[name] = read_predictions(out / "eval" / name / "shifted" / "predictions.jsonl")
    figure = _comparison_figure(loaded, examples["shifted"], records, out / "attribution_comparison.png")

    report: dict[str, Any] = {"seed": seed, "quick": quick, "family": family}
    for name in MODELS:
        shifted = metrics[name, "shifted"]
        report[name] = {
            "iid_click_accuracy": metrics[name, "iid"]["click_accuracy"],
            "shifted_click_accuracy": shifted["click_accuracy"],
            "point_game": shifted.get("attribution", {}).get("overall", {}).get("point_game"),
            "iid_mean_distance": metrics[name, "iid"]["mean_distance"],
            "shifted_mean_distance": shifted["mean_distance"],
            "eval_dirs": {split: str(out / "eval" / name / split) for split in SPLITS},
            "loss_curve": trained[name]["loss_curve"],
            "training_minutes": trained[name]["training_seconds"] / 60,
        }
    report["aligned"]["alignment"] = trained["aligned"]["alignment"]
    report["training_overhead_ratio"] = trained["aligned"]["training_seconds"] / trained["sft"]["training_seconds"]
    report["settings"] = {
        "recipe": str(recipe),
        "max_steps": trained["sft"]["max_steps"],
        "trainable_parameters": trained["sft"]["trainable"],
        "train_examples": size["train"],
        "train_cue_fraction": TRAIN_CUE_FRACTION,
        # The benchmark's settings (its full-run schedule is in "overrides").
        **bench,
        "iid_examples": size["iid"],
        "shifted_examples": size["shifted"],
        "attribution_samples": size["attribution_samples"],
        "point_game_split": "shifted",
        "alignment_regions": trained["aligned"]["regions"],
        "point_game_attribution": metrics["aligned", "shifted"]["attribution"]["settings"],
        "overrides": overrides,
    }
    report["figure"] = figure.name
    report["minutes"] = (time.perf_counter() - start) / 60
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _stage(start, f"done: {out / 'report.md'}")
    print(format_table(report), flush=True)
    return report


def summarize_seeds(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of the headline numbers over demo runs (one per seed)."""
    keys = ("iid_click_accuracy", "shifted_click_accuracy", "point_game")
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in reports]}
    for name in MODELS:
        summary[name] = {}
        for key in keys:
            values = [r[name][key] for r in reports if r[name][key] is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name][key] = (statistics.mean(values), spread) if values else (None, None)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Mean ± std table (percentages) over seeds."""
    def cell(pair: tuple) -> str:
        return "–" if pair[0] is None else f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"

    lines = [f"seeds {', '.join(map(str, summary['seeds']))} (mean ± std, %)",
             f"{'model':<9}{'iid click':>15}{'shifted click':>15}{'point game':>15}"]
    for name in MODELS:
        row = summary[name]
        lines.append(f"{name:<9}{cell(row['iid_click_accuracy']):>15}{cell(row['shifted_click_accuracy']):>15}"
                     f"{cell(row['point_game']):>15}")
    return "\n".join(lines)
