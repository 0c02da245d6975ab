"""A point mass driven by piecewise-constant (or piecewise-smooth) actions with known switch points.

The ground truth for temporal segmentation: a scripted policy holds one action for a random
duration (3 to 30 steps by default, uniformly), then switches to a new one. Since every switch is
known, a model of latent transitions (:class:`tt_agents.TrajectoryAutoencoder`) can be scored by
how well its transitions match them (:func:`tt_agents.autoencoder.boundary_f1`).

- :class:`SwitchingPointMass`: the env, a 2-d point mass (observation: position and velocity,
  action: a force in [-1, 1]^2, or one of 4 directions with ``discrete=True``).
- :class:`SwitchingPolicy`: the scripted policy; ``segment_start`` in each step's info is true
  where a new action began.
- :func:`switching_dataset`: episodes of the policy in the env, as an
  :class:`~tt_agents.data.EpisodeDataset` with the true switches as the extra field
  ``segment_start``.

Example:
    >>> ds = switching_dataset(n_episodes=2, episode_len=50, seed=0)
    >>> len(ds), ds[0].observations.shape, ds[0].extras["segment_start"][0]
    (2, (51, 4), True)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["ENV_ID", "SwitchingPointMass", "SwitchingPolicy", "switching_dataset"]

ENV_ID = "tt_agents/SwitchingPointMass-v0"
"""The env's Gymnasium id (registered when this module is imported)."""

_DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)


class SwitchingPointMass(gym.Env):
    """A 2-d point mass with friction: ``v <- 0.8 v + 0.2 a``, ``x <- clip(x + 0.1 v, -5, 5)``.

    The reward is minus the distance to the origin (any reward does: the segmentation ignores it).

    Args:
        episode_len: steps before truncation.
        discrete: actions are one of 4 unit directions (``Discrete(4)``) instead of ``Box(-1, 1, (2,))``.
    """

    metadata = {"render_modes": []}

    def __init__(self, episode_len: int = 200, discrete: bool = False) -> None:
        if episode_len < 1:
            raise ValueError(f"episode_len must be >= 1, got {episode_len}")
        self.episode_len = episode_len
        self.discrete = discrete
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(4) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._x = np.zeros(2, np.float32)
        self._v = np.zeros(2, np.float32)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._x, self._v]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self._v = np.zeros(2, np.float32)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        a = _DIRECTIONS[int(action)] if self.discrete else np.clip(np.asarray(action, np.float32).reshape(2), -1, 1)
        self._v = (0.8 * self._v + 0.2 * a).astype(np.float32)
        self._x = np.clip(self._x + 0.1 * self._v, -5, 5).astype(np.float32)
        self._t += 1
        reward = -float(np.linalg.norm(self._x))
        return self._obs(), reward, False, self._t >= self.episode_len, {}


class SwitchingPolicy:
    """Hold an action for a random duration in ``[min_len, max_len]`` steps, then draw a new one.

    Args:
        action_space: the env's action space (Box: uniform in its bounds; Discrete: a different
            direction than the current one).
        min_len, max_len: segment durations, inclusive, drawn uniformly.
        smooth: piecewise-smooth instead of piecewise-constant: within a segment the action drifts
            along a slow sinusoid of amplitude ``smooth`` around its value (Box actions only).
        min_change: a new Box action differs from the previous one by at least this much (Euclidean,
            with the action space scaled to [-1, 1]): a switch to an almost equal action is not a
            switch anyone could see in the data.
        seed: the policy's RNG seed.
    """

    def __init__(self, action_space: gym.Space, min_len: int = 3, max_len: int = 30, smooth: float = 0.0,
                 min_change: float = 0.5, seed: int = 0) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        if smooth and not isinstance(action_space, gym.spaces.Box):
            raise ValueError("smooth > 0 needs Box actions")
        self.action_space, self.min_len, self.max_len, self.smooth = action_space, min_len, max_len, smooth
        self.min_change = min_change
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self._left = 0
        self._action: Any = None
        self._age = 0
        self._phase = 0.0

    def act(self) -> tuple[Any, bool]:
        """The next action and whether it starts a new segment."""
        start = self._left == 0
        if start:
            self._left = int(self.rng.integers(self.min_len, self.max_len + 1))
            self._age = 0
            self._phase = float(self.rng.uniform(0, 2 * np.pi))
            if isinstance(self.action_space, gym.spaces.Discrete):
                choices = [a for a in range(int(self.action_space.n)) if a != self._action]
                self._action = int(self.rng.choice(choices))
            else:
                low, high = self.action_space.low, self.action_space.high
                span = high - low
                margin = self.smooth * span / 2
                previous = self._action
                for _ in range(100):
                    self._action = self.rng.uniform(low + margin, high - margin).astype(np.float32)
                    if previous is None or np.linalg.norm(2 * (self._action - previous) / span) >= self.min_change:
                        break
        self._left -= 1
        self._age += 1
        if isinstance(self.action_space, gym.spaces.Discrete):
            return self._action, start
        a = self._action
        if self.smooth:
            span = self.action_space.high - self.action_space.low
            a = a + self.smooth * span / 2 * np.sin(self._phase + 0.2 * self._age)
        return np.asarray(a, np.float32), start


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="tt_agents.envs.switching:SwitchingPointMass")


def switching_dataset(
    n_episodes: int = 64,
    episode_len: int = 200,
    seed: int = 0,
    discrete: bool = False,
    min_len: int = 3,
    max_len: int = 30,
    smooth: float = 0.0,
):
    """Rollouts of :class:`SwitchingPolicy` in :class:`SwitchingPointMass`, with the true switches.

    Returns:
        an :class:`~tt_agents.data.EpisodeDataset`; each episode's ``extras["segment_start"]`` is
        ``(T,)`` bool, true where the policy began a new action (always at step 0). Its metadata
        records ``true_mean_segment_length`` (``(min_len + max_len) / 2``).
    """
    from tt_agents.data import Episode, EpisodeDataset

    env = SwitchingPointMass(episode_len, discrete)
    policy = SwitchingPolicy(env.action_space, min_len, max_len, smooth, seed=seed)
    episodes = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed * 100_003 + i)
        policy.reset()
        observations, actions, rewards, starts = [obs], [], [], []
        done = False
        while not done:
            a, start = policy.act()
            obs, r, term, trunc, _ = env.step(a)
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
            starts.append(start)
            done = term or trunc
        T = len(rewards)
        episodes.append(Episode(
            np.stack(observations).astype(np.float32),
            np.asarray(actions, np.int64 if discrete else np.float32),
            np.asarray(rewards, np.float32),
            np.zeros(T, bool),
            np.arange(1, T + 1) == T,
            extras={"segment_start": np.asarray(starts, bool)},
            id=i,
        ))
    meta = {"env_id": ENV_ID, "dataset_id": f"switching/{'discrete' if discrete else 'continuous'}-v0",
            "true_mean_segment_length": (min_len + max_len) / 2}
    return EpisodeDataset(episodes, env.observation_space, env.action_space, metadata=meta)
