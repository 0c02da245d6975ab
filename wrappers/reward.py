"""Give agents the previous step's reward through the observation.

- :class:`AddPreviousReward`: observations become ``{"observation": obs, "previous_reward": r}``,
  ``r`` of shape ``(1,)``, the reward of the step that led to ``obs`` (0 right after a reset).
- :class:`VectorAddPreviousReward`: the same for a Gymnasium ``VectorEnv``.

This is the package's one documented way for reward-conditioned agents (Decision Transformer's
return-to-go, the Trajectory Transformer's context) to see rewards under code that only passes
observations to ``predict``, such as SB3's ``evaluate_policy``::

    env = AddPreviousReward(gym.make("Hopper-v5"))
    evaluate_policy(agent, env)   # agent.predict receives the rewards

Agents accept both plain and wrapped observations; ``Agent.needs_reward`` says which use it.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv, VectorObservationWrapper

__all__ = ["AddPreviousReward", "VectorAddPreviousReward"]

REWARD_SPACE = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)


class AddPreviousReward(gym.Wrapper[dict, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Add the previous step's reward to the observation (0 after ``reset``).

    Example:
        >>> env = AddPreviousReward(gym.make("CartPole-v1"))
        >>> obs, _ = env.reset(seed=0)
        >>> obs["previous_reward"]
        array([0.], dtype=float32)
        >>> obs, *_ = env.step(0)
        >>> obs["previous_reward"]
        array([1.], dtype=float32)
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        if isinstance(env.observation_space, gym.spaces.Dict) and "previous_reward" in env.observation_space.spaces:
            raise ValueError("the env is already wrapped with AddPreviousReward")
        self.observation_space = gym.spaces.Dict(
            {"observation": env.observation_space, "previous_reward": REWARD_SPACE}
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return {"observation": obs, "previous_reward": np.zeros(1, np.float32)}, info

    def step(self, action: Any) -> tuple[dict, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        wrapped = {"observation": obs, "previous_reward": np.array([reward], dtype=np.float32)}
        return wrapped, reward, terminated, truncated, info


class VectorAddPreviousReward(VectorObservationWrapper):
    """:class:`AddPreviousReward` for a ``VectorEnv``; rewards are ``(num_envs, 1)``.

    Rows that were just reset (by ``reset`` or by autoreset) carry the reward the env returned for
    that row, which Gymnasium sets to 0 on a NEXT_STEP autoreset step.
    """

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.single_observation_space = gym.spaces.Dict(
            {"observation": env.single_observation_space, "previous_reward": REWARD_SPACE}
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._rewards = np.zeros((env.num_envs, 1), np.float32)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        self._rewards = np.zeros((self.num_envs, 1), np.float32)
        return super().reset(seed=seed, options=options)

    def step(self, actions: Any):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self._rewards = np.asarray(rewards, np.float32).reshape(self.num_envs, 1)
        return self.observations(obs), rewards, terminations, truncations, infos

    def observations(self, observations: Any) -> dict[str, Any]:
        return {"observation": observations, "previous_reward": self._rewards.copy()}
