"""Shared fixtures: tiny real checkpoints of every family, built once per test session (per xdist worker)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eagle_align.models import FAMILIES, build_tiny_checkpoint  # noqa: E402

# Small pixel limits keep every test forward cheap while leaving several merged cells per side.
TEST_MIN_PIXELS = 64 * 64
TEST_MAX_PIXELS = 320 * 320


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """family name -> directory of a tiny random checkpoint (loads with from_pretrained)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        name: str(build_tiny_checkpoint(name, root / name, seed=0, min_pixels=TEST_MIN_PIXELS, max_pixels=TEST_MAX_PIXELS))
        for name in FAMILIES
    }


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    """Parametrises a test over every supported family."""
    return request.param
