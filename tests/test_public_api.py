"""The package root exposes the small public API, and the CLI lists every command."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import eagle_align
from eagle_align.cli import COMMANDS


def test_every_root_export_resolves_to_its_module_object():
    for name, module in eagle_align._EXPORTS.items():
        assert getattr(eagle_align, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute"):
        eagle_align.PriorAlignedTrainr  # noqa: B018


def test_cli_lists_commands_and_each_parser_builds():
    result = subprocess.run([sys.executable, "-m", "eagle_align.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
        helped = subprocess.run([sys.executable, "-m", "eagle_align.cli", command, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0, helped.stderr
    bad = subprocess.run([sys.executable, "-m", "eagle_align.cli", "trian"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown command 'trian'" in bad.stderr
