"""Wrappers that use a trained :class:`~tt_agents.latent.LatentActionPolicy` while an env runs.

- :class:`LatentActionRelabel`: adds each transition's inferred latent action (and its code
  indices) to the step's ``info``, as ``info["latent_actions"]`` and ``info["latent_codes"]``, so
  that :class:`wrappers.ActionLogger` with ``extra_spaces={"latent_actions": agent.latent_space}``
  logs it beside the env's actions.
- :class:`LatentActionSpace`: gives the env the agent's latent action space; each latent action is
  decoded to an env action by the agent's decoder (from the current observation if the decoder uses
  it), so any agent, SB3's PPO included, acts in latent space.

Neither has a vector counterpart yet: both keep per-env observation history, which
``gymnasium.vector.SyncVectorEnv`` / ``AsyncVectorEnv`` over wrapped envs already give per sub-env
(wrap each sub-env: ``SyncVectorEnv([lambda: LatentActionSpace(make_env(), agent)] * n)``).

Example:
    >>> import gymnasium as gym
    >>> from tt_agents.latent import LatentActionPolicy
    >>> env = gym.make("CartPole-v1")
    >>> agent = LatentActionPolicy.from_preset("tiny", env.observation_space, env.action_space, device="cpu")
    >>> latent_env = LatentActionSpace(env, agent)
    >>> obs, _ = latent_env.reset(seed=0)
    >>> latent_env.action_space.shape
    (8,)
    >>> obs, reward, *_ = latent_env.step(latent_env.action_space.sample())
    >>> relabeled = LatentActionRelabel(gym.make("CartPole-v1"), agent)
    >>> _ = relabeled.reset(seed=0)
    >>> relabeled.step(0)[-1]["latent_actions"].shape
    (8,)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from tt_agents.spaces import SpaceMismatchError

__all__ = ["LatentActionRelabel", "LatentActionSpace"]


def _check(env: gym.Env, agent: Any, name: str) -> None:
    from tt_agents.latent import LatentActionPolicy

    if not isinstance(agent, LatentActionPolicy):
        raise TypeError(f"{name} needs a LatentActionPolicy, got {type(agent).__name__}")
    if env.observation_space.shape != agent.observation_space.shape:
        raise SpaceMismatchError(
            f"{name}: the env's observation space {env.observation_space} does not fit the agent's "
            f"{agent.observation_space}"
        )


class LatentActionRelabel(gym.Wrapper):
    """Add ``info["latent_actions"]`` (and ``info["latent_codes"]``) to every step: the agent's IDM on
    ``(o_{t-history}, ..., o_t, o_{t+1})``, frames before the episode's start repeating ``o_0``.

    Args:
        env: the env (its observations must fit the agent's).
        agent: a trained :class:`~tt_agents.latent.LatentActionPolicy`.
    """

    def __init__(self, env: gym.Env, agent: Any) -> None:
        _check(env, agent, "LatentActionRelabel")
        super().__init__(env)
        self.agent = agent
        self._history: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._history = [np.asarray(obs)] * (self.agent.config.lam.history + 1)
        return obs, info

    def step(self, action):
        if not self._history:
            raise gym.error.ResetNeeded("Cannot call env.step() before calling env.reset()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        window = np.stack([*self._history, np.asarray(obs)])[None]  # (1, history + 2, *obs)
        z, codes = self.agent.infer_latents(window)
        info = {**info, "latent_actions": z[0]}
        if codes.shape[1]:
            info["latent_codes"] = codes[0]
        self._history = [*self._history[1:], np.asarray(obs)]
        return obs, reward, terminated, truncated, info


class LatentActionSpace(gym.Wrapper):
    """Act in the agent's latent action space: ``step(z)`` decodes ``z`` to an env action and steps the env.

    The action space is the agent's ``latent_space`` (a float32 Box of the latent's width, bounded by the
    latents of the agent's training data; latents outside are decoded as given); ``info["env_action"]``
    holds the decoded action.

    Args:
        env: the env (its spaces must fit the agent's).
        agent: a trained :class:`~tt_agents.latent.LatentActionPolicy`.
    """

    def __init__(self, env: gym.Env, agent: Any) -> None:
        _check(env, agent, "LatentActionSpace")
        if env.action_space != agent.action_space:
            raise SpaceMismatchError(
                f"LatentActionSpace: the env's action space {env.action_space} differs from the agent's "
                f"{agent.action_space}"
            )
        super().__init__(env)
        self.agent = agent
        self.action_space = agent.latent_space
        self._obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.asarray(obs)
        return obs, info

    def step(self, action):
        if self._obs is None:
            raise gym.error.ResetNeeded("Cannot call env.step() before calling env.reset()")
        z = np.asarray(action, np.float32).reshape(1, -1)
        if z.shape[1] != self.action_space.shape[0]:
            raise SpaceMismatchError(f"latent action of shape {np.shape(action)}, expected {self.action_space.shape}")
        env_action = self.agent.decode(z, self._obs[None] if self.agent.config.decoder_uses_obs else None)[0]
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self._obs = np.asarray(obs)
        return obs, reward, terminated, truncated, {**info, "env_action": env_action}
