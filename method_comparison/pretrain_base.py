"""Stage 1: the pretrained tiny grounding base that the comparison's LoRA rows fine-tune, built once and cached.

    python method_comparison/pretrain_base.py --family qwen3_vl --seed 0 [--quick] [--force]

LoRA is how eagle-align is used (on a pretrained Qwen-VL), but a random tiny model has nothing for LoRA to adapt.
So stage 1 builds a tiny checkpoint of the family and trains it fully on clean synthetic screens (no cue; the
layouts, jitter and distractor colours of pretrain_base.yaml) until it finds the red square; stage 2 (run.py)
puts LoRA on it and trains on the shortcut data. The base lands in outputs/method_comparison/base/<family>-seed<S>/
with base.json: its cache key (everything that defines it: pretrain_base.yaml, family, seed, package versions),
its click accuracy on clean test screens per difficulty and its training seconds. A later call with the same key
reuses it; a different key rebuilds it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFINITION = HERE / "pretrain_base.yaml"
WORK = Path("outputs/method_comparison")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "eagle-align")
# Seeds of the base's screens: far from the small seeds the shortcut data uses, so no stage-2 screen is a
# stage-1 screen with a cue drawn on it.
SCREEN_SEED_OFFSET = 100_000


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package.replace("-", "_")] = None
    versions["python"] = platform.python_version()
    return versions


def load_definition(quick: bool = False, path: Path | None = None) -> dict[str, Any]:
    """pretrain_base.yaml's screens and recipe, with its `quick` sizes merged in when asked."""
    definition = yaml.safe_load((path or DEFINITION).read_text())
    resolved = {"screens": dict(definition["screens"]), "recipe": dict(definition["recipe"])}
    if quick:
        for section, values in definition.get("quick", {}).items():
            resolved[section].update(values)
    return resolved


def cache_key(definition: dict[str, Any], family: str, seed: int, quick: bool) -> dict[str, Any]:
    """Everything a base depends on; a cached base is reused only when this matches exactly."""
    from eagle_align import demo

    versions = package_versions()
    return {"family": family, "seed": seed, "quick": quick, "pixels": demo.FAMILIES[family]["pixels"],
            "definition": definition,
            "versions": {name: versions[name] for name in ("eagle_align", "torch", "transformers")}}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def base_folder(family: str, seed: int, quick: bool = False, work: Path = WORK) -> Path:
    return work / "base" / f"{family}-seed{seed}{'-quick' if quick else ''}"


def clean_screens(out: Path, screens: dict[str, Any], seed: int, split: str) -> Path:
    """One JSONL over every (difficulty, distractor colour) variant of clean screens (no cue); images stay in
    each variant's folder, named relative to the JSONL."""
    from eagle_align.data import generate_synthetic

    per_variant = screens["train_per_variant" if split == "train" else "test_per_variant"]
    lines = []
    variant = 0
    for difficulty in screens["difficulties"]:
        for colour in screens["distractor_colours"]:
            name = f"d{difficulty}-{colour}"
            jsonl = generate_synthetic(out / name, per_variant, seed=SCREEN_SEED_OFFSET + 100 * seed + variant,
                                       preset="shortcut", cue_fraction=0.0, split=split, difficulty=difficulty,
                                       distractor_colour=colour)
            for line in jsonl.read_text().splitlines():
                record = json.loads(line)
                lines.append(json.dumps({**record, "image": f"{name}/{record['image']}"}))
            variant += 1
    path = out / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def click_accuracy_by_difficulty(model_dir: Path, test: Path, pixels: int, out: Path) -> dict[str, float]:
    """Click accuracy (%) on the clean test screens, overall and per difficulty."""
    from eagle_align.data import load_examples
    from eagle_align.eval import evaluate
    from eagle_align.families import load_model_and_processor

    model, processor = load_model_and_processor(str(model_dir), dtype="float32", min_pixels=pixels,
                                                max_pixels=pixels)
    examples = load_examples(test)
    metrics = evaluate(model, processor, examples, batch_size=16, out_dir=out, plots=False, progress=False)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    difficulty = {str(example.id): example.extra["difficulty"] for example in examples}
    accuracy = {"all": round(100 * metrics["click_accuracy"], 2)}
    for level in sorted(set(difficulty.values())):
        hits = [record["hit"] for record in records if difficulty[record["id"]] == level]
        accuracy[f"difficulty_{level}"] = round(100 * sum(hits) / len(hits), 2)
    return accuracy


def build_base(folder: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Build the random checkpoint, its clean screens, train it fully and measure it; returns base.json's content."""
    from eagle_align import demo
    from eagle_align.families import build_tiny_checkpoint, get_family
    from eagle_align.train import load_config, run_training

    family, seed, pixels = key["family"], key["seed"], key["pixels"]
    definition = key["definition"]
    if folder.exists():
        shutil.rmtree(folder)
    checkpoint = build_tiny_checkpoint(family, folder / "checkpoint", seed=seed, min_pixels=pixels,
                                       max_pixels=pixels)
    train = clean_screens(folder / "data" / "train", definition["screens"], seed, "train")
    test = clean_screens(folder / "data" / "test", definition["screens"], seed, "test")
    config = load_config(None, {
        **definition["recipe"], "model_name_or_path": str(checkpoint), "train_data": str(train),
        "output_dir": str(folder / "model"), "seed": seed, "min_pixels": pixels, "max_pixels": pixels,
        "action_format": get_family(family).default_action_format,
    })
    trainer = run_training(config)
    training_seconds = next(e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e)
    losses = [[e["step"], round(e["loss"], 4)] for e in trainer.state.log_history if "loss" in e]
    del trainer
    shutil.rmtree(checkpoint)  # the random weights: rebuilt from the seed if ever needed
    accuracy = click_accuracy_by_difficulty(folder / "model", test, pixels, folder / "eval")
    return {"key": key, "key_hash": key_hash(key), "model": "model", "trained_config": config,
            "training_seconds": round(training_seconds, 2), "loss_curve": losses,
            "clean_click_pct": accuracy, "benchmark_family_settings": {
                name: demo.FAMILIES[family][name] for name in demo.BENCHMARK_KEYS}}


def pretrained_base(family: str, seed: int, quick: bool = False, work: Path = WORK, force: bool = False,
                    definition_file: Path | None = None) -> dict[str, Any]:
    """The cached base of (family, seed), built first if absent or built under another definition; base.json's
    content with `model_dir` (the trained model's folder) added."""
    key = cache_key(load_definition(quick, definition_file), family, seed, quick)
    folder = base_folder(family, seed, quick, work)
    record_file = folder / "base.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if force or record is None or record.get("key_hash") != key_hash(key) or not (folder / "model").is_dir():
        reason = "forced" if force else "absent" if record is None else "definition changed"
        print(f"[pretrain_base] building {folder} ({reason})", flush=True)
        start = time.perf_counter()
        record = build_base(folder, copy.deepcopy(key))
        record["wall_seconds"] = round(time.perf_counter() - start, 2)
        record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[pretrain_base] {folder}: clean click accuracy {record['clean_click_pct']} "
          f"({record['training_seconds']} s of training)", flush=True)
    return {**record, "model_dir": str(folder / record["model"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwen3_vl", help="tiny model family (qwen3_vl, qwen2_5_vl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="pretrain_base.yaml's quick sizes (pipeline check)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching base is cached")
    parser.add_argument("--work", type=Path, default=WORK, help=f"outputs root (default: {WORK})")
    args = parser.parse_args(argv)
    pretrained_base(args.family, args.seed, args.quick, args.work, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
