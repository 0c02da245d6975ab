"""Checkpoints written before the foundation-v2 restructuring (commit 014639a) load and act identically.

The files under ``tests/data/legacy`` were written by that commit's code (see ``make_legacy.py``
there) with the actions it chose on fixed observations; today's code must reproduce them exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tt_agents import load_agent

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_legacy_checkpoint_acts_identically(name):
    torch.set_num_threads(1)
    agent = load_agent(LEGACY / f"{name}.zip", device="cpu")
    case = EXPECTED[name]
    obs = np.asarray(case["observations"], np.float32)
    rewards = np.asarray(case["previous_rewards"], np.float32)
    state = None
    for t, expected in enumerate(case["actions"]):
        o = {"observation": obs[t], "previous_reward": rewards[t][:, None]} if agent.needs_reward else obs[t]
        action, state = agent.predict(o, state, episode_start=np.full(len(obs[t]), t == 0), deterministic=True)
        np.testing.assert_allclose(np.asarray(action, np.float64), np.asarray(expected, np.float64), rtol=0, atol=1e-6)
