"""Shared fixtures: the configurable fake env and tiny datasets (see tests/agent_harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

try:  # Meta-World pins mujoco 3.3.0, so its tests run in its own environment (.ci/run: .venv-metaworld)
    import metaworld  # noqa: F401
except ImportError:
    collect_ignore = ["metaworld"]


@pytest.fixture(autouse=True)
def _minari_home(tmp_path_factory, monkeypatch):
    """Never write into the user's Minari store from a test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
    # SB3 models the tests build log (to nowhere) under the test's own folder, not a new /tmp/SB3-* per learn()
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3")))


@pytest.fixture(autouse=True)
def _benchmarks_md(tmp_path_factory, monkeypatch):
    """Never write a test's tiny benchmark run into the repo's benchmarks.md (scripts/benches/_common.py)."""
    monkeypatch.setenv("TT_AGENTS_BENCHMARKS_MD", str(tmp_path_factory.mktemp("bench") / "benchmarks.md"))


@pytest.fixture(autouse=True, scope="session")
def _benchmarks_md_untouched():
    """The recorded figures are the same after the test session as before it (an error at teardown otherwise)."""
    path = REPO / "benchmarks.md"
    before = path.read_bytes() if path.exists() else None
    yield
    after = path.read_bytes() if path.exists() else None
    if after != before:
        pytest.fail("a test changed the repo's benchmarks.md: benchmark sections from tests belong in "
                    "$TT_AGENTS_BENCHMARKS_MD (the _benchmarks_md fixture)")


@pytest.fixture
def repo_root() -> Path:
    return REPO
