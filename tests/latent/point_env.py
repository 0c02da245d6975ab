"""Small synthetic envs whose true actions are known, for the latent-action tests.

:class:`PointEnv` moves a point; no walls are ever reached, so every action is visible in every state:

- ``obs_kind="vector"``: a point mass in the plane (episodes are too short to reach the edge of
  its space), observed as ``(x, y)`` plus two distractor dimensions that oscillate with a random
  phase per episode whatever the actions, with Discrete(4) moves or Box(-1, 1, (2,)) velocities;
- ``obs_kind="image"``: a point on an 8x8 torus rendered as an 8x8x3 uint8 frame (a cross-hair: its
  row and column are lit, on a fixed random background), with Discrete(4) moves.

:func:`collect` rolls out uniformly random actions into an :class:`~tt_agents.data.EpisodeDataset`.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from tt_agents.data import Episode, EpisodeDataset

MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])


class PointEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, obs_kind: str = "vector", action_kind: str = "discrete", episode_len: int = 32) -> None:
        self.obs_kind, self.action_kind, self.episode_len = obs_kind, action_kind, episode_len
        if obs_kind == "vector":
            self.observation_space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
        elif obs_kind == "image":
            if action_kind != "discrete":
                raise ValueError("the image PointEnv has discrete moves only")
            self.observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
            self._background = np.random.default_rng(123).integers(0, 60, (8, 8, 3)).astype(np.uint8)
        else:
            raise ValueError(obs_kind)
        self.action_space = gym.spaces.Discrete(4) if action_kind == "discrete" else gym.spaces.Box(-1, 1, (2,), np.float32)
        self._pos = np.zeros(2)
        self._t = 0

    def _obs(self) -> np.ndarray:
        if self.obs_kind == "vector":
            phase = self._phase + 0.5 * self._t
            return np.array([*self._pos, np.cos(phase), np.sin(phase)], np.float32)
        img = self._background.copy()
        x, y = self._pos.astype(int) % 8
        img[y, :, 0] = 250
        img[:, x, 1] = 250
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.obs_kind == "image":
            self._pos = self.np_random.integers(0, 8, 2).astype(float)
        else:
            self._pos = self.np_random.uniform(-1, 1, 2)
        self._phase = self.np_random.uniform(0, 2 * np.pi)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        if self.action_kind == "discrete":
            move = MOVES[int(action)] * (1.0 if self.obs_kind == "image" else 0.1)
        else:
            move = 0.1 * np.clip(np.asarray(action, np.float64), -1, 1)
        self._pos = (self._pos + move) % 8 if self.obs_kind == "image" else self._pos + move
        self._t += 1
        return self._obs(), 0.0, False, self._t >= self.episode_len, {}


def collect(obs_kind: str, action_kind: str, n_episodes: int, seed: int = 0, episode_len: int = 32) -> EpisodeDataset:
    """Uniformly random rollouts of :class:`PointEnv`."""
    env = PointEnv(obs_kind, action_kind, episode_len)
    env.action_space.seed(seed)
    episodes = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed * 1000 + i)
        observations, actions = [obs], []
        for _ in range(episode_len):
            a = env.action_space.sample()
            obs, *_ = env.step(a)
            observations.append(obs)
            actions.append(a)
        n = len(actions)
        episodes.append(Episode(np.stack(observations), np.asarray(actions), np.zeros(n, np.float32),
                                np.zeros(n, bool), np.arange(n) == n - 1, id=i))
    return EpisodeDataset(episodes, env.observation_space, env.action_space, {"env_id": "PointEnv"})
