"""The coordinate space a trained folder answers in, recorded next to its weights (`eagle_align.json`).

A click is only meaningful together with what produced it: the answer syntax (action format), the pixel
limits the screenshot was resized into (Qwen2.5-VL answers in pixels of that resized image) and the prompt.
Training writes them into the adapter (and every checkpoint), merge copies them into the merged folder, and
loading an adapter or a trained folder reads them back, so eval, explain and merge see the clicks in the
space they were trained in. An explicit setting that contradicts the record is refused unless forced.
The record also holds the attribution settings training used (`attribution`), so eval and explain measure
the point game the way training did (`eagle_align.attribution.settings`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from eagle_align.answer_formats import get_action_format
from eagle_align.errors import UsageError
from eagle_align.families.registry import detect_family

logger = logging.getLogger(__name__)

COORDINATE_SPACE_FILE = "eagle_align.json"
# Set on models returned by `load_model_and_processor` when a record was found (see `coordinate_space_of`).
_MODEL_ATTRIBUTE = "eagle_align_coordinate_space"
# The settings a caller may give explicitly and that must then agree with the record.
SETTLED_KEYS = ("min_pixels", "max_pixels", "action_format", "system_prompt")
FORCE_HINT = "leave the option out to use the recorded value, or force it (--force-coordinate-space)"


@dataclass(frozen=True)
class CoordinateSpace:
    """What defines a trained model's clicks, plus where its weights came from."""

    family: str
    action_format: str
    min_pixels: int
    max_pixels: int
    system_prompt: str | None = None
    base_model_id: str | None = None
    finetuning: str = "lora"  # lora | qlora | full
    merged_from: str | None = None  # the adapter merged into these weights (set by merge)
    # AttributionSettings.to_dict() of training (None: not recorded, e.g. files written before it was).
    attribution: dict | None = None
    # Where this record was read from (not saved): eval / explain name it as their settings' source.
    origin: str | None = field(default=None, compare=False, repr=False)

    @property
    def is_adapter(self) -> bool:
        """True for a folder of LoRA weights (needs its base), False for full weights (full FT or merged)."""
        return self.finetuning in ("lora", "qlora") and self.merged_from is None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / COORDINATE_SPACE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in asdict(self).items() if k != "origin"}
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> CoordinateSpace:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"{path}: cannot read the recorded coordinate space ({error})") from None
        required = ("family", "action_format", "min_pixels", "max_pixels")
        missing = [name for name in required if name not in record] if isinstance(record, dict) else list(required)
        if missing:
            raise UsageError(f"{path}: not an eagle-align coordinate space (missing {', '.join(missing)})")
        known = {f.name for f in fields(cls)} - {"origin"}
        return cls(**{k: v for k, v in record.items() if k in known}, origin=str(path))


def read_coordinate_space(source: str | Path) -> CoordinateSpace | None:
    """The record of a local folder or Hub repo (adapter, full fine-tune, merged model); None if it has none."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / COORDINATE_SPACE_FILE
        return CoordinateSpace.from_file(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return CoordinateSpace.from_file(hf_hub_download(str(source), COORDINATE_SPACE_FILE))
    except Exception as error:  # not on the Hub, no such file, offline: nothing recorded that we can read
        logger.info("no %s for %s (%s)", COORDINATE_SPACE_FILE, source, type(error).__name__)
        return None


def settle(
    space: CoordinateSpace | None, source: str | Path | None = None, force: bool = False, **given: Any
) -> dict[str, Any]:
    """The settings to use: each given value (not None) where it agrees with the record, else the recorded one.

    A given value that contradicts the record is a UsageError naming both, unless `force` (then a warning).
    Without a record the given values pass through (None = the checkpoint's or family's default).
    """
    unknown = set(given) - set(SETTLED_KEYS)
    if unknown:
        raise TypeError(f"settle() got unexpected settings {sorted(unknown)}")
    settled = {key: given.get(key) for key in SETTLED_KEYS}
    if space is None:
        return settled
    where = Path(source or ".") / COORDINATE_SPACE_FILE
    for key in SETTLED_KEYS:
        recorded, value = getattr(space, key), given.get(key)
        if value is None or value == recorded:
            settled[key] = recorded
            continue
        message = f"{key} {value!r} contradicts {key} {recorded!r} that {where} records for this model"
        if not force:
            raise UsageError(message, hint=FORCE_HINT)
        logger.warning("%s; using %r because the coordinate space was forced", message, value)
    return settled


def attach_coordinate_space(model, space: CoordinateSpace | None) -> None:
    """Remember on `model` the space it was loaded with, for evaluate / explain defaults."""
    setattr(model, _MODEL_ATTRIBUTE, space)


def coordinate_space_of(model) -> CoordinateSpace | None:
    """The space `model` was loaded with by `load_model_and_processor` (None: not recorded)."""
    return getattr(model, _MODEL_ATTRIBUTE, None)


def model_action_format(model):
    """The action format to read `model`'s answers in: its recorded one, else its family's own."""
    space = coordinate_space_of(model)
    return get_action_format(space.action_format if space else detect_family(model.config).default_action_format)


def model_system_prompt(model, system_prompt: str | None = None) -> str | None:
    """`system_prompt` if given, else the one `model` was trained with (None: no system turn)."""
    space = coordinate_space_of(model)
    return system_prompt if system_prompt is not None or space is None else space.system_prompt
