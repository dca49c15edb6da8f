"""`eagle-align demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eagle_align.demo import (
    BENCHMARK_KEYS,
    FAMILIES,
    FAMILY,
    MODELS,
    RECIPE,
    format_summary,
    run_demo,
    summarize_seeds,
)


def demo_arguments(parser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the data and training")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run once per seed into OUT/seed-S and write OUT/summary.json (mean ± std)")
    parser.add_argument("--quick", action="store_true", help="smaller configuration (about 2 minutes)")
    parser.add_argument("--recipe", default=None, help=f"training recipe (default: {RECIPE.name}; e.g. a method_comparison/configs/*.yaml)")
    parser.add_argument("--family", default=FAMILY, choices=list(FAMILIES),
                        help=f"tiny model family, each with its own benchmark settings (default: {FAMILY})")
    parser.add_argument("--benchmark", nargs="+", default=[], metavar="KEY=VALUE",
                        help="replace some of the family's benchmark settings, e.g. unmarked_train_fraction=0.4 "
                             f"cue_size=16 (keys: {', '.join(BENCHMARK_KEYS)})")


def _benchmark_of(args) -> dict[str, Any]:
    """`--benchmark KEY=VALUE ...` as a dict; values read as YAML scalars (0.4, 16, null, orange)."""
    import yaml

    from eagle_align.errors import UsageError

    settings = {}
    for item in args.benchmark:
        key, sep, value = item.partition("=")
        if not sep or key not in BENCHMARK_KEYS:
            raise UsageError(f"--benchmark {item!r}: expected KEY=VALUE with KEY one of {', '.join(BENCHMARK_KEYS)}")
        settings[key] = yaml.safe_load(value)
    return settings


def demo_command(args) -> int:
    benchmark = _benchmark_of(args)
    if not args.seeds:
        run_demo(args.out, seed=args.seed, quick=args.quick, recipe=args.recipe, family=args.family,
                 benchmark=benchmark)
        return 0
    out = Path(args.out)
    reports = [run_demo(out / f"seed-{seed}", seed=seed, quick=args.quick, recipe=args.recipe, family=args.family,
                        benchmark=benchmark)
               for seed in args.seeds]
    summary = summarize_seeds(reports)
    summary["per_seed"] = {r["seed"]: {name: {k: r[name][k] for k in ("iid_click_accuracy", "shifted_click_accuracy",
                                                                        "point_game")} for name in MODELS}
                           for r in reports}
    summary["minutes"] = [r["minutes"] for r in reports]
    summary["training_overhead_ratio"] = [r["training_overhead_ratio"] for r in reports]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return 0
