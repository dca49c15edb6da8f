"""The recipes shipped inside the package, found by name (torchtune's recipe registry is the model).

A wheel install has no repository to point into, so `eagle-align train qwen2_5_vl_3b_lora` and the demo find
their YAML here. Three kinds live side by side: training recipes (`train/`), accelerate configs
(`accelerate/`) and the DeepSpeed JSON files the ZeRO configs name (`deepspeed/`). Names are file stems and
unique across kinds. `eagle-align recipes` lists them; `eagle-align recipes copy NAME` writes an editable copy.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from eagle_align.errors import UsageError

RECIPES_DIR = Path(__file__).resolve().parent
KINDS = {"train": "*.yaml", "accelerate": "*.yaml", "deepspeed": "*.json"}
# An accelerate config names its DeepSpeed JSON by a path relative to where `accelerate launch` runs.
_DEEPSPEED_FILE = re.compile(r"^(\s*deepspeed_config_file:\s*)(\S+)(.*)$", re.M)


def list_recipes(kind: str | None = None) -> dict[str, Path]:
    """name -> file of every shipped recipe (of one kind: train, accelerate or deepspeed)."""
    kinds = [kind] if kind else list(KINDS)
    found = {}
    for name in kinds:
        if name not in KINDS:
            raise UsageError(f"recipe kind {name!r}; choose one of {', '.join(KINDS)}")
        found.update({path.stem: path for path in sorted((RECIPES_DIR / name).glob(KINDS[name]))})
    return found


def recipe_path(name_or_path: str | Path, kind: str | None = None) -> Path:
    """A recipe file: an existing path as given, else a shipped recipe by name (`qwen2_5_vl_3b_lora`,
    `train/qwen2_5_vl_3b_lora.yaml`, ...)."""
    path = Path(name_or_path)
    shipped_form = len(path.parts) == 1 or path.parent.name in KINDS  # `NAME` or `train/NAME.yaml`
    if path.is_file() or not shipped_form:
        return path  # a file of the user's: the caller says if it is missing
    recipes = list_recipes(kind)
    if path.stem in recipes:
        return recipes[path.stem]
    if path.is_dir():
        raise UsageError(f"recipe {name_or_path} is a directory", hint="pass a recipe YAML or a shipped recipe's name")
    names = ", ".join(recipes)
    raise UsageError(f"no recipe file or shipped recipe named {str(name_or_path)!r}",
                     hint=f"shipped {kind + ' ' if kind else ''}recipes: {names}")


def copy_recipe(name: str, destination: str | Path = ".") -> list[Path]:
    """Copy a shipped recipe into ``destination`` for editing; an accelerate config's DeepSpeed JSON is copied
    beside it and the config points at the copy (absolute path, so launching from anywhere finds it)."""
    source = recipe_path(name)
    if not str(source.resolve()).startswith(str(RECIPES_DIR)):
        raise UsageError(f"{name} is not a shipped recipe", hint="eagle-align recipes lists them")
    out = Path(destination)
    out.mkdir(parents=True, exist_ok=True)
    target = out / source.name
    text = source.read_text()
    written = []
    match = _DEEPSPEED_FILE.search(text)
    if match:
        json_source = RECIPES_DIR / "deepspeed" / Path(match.group(2)).name
        json_target = out / json_source.name
        shutil.copyfile(json_source, json_target)
        written.append(json_target)
        text = _DEEPSPEED_FILE.sub(lambda m: f"{m.group(1)}{json_target.resolve()}{m.group(3)}", text)
    target.write_text(text)
    return [target, *written]
