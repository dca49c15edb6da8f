"""`eagle-align` command line: one entry point, subcommands implemented next to the code they drive.

Each subcommand is "module:name" in `eagle_align.commands`; the module defines `{name}_arguments(parser)` and `{name}_command(args)`.
Modules are imported only when their subcommand runs, so `eagle-align --help` stays fast.

Mistakes in what the user gave (options, recipes, data, paths, model folders) print one line,
`eagle-align <command>: <message>` (plus a hint), and exit 2; `--debug` or EAGLE_ALIGN_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable

import yaml

from eagle_align.errors import UsageError

# Errors that come from what the user gave, not from a bug: reported as one line, exit status 2.
USER_ERRORS = (UsageError, OSError, yaml.YAMLError, json.JSONDecodeError)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "EAGLE_ALIGN_DEBUG"

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("eagle_align.commands.train:train", "Train a LoRA adapter (SFT or prior-aligned) from a YAML recipe."),
    "eval": ("eagle_align.commands.eval:eval", "Click accuracy and attribution metrics on a GUI benchmark."),
    "explain": ("eagle_align.commands.explain:explain", "Attribute one click to screenshot regions."),
    "demo": ("eagle_align.commands.demo:demo", "SFT vs prior-aligned on a synthetic shortcut benchmark (offline)."),
    "data": ("eagle_align.commands.data:data", "Validate datasets or write synthetic GUI data."),
    "recipes": ("eagle_align.commands.recipes:recipes", "List the recipes shipped with the package, or copy one to edit."),
    "tiny": ("eagle_align.commands.tiny:tiny", "Write a tiny random checkpoint of a Qwen-VL family."),
    "push": ("eagle_align.commands.hub:push", "Upload an adapter directory (with its model card) to the Hub."),
    "merge": ("eagle_align.commands.hub:merge", "Merge a LoRA adapter into its base model and verify the result."),
}


def _load(target: str):
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, f"{name}_arguments"), getattr(module, f"{name}_command")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eagle-align", description="Teach GUI agents to click for the right reason.")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of errors in the input (also: {DEBUG_ENV}=1); may stand anywhere")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(target)[0](sub_parser)
    return parser


def describe_error(error: BaseException) -> str:
    """One line for a user error (plus UsageError's hint line), naming the file where the error has one."""
    if isinstance(error, UsageError):
        message = str(error)
        if "\nOriginal Traceback" in message:  # re-raised by a DataLoader worker: keep the error's own lines
            lines = message.rstrip().splitlines()
            last = max(i for i, line in enumerate(lines) if line[:1].strip())
            message = "\n".join([lines[last].split(": ", 1)[-1], *lines[last + 1:]])
        return message
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())


# Logger name -> start of the one notice dropped from it; the logger's other messages stay.
LIBRARY_NOTICES = {
    # DeepSpeed, imported lazily by accelerate / transformers on a machine without a GPU, even when no
    # recipe asks for DeepSpeed (printed to stdout by its own handler).
    "DeepSpeed": "Setting accelerator to CPU",
    # bitsandbytes, imported with peft, looks for an optional 4-bit CPU kernel on the Hub; without it the
    # plain CPU path runs, and LoRA training never uses it.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_library_notices() -> None:
    """Drop the library notices in LIBRARY_NOTICES, printed by every command though none concerns it.

    Filters on the named loggers survive the libraries configuring those loggers when they are imported.
    """
    for name, prefix in LIBRARY_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice(prefix))


def run_reporting_errors(command: str, run: Callable[[], int | None], debug: bool = False) -> int:
    """Run one command; a user error becomes `eagle-align <command>: <message>` on stderr and exit status 2.

    With `debug` (or EAGLE_ALIGN_DEBUG=1) the error propagates with its traceback. Every command (also
    `python -m eagle_align.train` under accelerate) runs through here, so library notices are quieted here.
    """
    quiet_library_notices()
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(run() or 0)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"eagle-align {command}: {describe_error(error)}", file=sys.stderr)
        return 2


def strip_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """`--debug` may stand anywhere (train passes everything after the recipe on as overrides)."""
    return [a for a in argv if a != DEBUG_FLAG], DEBUG_FLAG in argv


def main(argv: list[str] | None = None) -> int:
    argv, debug = strip_debug_flag(sys.argv[1:] if argv is None else list(argv))
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        build_parser().error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_reporting_errors(args.command, lambda: _load(COMMANDS[args.command][0])[1](args), debug)


if __name__ == "__main__":
    sys.exit(main())
