"""The one rollout loop (tt_agents.rollout) and VectorPlanner: SB3 policies and tt-agents agents through the same code."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO

from tests.fake_env import make_env
from tt_agents import TTPlanner
from tt_agents.data import load_dataset
from tt_agents.evaluation import evaluate
from tt_agents.planning import PlanConfig
from tt_agents.rollout import AutoresetTracker, PolicyDriver, rollout
from wrappers.action_logger import MissingExtraError, VectorActionLogger
from wrappers.planning import VectorPlanner
from wrappers.reward import VectorAddPreviousReward


class Recorder:
    """A policy that records what predict was given (plain observations, or the previous-reward dict)."""

    def __init__(self, action_space: gym.Space, needs_reward: bool) -> None:
        self.space, self.needs_reward, self.calls, self.initial = action_space, needs_reward, [], []

    def initial_state(self, n_envs, act=None):
        self.initial.append((n_envs, act))
        return {"act": act}

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.calls.append((obs, state, np.array(episode_start)))
        n = len(obs["observation"] if isinstance(obs, dict) else obs)
        return np.stack([self.space.sample() for _ in range(n)]), state


def _vec(n=2, mode=AutoresetMode.NEXT_STEP, episode_len=3):
    return gym.vector.SyncVectorEnv([lambda: make_env("vector", "continuous", episode_len=episode_len)] * n,
                                    autoreset_mode=mode)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_quotas_lengths_and_episode_starts_in_both_autoreset_modes(mode):
    env = _vec(mode=mode)
    policy = Recorder(env.single_action_space, needs_reward=False)
    res = rollout(env, policy, n_episodes=5, seed=0, progress=False)
    assert len(res.returns) == 5 and res.lengths == [3] * 5  # sub-env quotas 2 and 3, every episode 3 steps
    starts = np.stack([c[2] for c in policy.calls])
    assert starts[0].all() and starts[1:3].sum() == 0
    # the next episode starts one call later in NEXT_STEP mode (the reset step is one call with no transition)
    first_restart = 4 if mode == AutoresetMode.NEXT_STEP else 3
    assert starts[first_restart].all() and not starts[first_restart - 1].any()


def test_rewards_only_for_policies_that_need_them_and_act_goes_to_initial_state():
    plain = Recorder(gym.spaces.Box(-1, 1, (2,), np.float32), needs_reward=False)
    rollout(_vec(), plain, n_steps=4, seed=0, progress=False)
    assert all(isinstance(c[0], np.ndarray) for c in plain.calls) and plain.initial == []
    with_reward = Recorder(gym.spaces.Box(-1, 1, (2,), np.float32), needs_reward=True)
    rollout(_vec(), with_reward, n_steps=4, seed=0, progress=False, act="settings")
    obs0 = with_reward.calls[0][0]
    assert set(obs0) == {"observation", "previous_reward"} and obs0["previous_reward"].shape == (2, 1)
    assert (obs0["previous_reward"] == 0).all() and (with_reward.calls[1][0]["previous_reward"] != 0).any()
    assert with_reward.initial == [(2, "settings")] and with_reward.calls[0][1] == {"act": "settings"}
    # observations already in the previous-reward layout pass through as they are
    wrapped = Recorder(gym.spaces.Box(-1, 1, (2,), np.float32), needs_reward=True)
    rollout(VectorAddPreviousReward(_vec()), wrapped, n_steps=4, seed=0, progress=False)
    obs0 = wrapped.calls[0][0]
    assert set(obs0) == {"observation", "previous_reward"} and not isinstance(obs0["observation"], dict)


def test_evaluate_and_vector_planner_give_act_to_initial_state_and_start_from_none_without_it():
    policy = Recorder(gym.spaces.Box(-1, 1, (2,), np.float32), needs_reward=False)
    evaluate(policy, _vec(), n_episodes=2, progress=False, act="eval settings")
    assert policy.initial == [(2, "eval settings")] and policy.calls[0][1] == {"act": "eval settings"}
    planner = VectorPlanner(_vec(), policy, act="planner settings")
    planner.reset(seed=0)
    planner.step()
    assert policy.initial[-1] == (2, "planner settings") and policy.calls[-1][1] == {"act": "planner settings"}
    fresh = Recorder(gym.spaces.Box(-1, 1, (2,), np.float32), needs_reward=False)
    planner = VectorPlanner(_vec(), fresh)
    planner.reset(seed=0)
    planner.step()
    evaluate(fresh, _vec(), n_episodes=2, progress=False)
    assert fresh.initial == [] and all(c[1] is None for c in fresh.calls)  # act=None: state=None, as SB3 starts


def test_disabled_autoreset_is_refused():
    with pytest.raises(ValueError, match="autoresetting"):
        PolicyDriver(_vec(mode=AutoresetMode.DISABLED), Recorder(gym.spaces.Discrete(2), False))


def test_tracker_in_disabled_mode_waits_for_the_callers_reset():
    tracker = AutoresetTracker(_vec(mode=AutoresetMode.DISABLED), allow_disabled=True)
    counted, done = tracker.step([True, False], [False, False])
    assert counted.all() and done.tolist() == [True, False] and not tracker.episode_start.any()
    assert not tracker.autoreset_step.any()  # no step of its own resets: the caller does
    tracker.reset([True, False])
    assert tracker.episode_start.tolist() == [True, False]
    tracker.step([False, False], [False, False])
    assert not tracker.episode_start.any()


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_action_logger_shares_the_tracker_and_records_again_after_missing_extras(mode):
    # episodes of 3 steps in 2 sub-envs; the first step lacks its extras, so both first episodes are dropped
    envs = VectorActionLogger(_vec(mode=mode), "tests/resume-v0", extra_spaces={"z": gym.spaces.Discrete(9)},
                              fsync=False)
    assert isinstance(envs._tracker, AutoresetTracker) and envs._tracker.mode == mode
    envs.reset(seed=0)
    with pytest.raises(MissingExtraError):
        envs.step(envs.action_space.sample())
    for _ in range(20):  # 21 steps in all: episodes end at steps 3, 6, .. (SAME_STEP) or 3, 7, .. (NEXT_STEP)
        envs.log_extras(z=np.full(2, 1))
        envs.step(envs.action_space.sample())
    envs.close()
    lengths = load_dataset("tests/resume-v0").lengths.tolist()
    finished = 2 * (6 if mode == AutoresetMode.SAME_STEP else 4)  # the dropped first episodes not counted
    assert lengths[:finished] == [3] * finished and all(n < 3 for n in lengths[finished:])


def _drive(envs, policy, steps=12, **kw):
    planner = VectorPlanner(envs, policy, **kw)
    planner.reset(seed=0)
    actions = []
    for _ in range(steps):
        _, _, _, _, info = planner.step()
        actions.append(info["actions"])
    return planner, np.stack(actions)


def test_vector_planner_drives_an_sb3_ppo_policy_and_a_tt_planner_through_the_same_code():
    ppo = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", n_steps=16, batch_size=16)
    envs = gym.make_vec("CartPole-v1", num_envs=2)
    planner, actions = _drive(envs, ppo)
    assert actions.shape == (12, 2) and set(np.unique(actions)) <= {0, 1}
    assert isinstance(planner.driver, PolicyDriver) and not planner.driver.needs_reward
    # the same loop and its episode quotas for SB3's policy object and for the model
    for policy in (ppo, ppo.policy):
        res = rollout(gym.make_vec("CartPole-v1", num_envs=2), policy, n_episodes=3, seed=0, progress=False)
        assert len(res.returns) == 3 and all(r > 0 for r in res.returns)

    tt_env = make_env("vector", "continuous", episode_len=4)
    tt = TTPlanner.from_preset("tiny", tt_env.observation_space, tt_env.action_space, device="cpu", seed=0)
    envs = _vec(n=2, episode_len=4)
    planner, actions = _drive(envs, tt, steps=6, act=PlanConfig(beam_width=2, horizon=1, n_expand=2))
    assert actions.shape == (6, 2, 2) and planner.driver.needs_reward
    assert planner.state.act.beam_width == 2  # the act settings went to initial_state
    res = rollout(_vec(n=2, episode_len=4), tt, n_episodes=2, seed=0, progress=False)
    assert res.lengths == [4, 4]
