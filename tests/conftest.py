"""Shared fixtures: tiny real checkpoints of every family, built once per test session (per xdist worker)."""

from __future__ import annotations

import os

import huggingface_hub.constants
import pytest
from huggingface_hub import HfApi

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eagle_align.families import FAMILIES, build_tiny_checkpoint  # noqa: E402

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


class RecordingHub:
    """Stands in for the Hub's HTTP endpoints only: repo creation and commit creation."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.repos: list[str] = []
        self.uploaded: dict[str, list[str]] = {}

    def whoami(self, api, **kwargs):
        return {"name": "recording-user", "type": "user"}

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append(repo_id)
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, api, repo_id, operations, **kwargs):
        if self.fail:
            raise ConnectionError("503 Service Unavailable")
        self.uploaded[repo_id] = sorted(op.path_in_repo for op in operations)
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


@pytest.fixture
def recording_hub(monkeypatch):
    hub = RecordingHub()
    monkeypatch.setenv("HF_TOKEN", "hf_recording_hub")  # a logged-in user, as far as the client can tell offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # this stand-in Hub is reachable
    monkeypatch.setattr(HfApi, "whoami", lambda self, **kw: hub.whoami(self, **kw))
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: hub.create_repo(self, repo_id, **kw))
    monkeypatch.setattr(
        HfApi, "create_commit", lambda self, repo_id, operations, **kw: hub.create_commit(self, repo_id, operations, **kw)
    )
    return hub
