"""Let one agent act for every sub-env of a Gymnasium vector env.

- :class:`VectorPlanner`: a ``VectorWrapper`` that owns the agent's per-env state. Each
  ``step()`` makes **one** batched ``agent.predict`` call for all sub-envs (for ``TTPlanner``,
  one beam search over every beam of every env), feeds the previous rewards to agents that use
  them, and marks ``episode_start`` for sub-envs that were just reset, in either of Gymnasium's
  autoreset modes (``NEXT_STEP``, the default, and ``SAME_STEP``). ``DISABLED`` is refused,
  since sub-envs would then need resets this wrapper cannot see.

There is no single-env counterpart: a single env needs no batching; use ``agent.predict``
directly (or SB3's ``evaluate_policy``).

Example:
    >>> import gymnasium as gym
    >>> from tt_agents import BCPolicy
    >>> envs = gym.make_vec("CartPole-v1", num_envs=2)
    >>> agent = BCPolicy(envs.single_observation_space, envs.single_action_space, device="cpu", seed=0)
    >>> planner = VectorPlanner(envs, agent)
    >>> obs, info = planner.reset(seed=0)
    >>> obs, rewards, terminations, truncations, info = planner.step()  # the agent's actions
    >>> info["actions"].shape
    (2,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from tt_agents.spaces import REWARD_KEYS
from wrappers._autoreset import autoreset_mode

__all__ = ["VectorPlanner"]


class VectorPlanner(VectorWrapper):
    """Drive a vector env with an agent; ``step()`` without actions uses the agent's.

    Args:
        env: the vector env (its single spaces must be the agent's).
        agent: any :class:`tt_agents.Agent`.
        deterministic: passed to ``predict``.

    ``step(actions=None)``: with ``None`` the agent plans. Explicit actions are passed to the env
    untouched and the agent is not consulted; its context then misses that step, so mix the two
    only at episode boundaries. ``info["actions"]`` holds the actions taken and
    ``info["episode_start"]`` which sub-envs start a new episode with the returned observation.
    ``autoreset_step`` marks the sub-envs whose next ``step`` only resets them (``NEXT_STEP``
    mode): their actions are ignored by the env, and ``evaluate`` does not count those steps.
    """

    def __init__(self, env: VectorEnv, agent: Any, deterministic: bool = True) -> None:
        super().__init__(env)
        self.agent = agent
        self.deterministic = deterministic
        self.mode = autoreset_mode(env)
        if self.mode == AutoresetMode.DISABLED:
            raise ValueError(
                "VectorPlanner needs an autoresetting vector env (NEXT_STEP or SAME_STEP); "
                "create it with gym.make_vec(..., vector_kwargs={'autoreset_mode': AutoresetMode.NEXT_STEP})"
            )
        n = env.num_envs
        self.state: Any = None
        self._obs: Any = None
        self._rewards = np.zeros(n, np.float32)
        self.episode_start = np.ones(n, dtype=bool)
        self.autoreset_step = np.zeros(n, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.state = None
        self._obs = obs
        self._rewards[:] = 0.0
        self.episode_start[:] = True
        self.autoreset_step[:] = False
        return obs, info

    def _agent_input(self) -> Any:
        if isinstance(self._obs, dict) and set(self._obs) == REWARD_KEYS:
            return self._obs
        return {"observation": self._obs, "previous_reward": self._rewards[:, None].copy()}

    def act(self) -> np.ndarray:
        """The agent's actions for the current observations (one batched ``predict``)."""
        if self._obs is None:
            raise RuntimeError("VectorPlanner.act() called before reset(); call reset() first")
        actions, self.state = self.agent.predict(
            self._agent_input(), state=self.state, episode_start=self.episode_start, deterministic=self.deterministic
        )
        return actions

    def step(self, actions: Any = None):
        if actions is None:
            actions = self.act()
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        done = np.logical_or(terminations, truncations)
        if self.mode == AutoresetMode.NEXT_STEP:
            # rows that were done last step were reset by this step: they start an episode now
            starts = self.autoreset_step.copy()
            self.autoreset_step = done.copy()
        else:  # SAME_STEP: rows that ended this step already hold the new episode's first obs
            starts = done.copy()
        self._obs = obs
        self._rewards = np.where(starts, 0.0, np.asarray(rewards, np.float32)).astype(np.float32)
        self.episode_start = starts
        info = dict(info)
        info["actions"] = np.asarray(actions)
        info["episode_start"] = starts.copy()
        return obs, rewards, terminations, truncations, info
