"""Regenerate the results tables in method_comparison/README.md (and the project README's summary) from
results/<kind>/<config>/seed<S>.json, and from nothing else, so the READMEs show exactly what the files hold.

    python method_comparison/make_tables.py           # rewrite the tables between the READMEs' markers
    python method_comparison/make_tables.py --check   # exit 1 if a README's tables are out of date

Per shortcut kind: one row per (config, seed), failed runs included (with their error) and suite rows without a
run shown as "not run"; then one row per (config, phase) with the means over its successful full-length seeds,
development (suite.yaml's dev seeds) and evaluation seeds apart. Training time is also given as a ratio to the
SFT row of the same kind and seed (the result's `reference_sft`). Quick runs (--quick: a pipeline check, not a
measurement) are marked and left out of the means. suite.yaml gives only the row order and labels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
PROJECT_README = HERE.parent / "README.md"
SUITE = HERE / "suite.yaml"
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
PROJECT_START, PROJECT_END = "<!-- readme-table:start -->", "<!-- readme-table:end -->"
FIGURES = (("iid_click_pct", "iid %"), ("shifted_click_pct", "shifted %"), ("point_game_pct", "point game %"))
# The earlier from-scratch paper-preset row stays in the project README's summary until the suite's paper row
# (LoRA) has full-length results: (its short name, the suite row that replaces it).
PROJECT_FALLBACK = {"paper": ("paper preset, scratch", "paper_lora")}


def load_suite(path: Path = SUITE) -> dict[str, Any]:
    """Row order, labels, kinds and seeds of each phase (presentation only: the figures come from results/)."""
    suite = yaml.safe_load(path.read_text())
    return {"rows": [row["config"] for row in suite["rows"]],
            "labels": {row["config"]: row.get("label", row["config"]) for row in suite["rows"]},
            "readme": {row["config"]: row["readme"] for row in suite["rows"] if "readme" in row},
            "kinds": list(suite["shortcuts"]), "seeds": {phase: list(s) for phase, s in suite["seeds"].items()},
            "row_kinds": {row["config"]: list(row.get("shortcuts", suite["shortcuts"])) for row in suite["rows"]}}


def load_results(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every result file; the kind and config come from its path where the file lacks them or is unreadable."""
    rows = []
    for path in sorted(folder.glob("*/*/seed*.json")):
        kind, config, seed = path.parent.parent.name, path.parent.name, path.stem.removeprefix("seed")
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:  # a broken file is a row too, not a crash
            row = {"config": config, "seed": int(seed) if seed.isdigit() else seed, "status": "failed",
                   "error": f"unreadable result file: {error}"}
        rows.append({**row, "kind": row.get("kind") or kind})
    return rows


def phase(row: dict[str, Any], suite: dict[str, Any]) -> str:
    """dev, eval or other: the suite the run was part of, else the phase its seed belongs to."""
    if row.get("suite"):
        return row["suite"]
    return next((name for name, seeds in suite["seeds"].items() if row.get("seed") in seeds), "other")


def reference(row: dict[str, Any]) -> str:
    """The SFT row this row's training time is divided by."""
    if row.get("reference_sft"):
        return row["reference_sft"]
    lora = (row.get("trained_config") or {}).get("finetuning") == "lora"
    return "sft_lora" if lora else "sft"


def time_ratio(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """Training seconds over those of the reference SFT run of the same kind, seed and size (None if absent)."""
    sft = next((other for other in rows if other.get("config") == reference(row) and other.get("status") == "ok"
                and other.get("kind") == row.get("kind") and other.get("seed") == row.get("seed")
                and bool(other.get("quick")) == bool(row.get("quick"))), None)
    return None if sft is None else seconds_ratio(row, sft)


def seconds_ratio(row: dict[str, Any], sft: dict[str, Any]) -> float | None:
    """Training seconds of a run over those of the SFT run it is compared with (None if either lacks them)."""
    if row.get("status") != "ok" or not sft.get("training_seconds"):
        return None
    return row["training_seconds"] / sft["training_seconds"]


def _order(configs: set[str], suite: dict[str, Any]) -> list[str]:
    """Suite rows in suite order, then the other configs alphabetically."""
    return [c for c in suite["rows"] if c in configs] + sorted(configs - set(suite["rows"]))


def _seed_key(row: dict[str, Any]) -> tuple:
    seed = row.get("seed")
    return (seed if isinstance(seed, int) else 10**9, str(seed))


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _error_line(row: dict[str, Any]) -> str:
    error = " ".join(str(row.get("error") or "no error recorded").split())
    return (error[:117] + "...") if len(error) > 120 else error


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def per_seed_table(kind: str, kind_rows: list[dict[str, Any]], all_rows: list[dict[str, Any]],
                   suite: dict[str, Any]) -> str:
    lines = ["| config | seed | status | " + " | ".join(label for _, label in FIGURES)
             + " | training s | × SFT time | deviation terms | steps | eagle_align |",
             "|---|---:|---|" + "---:|" * len(FIGURES) + "---:|---:|---:|---:|---|"]
    blank = " | ".join(["–"] * (len(FIGURES) + 5))
    configs = {row.get("config") for row in kind_rows} | {config for config in suite["rows"]
                                                          if kind in suite["row_kinds"][config]}
    for config in _order(configs, suite):
        runs = sorted((row for row in kind_rows if row.get("config") == config), key=_seed_key)
        if not runs:
            lines.append(f"| {config} | – | not run | {blank} |")
        for row in runs:
            ok = row.get("status") == "ok"
            status = ("ok" + (" (quick)" if row.get("quick") else "")) if ok else f"**failed**: {_error_line(row)}"
            figures = row.get("figures") or {}
            cells = [_cell(figures.get(key)) for key, _ in FIGURES]
            version = (row.get("versions") or {}).get("eagle_align")
            lines.append(f"| {config} | {row.get('seed')} | {status} | {' | '.join(cells)} | "
                         f"{_cell(row.get('training_seconds'))} | {_cell(time_ratio(row, all_rows), 2)} | "
                         f"{_cell(figures.get('deviation_terms'))} | {_cell(row.get('steps'))} | {_cell(version)} |")
    return "\n".join(lines)


def mean_table(kind_rows: list[dict[str, Any]], all_rows: list[dict[str, Any]], suite: dict[str, Any]) -> str:
    lines = ["| config | seeds | ok / run | " + " | ".join(f"{label} mean ± std" for _, label in FIGURES)
             + " | training s mean | × SFT time mean |",
             "|---|---|---|" + "---:|" * len(FIGURES) + "---:|---:|"]
    full = [row for row in kind_rows if not row.get("quick")]
    for config in _order({row.get("config") for row in full}, suite):
        for name in ("dev", "eval", "other"):
            runs = [row for row in full if row.get("config") == config and phase(row, suite) == name]
            if not runs:
                continue
            ok = sorted((row for row in runs if row.get("status") == "ok"), key=_seed_key)
            cells = [_mean_std([row["figures"][key] for row in ok if row["figures"].get(key) is not None])
                     for key, _ in FIGURES]
            seconds = [row["training_seconds"] for row in ok if row.get("training_seconds") is not None]
            ratios = [ratio for row in ok if (ratio := time_ratio(row, all_rows)) is not None]
            seeds = ", ".join(str(row.get("seed")) for row in ok) or "none"
            lines.append(f"| {config} | {name}: {seeds} | {len(ok)} / {len(runs)} | {' | '.join(cells)} | "
                         f"{_cell(statistics.mean(seconds) if seconds else None)} | "
                         f"{_cell(statistics.mean(ratios) if ratios else None, 2)} |")
    return "\n".join(lines)


# The pass marks the evaluation seeds are judged by, fixed (with the rows) before any of them ran: the default
# method against SFT on every seed, against box-crop on the mean, and the placebo against SFT.
CRITERIA = {"method": "default_lora", "sft": "sft_lora", "baseline": "box_crop_lora", "placebo": "placebo_lora",
            "paper": "paper_lora", "gain": 20.0, "gain_where_sft_below": 80.0, "margin": 2.0, "iid": 98.0,
            "point_game": 80.0, "time_ratio": 1.5, "sft_cue_below": 60.0}
# Kinds whose training screens hold no off-box evidence: there the method must only do no harm.
NO_OFF_BOX_KINDS = ("position_prior",)


def _run(rows: list[dict[str, Any]], config: str, kind: str, seed: Any) -> dict[str, Any] | None:
    """The successful full-length run of (config, kind, seed), if any."""
    return next((row for row in rows if row.get("config") == config and row.get("kind") == kind
                 and row.get("seed") == seed and row.get("status") == "ok" and not row.get("quick")), None)


def shortfalls(method: dict[str, Any], sft: dict[str, Any], kind: str) -> list[str]:
    """The per-seed pass marks the method's run misses against SFT's, in words (empty: all met)."""
    c, got, ref = CRITERIA, method["figures"], sft["figures"]
    shifted, sft_shifted = got["shifted_click_pct"], ref["shifted_click_pct"]
    if kind in NO_OFF_BOX_KINDS:
        return [] if abs(shifted - sft_shifted) <= c["margin"] else [f"shifted {shifted:.1f} not within "
                                                                       f"{c['margin']:g} of SFT's {sft_shifted:.1f}"]
    missed = []
    if sft_shifted < c["gain_where_sft_below"] and shifted < sft_shifted + c["gain"]:
        missed.append(f"gain {shifted - sft_shifted:+.1f} < +{c['gain']:g}")
    if shifted < sft_shifted - c["margin"]:
        missed.append(f"below SFT by {sft_shifted - shifted:.1f}")
    if got["iid_click_pct"] < c["iid"]:
        missed.append(f"iid {got['iid_click_pct']:.1f} < {c['iid']:g}")
    if got.get("point_game_pct") is None or got["point_game_pct"] < c["point_game"]:
        missed.append(f"point game {_cell(got.get('point_game_pct'))} < {c['point_game']:g}")
    return missed


def _shifted(runs: list[dict[str, Any]], config: str, kind: str, seeds: list[int]) -> list[float]:
    """The config's shifted accuracy on those of the seeds it ran."""
    return [run["figures"]["shifted_click_pct"] for seed in seeds if (run := _run(runs, config, kind, seed))]


def _mean_cell(values: list[float]) -> str:
    """A mean and, in brackets, how many runs it covers."""
    return f"{statistics.mean(values):.1f} ({len(values)})" if values else "–"


def kind_shortfalls(kind: str, method: list[float], baseline: list[float], ratio: float | None,
                    placebo_differs: bool) -> list[str]:
    """The pass marks judged over a kind's seeds that the default misses, in words (empty: all met)."""
    c, missed = CRITERIA, []
    if kind not in NO_OFF_BOX_KINDS and method and baseline:
        ours, theirs = statistics.mean(method), statistics.mean(baseline)
        if ours < theirs:
            missed.append(f"mean {ours:.1f} < box-crop's {theirs:.1f}")
    if ratio is not None and ratio > c["time_ratio"]:
        missed.append(f"time {ratio:.2f}× > {c['time_ratio']:g}×")
    if placebo_differs:
        missed.append("placebo differs from SFT")
    return missed


def placebo_verdict(placebo: dict[str, Any], sft: dict[str, Any]) -> tuple[bool, str]:
    """Whether the placebo clicked as SFT, and how that is known: by the clicks' digests where both runs
    recorded them (every example), else by the figures alone."""
    digests = [(run.get("evaluation") or {}).get("clicks_sha256") for run in (placebo, sft)]
    if all(digests):
        same = digests[0] == digests[1]
        return same, "same clicks as SFT" if same else "**clicks differ from SFT's**"
    same = all(placebo["figures"].get(key) == sft["figures"].get(key) for key, _ in FIGURES)
    return same, "same figures as SFT (clicks not recorded)" if same else "**figures differ from SFT's**"


def criteria_tables(rows: list[dict[str, Any]], suite: dict[str, Any]) -> str:
    """The evaluation seeds judged by CRITERIA: per kind and seed, then per kind over the seeds."""
    c = CRITERIA
    runs = [row for row in rows if phase(row, suite) == "eval" and not row.get("quick")]
    if not any(row.get("config") == c["method"] for row in runs):
        return "No evaluation run of the default method yet."
    lines = ["| kind | seed | SFT iid / shifted / point game | SFT took the cue | default iid / shifted / point game "
             "| pass marks missed |", "|---|---:|---|---|---|---|"]
    summary = ["| kind | seeds judged | seeds meeting every per-seed mark | default shifted mean | "
               "box-crop shifted mean | paper preset shifted mean | default × SFT time | placebo | "
               "marks over the seeds missed |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    for kind in suite["kinds"]:
        pairs = {seed: (method, sft) for seed in suite["seeds"]["eval"]
                 if (method := _run(runs, c["method"], kind, seed)) and (sft := _run(runs, c["sft"], kind, seed))}
        judged, met = list(pairs), []
        for seed, (method, sft) in pairs.items():
            missed = shortfalls(method, sft, kind)
            met += [seed] if not missed else []
            triple = ["/".join(_cell(run["figures"].get(key)) for key, _ in FIGURES) for run in (sft, method)]
            took = (sft["figures"]["shifted_click_pct"] < c["sft_cue_below"]
                    and sft["figures"]["iid_click_pct"] >= c["iid"])
            lines.append(f"| {kind} | {seed} | {triple[0]} | {'yes' if took else '**no**'} | {triple[1]} | "
                         f"{'; '.join(missed) or 'none'} |")
        if not judged:
            continue
        ratios = [ratio for method, sft in pairs.values() if (ratio := seconds_ratio(method, sft)) is not None]
        verdicts = {seed: placebo_verdict(placebo, sft) for seed, (_, sft) in pairs.items()
                    if (placebo := _run(runs, c["placebo"], kind, seed)) is not None}
        ratio = statistics.mean(ratios) if ratios else None
        # the default's runs are the pairs' own; box-crop and the paper preset are looked up
        shifted = {"method": [method["figures"]["shifted_click_pct"] for method, _ in pairs.values()],
                   "baseline": _shifted(runs, c["baseline"], kind, judged),
                   "paper": _shifted(runs, c["paper"], kind, judged)}
        missed = kind_shortfalls(kind, shifted["method"], shifted["baseline"], ratio,
                                 not all(same for same, _ in verdicts.values()))
        placebo = "; ".join(f"{seed}: {words}" for seed, (_, words) in verdicts.items()) or "–"
        summary.append(f"| {kind} | {_seed_list(judged)} | {_seed_list(met) if met else 'none'} | "
                       f"{' | '.join(_mean_cell(values) for values in shifted.values())} | "
                       f"{_cell(ratio, 2)} | {placebo} | {'; '.join(missed) or 'none'} |")
    marks = (f"on every kind with a cue, the default method's shifted accuracy at least SFT's + {c['gain']:g} "
             f"points where SFT's is below {c['gain_where_sft_below']:g} %, never below SFT's − {c['margin']:g}, "
             f"iid ≥ {c['iid']:g} %, point game ≥ {c['point_game']:g} %, and its mean at least box-crop's; on "
             f"{', '.join(NO_OFF_BOX_KINDS)} (no off-box evidence) within {c['margin']:g} points of SFT; its "
             f"training time at most {c['time_ratio']:g}× SFT's; the placebo clicking as SFT on every example")
    benchmark = (f"The benchmark's own mark: SFT takes the cue (shifted < {c['sft_cue_below']:g} %, "
                 f"iid ≥ {c['iid']:g} %) on every seed.")
    return "\n".join([f"Pass marks, fixed before the evaluation seeds ran: {marks}. {benchmark}", "", *lines, "",
                      "Per kind (means over the seeds judged; in brackets, how many runs a mean covers):", "",
                      *summary])


def tables(rows: list[dict[str, Any]], suite: dict[str, Any]) -> str:
    kinds = suite["kinds"] + sorted({row["kind"] for row in rows} - set(suite["kinds"]))
    parts = ["### Evaluation seeds against the pass marks", "", criteria_tables(rows, suite), ""]
    for kind in kinds:
        kind_rows = [row for row in rows if row["kind"] == kind]
        parts += [f"### Shortcut: {kind}", ""]
        if not kind_rows:
            parts += ["Not run yet.", ""]
            continue
        parts += ["Per seed (every run, failures included):", "", per_seed_table(kind, kind_rows, rows, suite), ""]
        if any(not row.get("quick") for row in kind_rows):
            parts += ["Mean ± sample standard deviation over each config's successful full-length seeds, per "
                      "phase:", "", mean_table(kind_rows, rows, suite), ""]
    return "\n".join(parts).rstrip()


def _seed_list(seeds: list[int]) -> str:
    """Seeds as one token: 0–2, or 0,2 where they are not a run."""
    ordered = sorted(set(seeds))
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}–{ordered[-1]}"
    return ",".join(map(str, ordered))


def project_table(rows: list[dict[str, Any]], suite: dict[str, Any]) -> str:
    """The project README's summary: per method and shortcut kind, "iid/shifted/point game" (%), the evaluation
    seeds' means where they ran, else the development seeds' (the seeds column says which). Compact, because
    the README has a word budget: short names, one token per cell, a dash where a kind has not run."""
    full = [row for row in rows if not row.get("quick")]
    if not full:
        return "No full-length results yet (`python method_comparison/run.py --suite dev`)."
    kinds = [kind for kind in suite["kinds"] if any(row["kind"] == kind for row in full)]
    kinds += sorted({row["kind"] for row in full} - set(kinds))
    names = dict(suite["readme"])
    for config, (name, replacement) in PROJECT_FALLBACK.items():
        if not any(row.get("config") == replacement for row in full):
            names[config] = name
    lines = ["| method | seeds | " + " | ".join(kinds) + " | × SFT time |", "|---|---|" + "---|" * len(kinds) + "---:|"]
    for config, name in names.items():
        runs = [row for row in full if row.get("config") == config]
        chosen = "eval" if any(phase(row, suite) == "eval" for row in runs) else "dev"
        runs = [row for row in runs if phase(row, suite) == chosen]
        if not runs:
            continue
        seeds = [row["seed"] for row in runs if isinstance(row.get("seed"), int)]
        cells = []
        for kind in kinds:
            of_kind = [row for row in runs if row["kind"] == kind]
            ok = [row for row in of_kind if row.get("status") == "ok"]
            if not ok:
                cells.append("failed" if of_kind else "–")
                continue
            means = [statistics.mean(values) if (values := [row["figures"][key] for row in ok
                                                            if row["figures"].get(key) is not None]) else None
                     for key, _ in FIGURES]
            failed = len(of_kind) - len(ok)
            # a kind that has not run every seed of the row says which it covers
            covered = [row["seed"] for row in ok if isinstance(row.get("seed"), int)]
            partial = f" (seeds {_seed_list(covered)})" if set(covered) != set(seeds) else ""
            cells.append("/".join(_cell(mean) for mean in means) + partial + (f" ({failed} failed)" if failed else ""))
        ratios = [ratio for row in runs if (ratio := time_ratio(row, rows)) is not None]
        ratio = f"{statistics.mean(ratios):.1f}×" if ratios else "–"
        lines.append(f"| {name} | {chosen}:{_seed_list(seeds)} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def render(readme_text: str, body: str, markers: tuple[str, str] = (START, END), source: str = "results/") -> str:
    """The README with the text between the markers replaced by `body`."""
    start_marker, end_marker = markers
    head, start, rest = readme_text.partition(start_marker)
    _, end, tail = rest.partition(end_marker)
    if not start or not end:
        raise SystemExit(f"README has no {start_marker} ... {end_marker} markers")
    generated = f"<!-- generated by make_tables.py from {source}; do not edit by hand -->"
    return f"{head}{start_marker}\n{generated}\n\n{body}\n\n{end_marker}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--readme", type=Path, default=README, help=f"README to update (default: {README})")
    parser.add_argument("--project-readme", type=Path, default=None,
                        help=f"the project README whose summary is updated too (default: {PROJECT_README} "
                        "when --readme is the default one)")
    parser.add_argument("--suite", type=Path, default=SUITE, help=f"row order and labels (default: {SUITE})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the READMEs' tables are out of date")
    args = parser.parse_args(argv)
    rows, suite = load_results(args.results), load_suite(args.suite)
    targets = [(args.readme, tables(rows, suite), (START, END), "results/")]
    project = args.project_readme or (PROJECT_README if args.readme == README else None)
    if project is not None:
        targets.append((project, project_table(rows, suite), (PROJECT_START, PROJECT_END),
                        "method_comparison/results/"))
    stale = []
    for path, body, markers, source in targets:
        text = path.read_text(encoding="utf-8")
        updated = render(text, body, markers, source)
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
