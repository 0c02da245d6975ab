"""Let one agent act for every sub-env of a Gymnasium vector env.

- :class:`VectorPlanner`: a ``VectorWrapper`` that owns the agent's per-env state. Each
  ``step()`` makes **one** batched ``agent.predict`` call for all sub-envs (for ``TTPlanner``,
  one beam search over every beam of every env), feeds the previous rewards to agents whose
  ``needs_reward`` is true (plain observations to the others, SB3 policies included), and marks
  ``episode_start`` for sub-envs that were just reset, in either of Gymnasium's autoreset modes
  (``NEXT_STEP``, the default, and ``SAME_STEP``). ``DISABLED`` is refused, since sub-envs would
  then need resets this wrapper cannot see.

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
from gymnasium.vector import VectorEnv, VectorWrapper

from tt_agents.rollout import PolicyDriver

__all__ = ["VectorPlanner"]


class VectorPlanner(VectorWrapper):
    """Drive a vector env with a policy; ``step()`` without actions uses the policy's.

    Args:
        env: the vector env (its single spaces must be the policy's).
        agent: any :class:`tt_agents.Agent`, or anything with SB3's ``predict`` (an SB3 model or
            policy: it gets plain observations, since its ``needs_reward`` is not true).
        deterministic: passed to ``predict``.
        act: act-time settings of a tt-agents agent (its first state is
            ``agent.initial_state(n_envs, act=act)``); ``None``: the agent's own.

    ``step(actions=None)``: with ``None`` the agent plans. Explicit actions are passed to the env
    untouched and the agent is not consulted; its context then misses that step, so mix the two
    only at episode boundaries. ``info["actions"]`` holds the actions taken and
    ``info["episode_start"]`` which sub-envs start a new episode with the returned observation.
    ``autoreset_step`` marks the sub-envs whose next ``step`` only resets them (``NEXT_STEP``
    mode): their actions are ignored by the env, and ``evaluate`` does not count those steps.
    The bookkeeping is :class:`tt_agents.rollout.PolicyDriver`'s, the same as ``evaluate``'s.
    """

    def __init__(self, env: VectorEnv, agent: Any, deterministic: bool = True, act: Any = None) -> None:
        super().__init__(env)
        self.agent = agent
        self.driver = PolicyDriver(env, agent, deterministic, act, who="VectorPlanner")
        self.mode = self.driver.tracker.mode

    @property
    def deterministic(self) -> bool:
        return self.driver.deterministic

    @property
    def state(self) -> Any:
        """The agent's per-env state."""
        return self.driver.state

    @state.setter
    def state(self, value: Any) -> None:
        self.driver.state = value

    @property
    def episode_start(self) -> np.ndarray:
        return self.driver.tracker.episode_start

    @property
    def autoreset_step(self) -> np.ndarray:
        return self.driver.tracker.autoreset_step

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        return self.driver.reset(seed=seed, options=options)

    def act(self) -> np.ndarray:
        """The agent's actions for the current observations (one batched ``predict``)."""
        if self.driver.obs is None:
            raise RuntimeError("VectorPlanner.act() called before reset(); call reset() first")
        return self.driver.actions()

    def step(self, actions: Any = None):
        step = self.driver.step(actions)
        info = dict(step.info)
        info["actions"] = np.asarray(step.actions)
        info["episode_start"] = self.driver.tracker.episode_start.copy()
        return step.observations, step.rewards, step.terminations, step.truncations, info
