"""Prompted (in-context) Decision Transformer: prompt sampling, prompts in predict's state, and Procgen."""

import contextlib
import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.test_dt import rollout
from tt_agents import TrainConfig
from tt_agents.data import DatasetError, Episode, EpisodeDataset
from tt_agents.data.prompts import PromptSampler, episode_tasks, make_prompt
from tt_agents.dt import DecisionTransformer, DTConfig

OBS = gym.spaces.Box(-10, 10, (3,), np.float32)


def tasks_dataset(n_tasks=3, per_task=3, T=5, action_space=None):
    """Episodes whose observations are all the episode's id (so rows can be traced back)."""
    episodes = []
    for i in range(n_tasks * per_task):
        T_i = T + i % 2
        episodes.append(Episode(np.full((T_i + 1, 3), i, np.float32), np.full(T_i, i % 4, np.int64),
                                np.ones(T_i, np.float32), np.zeros(T_i, bool), np.zeros(T_i, bool),
                                extras={"task": np.full(T_i, i % n_tasks)}, id=i))
    return EpisodeDataset(episodes, OBS, action_space or gym.spaces.Discrete(4))


def test_prompt_sampler_draws_other_episodes_of_the_same_task():
    ds = tasks_dataset()
    sampler = PromptSampler(ds, context_len=4, prompt_episodes=2, prompt_len=3, batch_size=32, task_field="task")
    batch = sampler.sample(0)
    assert batch["observations"].shape == (32, 4, 3) and batch["prompt_observations"].shape == (32, 6, 3)
    assert batch["prompt_actions"].shape == (32, 6) and batch["prompt_timesteps"].dtype == np.int64
    for row in range(32):
        target = batch["observations"][row, batch["mask"][row]][:, 0]
        assert len(set(target)) == 1 and batch["mask"][row, -1]  # one episode, left-padded
        demos = set(batch["prompt_observations"][row, batch["prompt_mask"][row]][:, 0].tolist())
        assert target[0] not in demos
        assert {int(d) % 3 for d in demos} == {int(target[0]) % 3}
    for k, v in sampler.sample(0).items():  # a pure function of the step
        np.testing.assert_array_equal(v, batch[k])
    assert not np.array_equal(sampler.sample(1)["observations"], batch["observations"])


def test_prompt_returns_to_go_and_segments():
    ep = tasks_dataset()[0]  # 5 steps, reward 1 each
    p = make_prompt([ep], prompt_len=3)
    assert p["returns_to_go"].tolist() == [3.0, 2.0, 1.0] and p["timesteps"].tolist() == [2, 3, 4]
    p = make_prompt([ep], prompt_len=7, segment="start")
    assert p["mask"].tolist() == [False, False, True, True, True, True, True]
    assert p["returns_to_go"][2:].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0]


def test_task_field_must_exist():
    ds = tasks_dataset()
    with pytest.raises(DatasetError, match="level"):
        episode_tasks(list(ds), "level")
    np.testing.assert_array_equal(episode_tasks(list(ds), None), 0)


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(4), gym.spaces.Box(-1, 1, (2,), np.float32)])
def test_prompted_cache_matches_full_recompute(action_space):
    ds = tasks_dataset(action_space=action_space)
    if isinstance(action_space, gym.spaces.Box):
        for ep in ds:
            ep.actions = np.random.default_rng(ep.id).uniform(-1, 1, (len(ep), 2)).astype(np.float32)
    cfg = DTConfig(context_len=3, n_layer=2, n_head=2, n_embd=16, prompt_episodes=2, prompt_len=4)
    agent = DecisionTransformer(OBS, action_space, cfg, device="cpu", seed=0)
    prompts = [[ds[0], ds[3]], [ds[1]], [ds[2], ds[5], ds[8]]]  # one per env, of different lengths
    _, out_cache = rollout(agent, "cache", 3, 12, resets=(4,), prompt=prompts)
    _, out_full = rollout(agent, "recompute", 3, 12, resets=(4,), prompt=prompts)
    torch.testing.assert_close(out_cache, out_full, atol=1e-5, rtol=0)
    _, out_other = rollout(agent, "cache", 3, 12, resets=(4,), prompt=[ds[4]])
    assert not torch.allclose(out_other, out_cache, atol=1e-4)


def test_prompts_are_required_exactly_by_prompted_agents():
    ds = tasks_dataset()
    obs = {"observation": np.zeros(3, np.float32), "previous_reward": np.zeros(1, np.float32)}
    prompted = DecisionTransformer(OBS, ds.action_space, DTConfig(n_layer=1, n_embd=8, prompt_episodes=1), device="cpu")
    with pytest.raises(ValueError, match="set_prompt"):
        prompted.predict(obs)
    prompted.set_prompt([ds[0]])
    prompted.predict(obs)
    with pytest.raises(ValueError, match="2 prompts for 3 envs"):
        prompted.initial_state(3, prompt=[[ds[0]], [ds[1]]])
    plain = DecisionTransformer(OBS, ds.action_space, DTConfig(n_layer=1, n_embd=8), device="cpu")
    with pytest.raises(ValueError, match="without prompts"):
        plain.set_prompt([ds[0]])


# ------------------------------------------------------------------------- Procgen
RIGHT, LEFT = 7, 1  # coinrun's action indices


def coinrun_episode(procgen, level: int, action: int, task: int, T: int = 8, id: int = 0) -> Episode:
    """``T`` steps of one constant action on a coinrun level (procgen is deterministic given the level)."""
    env = procgen.ProcgenGym3Env(num=1, env_name="coinrun", num_levels=1, start_level=level)
    _, obs, _ = env.observe()
    frames, rewards = [obs["rgb"][0]], []
    for _ in range(T):
        env.act(np.array([action]))
        reward, obs, _ = env.observe()
        frames.append(obs["rgb"][0])
        rewards.append(float(reward[0]))
    return Episode(np.stack(frames), np.full(T, action, np.int64), np.array(rewards, np.float32), np.zeros(T, bool),
                   np.zeros(T, bool), extras={"task": np.full(T, task)}, id=id)


def test_prompted_dt_on_procgen_reads_the_task_from_the_prompt():
    """Tasks share levels and differ only in the demonstrated behaviour, so only the prompt tells them apart."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        procgen = pytest.importorskip("procgen")  # its gym import prints a deprecation notice
    tasks = [(0, RIGHT), (0, LEFT), (1, RIGHT), (1, LEFT)]
    train = [coinrun_episode(procgen, lvl, a, task, id=2 * task + k) for task, (lvl, a) in enumerate(tasks)
             for k in range(2)]
    ds = EpisodeDataset(train, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(15))
    cfg = DTConfig(context_len=4, n_layer=2, n_head=2, n_embd=32, dropout=0.0, cnn_channels=(8, 16, 16),
                   prompt_episodes=1, prompt_len=4, task_field="task")
    agent = DecisionTransformer(ds.observation_space, ds.action_space, cfg, device="cpu", seed=0)
    result = agent.fit(ds, TrainConfig(steps=150, batch_size=16, lr=1e-3, warmup_steps=10, progress=False))
    assert result.losses[-1] < 0.5 * result.losses[0]

    # evaluation: prompts from freshly collected demonstrations, acting in the env end to end
    for level in (0, 1):
        actions = {}
        for demo_action in (RIGHT, LEFT):
            agent.set_prompt([coinrun_episode(procgen, level, demo_action, task=-1)])
            env = procgen.ProcgenGym3Env(num=1, env_name="coinrun", num_levels=1, start_level=level)
            state, taken = None, []
            reward, obs, first = env.observe()
            for _ in range(6):
                a, state = agent.predict({"observation": obs["rgb"], "previous_reward": reward[:, None]}, state, first)
                env.act(a)
                taken.append(int(a[0]))
                reward, obs, first = env.observe()
            actions[demo_action] = taken
        assert actions[RIGHT] != actions[LEFT], actions
        assert actions[RIGHT][0] == RIGHT and actions[LEFT][0] == LEFT, actions  # same frame, different prompt
