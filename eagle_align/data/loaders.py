"""`load_examples`: one call for our JSONL (or JSON list), LLaMA-Factory / ShareGPT conversations, Hugging Face
datasets and the ScreenSpot family layouts.

Every layout is turned into raw records first; box conventions are then decided per file. A convention the file
states (a record's `bbox_format`, the action format of ShareGPT answers) or the caller names (`bbox_format=`)
is used as stated. A benchmark's own layout defines its boxes (ScreenSpot v1/v2: xywh pixels, ScreenSpot-Pro:
xyxy pixels), so only pixels vs normalised is read from the file; other tables may use either layout and any
unit, and are decided from the records themselves, because mirrors of the same benchmark disagree and a wrong
guess silently moves every target. Pixels and 0-1000 space look alike, so a file whose every coordinate is at
most 1000 on screens wider or taller than 1000 px is refused until told which it is. A record whose convention
cannot be decided is refused, never guessed.

Sources with several splits (a DatasetDict, a folder of split files) are read whole, or only the splits asked
for: training reads `train` unless told otherwise, so a test split is never trained on silently.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from eagle_align.answer_formats import ActionFormat
from eagle_align.data.images import decoded_copy
from eagle_align.data.importers import (
    check_columns,
    conversation_fields,
    is_conversation,
    map_columns,
    resolve_action_format,
)
from eagle_align.data.schema import (
    EDGE_TOLERANCE_PX,
    DataError,
    ExampleSet,
    GroundingExample,
    _is_box,
    _is_number,
    read_image_size,
    validate_example,
)
from eagle_align.errors import UsageError

FORMATS = ("auto", "jsonl", "json", "sharegpt", "hf", "screenspot", "screenspot_v2", "screenspot_pro")
# Layout (xyxy corners, xywh corner + size) and unit: pixels, fractions 0-1 (_norm), or 0-1000 (_1000) of the image.
BBOX_FORMATS = ("xyxy", "xywh", "xyxy_norm", "xywh_norm", "xyxy_1000", "xywh_1000")
_UNIT_FORMAT = {"px": "xyxy", "norm": "xyxy_norm", "1000": "xyxy_1000"}
_SCREENSPOT_PLATFORMS = ("mobile", "desktop", "web")
# ScreenSpot's data_source values, for mirrors that dropped the per-platform files.
_SOURCE_PLATFORM = {"ios": "mobile", "android": "mobile", "windows": "desktop", "macos": "desktop",
                    "shop": "web", "forum": "web", "gitlab": "web", "tool": "web"}
_CANONICAL_KEYS = {"image", "image_size", "instruction", "bbox", "point", "platform", "ui_type", "source", "id",
                   "extra"}


@dataclass
class _Raw:
    """A record before its box convention is decided."""

    where: str
    group: str  # records of one file/split share a convention
    layouts: tuple[str, ...]  # box layouts this source may use
    fields: dict
    error: str | None = None
    size: tuple[int, int] | None = field(default=None, repr=False)
    box_format: str | None = None  # stated by the record, its format or the caller; None: decided per file
    point_unit: str | None = None  # the point's unit when it differs from the box's (ShareGPT answers)
    benchmark: bool = False  # a benchmark's own layout: pixels unless the file shows fractions


@dataclass
class _Options:
    """What every reader needs besides the source."""

    root: Path | None
    fmt: str
    choose: object  # available split names -> the ones to read
    bbox_format: str | None = None
    action_format: ActionFormat | None = None
    columns: dict[str, str] | None = None


def split_bbox_format(name: str) -> tuple[str, str]:
    """("xyxy" | "xywh", "px" | "norm" | "1000") of a BBOX_FORMATS name."""
    layout, _, unit = name.partition("_")
    return layout, unit or "px"


def load_examples(
    source: str | Path,
    format: str = "auto",
    image_root: str | Path | None = None,
    on_error: str = "raise",
    bbox_format: str | None = None,
    split: str | None = None,
    decode_images: bool = False,
    action_format: str | ActionFormat | None = None,
    columns: dict[str, str] | str | None = None,
    require_box: bool = False,
) -> ExampleSet:
    """Load and validate grounding examples from `source` (file or directory).

    format: one of FORMATS ("auto" detects the layout). image_root: folder to find images in, instead of
    where the layout ships them. on_error: "raise" stops at the first bad record; "skip" drops bad records
    and lists them in `.problems` / `.skipped`. bbox_format: the box convention (one of BBOX_FORMATS) of
    records that do not state their own, instead of deciding it from the file; points follow their box's.
    split: read only this split (or comma-separated splits) of a source that has several; a source with one
    split is that split whatever its name, except a lone "test" split, read only when named. None reads every
    split. decode_images: decode every image fully (slow; catches truncated files) instead
    of reading headers only. action_format: the syntax and coordinate space of the assistant answers in
    LLaMA-Factory / ShareGPT records (there bbox_format applies only to a separate `bbox` field). columns:
    {eagle-align field: column name} for tables and JSON records with other names ({"image": "screenshot"}).
    require_box: a record with a point but no box is a bad record (click accuracy needs the box).
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error={on_error!r}; choose 'raise' or 'skip'")
    if format not in FORMATS:
        raise UsageError(f"format={format!r}; choose one of {', '.join(FORMATS)}")
    if bbox_format is not None and bbox_format not in BBOX_FORMATS:
        raise UsageError(f"bbox_format={bbox_format!r}; choose one of {', '.join(BBOX_FORMATS)}")
    fmt_action = resolve_action_format(action_format)
    columns = check_columns(columns)
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    fmt = detect_format(source, columns) if format == "auto" else format
    if fmt == "sharegpt" and fmt_action is None:
        raise UsageError(f"{source}: LLaMA-Factory / ShareGPT answers need the action format they are written in; "
                         "pass action_format= (recipe: data_action_format, command line: --action-format)")
    options = _Options(Path(image_root) if image_root is not None else None, fmt,
                       lambda available: _choose_splits(source, available, split), bbox_format, fmt_action, columns)
    readers = {"jsonl": _read_records, "json": _read_records, "sharegpt": _read_records, "hf": _read_hf,
               "screenspot": _read_screenspot, "screenspot_v2": _read_screenspot,
               "screenspot_pro": _read_screenspot_pro}
    raws = list(readers[fmt](source, options))
    if not raws:
        raise DataError(f"{source}: no records (an empty file?)")
    _decide_boxes(raws, bbox_format, decode_images)
    examples, problems, seen = [], [], {}
    for raw in raws:
        try:
            where = f"{raw.where} (id={raw.fields['id']})" if raw.fields.get("id") else raw.where
            if raw.error:
                raise DataError(f"{where}: {raw.error}")
            example = validate_example(GroundingExample(**raw.fields), where)
            if require_box and example.bbox is None:
                raise DataError(f"{where}: has a click point but no bbox; click accuracy needs the target's box")
            if example.id in seen:
                raise DataError(f"{raw.where}: duplicate id {example.id!r} (first at {seen[example.id]})")
            seen[example.id] = raw.where
            examples.append(example)
        except DataError as exc:
            if on_error == "raise":
                raise
            problems.append(str(exc))
    return ExampleSet(examples, problems=problems, skipped=len(problems))


def _choose_splits(source: Path, available: list[str], wanted: str | None) -> list[str]:
    """The splits of `source` to read: every one when `wanted` is None, else the comma-separated names.

    A source with a single split is the data itself and is read whatever its split is called, except a lone
    "test" split, which is only read when asked for by name: test data is never used silently.
    """
    if wanted is None:
        return available
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    missing = [name for name in names if name not in available]
    if not missing:
        return names
    if len(available) == 1 and available[0] != "test":
        return available
    raise DataError(f"{source}: no split {', '.join(map(repr, missing))}; it has {', '.join(available) or 'none'}",
                    hint="name the splits to use (comma-separated): train_split / eval_split in a recipe, "
                         "--split on the command line")


def detect_format(source: Path, columns: dict[str, str] | None = None) -> str:
    """Name of the layout at `source`, from its file names and first record; DataError if none fits."""
    source = Path(source)
    if source.is_file():
        if source.suffix == ".jsonl":
            return "sharegpt" if is_conversation(_peek(_first_line(source), columns)) else "jsonl"
        if source.suffix in (".parquet", ".arrow"):
            return "hf"
        if source.suffix == ".json":
            first = _json_list(source)[:1]
            record = _peek(first[0], columns) if first else {}
            if is_conversation(record):
                return "sharegpt"
            if isinstance(record, dict) and "img_size" in record:
                return "screenspot_pro"
            if isinstance(record, dict) and "img_filename" in record:
                return "screenspot_v2" if source.stem.endswith("_v2") else "screenspot"
            return "json"
    elif source.is_dir():
        if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
            return "hf"
        if (source / "annotations").is_dir():
            return "screenspot_pro"
        if list(source.glob("screenspot_*_v2.json")):
            return "screenspot_v2"
        if list(source.glob("screenspot_*.json")):
            return "screenspot"
        if files := sorted(source.glob("*.jsonl")):
            return "sharegpt" if is_conversation(_peek(_first_line(files[0]), columns)) else "jsonl"
        if any(source.rglob("*.parquet")) or any(source.rglob("*.arrow")):
            return "hf"
    raise DataError(f"{source}: cannot tell its layout; pass format= one of {', '.join(FORMATS[1:])}")


def _first_line(path: Path):
    """The first record of a JSONL file (None when it has none or it is not JSON: the reader reports that)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


def _peek(record, columns: dict[str, str] | None):
    """`record` with the mapped columns that it has renamed, for telling its layout."""
    if not isinstance(record, dict) or not columns:
        return record
    return {**record, **{name: record[column] for name, column in columns.items() if column in record}}


def _json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _resolve_image(name, folders: list[Path]) -> str | Image.Image:
    """A path looked up in `folders` (first hit, else the first candidate), or a PIL image.

    Hugging Face image cells arrive undecoded ({"bytes", "path"}): a path on disk is kept as a path, bytes are
    opened lazily, so a dataset of thousands of screenshots is not decoded into memory at load time.
    """
    if isinstance(name, Image.Image):
        return name
    if isinstance(name, dict):
        path, data = name.get("path"), name.get("bytes")
        if data and not (path and Path(path).is_absolute() and Path(path).is_file()):
            return Image.open(io.BytesIO(data))
        name = path
    if not isinstance(name, str) or not name:
        raise DataError(f"image must be a path or an image, got {name!r}")
    path = Path(name)
    if path.is_absolute():
        return str(path)
    candidates = [folder / path for folder in folders]
    return str(next((c for c in candidates if c.exists()), candidates[0]))


def _raw(where: str, group: str, layouts: tuple[str, ...], build, *args) -> _Raw:
    """Build the fields with `build(*args)`, turning a bad field into a per-record error.

    `build` may state the record's conventions in the private keys "_box_format" / "_point_unit".
    """
    try:
        fields = build(*args)
    except DataError as exc:
        return _Raw(where, group, layouts, {}, error=str(exc))
    except (KeyError, TypeError, AttributeError) as exc:
        return _Raw(where, group, layouts, {}, error=f"missing or malformed field: {exc!r}")
    return _Raw(where, group, layouts, fields, box_format=fields.pop("_box_format", None),
                point_unit=fields.pop("_point_unit", None))


def _require(record: dict, key: str):
    if key not in record or record[key] is None:
        raise DataError(f"missing field {key!r}")
    return record[key]


def _missing(record: dict, key: str, columns: dict[str, str] | None) -> DataError:
    """'missing field' for a table or JSON record, saying how to map a column of another name."""
    hint = "" if columns and key in columns else f" (a column of another name: map it with columns={{{key}: NAME}})"
    return DataError(f"missing field {key!r}{hint}")


def _canonical_fields(record: dict, image, default_id: str, split: str, columns: dict[str, str] | None = None,
                      forced: str | None = None) -> dict:
    extra = record.get("extra") or {}
    if not isinstance(extra, dict):
        raise DataError(f"extra must be an object, got {extra!r}")
    # Unknown keys are kept, not dropped: they may be metadata the user needs (application, group, ...).
    extra = {**extra, **{k: v for k, v in record.items() if k not in _CANONICAL_KEYS and k != "bbox_format"}}
    extra.setdefault("split", split)
    if record.get("instruction") is None:
        raise _missing(record, "instruction", columns)
    if record.get("bbox") is None and record.get("point") is None:
        raise DataError("needs a bbox (or, for a point-only record, a point)"
                        + ("" if columns and ("bbox" in columns or "point" in columns)
                           else "; a column of another name: map it with columns={bbox: NAME}"))
    stated = record.get("bbox_format")
    if stated is not None:
        if stated not in BBOX_FORMATS:
            raise DataError(f"bbox_format {stated!r}; choose one of {', '.join(BBOX_FORMATS)}")
        if forced is not None and forced != stated:
            raise DataError(f"the record states bbox_format {stated!r} but bbox_format={forced!r} was given")
    return dict(
        image=image,
        image_size=record.get("image_size"),
        instruction=record["instruction"],
        bbox=record.get("bbox"),
        point=record.get("point"),
        platform=record.get("platform"),
        ui_type=record.get("ui_type"),
        source=record.get("source"),
        id=str(record["id"]) if record.get("id") is not None else default_id,
        extra=extra,
        _box_format=stated,
    )


def _record_fields(record: dict, folders: list[Path], default_id: str, split: str, options: _Options) -> dict:
    """Fields of one JSON / JSONL record or table row: eagle-align's names (after `columns`) or a conversation."""
    record = map_columns(record, options.columns)
    if is_conversation(record):
        fields, unit = conversation_fields(record, options.action_format)
        box_format = _UNIT_FORMAT[unit]
        if record.get("bbox") is not None and options.bbox_format:
            box_format = options.bbox_format  # the separate box field's own convention
        fields.update(image=_resolve_image(fields["image"], folders), _box_format=box_format, _point_unit=unit)
        fields["id"] = str(fields["id"]) if fields["id"] is not None else default_id
        fields["extra"].setdefault("split", split)
        return fields
    if options.fmt == "sharegpt":
        raise DataError("not a LLaMA-Factory / ShareGPT record: no `messages` or `conversations` list")
    if record.get("image") is None:
        raise _missing(record, "image", options.columns)
    return _canonical_fields(record, _resolve_image(record["image"], folders), default_id, split, options.columns,
                             options.bbox_format)


def _read_records(source: Path, options: _Options):
    """Records of JSONL files (one object per line) and JSON files (a list of objects)."""
    suffixes = (".jsonl",) if options.fmt == "jsonl" else (".jsonl", ".json")
    # LLaMA-Factory keeps its dataset registry (a mapping, not records) beside the data.
    files = sorted(p for p in source.iterdir() if p.suffix in suffixes and p.name != "dataset_info.json"
                   ) if source.is_dir() else [source]
    chosen = options.choose([path.stem for path in files])
    for path in (p for p in files if p.stem in chosen):
        folders = [options.root] if options.root else [path.parent]
        index = 0  # default ids count records, not lines
        for where, record in _records_of(path):
            if isinstance(record, _Raw):
                yield record
                continue
            yield _raw(where, str(path), ("xyxy",), _record_fields, record, folders, f"{path.stem}:{index}",
                       path.stem, options)
            index += 1


def _records_of(path: Path):
    """(where, record) for each record of a JSON list or JSONL file; a line that is not an object is a _Raw error."""
    if path.suffix == ".json":
        for index, record in enumerate(_json_list(path)):
            where = f"{path}:record {index}"
            if not isinstance(record, dict):
                yield where, _Raw(where, str(path), ("xyxy",), {}, error="record is not a JSON object")
            else:
                yield where, record
        return
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield where, _Raw(where, str(path), ("xyxy",), {}, error=f"invalid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield where, _Raw(where, str(path), ("xyxy",), {}, error="record is not a JSON object")
                continue
            yield where, record


def _platform_of(path: Path) -> str:
    return path.stem.removeprefix("screenspot_").removesuffix("_v2")


def _read_screenspot(source: Path, options: _Options):
    root, choose = options.root, options.choose
    v2 = options.fmt == "screenspot_v2"
    folder = source if source.is_dir() else source.parent
    files = [source] if source.is_file() else sorted(
        p for p in folder.glob("screenspot_*.json") if p.stem.endswith("_v2") == v2)
    images = [root] if root else [folder / ("screenspotv2_image" if v2 else "screenspot_imgs"), folder]
    chosen = choose([_platform_of(path) for path in files])
    for path in (p for p in files if _platform_of(p) in chosen):
        for index, record in enumerate(_json_list(path)):
            # The benchmark defines [x, y, w, h]; only pixels vs normalised is read from the file.
            raw = _raw(f"{path}:record {index}", str(path), ("xywh",), _screenspot_fields, record, images,
                       f"{path.stem}:{index}", _platform_of(path))
            raw.benchmark = True
            yield raw


def _screenspot_fields(r: dict, images: list[Path], default_id: str, platform: str) -> dict:
    if platform not in _SCREENSPOT_PLATFORMS:
        platform = _SOURCE_PLATFORM.get(r.get("data_source"))
    return dict(
        image=_resolve_image(_require(r, "img_filename"), images),
        image_size=None,
        instruction=_require(r, "instruction"),
        bbox=_require(r, "bbox"),
        platform=platform,
        ui_type=r.get("data_type"),
        source=r.get("data_source"),
        id=str(r["id"]) if r.get("id") is not None else default_id,
        extra={"split": platform, "img_filename": r["img_filename"]},
    )


def _read_screenspot_pro(source: Path, options: _Options):
    root, choose = options.root, options.choose
    folder = source.parent.parent if source.is_file() else source
    files = [source] if source.is_file() else sorted((folder / "annotations").glob("*.json"))
    images = [root] if root else [folder / "images", folder]
    chosen = choose([path.stem for path in files])
    for path in (p for p in files if p.stem in chosen):
        for index, record in enumerate(_json_list(path)):
            # The benchmark defines [x1, y1, x2, y2]; only pixels vs normalised is read from the file.
            raw = _raw(f"{path}:record {index}", str(path), ("xyxy",), _pro_fields, record, images,
                       f"{path.stem}:{index}", path.stem)
            raw.benchmark = True
            yield raw


def _pro_fields(r: dict, images: list[Path], default_id: str, split: str) -> dict:
    return dict(
        image=_resolve_image(_require(r, "img_filename"), images),
        image_size=r.get("img_size"),
        instruction=_require(r, "instruction"),
        bbox=_require(r, "bbox"),
        platform=r.get("platform"),
        ui_type=r.get("ui_type"),
        source=r.get("application"),
        id=str(r["id"]) if r.get("id") is not None else default_id,
        extra={"split": split, "application": r.get("application"), "group": r.get("group"),
               "img_filename": r["img_filename"]},
    )


def _read_hf(source: Path, options: _Options):
    import datasets

    if source.is_file():
        dataset = datasets.load_dataset(source.suffix.lstrip("."), data_files=str(source))
    elif (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        dataset = datasets.load_from_disk(str(source))
    else:
        dataset = datasets.load_dataset(str(source))
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
    chosen = options.choose(list(splits))
    folder = source if source.is_dir() else source.parent
    folders = [options.root] if options.root else [folder]
    mapping = options.columns or {}
    for split, table in ((name, splits[name]) for name in chosen):
        for name, feature in table.features.items():
            if isinstance(feature, datasets.Image) and feature.decode:
                table = table.cast_column(name, datasets.Image(decode=False))
        columns = (set(table.column_names) - set(mapping.values())) | {k for k, v in mapping.items()
                                                                       if v in table.column_names}
        screenspot_like = bool(columns & {"data_type", "data_source", "img_filename", "file_name"})
        layouts = ("xywh", "xyxy") if screenspot_like else ("xyxy",)
        for index, row in enumerate(table):
            yield _raw(f"{source} [{split}] row {index}", f"{source}:{split}", layouts, _hf_fields, row, folders,
                       f"{split}:{index}", split, options)


def _hf_fields(row: dict, folders: list[Path], default_id: str, split: str, options: _Options) -> dict:
    row = map_columns(row, options.columns)
    if is_conversation(row):
        return _record_fields(row, folders, default_id, split, options)
    image = next((row[k] for k in ("image", "img_filename", "file_name", "image_path") if row.get(k) is not None),
                 None)
    if image is None:
        raise _missing(row, "image", options.columns)
    record = {k: v for k, v in row.items() if k not in ("image", "img_filename", "file_name", "image_path")}
    record.setdefault("image_size", record.pop("img_size", None))
    record["ui_type"] = record.get("ui_type") or record.pop("data_type", None)
    record["source"] = record.get("source") or record.pop("data_source", None)
    record["platform"] = record.get("platform") or _SOURCE_PLATFORM.get(record["source"] or "")
    return _canonical_fields(record, _resolve_image(image, folders), default_id, split, options.columns,
                             options.bbox_format)


def _size_of(raw: _Raw, decode: bool) -> tuple[int, int]:
    """The image's real size (header only, unless `decode`); a stated image_size is checked against it by
    validation."""
    image = raw.fields["image"]
    if not isinstance(image, Image.Image):
        return read_image_size(image, decode=decode)
    if decode:
        try:
            decoded_copy(image)
        except Exception as exc:  # PIL raises several types for corrupt data
            raise DataError(f"cannot decode image: {exc}") from exc
    return image.size


def _looks_normalised(box: list[float]) -> bool | None:
    """True for values in [0, 1] with a fraction among them, False for pixels; None when only 0s and 1s (a
    whole-screen normalised box or a 1-pixel box: no evidence either way)."""
    if not all(0 <= v <= 1 for v in box):
        return False
    return None if all(v in (0, 1) for v in box) else True


def _fits(box: list[float], size: tuple[int, int], layout: str) -> bool:
    x1, y1, a, b = box
    x2, y2 = (x1 + a, y1 + b) if layout == "xywh" else (a, b)
    tol = EDGE_TOLERANCE_PX
    return x2 > x1 and y2 > y1 and x1 >= -tol and y1 >= -tol and x2 <= size[0] + tol and y2 <= size[1] + tol


def _is_point(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)


def _values(raw: _Raw) -> list[float]:
    """Every coordinate of the record (box and point), as floats."""
    values = [float(v) for v in raw.fields.get("bbox") or []]
    return values + [float(v) for v in raw.fields.get("point") or []]


def _decide_boxes(raws: list[_Raw], forced: str | None, decode: bool = False) -> None:
    """Convert every record's bbox (and point) to xyxy pixels, deciding the convention per group where neither
    the record nor the caller states it."""
    groups: dict[str, list[_Raw]] = {}
    for raw in raws:
        if raw.error:
            continue
        try:
            raw.size = _size_of(raw, decode)
        except DataError as exc:
            raw.error = str(exc)
            continue
        box, point = raw.fields.get("bbox"), raw.fields.get("point")
        if box is not None and not _is_box(box):
            raw.error = f"bbox must be 4 numbers, got {box!r}"
            continue
        if point is not None and not _is_point(point):
            raw.error = f"point must be [x, y] numbers, got {point!r}"
            continue
        if raw.box_format is None and forced:
            raw.box_format = forced
        groups.setdefault(raw.group, []).append(raw)
    for group, members in groups.items():
        undecided = [raw for raw in members if raw.box_format is None]
        if undecided:
            _decide_group(group, undecided)
        for raw in members:
            if not raw.error:
                _to_pixels(raw)


def _decide_group(group: str, members: list[_Raw]) -> None:
    """Set `box_format` of records that state none, from the evidence of their whole file (or split)."""
    # Normalised only on evidence: a majority of the records that decide (a lone [0, 0, 1, 1] stays pixels).
    votes = [v for v in (_looks_normalised(_values(r)) for r in members) if v is not None]
    normalised = bool(votes) and sum(votes) * 2 >= len(votes)
    if not normalised and not any(raw.benchmark for raw in members):
        coordinates = [v for raw in members for v in _values(raw)]
        width, height = max(raw.size[0] for raw in members), max(raw.size[1] for raw in members)
        if coordinates and max(coordinates) <= 1000 and max(width, height) > 1000:
            raise DataError(
                f"{group}: every coordinate is at most 1000 on screens up to {width}x{height}, so pixels and 0-1000 "
                f"space cannot be told apart; pass bbox_format= (choices: {', '.join(BBOX_FORMATS)}; 0-1000 "
                "boxes are xyxy_1000)")
    unit = "_norm" if normalised else ""
    layout = None if len(members[0].layouts) > 1 else members[0].layouts[0]
    live = []
    for raw in members:
        if _looks_normalised(_values(raw)) not in (None, normalised):
            raw.error = (f"bbox {raw.fields.get('bbox') or raw.fields.get('point')} looks "
                         f"{'normalised' if not normalised else 'like pixels'} but this file's boxes are "
                         f"{'normalised' if normalised else 'pixels'}")
        else:
            live.append(raw)
    scaled = {id(raw): _scaled(raw.fields.get("bbox"), raw.size, "norm" if normalised else "px") for raw in live}
    if layout is None:
        layout_votes = Counter()
        for raw in live:
            box = scaled[id(raw)]
            fits = [lay for lay in ("xyxy", "xywh") if box is not None and _fits(box, raw.size, lay)]
            if len(fits) == 1:
                layout_votes[fits[0]] += 1
        layout = layout_votes.most_common(1)[0][0] if layout_votes else None
    for raw in live:
        box = scaled[id(raw)]
        if layout is None and box is not None and _fits(box, raw.size, "xyxy") and _fits(box, raw.size, "xywh"):
            raw.error = f"bbox {box} could be xyxy or xywh and no record in this file decides; pass bbox_format="
            continue
        # Undecided and fitting neither: validation reports it as an xyxy box outside the image.
        raw.box_format = (layout or "xyxy") + unit


def _unit_scale(unit: str, size: tuple[int, int]) -> tuple[float, float]:
    """Original pixels per unit, per axis."""
    if unit == "norm":
        return float(size[0]), float(size[1])
    if unit == "1000":
        return size[0] / 1000, size[1] / 1000
    return 1.0, 1.0


def _scaled(box, size: tuple[int, int], unit: str) -> list[float] | None:
    if box is None:
        return None
    sx, sy = _unit_scale(unit, size)
    return [float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy]


def _to_pixels(raw: _Raw) -> None:
    """The record's bbox as xyxy pixels and its point as pixels, from its decided convention."""
    layout, unit = split_bbox_format(raw.box_format)
    box = _scaled(raw.fields.get("bbox"), raw.size, unit)
    if box is not None and layout == "xywh":
        box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    raw.fields["bbox"] = box
    point = raw.fields.get("point")
    if point is not None:
        sx, sy = _unit_scale(raw.point_unit or unit, raw.size)
        raw.fields["point"] = [float(point[0]) * sx, float(point[1]) * sy]
    raw.fields["image_size"] = raw.fields.get("image_size") or raw.size
