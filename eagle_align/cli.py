"""`eagle-align` command line: one entry point, subcommands implemented next to the code they drive.

Each subcommand is "module:name"; the module defines `{name}_arguments(parser)` and `{name}_command(args)`.
Modules are imported only when their subcommand runs, so `eagle-align --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("eagle_align.train:train", "Train a LoRA adapter (SFT or prior-aligned) from a YAML recipe."),
    "eval": ("eagle_align.eval.cli:eval", "Click accuracy and attribution metrics on a GUI benchmark."),
    "explain": ("eagle_align.attribution.explain:explain", "Attribute one click to screenshot regions."),
    "demo": ("eagle_align.demo:demo", "SFT vs prior-aligned on a synthetic shortcut benchmark (offline)."),
    "data": ("eagle_align.data.cli:data", "Validate datasets or write synthetic GUI data."),
    "tiny": ("eagle_align.models.tiny:tiny", "Write a tiny random checkpoint of a Qwen-VL family."),
    "push": ("eagle_align.hub:push", "Upload an adapter directory (with its model card) to the Hub."),
    "merge": ("eagle_align.hub:merge", "Merge a LoRA adapter into its base model and verify the result."),
}


def _load(target: str):
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, f"{name}_arguments"), getattr(module, f"{name}_command")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eagle-align", description="Teach GUI agents to click for the right reason.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(target)[0](sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        build_parser().error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(_load(COMMANDS[args.command][0])[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
