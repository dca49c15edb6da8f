"""One set of attribution settings, shared by training, evaluation, `explain` and the library.

The same nine values decide what an attribution measures wherever it runs: how the screenshot is cut into
regions, what a removed region shows, which search ranks them, what the ranking maximises and when a region
counts as the target's. A point game means the same thing in training's `align/point_game`, in
`eagle-align eval --attribution-samples` and in `explain` only when they all use one `AttributionSettings`;
a trained folder records its settings in `eagle_align.json`, and eval / explain read them back from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eagle_align.attribution.masking import BASELINES
from eagle_align.attribution.regions import REGION_METHODS
from eagle_align.attribution.scoring import REDUCTIONS

# The searches that rank regions (eagle_align.attribution.search implements them).
SEARCHES = ("efficient", "exact", "single_round", "bounded")


class SettingError(ValueError):
    """An invalid attribution setting; `field` names it, so a command line can name its flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AttributionSettings:
    """How a click's evidence is attributed to screenshot regions (EAGLE's subset selection).

    - `n_regions`: about how many regions the screenshot is cut into (the search ranks regions, so this is
      the attribution's resolution; a search's cost grows with it).
    - `region_method`: `slic` cuts along colour edges, so regions follow the screen's elements and a whole
      element competes with a whole cue; `grid` cuts equal blocks (the paper's).
    - `baseline`: what a removed region shows. `background` is the screenshot's own border colour, so a
      removed element looks like empty screen, which real screens are full of; `black` (the paper's) and
      `mean` (the processor's mean colour) are patches a model never saw in a screenshot and may react to.
    - `search`: `bounded` makes exact search's choice at every step but skips, by branch-and-bound over region
      groups, the candidates that provably cannot win, so rank 1 costs a fraction of exact's forwards;
      `efficient` is EAGLE's (re-sorts all candidates every few steps, in between scores only the best few);
      `exact` scores every remaining region at every step; `single_round` ranks by singleton scores.
    - `insertion_weight` a and `deletion_weight` b: the search maximises F(S) = a·P(x_S) + b·(1 − P(x_¬S)).
      The default is deletion only (a = 0): the target element alone on an empty screen is clicked by a
      model that follows a shortcut too, so an insertion term lets a shortcut model rank the target first,
      while removing the target only changes the answer of a model that relies on it.
    - `score_reduction`: how the decision tokens' probabilities become P: `mean` of probabilities, or
      `logmean` (geometric mean).
    - `box_overlap`: a region counts as the target box's when the box covers at least this share of it
      (point game, box-hit@k and the bounded search's first split).
    - `max_regions`: how many regions to rank (None: all). Training ranks what its losses read; eval and
      explain rank every region unless told otherwise, because insertion / deletion AUCs need whole curves.

    The defaults are the training defaults (`PriorAlignedConfig` uses the same names and values); `PAPER`
    holds the paper's: 64 grid regions, black baseline, efficient search, a = 2, b = 1, mean, 0.15, 10.
    """

    n_regions: int = 16
    region_method: str = "slic"
    baseline: str = "background"
    search: str = "bounded"
    insertion_weight: float = 0.0
    deletion_weight: float = 1.0
    score_reduction: str = "mean"
    box_overlap: float = 0.15
    max_regions: int | None = 10

    PAPER: ClassVar[AttributionSettings]

    def __post_init__(self) -> None:
        choices = {"region_method": REGION_METHODS, "baseline": BASELINES, "search": SEARCHES,
                   "score_reduction": REDUCTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingError(name, f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("n_regions", "max_regions"):
            value = getattr(self, name)
            if value is None and name == "max_regions":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                rest = " (or None for every region)" if name == "max_regions" else ""
                raise SettingError(name, f"{name}={value!r} must be a whole number of at least 1{rest}")
        for name in ("insertion_weight", "deletion_weight", "box_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingError(name, f"{name}={value!r} must be a number")
        for name in ("insertion_weight", "deletion_weight"):
            if not getattr(self, name) >= 0:
                raise SettingError(name, f"{name}={getattr(self, name)} must be ≥ 0")
        if not self.insertion_weight + self.deletion_weight > 0:
            raise SettingError("deletion_weight", "insertion_weight + deletion_weight must be > 0")
        if not 0.0 <= self.box_overlap <= 1.0:
            raise SettingError("box_overlap", f"box_overlap={self.box_overlap} must lie in [0, 1]")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names, in order (what `PriorAlignedConfig` and `eagle_align.json` share)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every setting by name."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AttributionSettings:
        """Settings from a mapping of names (missing ones keep their defaults); an unknown name is refused,
        since a misspelt setting silently left at its default would change what is measured."""
        if not isinstance(values, Mapping):
            raise SettingError("attribution", f"attribution settings must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise SettingError(unknown[0], f"unknown attribution setting {unknown[0]!r}; "
                                           f"known: {', '.join(cls.field_names())}")
        return cls(**values)

    def replace(self, **changes: Any) -> AttributionSettings:
        """A copy with `changes` (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


AttributionSettings.PAPER = AttributionSettings(
    n_regions=64, region_method="grid", baseline="black", search="efficient", insertion_weight=2.0,
    deletion_weight=1.0, score_reduction="mean", box_overlap=0.15, max_regions=10,
)
PAPER = AttributionSettings.PAPER


def _space_of(model_or_folder: Any):
    """The CoordinateSpace behind a model, folder / Hub id or CoordinateSpace (None: nothing recorded)."""
    from eagle_align.families.space import CoordinateSpace, coordinate_space_of, read_coordinate_space

    if model_or_folder is None or isinstance(model_or_folder, CoordinateSpace):
        return model_or_folder
    if isinstance(model_or_folder, (str, Path)):
        return read_coordinate_space(model_or_folder)
    return coordinate_space_of(model_or_folder)


def _recorded(space) -> AttributionSettings | None:
    from eagle_align.errors import UsageError
    from eagle_align.families.space import COORDINATE_SPACE_FILE

    if space is None or space.attribution is None:
        return None
    try:
        return AttributionSettings.from_dict(space.attribution)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{space.origin or COORDINATE_SPACE_FILE}: recorded attribution settings are invalid "
                         f"({error})") from None


def recorded_attribution_settings(model_or_folder: Any) -> AttributionSettings | None:
    """The settings a trained model was attributed with, from its `eagle_align.json` (None: not recorded).

    `model_or_folder` is a model returned by `load_model_and_processor`, a trained folder or Hub id, or a
    `CoordinateSpace`. A record that holds invalid settings is a UsageError naming the file.
    """
    return _recorded(_space_of(model_or_folder))


def resolve_attribution_settings(
    model_or_folder: Any = None,
    overrides: AttributionSettings | Mapping[str, Any] | None = None,
    complete_ranking: bool = True,
) -> tuple[AttributionSettings, dict[str, Any]]:
    """The settings to evaluate or explain a trained model with, and a record of where they came from.

    Start from what `model_or_folder` recorded (see `recorded_attribution_settings`), else the library
    defaults (= the training defaults); with `complete_ranking`, rank every region (max_regions None), since
    insertion / deletion AUCs read whole curves; then `overrides` (entries that are not None) replace single
    settings. Complete `AttributionSettings` as `overrides` are used as they are. The record holds the
    settings, their `source` ("recorded in <folder>/eagle_align.json", "library defaults" or "given by the
    caller") and the `overrides`. An invalid override raises `SettingError` naming its setting.
    """
    from eagle_align.families.space import COORDINATE_SPACE_FILE

    if isinstance(overrides, AttributionSettings):
        return overrides, {"settings": overrides.to_dict(), "source": "given by the caller", "overrides": {},
                           "complete_ranking": overrides.max_regions is None}
    space = _space_of(model_or_folder)
    recorded = _recorded(space)
    if recorded is None:
        base, source = AttributionSettings(), "library defaults"
    else:
        base, source = recorded, f"recorded in {space.origin or COORDINATE_SPACE_FILE}"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(AttributionSettings.field_names()))
    if unknown:
        raise SettingError(unknown[0], f"unknown attribution setting {unknown[0]!r}")
    if complete_ranking and "max_regions" not in given:
        base = base.replace(max_regions=None)
    settings = base.replace(**given) if given else base
    record = {"settings": settings.to_dict(), "source": source, "overrides": dict(given),
              "complete_ranking": settings.max_regions is None}
    return settings, record


# Command-line flags of eval and explain: one per setting, each overriding the recorded (or default) value.
_FLAG_HELP = {
    "n_regions": "number of screenshot regions",
    "region_method": "how regions are cut",
    "baseline": "what a removed region shows",
    "search": "search that ranks the regions",
    "insertion_weight": "a in F(S) = a·P(x_S) + b·(1 − P(x_¬S))",
    "deletion_weight": "b in F(S)",
    "score_reduction": "how decision-token probabilities are reduced",
    "box_overlap": "share of a region the box must cover for it to count as the box's",
}


def flag_of(name: str) -> str:
    """The command-line flag of a setting (n_regions -> --n-regions)."""
    return "--" + name.replace("_", "-")


def add_attribution_arguments(parser: Any) -> None:
    """Add one flag per attribution setting to an argparse parser; each defaults to None (not given), so
    `attribution_overrides` can tell what the user overrode."""
    defaults = AttributionSettings()
    choices = {"region_method": REGION_METHODS, "baseline": BASELINES, "search": SEARCHES,
               "score_reduction": REDUCTIONS}
    types = {"n_regions": int, "insertion_weight": float, "deletion_weight": float, "box_overlap": float}
    for name, text in _FLAG_HELP.items():
        parser.add_argument(flag_of(name), type=types.get(name), choices=choices.get(name),
                            help=f"attribution: {text} (default: the model's recorded setting, else "
                                 f"{getattr(defaults, name)})")
    parser.add_argument(flag_of("max_regions"), type=int,
                        help="attribution: rank only this many regions (default: all, so insertion / deletion "
                             "curves are complete)")


def attribution_overrides(args: Any) -> dict[str, Any]:
    """The attribution settings given on the command line (flags left out are not overrides)."""
    names = AttributionSettings.field_names()
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def check_attribution_flags(model_or_folder: Any, overrides: Mapping[str, Any]) -> AttributionSettings:
    """The settings the flags lead to, checked before any weights load: an invalid value is a UsageError
    naming its flag (a recorded value that is invalid names the file)."""
    from eagle_align.errors import UsageError

    try:
        return resolve_attribution_settings(model_or_folder, overrides)[0]
    except SettingError as error:
        raise UsageError(f"{flag_of(error.field)}: {error}") from None
