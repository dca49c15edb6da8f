"""Train and evaluate method_comparison/configs/<name>.yaml on the synthetic shortcut benchmark, one JSON per run.

    python method_comparison/run.py --suite dev                 # every suite row, shortcut kind and dev seed
    python method_comparison/run.py --freeze                    # record the settings chosen (FROZEN)
    python method_comparison/run.py --suite eval                # the evaluation seeds, once, on frozen settings
    python method_comparison/run.py --configs sft_lora default_lora --seeds 0 --kinds adjacent [--quick]

Each (config, shortcut kind, seed) trains with the library as `eagle-align demo` does (the demo's benchmark
splits, sizes and point-game attribution settings) and evaluates click accuracy on the iid and shifted test
splits and the point game on the shifted one. Where a row starts from:

- `finetuning: lora` (the product's setting): the seed's pretrained tiny base (stage 1, pretrain_base.py,
  cached under outputs/method_comparison/base/);
- `finetuning: full`: the seed's random tiny checkpoint (the from-scratch benchmark);
- `init_from: <config>` (a runner key, never passed to the library): the model that config trained for the same
  kind and seed in this invocation, LoRA adapters merged into their base first. Meant for the GRPO rows
  (`trainer: grpo`, a recipe key the library's run_training reads), which start from SFT.

A row the installed library cannot run (a shortcut kind it does not draw, a recipe key or trainer it lacks) is
skipped in development runs with a message and blocks the evaluation suite.

The result goes to results/<kind>/<config>/seed<S>.json with everything needed to read it later without the code
that made it: the config as trained and every resolved field, package versions and the code's commit, the
figures, training seconds, steps and the command line. A run that fails writes its file too (status "failed"
and the error), so a table shows it. The library never imports this folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import importlib.util
import inspect
import json
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # pretrain_base.py, stage 1, lives beside this script
from pretrain_base import WORK, package_versions, pretrained_base  # noqa: E402

CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
SUITE = HERE / "suite.yaml"
FROZEN = HERE / "FROZEN"
STAGE1 = HERE / "pretrain_base.yaml"
SPLITS = ("iid", "shifted")
# The kind of shortcut every result had before synthetic_split took `shortcut=`: the cue beside the target.
DEFAULT_KIND = "adjacent"
# Keys the runner reads and removes before the library sees the recipe.
RUNNER_KEYS = ("init_from", "benchmark")
# A `benchmark:` key of the runner's own beside the demo's: the share of training (and iid test) screens with
# the cue, the demo's TRAIN_CUE_FRACTION (1.0) unless set; 0 trains on screens without any cue (a ceiling).
TRAIN_CUE_KEY = "train_cue_fraction"


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
    """A path relative to the repository when it is inside it (results read the same on any machine)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clicks_digest(predictions: Path) -> str:
    """sha256 of every example's id and answer text, in file order: two runs with equal digests gave the same
    answer, so the same click, on every example (the placebo's check against SFT); paths and timings left out."""
    answers = [(record["id"], record["answer"]) for record in map(json.loads, predictions.read_text().splitlines())]
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()


def _library_default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclasses.dataclass
class RowConfig:
    """One config file: the recipe the library trains with and the runner's own keys."""

    name: str
    path: Path
    recipe: dict[str, Any]
    init_from: str | None = None
    benchmark: dict[str, Any] = dataclasses.field(default_factory=dict)  # over the family's demo benchmark

    @property
    def trainer(self) -> str:
        """The recipe's `trainer:` (the library's: sft, its default, or grpo)."""
        return self.recipe.get("trainer", "sft")

    @property
    def lora(self) -> bool:
        from eagle_align.train import ModelArguments

        return self.recipe.get("finetuning", _library_default(ModelArguments, "finetuning")) == "lora"


def read_row_config(name: str) -> RowConfig:
    from eagle_align import demo

    path = config_file(name)
    recipe = yaml.safe_load(path.read_text()) or {}
    runner = {key: recipe.pop(key) for key in RUNNER_KEYS if key in recipe}
    benchmark = runner.get("benchmark") or {}
    unknown = sorted(set(benchmark) - {*demo.BENCHMARK_KEYS, TRAIN_CUE_KEY})
    if unknown:
        raise SystemExit(f"{_shown(path)}: benchmark setting(s) {', '.join(unknown)} unknown; choose from "
                         f"{', '.join([*demo.BENCHMARK_KEYS, TRAIN_CUE_KEY])}")
    return RowConfig(Path(name).stem, path, recipe, runner.get("init_from"), benchmark)


@dataclasses.dataclass(frozen=True)
class SuiteRow:
    config: str
    sft: str  # the row whose training seconds this row's are compared with
    shortcuts: tuple[str, ...] | None = None  # the kinds this row runs on (None: every kind of the suite)

    def runs_on(self, kind: str) -> bool:
        return self.shortcuts is None or kind in self.shortcuts


@dataclasses.dataclass(frozen=True)
class Suite:
    family: str
    seeds: dict[str, list[int]]
    shortcuts: list[str]
    rows: list[SuiteRow]
    base_seed: int = 0  # stage 1 runs once per family: every seed's LoRA rows start from this base
    parts: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)

    def part(self, name: str) -> Suite:
        """The suite cut to one of its named parts (its rows and shortcut kinds, each the suite's where the part
        names none; seeds as the suite's)."""
        if name not in self.parts:
            raise SystemExit(f"suite.yaml has no part {name!r}; it has {', '.join(self.parts) or 'none'}")
        part = self.parts[name]
        rows = [row for row in self.rows if "rows" not in part or row.config in part["rows"]]
        return dataclasses.replace(self, rows=rows, shortcuts=list(part.get("shortcuts", self.shortcuts)))

    def row(self, config: str) -> SuiteRow | None:
        """The suite's row of `config` (None: a config outside the suite)."""
        return next((row for row in self.rows if row.config == config), None)


def load_suite(path: Path = SUITE) -> Suite:
    raw = yaml.safe_load(path.read_text())
    rows = [SuiteRow(row["config"], row.get("sft", row["config"]),
                     tuple(row["shortcuts"]) if "shortcuts" in row else None) for row in raw["rows"]]
    return Suite(raw["family"], {phase: list(seeds) for phase, seeds in raw["seeds"].items()},
                 list(raw["shortcuts"]), rows, int(raw.get("base_seed", 0)), dict(raw.get("parts") or {}))


def runs_on(suite: Suite, config: str, kind: str) -> bool:
    """Whether the suite runs `config` on `kind` (a row may name its own kinds; configs outside the suite run
    wherever they are asked to)."""
    row = suite.row(config)
    return row is None or row.runs_on(kind)


def reference_sft(row: RowConfig, suite: Suite) -> str:
    """The SFT row a row's training time is divided by: the suite's, else SFT of the same fine-tuning."""
    suite_row = suite.row(row.name)
    if suite_row is not None:
        return suite_row.sft
    return "sft_lora" if row.lora else "sft"


# ----------------------------------------------------------------------------------------- library features
def shortcut_keyword_available() -> bool:
    """Whether the installed library draws kinds of shortcut (`synthetic_split(..., shortcut=)`)."""
    from eagle_align import demo

    return "shortcut" in inspect.signature(demo.synthetic_split).parameters


def check_kinds(kinds: list[str]) -> None:
    """Exit naming a kind the installed library does not know (a typo), where it lists its kinds."""
    from eagle_align.data import synth

    known = getattr(synth, "SHORTCUTS", None) if shortcut_keyword_available() else None
    unknown = [kind for kind in kinds if known is not None and kind not in known]
    if unknown:
        raise SystemExit(f"shortcut kind(s) {', '.join(unknown)} unknown; eagle_align draws {', '.join(known)}")


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Train with eagle_align's run_training (its `trainer:` SFT or GRPO, prior-aligned with alignment on):
    training seconds, steps and the alignment counters."""
    from eagle_align.train import run_training

    trainer = run_training(config)
    outcome = {
        "training_seconds": next(e["train_runtime"] for e in reversed(trainer.state.log_history)
                                 if "train_runtime" in e),
        "steps": trainer.state.global_step,
        "alignment_state": {key: int(value) for key, value in trainer.alignment_state.items()},
    }
    del trainer
    gc.collect()
    return outcome


def missing_features(row: RowConfig, kind: str) -> list[str]:
    """What the installed library (or this runner) lacks to run `row` on `kind`: [] when it can run."""
    from eagle_align import train as library_train

    missing = []
    if kind != DEFAULT_KIND and not shortcut_keyword_available():
        missing.append(f"shortcut kind {kind!r} (eagle_align.demo.synthetic_split has no shortcut= keyword yet)")
    trainers = getattr(library_train, "TRAINERS", ("sft",))
    if row.trainer not in trainers:
        missing.append(f"trainer {row.trainer!r} (this eagle_align trains with {', '.join(trainers)})")
    elif row.trainer == "grpo" and importlib.util.find_spec("trl") is None:
        missing.append('trainer grpo needs TRL (pip install "eagle-align[grpo]")')
    return missing


# ------------------------------------------------------------------------------------------------ freezing
def frozen_files(suite: Suite) -> list[Path]:
    """The files whose content defines the evaluation: the suite, stage 1 and every row's config."""
    configs = {config_file(row.config) for row in suite.rows}
    for row in suite.rows:
        source = read_row_config(row.config).init_from
        if source:
            configs.add(config_file(source))
    return [SUITE, STAGE1, *sorted(configs)]


def freeze_manifest(suite: Suite) -> str:
    lines = [f"{_sha256(path)}  {_shown(path)}" for path in frozen_files(suite)]
    return "\n".join(lines) + "\n"


def _manifest_entries(manifest: str) -> dict[str, str]:
    """A manifest's {file: sha256}."""
    entries = {}
    for line in manifest.splitlines():
        digest, name = line.split("  ", 1)
        entries[name] = digest
    return entries


def manifest_hash(manifest: str) -> str:
    return hashlib.sha256(manifest.encode()).hexdigest()[:16]


FROZEN_HEADER = ("# Settings frozen for the evaluation seeds: sha256 of each file (written by run.py --freeze;\n"
                 "# run.py --suite eval runs only while every hash matches).\n")


def write_frozen(suite: Suite, path: Path | None = None) -> str:
    manifest = freeze_manifest(suite)
    (path or FROZEN).write_text(FROZEN_HEADER + manifest)
    return manifest_hash(manifest)


def check_frozen(suite: Suite, path: Path | None = None) -> str:
    """The frozen manifest's hash when the current files match it; otherwise exit naming what differs."""
    path = path or FROZEN
    if not path.is_file():
        raise SystemExit(f"{_shown(path)} is missing: choose settings on the development seeds, then "
                         "`python method_comparison/run.py --freeze` before running the evaluation seeds")
    frozen = "".join(line + "\n" for line in path.read_text().splitlines() if line and not line.startswith("#"))
    old, new = _manifest_entries(frozen), _manifest_entries(freeze_manifest(suite))
    # A part of the suite checks its own files against the freeze of the whole (and runs under its hash).
    changed = sorted(name for name in new if old.get(name) != new[name])
    if changed:
        raise SystemExit(f"settings changed since they were frozen ({', '.join(changed)}): the evaluation seeds "
                         "run only on frozen settings. Choose on the development seeds, then run --freeze again "
                         "(the evaluation suite then reruns every row)")
    return manifest_hash(frozen)


# --------------------------------------------------------------------------------------------- one run
def resolved_config(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field of every argument class the config parses into, defaults included: a result records the
    settings it ran under even after the library's defaults change."""
    from eagle_align.train import parse_config

    def fields(obj: Any) -> dict[str, Any]:
        if hasattr(obj, "to_dict"):  # TrainingArguments (and subclasses): enums as values, tokens redacted
            return obj.to_dict()
        return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else {"value": obj}

    return {type(obj).__name__: fields(obj) for obj in parse_config(config)}


def shortcut_splits(folder: Path, seed: int, family: str, kind: str, quick: bool,
                    benchmark: dict[str, Any]) -> dict[str, Path]:
    """The benchmark's train, iid and shifted splits of one shortcut kind for `seed`, with `benchmark` over the
    family's demo settings (each distinct `benchmark` in a folder of its own)."""
    from eagle_align import demo

    size = demo.SIZES["quick" if quick else "full"]
    extra = {"shortcut": kind} if shortcut_keyword_available() else {}
    cue = benchmark.get(TRAIN_CUE_KEY, demo.TRAIN_CUE_FRACTION)
    data = folder / (f"data-{hashlib.sha256(json.dumps(benchmark, sort_keys=True).encode()).hexdigest()[:8]}"
                     if benchmark else "data")
    settings = {key: value for key, value in benchmark.items() if key != TRAIN_CUE_KEY}
    return {split: demo.synthetic_split(data, name, size[split], seed, fraction, family, settings, **extra)
            for split, name, fraction in (("train", "train", cue), ("iid", "test", cue), ("shifted", "shifted", 1.0))}


@dataclasses.dataclass
class Start:
    """Where a row's training starts: a full checkpoint folder, and what it is."""

    model: Path
    description: str


@dataclasses.dataclass
class Trained:
    """A row's trained model as evaluation loads it: a full model, or an adapter over `start`."""

    start: Path
    output: Path
    adapter: bool


def merged_start(source: Trained, folder: Path) -> Path:
    """A full checkpoint of `source`: itself, or its adapter merged into its start, written to `folder` afresh
    (a merge left there by an earlier invocation is of another training of the source)."""
    if not source.adapter:
        return source.output
    from eagle_align.hub import merge_adapter

    if folder.exists():
        shutil.rmtree(folder)
    merge_adapter(str(source.start), source.output, folder)
    return folder


def trained_config(row: RowConfig, start: Path, train_data: Path, out: Path, seed: int, family: str,
                   quick: bool) -> dict[str, Any]:
    """The row's recipe as run: its start, the seed's data, seed, output folder, the family's pixel limits and
    answer format, and the demo's size overrides (quick sizes for every row; a full run's family schedule for
    the from-scratch rows only, whose schedule it is)."""
    from eagle_align import demo
    from eagle_align.families import get_family
    from eagle_align.train import load_config

    pixels = demo.FAMILIES[family]["pixels"]
    return load_config(None, {
        **row.recipe,
        **(demo.run_overrides(family, quick) if quick or not row.lora else {}),
        "model_name_or_path": str(start),
        "train_data": str(train_data),
        "output_dir": str(out / "model"),
        "seed": seed,
        "min_pixels": pixels,
        "max_pixels": pixels,
        "action_format": get_family(family).default_action_format,
    })


def run_one(row: RowConfig, start: Start, seed: int, family: str, quick: bool, splits: dict[str, Path],
            out: Path) -> tuple[dict[str, Any], Trained]:
    """Train and evaluate one (config, kind, seed); the figures and what they were measured under."""
    from eagle_align import demo
    from eagle_align.data import load_examples
    from eagle_align.eval import evaluate
    from eagle_align.families import load_model_and_processor

    size = demo.SIZES["quick" if quick else "full"]
    config = trained_config(row, start.model, splits["train"], out, seed, family, quick)
    resolved = resolved_config(config)
    outcome = train(config)
    trained = Trained(start.model, out / "model", row.lora)

    pixels = demo.FAMILIES[family]["pixels"]
    model, processor = load_model_and_processor(
        str(trained.start if trained.adapter else trained.output), dtype="float32", min_pixels=pixels,
        max_pixels=pixels, adapter=str(trained.output) if trained.adapter else None)
    metrics = {}
    for split in SPLITS:
        metrics[split] = evaluate(
            model, processor, load_examples(splits[split]), action_format=config.get("action_format"),
            batch_size=16, attribution_samples=size["attribution_samples"] if split == "shifted" else 0,
            attribution=demo.ATTRIBUTION, out_dir=out / "eval" / split, progress=False,
        )
    del model
    gc.collect()
    point_game = metrics["shifted"].get("attribution", {}).get("overall", {}).get("point_game")
    state = outcome["alignment_state"]

    def pct(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 4)

    result = {
        "figures": {
            "iid_click_pct": pct(metrics["iid"]["click_accuracy"]),
            "shifted_click_pct": pct(metrics["shifted"]["click_accuracy"]),
            "point_game_pct": pct(point_game),
            "deviation_terms": state.get("deviation_examples"),
            "alignment_steps": state.get("alignment_steps"),
        },
        "training_seconds": round(outcome["training_seconds"], 2),
        "steps": outcome["steps"],
        "alignment_state": state,
        "start": start.description,
        "trained_config": config,
        "resolved_config": resolved,
        "evaluation": {"iid_examples": size["iid"], "shifted_examples": size["shifted"],
                       "point_game_samples": size["attribution_samples"],
                       "predictions": {split: str(out / "eval" / split / "predictions.jsonl") for split in SPLITS},
                       "clicks_sha256": {split: clicks_digest(out / "eval" / split / "predictions.jsonl")
                                         for split in SPLITS},
                       "point_game_attribution": metrics["shifted"].get("attribution", {}).get("settings")},
    }
    return result, trained


# --------------------------------------------------------------------------------------------- the loop
class Setup:
    """Things shared by the runs of a seed (checkpoint, base, data), built at most once; a failed build fails
    every run that needs it, each with the build's error."""

    def __init__(self) -> None:
        self._built: dict[Any, tuple[Any, str | None]] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._built:
            try:
                self._built[key] = (build(), None)
            except Exception:
                self._built[key] = (None, traceback.format_exc())
        value, error = self._built[key]
        if error is not None:
            raise RuntimeError(f"preparing {key} failed:\n{error}")
        return value


def code_version() -> dict[str, Any]:
    """The repository's commit and whether the working tree differed from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "dirty": None if status is None else bool(status),
            "run_py_sha256": _sha256(Path(__file__))}


def check_init_order(rows: dict[str, RowConfig]) -> None:
    """Every init_from names a row that runs earlier in the same invocation (its model is this row's start)."""
    names = list(rows)
    for position, (name, row) in enumerate(rows.items()):
        if row.init_from is not None and row.init_from not in names[:position]:
            raise SystemExit(f"{name}: init_from {row.init_from!r} must be a config run before it in the same "
                             f"invocation (order given: {', '.join(names)})")


def run(configs: list[str], seeds: list[int], kinds: list[str], quick: bool = False, family: str | None = None,
        results: Path = RESULTS, work: Path = WORK, command: str | None = None, suite_name: str | None = None,
        frozen: str | None = None, suite: Suite | None = None) -> list[Path]:
    """Every (config, kind, seed), seed by seed and kind by kind; returns the result files written (failed runs
    included; rows the library cannot run yet are skipped and write nothing)."""
    from eagle_align import demo
    from eagle_align.families import build_tiny_checkpoint

    suite = suite or load_suite()
    family = family or suite.family
    rows = {Path(name).stem: read_row_config(name) for name in configs}  # unknown names fail before training
    check_init_order(rows)
    check_kinds(kinds)
    command = command or shlex.join([sys.executable, *sys.argv])
    versions, code = package_versions(), code_version()
    pixels = demo.FAMILIES[family]["pixels"]
    written = []
    for seed in seeds:
        seed_work = work / f"{family}-seed{seed}{'-quick' if quick else ''}"
        setup = Setup()
        for kind in kinds:
            trained: dict[str, Trained] = {}
            for name, row in rows.items():
                if suite_name and not runs_on(suite, name, kind):
                    continue
                missing = missing_features(row, kind)
                if missing:
                    print(f"[method_comparison] {name} {kind} seed {seed}: not run, needs {'; '.join(missing)}",
                          flush=True)
                    continue
                target = results / kind / name / f"seed{seed}.json"
                if ran_on(target, frozen):
                    # Ran once on these frozen settings (e.g. as a part of the suite): kept as it came; its model,
                    # where the work folder still holds it, is what a later row's init_from starts from.
                    print(f"[method_comparison] {name} {kind} seed {seed}: ran on these frozen settings, kept",
                          flush=True)
                    kept = seed_work / kind / name / "model"
                    base = json.loads(target.read_text()).get("base", {}).get("model_dir")
                    if kept.is_dir() and (base or not row.lora):
                        trained[name] = Trained(Path(base) if base else kept, kept, row.lora)
                    continue
                print(f"[method_comparison] {name} {kind} seed {seed}{' (quick)' if quick else ''}", flush=True)
                result: dict[str, Any] = {
                    "config": name, "config_file": _shown(row.path), "config_sha256": _sha256(row.path),
                    "kind": kind, "seed": seed, "suite": suite_name, "frozen": frozen, "family": family,
                    "quick": quick, "trainer": row.trainer, "init_from": row.init_from,
                    "reference_sft": reference_sft(row, suite),
                    "benchmark": {**{key: demo.FAMILIES[family][key] for key in demo.BENCHMARK_KEYS},
                                  TRAIN_CUE_KEY: demo.TRAIN_CUE_FRACTION,
                                  **row.benchmark},
                    "command": command, "versions": versions, "code": code,
                }
                start_time = time.perf_counter()
                try:
                    splits = setup.get(("data", kind, json.dumps(row.benchmark, sort_keys=True)), partial(
                        shortcut_splits, seed_work / kind, seed, family, kind, quick, row.benchmark))
                    if row.init_from is not None:
                        if row.init_from not in trained:
                            raise RuntimeError(f"init_from {row.init_from!r} did not train for {kind} seed {seed}")
                        start = Start(merged_start(trained[row.init_from], seed_work / kind / name / "start"),
                                      f"init_from {row.init_from}")
                    elif row.lora:
                        record = setup.get("base", partial(pretrained_base, family, suite.base_seed, quick, work))
                        result["base"] = {"seed": suite.base_seed, **{key: record[key] for key in (
                            "key_hash", "clean_click_pct", "training_seconds", "model_dir")}}
                        start = Start(Path(record["model_dir"]), "pretrained base (stage 1)")
                    else:
                        checkpoint = setup.get("checkpoint", partial(
                            build_tiny_checkpoint, family, seed_work / "checkpoint", seed=seed, min_pixels=pixels,
                            max_pixels=pixels))
                        start = Start(checkpoint, "random tiny checkpoint")
                    figures, trained[name] = run_one(row, start, seed, family, quick, splits,
                                                     seed_work / kind / name)
                    result.update(figures)
                    result["status"] = "ok"
                except Exception as error:
                    result["status"] = "failed"
                    result["error"] = f"{type(error).__name__}: {error}".strip()
                    result["traceback"] = traceback.format_exc()
                    print(f"[method_comparison] {name} {kind} seed {seed} FAILED: {result['error']}", flush=True)
                result["wall_seconds"] = round(time.perf_counter() - start_time, 2)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(result, indent=2, default=str) + "\n")
                written.append(target)
                figures = result.get("figures", {})
                print(f"[method_comparison] -> {target}: {result['status']} "
                      f"iid {figures.get('iid_click_pct')} shifted {figures.get('shifted_click_pct')} "
                      f"point game {figures.get('point_game_pct')}", flush=True)
    return written


def evaluation_plan(suite: Suite, results: Path) -> str:
    """The frozen hash the evaluation suite runs under, after every check that it may run now."""
    frozen = check_frozen(suite)
    unavailable = [f"{row.config} on {kind}: {'; '.join(missing)}" for row in suite.rows for kind in suite.shortcuts
                   if row.runs_on(kind) and (missing := missing_features(read_row_config(row.config), kind))]
    if unavailable:
        raise SystemExit("the evaluation suite runs every row on every kind, and these cannot run yet:\n  "
                         + "\n  ".join(unavailable))
    planned = [results / kind / row.config / f"seed{seed}.json" for row in suite.rows for kind in suite.shortcuts
               if row.runs_on(kind) for seed in suite.seeds["eval"]]
    if all(ran_on(path, frozen) for path in planned):
        raise SystemExit(f"the evaluation seeds already ran on these frozen settings ({len(planned)} result files, "
                         f"e.g. {_shown(planned[0])}): they run once and are reported as they came")
    return frozen


def ran_on(path: Path, frozen: str | None) -> bool:
    """Whether this result file is a run on the frozen settings `frozen` (an evaluation run is never repeated)."""
    return frozen is not None and path.is_file() and json.loads(path.read_text()).get("frozen") == frozen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("dev", "eval"),
                        help="run suite.yaml's rows on every shortcut kind and its dev or eval seeds")
    parser.add_argument("--part", default=None,
                        help="with --suite: only one named part of suite.yaml (its rows and kinds), e.g. grpo")
    parser.add_argument("--freeze", action="store_true",
                        help="write FROZEN (hashes of suite.yaml, pretrain_base.yaml and the suite's configs)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="config names from method_comparison/configs/ (or YAML paths); 'all' runs every one "
                        "(default: the suite's rows with --suite, else default sft)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds (default: 0); never the suite's evaluation seeds")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help=f"shortcut kinds (default: the suite's with --suite, else {DEFAULT_KIND})")
    parser.add_argument("--quick", action="store_true",
                        help="the demo's --quick sizes (60 steps) and a quick base: checks the pipeline, not the "
                        "method")
    parser.add_argument("--family", default=None, help="tiny model family (default: the suite's, qwen3_vl)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--work", type=Path, default=WORK,
                        help=f"bases, checkpoints, data, models and eval outputs (default: {WORK})")
    args = parser.parse_args(argv)
    suite = load_suite()
    if args.freeze:
        print(f"[method_comparison] wrote {_shown(FROZEN)} (settings {write_frozen(suite)})")
        return 0
    frozen = None
    if args.part:
        if not args.suite:
            raise SystemExit("--part names a part of the suite: use it with --suite dev or --suite eval")
        suite = suite.part(args.part)
    if args.suite == "eval":
        if args.configs or args.seeds or args.kinds or args.quick or args.family:
            raise SystemExit("--suite eval runs the frozen suite as it is: no --configs, --seeds, --kinds, "
                             "--quick or --family")
        frozen = evaluation_plan(suite, args.results)
    evaluation_seeds = set(suite.seeds["eval"])
    if args.seeds and evaluation_seeds & set(args.seeds):
        raise SystemExit(f"seeds {sorted(evaluation_seeds & set(args.seeds))} are evaluation seeds: they run only "
                         "through --suite eval, on frozen settings")
    if args.suite:
        seeds = args.seeds or suite.seeds[args.suite]
        configs = args.configs or [row.config for row in suite.rows]
        kinds = args.kinds or suite.shortcuts
    else:
        seeds, configs, kinds = args.seeds or [0], args.configs or ["default", "sft"], args.kinds or [DEFAULT_KIND]
    configs = available_configs() if configs == ["all"] else configs
    written = run(configs, seeds, kinds, quick=args.quick, family=args.family, results=args.results,
                  work=args.work, suite_name=args.suite, frozen=frozen, suite=suite,
                  command=shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])]))
    failed = [path for path in written if json.loads(path.read_text())["status"] != "ok"]
    print(f"[method_comparison] {len(written) - len(failed)} ok, {len(failed)} failed; "
          "regenerate the README tables with python method_comparison/make_tables.py", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
