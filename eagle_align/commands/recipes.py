"""`eagle-align recipes`."""

from __future__ import annotations

from eagle_align.errors import UsageError
from eagle_align.recipes import KINDS, RECIPES_DIR, copy_recipe, list_recipes, recipe_path


def recipes_arguments(parser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "path", "copy"), default="list",
                        help="list (default): every shipped recipe; path NAME: its file; copy NAME [DEST]: an "
                        "editable copy (DeepSpeed JSON included)")
    parser.add_argument("name", nargs="?", help="recipe name (see list)")
    parser.add_argument("destination", nargs="?", default=".", help="folder for copy (default: here)")


def recipes_command(args) -> int:
    if args.action == "list":
        for kind in KINDS:
            print(f"{kind}:")
            for name, path in list_recipes(kind).items():
                print(f"  {name:<24} {path.relative_to(RECIPES_DIR)}")
        return 0
    if not args.name:
        raise UsageError(f"recipes {args.action} needs a recipe name", hint="eagle-align recipes lists them")
    if args.action == "path":
        print(recipe_path(args.name))
        return 0
    for path in copy_recipe(args.name, args.destination):
        print(f"wrote {path}")
    return 0
