"""Inputs a user did not make: crafted checkpoints, non-finite observations (issue: hardening)."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fake_env import make_env
from tt_agents import (
    BCConfig,
    BCPolicy,
    DecisionTransformer,
    DTConfig,
    NonFiniteInputError,
    TTPlanner,
)
from tt_agents.checkpoint import read_checkpoint, write_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _agents():
    vec_c, vec_d = make_env("vector", "continuous"), make_env("vector", "discrete")
    return {
        "bc": BCPolicy(vec_d.observation_space, vec_d.action_space, BCConfig(hidden_sizes=(8,)), device="cpu", seed=0),
        "tt": TTPlanner.from_preset("tiny", vec_c.observation_space, vec_c.action_space, device="cpu", seed=0),
        "dt": DecisionTransformer(vec_c.observation_space, vec_c.action_space,
                                  DTConfig(context_len=3, n_layer=1, n_head=2, n_embd=16, max_timestep=16),
                                  device="cpu", seed=0),
    }


HUGE = {  # config changes asking for tens of GB of weights
    "bc": {"hidden_sizes": [65536, 65536]},
    "tt": {"n_embd": 65536, "n_head": 2},
    "dt": {"n_embd": 65536, "n_head": 2},
}

_LOAD_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # 3 GiB of address space in all
    sys.path.insert(0, {repo!r})
    from tt_agents import CheckpointError, load_agent
    try:
        load_agent({path!r}, device="cpu")
    except CheckpointError as e:
        print("CheckpointError:", e)
    """
)


@pytest.mark.parametrize("name", sorted(HUGE))
def test_a_sealed_checkpoint_asking_for_a_huge_network_is_refused_before_allocating(name, tmp_path):
    agent = _agents()[name]
    ckpt = read_checkpoint(agent.save(tmp_path / "agent"))
    sections = {"agent": copy.deepcopy(ckpt.manifest["agent"])}
    sections["agent"]["config"].update(HUGE[name])
    crafted = tmp_path / "crafted.zip"
    write_checkpoint(crafted, "agent", sections, ckpt.tensors)  # validly sealed: only the config lies
    proc = subprocess.run([sys.executable, "-c", _LOAD_UNDER_LIMIT.format(repo=str(REPO), path=str(crafted))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"CheckpointError: {crafted}" in proc.stdout and "weight" in proc.stdout, proc.stdout


def _inputs(agent, obs, reward):
    return {"observation": obs, "previous_reward": reward[:, None]} if agent.needs_reward else obs


@pytest.mark.parametrize("name", ["bc", "tt", "dt"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_observations_are_refused_naming_the_rows(name, bad):
    agent = _agents()[name]
    obs = np.zeros((4, 4), np.float32)
    obs[2, 1] = bad
    with pytest.raises(NonFiniteInputError, match=r"observations of env rows \[2\]"):
        agent.predict(_inputs(agent, obs, np.zeros(4, np.float32)))
    if agent.needs_reward:
        reward = np.zeros(4, np.float32)
        reward[[0, 3]] = bad
        with pytest.raises(NonFiniteInputError, match=r"previous rewards of env rows \[0, 3\]"):
            agent.predict(_inputs(agent, np.zeros((4, 4), np.float32), reward))
    # opting out skips the check (the agent then gets what it was given)
    agent.predict(_inputs(agent, obs, np.zeros(4, np.float32)), check_finite=False)


def test_a_refused_call_leaves_the_dt_context_unchanged():
    agent = _agents()["dt"]
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 2, 4)).astype(np.float32)
    rewards = rng.normal(size=(3, 2)).astype(np.float32)

    def roll(poison: bool):
        state, out = None, []
        for t in range(3):
            if poison and t == 1:
                bad = obs[t].copy()
                bad[0, 0] = np.nan
                with pytest.raises(NonFiniteInputError):
                    agent.predict(_inputs(agent, bad, rewards[t]), state)
            a, state = agent.predict(_inputs(agent, obs[t], rewards[t]), state)
            out.append(a)
        return np.stack(out), state

    clean, s1 = roll(False)
    poisoned, s2 = roll(True)
    np.testing.assert_array_equal(poisoned, clean)
    assert s1.timesteps.tolist() == s2.timesteps.tolist() and np.array_equal(s1.returns_to_go, s2.returns_to_go)
    assert torch.isfinite(torch.as_tensor(poisoned)).all()
