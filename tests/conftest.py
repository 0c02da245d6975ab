"""Shared fixtures: the configurable fake env and tiny datasets (see tests/agent_harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _minari_home(tmp_path_factory, monkeypatch):
    """Never write into the user's Minari store from a test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))


@pytest.fixture
def repo_root() -> Path:
    return REPO
