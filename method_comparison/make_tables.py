"""Regenerate the results tables in method_comparison/README.md from results/<config>/seed<S>.json, and from
nothing else, so the README shows exactly what the result files hold.

    python method_comparison/make_tables.py           # rewrite the tables between the README's markers
    python method_comparison/make_tables.py --check   # exit 1 if the README's tables are out of date

One row per (config, seed), failed runs included (with their error), then one row per config with the mean over
its successful full-length seeds. Quick runs (--quick: a pipeline check, not a measurement) are marked and left
out of the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
PROJECT_README = HERE.parent / "README.md"
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
# The project README's small table: the reference configs' full-length runs only.
PROJECT_START, PROJECT_END = "<!-- readme-table:start -->", "<!-- readme-table:end -->"
# Reference rows first, then the experiments alphabetically.
FIRST = ("sft", "default", "paper")
FIGURES = (("iid_click_pct", "iid %"), ("shifted_click_pct", "shifted %"), ("point_game_pct", "point game %"))


def load_results(folder: Path = RESULTS) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*/seed*.json")):
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:  # a broken file is a row too, not a crash
            row = {"config": path.parent.name, "seed": path.stem.removeprefix("seed"), "status": "failed",
                   "error": f"unreadable result file: {error}"}
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple:
        config = row.get("config", "")
        rank = FIRST.index(config) if config in FIRST else len(FIRST)
        seed = row.get("seed")
        return rank, config, seed if isinstance(seed, int) else 10**9, str(seed)

    return sorted(rows, key=order)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _error_line(row: dict[str, Any]) -> str:
    error = " ".join(str(row.get("error") or "no error recorded").split())
    return (error[:117] + "...") if len(error) > 120 else error


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | seed | status | " + " | ".join(label for _, label in FIGURES)
             + " | deviation terms | training s | steps | eagle_align |",
             "|---|---:|---|" + "---:|" * len(FIGURES) + "---:|---:|---:|---|"]
    for row in rows:
        ok = row.get("status") == "ok"
        status = ("ok" + (" (quick)" if row.get("quick") else "")) if ok else f"**failed**: {_error_line(row)}"
        figures = row.get("figures") or {}
        cells = [_cell(figures.get(key)) for key, _ in FIGURES]
        version = (row.get("versions") or {}).get("eagle_align")
        lines.append(f"| {row.get('config')} | {row.get('seed')} | {status} | {' | '.join(cells)} | "
                     f"{_cell(figures.get('deviation_terms'))} | {_cell(row.get('training_seconds'))} | "
                     f"{_cell(row.get('steps'))} | {_cell(version)} |")
    return "\n".join(lines)


def mean_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | seeds (ok / run) | " + " | ".join(f"{label} mean ± std" for _, label in FIGURES) + " |",
             "|---|---|" + "---:|" * len(FIGURES)]
    configs = list(dict.fromkeys(row.get("config") for row in rows if not row.get("quick")))
    for config in configs:
        runs = [row for row in rows if row.get("config") == config and not row.get("quick")]
        ok = [row for row in runs if row.get("status") == "ok"]
        cells = []
        for key, _ in FIGURES:
            values = [row["figures"][key] for row in ok if row.get("figures", {}).get(key) is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}" if values else "–")
        seeds = ", ".join(str(row.get("seed")) for row in ok) or "none"
        lines.append(f"| {config} | {seeds} ({len(ok)} / {len(runs)}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def tables(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No results yet: run `python method_comparison/run.py`, then this script."
    parts = ["Per seed (every run, failures included):", "", per_seed_table(rows)]
    if any(not row.get("quick") for row in rows):
        parts += ["", "Mean ± sample standard deviation over each config's successful full-length seeds:", "",
                  mean_table(rows)]
    return "\n".join(parts)


def project_table(rows: list[dict[str, Any]]) -> str:
    """The project README's table: SFT, the default method and the paper preset, per seed, as they came."""
    chosen = [row for row in rows if row.get("config") in FIRST and not row.get("quick")]
    if not chosen:
        return "No full-length results yet (`python method_comparison/run.py --configs sft default paper`)."
    names = {"sft": "SFT", "default": "prior-aligned (default)", "paper": "prior-aligned (`preset: paper`)"}
    lines = ["| method | seed | iid | shifted | point game |", "|---|---:|---:|---:|---:|"]
    for row in chosen:
        figures = row.get("figures") or {}
        if row.get("status") != "ok":
            lines.append(f"| {names[row['config']]} | {row.get('seed')} | failed: {_error_line(row)} | | |")
            continue
        lines.append(f"| {names[row['config']]} | {row.get('seed')} | "
                     + " | ".join(_cell(figures.get(key)) for key, _ in FIGURES) + " |")
    return "\n".join(lines)


def render(readme_text: str, rows: list[dict[str, Any]], markers: tuple[str, str] = (START, END),
           make=tables, source: str = "results/") -> str:
    """The README with the text between the markers replaced by the generated table(s)."""
    start_marker, end_marker = markers
    head, start, rest = readme_text.partition(start_marker)
    _, end, tail = rest.partition(end_marker)
    if not start or not end:
        raise SystemExit(f"README has no {start_marker} ... {end_marker} markers")
    generated = f"<!-- generated by make_tables.py from {source}; do not edit by hand -->"
    return f"{head}{start_marker}\n{generated}\n\n{make(rows)}\n\n{end_marker}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--readme", type=Path, default=README, help=f"README to update (default: {README})")
    parser.add_argument("--project-readme", type=Path, default=None,
                        help=f"the project README whose small table is updated too (default: {PROJECT_README} "
                        "when --readme is the default one)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are out of date")
    args = parser.parse_args(argv)
    rows = load_results(args.results)
    targets = [(args.readme, lambda text: render(text, rows))]
    project = args.project_readme or (PROJECT_README if args.readme == README else None)
    if project is not None:
        targets.append((project, lambda text: render(
            text, rows, (PROJECT_START, PROJECT_END), project_table, "method_comparison/results/")))
    stale = []
    for path, update in targets:
        text = path.read_text(encoding="utf-8")
        updated = update(text)
        if updated != text:
            stale.append(path)
            if not args.check:
                path.write_text(updated, encoding="utf-8")
    if args.check:
        for path in stale:
            print(f"{path}: tables out of date; run python method_comparison/make_tables.py", file=sys.stderr)
        return 1 if stale else 0
    failed = sum(row.get("status") != "ok" for row in rows)
    print(f"{args.readme}: {len(rows)} runs ({failed} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
