"""Train and evaluate method_comparison/configs/<name>.yaml on the synthetic shortcut benchmark, one JSON per run.

    python method_comparison/run.py --configs default sft --seeds 0 1 2 [--quick]

Each (config, seed) trains one tiny from-scratch model with the library, the same way `eagle-align demo` does
(the demo's checkpoint builder, benchmark splits, size overrides and point-game attribution settings), then
evaluates click accuracy on the iid and shifted test splits and the point game on the shifted one. The result
goes to results/<config>/seed<S>.json with everything needed to read it later without the code that made it:
the config as trained and every resolved field, package versions, the figures, training seconds and the command
line. A run that fails writes its file too (status "failed" and the error), so a table shows it.

The library never imports this folder; this script only uses eagle_align's public functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import shlex
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "eagle-align")
SPLITS = ("iid", "shifted")


def available_configs() -> list[str]:
    return sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def config_file(name: str) -> Path:
    """A config's YAML: a name from configs/ (`default`) or a path to any recipe."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"no config {name!r}: choose from {', '.join(available_configs())} or pass a YAML path")
    return path


def _shown(path: Path) -> str:
    """A config's path relative to the repository when it is inside it (results read the same on any machine)."""
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package.replace("-", "_")] = None
    versions["python"] = platform.python_version()
    return versions


def _fields(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):  # TrainingArguments (and subclasses): enums as values, tokens redacted
        return obj.to_dict()
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else {"value": obj}


def resolved_config(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field of every argument class the config parses into, defaults included: a result records the
    settings it ran under even after the library's defaults change."""
    from eagle_align.train import parse_config

    return {type(obj).__name__: _fields(obj) for obj in parse_config(config)}


def prepare_seed(work: Path, seed: int, family: str, quick: bool) -> dict[str, Any]:
    """The seed's tiny checkpoint and benchmark splits, shared by every config run with this seed."""
    from eagle_align import demo
    from eagle_align.families import build_tiny_checkpoint

    size = demo.SIZES["quick" if quick else "full"]
    pixels = demo.FAMILIES[family]["pixels"]
    checkpoint = build_tiny_checkpoint(family, work / "checkpoint", seed=seed, min_pixels=pixels, max_pixels=pixels)
    data = work / "data"
    cue = demo.TRAIN_CUE_FRACTION
    return {
        "checkpoint": checkpoint,
        "train": demo.synthetic_split(data, "train", size["train"], seed, cue, family),
        "iid": demo.synthetic_split(data, "test", size["iid"], seed, cue, family),
        "shifted": demo.synthetic_split(data, "shifted", size["shifted"], seed, 1.0, family),
    }


def _alignment_enabled(path: Path) -> bool:
    from eagle_align.config import PriorAlignedConfig
    from eagle_align.train import load_config

    default = next(f.default for f in dataclasses.fields(PriorAlignedConfig) if f.name == "alignment")
    return bool(load_config(path).get("alignment", default))


def run_one(name: str, path: Path, seed: int, family: str, quick: bool, prepared: dict[str, Any],
            out: Path) -> dict[str, Any]:
    """Train and evaluate one (config, seed); the figures and what they were measured under."""
    from eagle_align import demo
    from eagle_align.data import load_examples
    from eagle_align.eval import evaluate
    from eagle_align.families import load_model_and_processor
    from eagle_align.train import run_training

    size = demo.SIZES["quick" if quick else "full"]
    overrides = demo.run_overrides(family, quick)
    config = demo.training_config(path, prepared["checkpoint"], prepared["train"], out / "model", seed,
                                  _alignment_enabled(path), overrides, family)
    resolved = resolved_config(config)
    trainer = run_training(config)
    training_seconds = next(e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e)
    state = {key: int(value) for key, value in trainer.alignment_state.items()}
    steps = trainer.state.global_step
    del trainer
    gc.collect()

    pixels = demo.FAMILIES[family]["pixels"]
    model, processor = load_model_and_processor(str(out / "model"), dtype="float32", min_pixels=pixels,
                                                max_pixels=pixels)
    metrics = {}
    for split in SPLITS:
        metrics[split] = evaluate(
            model, processor, load_examples(prepared[split]), action_format=config.get("action_format"),
            batch_size=16, attribution_samples=size["attribution_samples"] if split == "shifted" else 0,
            attribution=demo.ATTRIBUTION, out_dir=out / "eval" / split,
        )
    del model
    gc.collect()
    point_game = metrics["shifted"].get("attribution", {}).get("overall", {}).get("point_game")

    def pct(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 4)

    return {
        "figures": {
            "iid_click_pct": pct(metrics["iid"]["click_accuracy"]),
            "shifted_click_pct": pct(metrics["shifted"]["click_accuracy"]),
            "point_game_pct": pct(point_game),
            "deviation_terms": state.get("deviation_examples"),
            "alignment_steps": state.get("alignment_steps"),
        },
        "training_seconds": round(training_seconds, 2),
        "steps": steps,
        "alignment_state": state,
        "trained_config": config,
        "resolved_config": resolved,
        "evaluation": {"iid_examples": size["iid"], "shifted_examples": size["shifted"],
                       "point_game_samples": size["attribution_samples"],
                       "point_game_attribution": metrics["shifted"].get("attribution", {}).get("settings")},
    }


def run(configs: list[str], seeds: list[int], quick: bool = False, family: str | None = None,
        results: Path = RESULTS, work: Path = Path("outputs/method_comparison"),
        command: str | None = None) -> list[Path]:
    """Every (config, seed), seed by seed; returns the result files written (failed runs included)."""
    from eagle_align import demo

    family = family or demo.FAMILY
    paths = {name: config_file(name) for name in configs}  # an unknown name fails before any training
    command = command or shlex.join([sys.executable, *sys.argv])
    versions = package_versions()
    written = []
    for seed in seeds:
        seed_work = work / f"{family}-seed{seed}{'-quick' if quick else ''}"
        prepared, setup_error = None, None
        try:
            prepared = prepare_seed(seed_work, seed, family, quick)
        except Exception:  # every config of this seed fails with this error, and says so
            setup_error = traceback.format_exc()
        for name, path in paths.items():
            print(f"[method_comparison] {name} seed {seed}{' (quick)' if quick else ''}", flush=True)
            result: dict[str, Any] = {
                "config": Path(name).stem, "config_file": _shown(path), "seed": seed, "family": family,
                "quick": quick, "benchmark": {key: demo.FAMILIES[family][key] for key in demo.BENCHMARK_KEYS},
                "command": command, "versions": versions,
            }
            start = time.perf_counter()
            try:
                if prepared is None:
                    raise RuntimeError(f"preparing seed {seed} failed:\n{setup_error}")
                result.update(run_one(name, path, seed, family, quick, prepared, seed_work / Path(name).stem))
                result["status"] = "ok"
            except Exception as error:
                result["status"] = "failed"
                result["error"] = f"{type(error).__name__}: {error}".strip()
                result["traceback"] = traceback.format_exc()
                print(f"[method_comparison] {name} seed {seed} FAILED: {result['error']}", flush=True)
            result["wall_seconds"] = round(time.perf_counter() - start, 2)
            target = results / Path(name).stem / f"seed{seed}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(result, indent=2, default=str) + "\n")
            written.append(target)
            figures = result.get("figures", {})
            print(f"[method_comparison] -> {target}: {result['status']} "
                  f"iid {figures.get('iid_click_pct')} shifted {figures.get('shifted_click_pct')} "
                  f"point game {figures.get('point_game_pct')}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "sft"],
                        help="config names from method_comparison/configs/ (or YAML paths); 'all' runs every one")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds to run (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="the demo's --quick sizes (60 steps): checks the pipeline, not the method")
    parser.add_argument("--family", default=None, help="tiny model family (default: the demo's, qwen3_vl)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--work", type=Path, default=Path("outputs/method_comparison"),
                        help="checkpoints, data, models and eval outputs (default: outputs/method_comparison)")
    args = parser.parse_args(argv)
    configs = available_configs() if args.configs == ["all"] else args.configs
    written = run(configs, args.seeds, quick=args.quick, family=args.family, results=args.results, work=args.work,
                  command=shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])]))
    failed = [path for path in written if json.loads(path.read_text())["status"] != "ok"]
    print(f"[method_comparison] {len(written) - len(failed)} ok, {len(failed)} failed; "
          "regenerate the README table with python method_comparison/make_tables.py", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
