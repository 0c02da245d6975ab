"""The shared agent harness: every agent passes it (d3rlpy's ``algo_test`` does the same).

Call :func:`check_agent` from an agent's test file with a factory
``make_agent(observation_space, action_space) -> Agent`` at a tiny size::

    @pytest.mark.parametrize("obs_kind", OBS_KINDS)
    @pytest.mark.parametrize("action_kind", ACTION_KINDS)
    def test_harness(obs_kind, action_kind, tmp_path):
        check_agent(lambda o, a: MyAgent(o, a, MyConfig.tiny(), device="cpu", seed=0), obs_kind, action_kind, tmp_path)

It checks: fit a few steps; predict on single and batched observations (actions in the action
space, batched exactly when the input was); SB3's ``evaluate_policy`` returns a finite mean
(through ``AddPreviousReward`` for agents that need rewards); a save/load round trip gives
identical deterministic actions over several steps in a fresh process; loading against an env
with other spaces raises; wrong-shape and wrong-dtype observations raise; ``episode_start``
resets per-env context (a reset row acts as a fresh agent would).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy

from tests.fake_env import make_dataset, make_env
from tt_agents import Agent, SpaceMismatchError, TrainConfig, load_agent
from wrappers.reward import AddPreviousReward

REPO = Path(__file__).resolve().parents[1]

AgentFactory = Callable[[gym.Space, gym.Space], Agent]


def _obs_sequence(env: gym.Env, n_envs: int, n_steps: int, seed: int = 0):
    """Observations, previous rewards and episode starts for ``n_envs`` independent fake envs."""
    obs_seq, rew_seq, start_seq = [], [], []
    envs = [make_env(env.obs_kind, env.action_kind, episode_len=4) for _ in range(n_envs)]
    cur = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    rew = np.zeros(n_envs, np.float32)
    start = np.ones(n_envs, bool)
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        obs_seq.append(np.stack(cur))
        rew_seq.append(rew.copy())
        start_seq.append(start.copy())
        for i, e in enumerate(envs):
            a = e.action_space.sample() if rng.random() < 2 else None
            o, r, term, trunc, _ = e.step(a)
            if term or trunc:
                o, _ = e.reset(seed=int(rng.integers(1000)))
                r, start[i] = 0.0, True
            else:
                start[i] = False
            cur[i], rew[i] = o, r
    return np.stack(obs_seq), np.stack(rew_seq), np.stack(start_seq)


def _roll(agent: Agent, obs: np.ndarray, rew: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Deterministic actions for a recorded sequence, passing state along as SB3 does."""
    state, actions = None, []
    for t in range(len(obs)):
        o = {"observation": obs[t], "previous_reward": rew[t][:, None]} if agent.needs_reward else obs[t]
        a, state = agent.predict(o, state=state, episode_start=starts[t], deterministic=True)
        actions.append(np.asarray(a))
    return np.stack(actions)


_FRESH = textwrap.dedent(
    """
    import importlib, sys, numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {repo!r})
    importlib.import_module({module!r})  # registers the agent's class, wherever it is defined
    from tests.agent_harness import _roll
    from tt_agents import load_agent
    agent = load_agent({ckpt!r}, device="cpu")
    d = np.load({inputs!r}, allow_pickle=False)
    np.save({out!r}, _roll(agent, d["obs"], d["rew"], d["starts"]), allow_pickle=False)
    """
)


def check_agent(
    make_agent: AgentFactory,
    obs_kind: str,
    action_kind: str,
    tmp_path: Path,
    fit_config: TrainConfig | None = None,
    eval_episodes: int = 2,
) -> Agent:
    """Run the whole harness on one (observation kind, action kind) pair; return the trained agent."""
    env = make_env(obs_kind, action_kind)
    agent = make_agent(env.observation_space, env.action_space)
    assert agent.observation_space == env.observation_space
    assert agent.action_space == env.action_space

    # fit a few steps through the shared trainer
    dataset = make_dataset(obs_kind, action_kind, n_episodes=3)
    cfg = fit_config or TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False)
    result = agent.fit(dataset, cfg)
    assert len(result.losses) == cfg.steps and np.all(np.isfinite(result.losses))

    # predict: single and batched
    obs, _ = env.reset(seed=0)
    single = {"observation": obs, "previous_reward": np.zeros(1, np.float32)} if agent.needs_reward else obs
    a, state = agent.predict(single, deterministic=True)
    assert env.action_space.contains(np.asarray(a, dtype=env.action_space.dtype)), a
    batch = np.stack([obs, env.observation_space.sample(), obs])
    batched = {"observation": batch, "previous_reward": np.zeros((3, 1), np.float32)} if agent.needs_reward else batch
    a3, _ = agent.predict(batched, deterministic=True)
    a3 = np.asarray(a3)
    assert a3.shape == (3, *env.action_space.shape), a3.shape
    for row in a3:
        assert env.action_space.contains(row.astype(env.action_space.dtype))
    a_stoch, _ = agent.predict(batched, deterministic=False)
    assert np.asarray(a_stoch).shape == a3.shape

    # evaluate_policy from SB3 works unchanged
    eval_env = (
        AddPreviousReward(make_env(obs_kind, action_kind)) if agent.needs_reward else make_env(obs_kind, action_kind)
    )
    mean, std = evaluate_policy(agent, eval_env, n_eval_episodes=eval_episodes, warn=False)
    assert np.isfinite(mean) and np.isfinite(std)

    # episode_start resets per-env context: a reset row acts like a fresh agent
    o_seq, r_seq, s_seq = _obs_sequence(env, n_envs=2, n_steps=6)
    _, state = agent.predict(
        {"observation": o_seq[0], "previous_reward": r_seq[0][:, None]} if agent.needs_reward else o_seq[0],
        episode_start=np.ones(2, bool),
    )
    fresh_in = (
        {"observation": o_seq[1], "previous_reward": np.zeros((2, 1), np.float32)} if agent.needs_reward else o_seq[1]
    )
    after_reset, _ = agent.predict(fresh_in, state=state, episode_start=np.ones(2, bool))
    fresh, _ = agent.predict(fresh_in, state=None)
    np.testing.assert_allclose(np.asarray(after_reset, np.float64), np.asarray(fresh, np.float64), atol=1e-5)

    # save / load round trip: identical deterministic actions in a fresh process
    ckpt = agent.save(tmp_path / "agent")
    expected = _roll(agent, o_seq, r_seq, s_seq)
    np.savez(tmp_path / "inputs.npz", obs=o_seq, rew=r_seq, starts=s_seq)
    code = _FRESH.format(
        repo=str(REPO), module=type(agent).__module__, ckpt=str(ckpt), inputs=str(tmp_path / "inputs.npz"), out=str(tmp_path / "actions.npy")
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "actions.npy", allow_pickle=False)
    np.testing.assert_array_equal(got, expected)
    reloaded = load_agent(ckpt, env=env, device="cpu")
    assert type(reloaded) is type(agent)
    assert json.dumps(reloaded.checkpoint_sections(), sort_keys=True) == json.dumps(
        agent.checkpoint_sections(), sort_keys=True
    )

    # load against an env with other spaces raises
    other_obs = "image" if obs_kind == "vector" else "vector"
    other_act = "continuous" if action_kind == "discrete" else "discrete"
    for other in (make_env(other_obs, action_kind), make_env(obs_kind, other_act)):
        with pytest.raises(SpaceMismatchError):
            type(agent).load(ckpt, env=other, device="cpu")

    # wrong-shape and wrong-dtype observations raise, naming the expected space
    bad_shape = np.zeros(
        (*env.observation_space.shape[:-1], env.observation_space.shape[-1] + 1), env.observation_space.dtype
    )
    with pytest.raises(SpaceMismatchError, match="observation space"):
        agent.predict(bad_shape)
    if obs_kind == "image":
        with pytest.raises(SpaceMismatchError, match="dtype"):
            agent.predict(obs.astype(np.float32))
    else:
        with pytest.raises(SpaceMismatchError, match="dtype"):
            agent.predict(np.array(["a"] * env.observation_space.shape[0]))
    return agent
