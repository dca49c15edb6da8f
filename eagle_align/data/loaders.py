"""`load_examples`: one call for our JSONL, Hugging Face datasets and the ScreenSpot family layouts.

Every layout is turned into raw records first; box conventions are then decided per file. A benchmark's own
layout defines its boxes (ScreenSpot v1/v2: xywh, ScreenSpot-Pro: xyxy), so only pixels vs normalised is read
from the file; other tables (HF mirrors) may use either layout and are decided from the records themselves,
because mirrors of the same benchmark disagree and a wrong guess silently moves every target. A record whose
convention cannot be decided is refused, never guessed.

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

from eagle_align.data.images import decoded_copy
from eagle_align.data.schema import (
    EDGE_TOLERANCE_PX,
    DataError,
    ExampleSet,
    GroundingExample,
    _is_box,
    read_image_size,
    validate_example,
)
from eagle_align.errors import UsageError

FORMATS = ("auto", "jsonl", "hf", "screenspot", "screenspot_v2", "screenspot_pro")
BBOX_FORMATS = ("xyxy", "xywh", "xyxy_norm", "xywh_norm")
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


def load_examples(
    source: str | Path,
    format: str = "auto",
    image_root: str | Path | None = None,
    on_error: str = "raise",
    bbox_format: str | None = None,
    split: str | None = None,
    decode_images: bool = False,
) -> ExampleSet:
    """Load and validate grounding examples from `source` (file or directory).

    format: one of FORMATS ("auto" detects the layout). image_root: folder to find images in, instead of
    where the layout ships them. on_error: "raise" stops at the first bad record; "skip" drops bad records
    and lists them in `.problems` / `.skipped`. bbox_format: force one of BBOX_FORMATS instead of detecting.
    split: read only this split (or comma-separated splits) of a source that has several; a source with one
    split is that split whatever its name, except a lone "test" split, read only when named. None reads every
    split. decode_images: decode every image fully (slow; catches truncated files) instead
    of reading headers only.
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error={on_error!r}; choose 'raise' or 'skip'")
    if format not in FORMATS:
        raise UsageError(f"format={format!r}; choose one of {', '.join(FORMATS)}")
    if bbox_format is not None and bbox_format not in BBOX_FORMATS:
        raise UsageError(f"bbox_format={bbox_format!r}; choose one of {', '.join(BBOX_FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    fmt = detect_format(source) if format == "auto" else format
    root = Path(image_root) if image_root is not None else None
    readers = {"jsonl": _read_jsonl, "hf": _read_hf, "screenspot": _read_screenspot,
               "screenspot_v2": _read_screenspot, "screenspot_pro": _read_screenspot_pro}
    raws = list(readers[fmt](source, root, fmt, lambda available: _choose_splits(source, available, split)))
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


def detect_format(source: Path) -> str:
    """Name of the layout at `source`, from its file names; DataError if none fits."""
    if source.is_file():
        if source.suffix == ".jsonl":
            return "jsonl"
        if source.suffix in (".parquet", ".arrow"):
            return "hf"
        if source.suffix == ".json":
            first = _json_list(source)[:1]
            if first and isinstance(first[0], dict) and "img_size" in first[0]:
                return "screenspot_pro"
            return "screenspot_v2" if source.stem.endswith("_v2") else "screenspot"
    elif source.is_dir():
        if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
            return "hf"
        if (source / "annotations").is_dir():
            return "screenspot_pro"
        if list(source.glob("screenspot_*_v2.json")):
            return "screenspot_v2"
        if list(source.glob("screenspot_*.json")):
            return "screenspot"
        if list(source.glob("*.jsonl")):
            return "jsonl"
        if any(source.rglob("*.parquet")) or any(source.rglob("*.arrow")):
            return "hf"
    raise DataError(f"{source}: cannot tell its layout; pass format= one of {', '.join(FORMATS[1:])}")


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
    """Build the fields with `build(*args)`, turning a bad field into a per-record error."""
    try:
        return _Raw(where, group, layouts, build(*args))
    except DataError as exc:
        return _Raw(where, group, layouts, {}, error=str(exc))
    except (KeyError, TypeError, AttributeError) as exc:
        return _Raw(where, group, layouts, {}, error=f"missing or malformed field: {exc!r}")


def _require(record: dict, key: str):
    if key not in record or record[key] is None:
        raise DataError(f"missing field {key!r}")
    return record[key]


def _canonical_fields(record: dict, image, default_id: str, split: str) -> dict:
    extra = record.get("extra") or {}
    if not isinstance(extra, dict):
        raise DataError(f"extra must be an object, got {extra!r}")
    # Unknown keys are kept, not dropped: they may be metadata the user needs (application, group, ...).
    extra = {**extra, **{k: v for k, v in record.items() if k not in _CANONICAL_KEYS}}
    extra.setdefault("split", split)
    return dict(
        image=image,
        image_size=record.get("image_size"),
        instruction=_require(record, "instruction"),
        bbox=_require(record, "bbox"),
        point=record.get("point"),
        platform=record.get("platform"),
        ui_type=record.get("ui_type"),
        source=record.get("source"),
        id=str(record["id"]) if record.get("id") is not None else default_id,
        extra=extra,
    )


def _read_jsonl(source: Path, root: Path | None, fmt: str, choose):
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    chosen = choose([path.stem for path in files])
    for path in (p for p in files if p.stem in chosen):
        with open(path, encoding="utf-8") as handle:
            index = 0
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    yield _Raw(where, str(path), ("xyxy",), {}, error=f"invalid JSON: {exc}")
                    continue
                if not isinstance(record, dict):
                    yield _Raw(where, str(path), ("xyxy",), {}, error="record is not a JSON object")
                    continue
                yield _raw(where, str(path), ("xyxy",), _jsonl_fields, record, [root] if root else [path.parent],
                           f"{path.stem}:{index}", path.stem)
                index += 1


def _jsonl_fields(record: dict, folders: list[Path], default_id: str, split: str) -> dict:
    return _canonical_fields(record, _resolve_image(_require(record, "image"), folders), default_id, split)


def _platform_of(path: Path) -> str:
    return path.stem.removeprefix("screenspot_").removesuffix("_v2")


def _read_screenspot(source: Path, root: Path | None, fmt: str, choose):
    v2 = fmt == "screenspot_v2"
    folder = source if source.is_dir() else source.parent
    files = [source] if source.is_file() else sorted(
        p for p in folder.glob("screenspot_*.json") if p.stem.endswith("_v2") == v2)
    images = [root] if root else [folder / ("screenspotv2_image" if v2 else "screenspot_imgs"), folder]
    chosen = choose([_platform_of(path) for path in files])
    for path in (p for p in files if _platform_of(p) in chosen):
        for index, record in enumerate(_json_list(path)):
            # The benchmark defines [x, y, w, h]; only pixels vs normalised is read from the file.
            yield _raw(f"{path}:record {index}", str(path), ("xywh",), _screenspot_fields, record, images,
                       f"{path.stem}:{index}", _platform_of(path))


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


def _read_screenspot_pro(source: Path, root: Path | None, fmt: str, choose):
    folder = source.parent.parent if source.is_file() else source
    files = [source] if source.is_file() else sorted((folder / "annotations").glob("*.json"))
    images = [root] if root else [folder / "images", folder]
    chosen = choose([path.stem for path in files])
    for path in (p for p in files if p.stem in chosen):
        for index, record in enumerate(_json_list(path)):
            # The benchmark defines [x1, y1, x2, y2]; only pixels vs normalised is read from the file.
            yield _raw(f"{path}:record {index}", str(path), ("xyxy",), _pro_fields, record, images,
                       f"{path.stem}:{index}", path.stem)


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


def _read_hf(source: Path, root: Path | None, fmt: str, choose):
    import datasets

    if source.is_file():
        dataset = datasets.load_dataset(source.suffix.lstrip("."), data_files=str(source))
    elif (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        dataset = datasets.load_from_disk(str(source))
    else:
        dataset = datasets.load_dataset(str(source))
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
    chosen = choose(list(splits))
    folder = source if source.is_dir() else source.parent
    folders = [root] if root else [folder]
    for split, table in ((name, splits[name]) for name in chosen):
        for name, feature in table.features.items():
            if isinstance(feature, datasets.Image) and feature.decode:
                table = table.cast_column(name, datasets.Image(decode=False))
        columns = set(table.column_names)
        screenspot_like = bool(columns & {"data_type", "data_source", "img_filename", "file_name"})
        layouts = ("xywh", "xyxy") if screenspot_like else ("xyxy",)
        for index, row in enumerate(table):
            yield _raw(f"{source} [{split}] row {index}", f"{source}:{split}", layouts, _hf_fields, row, folders,
                       f"{split}:{index}", split)


def _hf_fields(row: dict, folders: list[Path], default_id: str, split: str) -> dict:
    image = next((row[k] for k in ("image", "img_filename", "file_name", "image_path") if row.get(k) is not None),
                 None)
    if image is None:
        raise DataError("missing field 'image'")
    record = {k: v for k, v in row.items() if k not in ("image", "img_filename", "file_name", "image_path")}
    record.setdefault("image_size", record.pop("img_size", None))
    record["ui_type"] = record.get("ui_type") or record.pop("data_type", None)
    record["source"] = record.get("source") or record.pop("data_source", None)
    record["platform"] = record.get("platform") or _SOURCE_PLATFORM.get(record["source"] or "")
    return _canonical_fields(record, _resolve_image(image, folders), default_id, split)


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


def _decide_boxes(raws: list[_Raw], forced: str | None, decode: bool = False) -> None:
    """Convert every record's bbox (and point) to xyxy pixels, deciding the convention per group."""
    groups: dict[str, list[_Raw]] = {}
    for raw in raws:
        if raw.error:
            continue
        try:
            raw.size = _size_of(raw, decode)
        except DataError as exc:
            raw.error = str(exc)
            continue
        if not _is_box(raw.fields["bbox"]):
            raw.error = f"bbox must be 4 numbers, got {raw.fields['bbox']!r}"
            continue
        groups.setdefault(raw.group, []).append(raw)
    for members in groups.values():
        if forced:
            layout, normalised = forced.removesuffix("_norm"), forced.endswith("_norm")
        else:
            # Normalised only on evidence: a majority of the records that decide (a lone [0, 0, 1, 1] stays pixels).
            votes = [v for v in (_looks_normalised(r.fields["bbox"]) for r in members) if v is not None]
            normalised = bool(votes) and sum(votes) * 2 >= len(votes)
            layout = None if len(members[0].layouts) > 1 else members[0].layouts[0]
        for raw in members:
            box = [float(v) for v in raw.fields["bbox"]]
            if not forced and _looks_normalised(box) not in (None, normalised):
                raw.error = (f"bbox {box} looks {'normalised' if not normalised else 'like pixels'} but this "
                             f"file's boxes are {'normalised' if normalised else 'pixels'}")
                continue
            scale = raw.size if normalised else (1, 1)
            raw.fields["bbox"] = [box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1]]
            point = raw.fields.get("point")
            if normalised and isinstance(point, (list, tuple)) and len(point) == 2:
                raw.fields["point"] = [point[0] * scale[0], point[1] * scale[1]]
        live = [r for r in members if not r.error]
        if layout is None:
            votes = Counter()
            for raw in live:
                fits = [lay for lay in ("xyxy", "xywh") if _fits(raw.fields["bbox"], raw.size, lay)]
                if len(fits) == 1:
                    votes[fits[0]] += 1
            layout = votes.most_common(1)[0][0] if votes else None
        for raw in live:
            box = raw.fields["bbox"]
            if layout is None and _fits(box, raw.size, "xyxy") and _fits(box, raw.size, "xywh"):
                raw.error = f"bbox {box} could be xyxy or xywh and no record in this file decides; pass bbox_format="
                continue
            # Undecided and fitting neither: validation reports it as an xyxy box outside the image.
            if layout == "xywh":
                raw.fields["bbox"] = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
            raw.fields["image_size"] = raw.fields.get("image_size") or raw.size
