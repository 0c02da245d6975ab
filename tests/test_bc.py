"""BCPolicy: the shared harness over observation and action kinds, and that it actually learns."""

import numpy as np
import pytest

from tests.agent_harness import check_agent
from tests.fake_env import ACTION_KINDS, OBS_KINDS, make_dataset
from tt_agents import BCConfig, BCPolicy, TrainConfig


@pytest.mark.parametrize("obs_kind", OBS_KINDS)
@pytest.mark.parametrize("action_kind", ACTION_KINDS)
def test_harness(obs_kind, action_kind, tmp_path):
    check_agent(
        lambda o, a: BCPolicy(o, a, BCConfig(hidden_sizes=(32, 32)), device="cpu", seed=0),
        obs_kind,
        action_kind,
        tmp_path,
    )


def test_bc_imitates_a_simple_policy():
    ds = make_dataset("vector", "continuous", n_episodes=8)
    for ep in ds:  # expert: action = tanh of the first two observation dims
        ep.actions = np.tanh(ep.observations[:-1, :2]).astype(np.float32)
    agent = BCPolicy(ds.observation_space, ds.action_space, BCConfig(hidden_sizes=(64, 64)), device="cpu", seed=0)
    agent.fit(ds, TrainConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=10, progress=False))
    obs = np.concatenate([ep.observations[:-1] for ep in ds])
    pred, _ = agent.predict(obs)
    err = np.abs(pred - np.tanh(obs[:, :2])).mean()
    assert err < 0.1, err
