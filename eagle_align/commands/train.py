"""`eagle-align train`."""

from __future__ import annotations

import argparse

from eagle_align.train import train_from_argv


def train_arguments(parser) -> None:

    parser.add_argument("config", help="training YAML, or a shipped recipe's name (eagle-align recipes)")
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="--key value pairs overriding any key of the YAML"
    )


def train_command(args) -> int:
    return train_from_argv([args.config, *args.overrides])
