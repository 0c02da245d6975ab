"""A configurable fake env shared by the tests (Gymnasium's tests do the same).

Observations are vectors (float32, ``(4,)``) or images (uint8, ``(64, 64, 3)``); actions are
Discrete(3) or Box(-1, 1, (2,)). Dynamics are deterministic given the seed, episodes end after
``episode_len`` steps (terminated) unless ``max_episode_steps`` truncates them first.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

OBS_KINDS = ("vector", "image")
ACTION_KINDS = ("discrete", "continuous")


class FakeEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        obs_kind: str = "vector",
        action_kind: str = "continuous",
        episode_len: int = 10,
        render_mode: str | None = None,
    ) -> None:
        self.obs_kind, self.action_kind, self.episode_len = obs_kind, action_kind, episode_len
        self.render_mode = render_mode
        if obs_kind == "vector":
            self.observation_space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
        elif obs_kind == "image":
            self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        else:
            raise ValueError(obs_kind)
        if action_kind == "discrete":
            self.action_space = gym.spaces.Discrete(3)
        elif action_kind == "continuous":
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        else:
            raise ValueError(action_kind)
        self._state = np.zeros(4, np.float32)
        self._t = 0

    def _obs(self):
        if self.obs_kind == "vector":
            return self._state.copy()
        img = np.zeros((64, 64, 3), np.uint8)
        v = ((np.tanh(self._state) + 1) * 127).astype(np.uint8)
        img[:, :16] = v[0]
        img[:, 16:32] = v[1]
        img[:, 32:48, 0] = v[2]
        img[:, 48:, 1] = v[3]
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._state = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        a = float(action) - 1.0 if self.action_kind == "discrete" else float(np.sum(np.clip(action, -1, 1)))
        self._state = np.clip(0.9 * self._state + 0.1 * a + 0.05 * np.sin(self._t), -10, 10).astype(np.float32)
        self._t += 1
        reward = float(1.0 - abs(self._state[0] - 0.5))
        terminated = self._t >= self.episode_len
        return self._obs(), reward, terminated, False, {}

    def render(self):
        return np.full((32, 32, 3), int(self._t * 10) % 255, np.uint8)


def make_env(obs_kind: str = "vector", action_kind: str = "continuous", **kwargs) -> FakeEnv:
    return FakeEnv(obs_kind, action_kind, **kwargs)


def make_dataset(
    obs_kind: str = "vector", action_kind: str = "continuous", n_episodes: int = 4, seed: int = 0, episode_len: int = 10
):
    """Random-policy rollouts of the fake env as an EpisodeDataset."""
    from tt_agents.data import Episode, EpisodeDataset

    env = make_env(obs_kind, action_kind, episode_len=episode_len)
    env.action_space.seed(seed)
    episodes = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
            terms.append(term)
            truncs.append(trunc)
            done = term or trunc
        episodes.append(
            Episode(
                np.stack(observations),
                np.array(actions),
                np.array(rewards, np.float32),
                np.array(terms),
                np.array(truncs),
                id=i,
            )
        )
    return EpisodeDataset(
        episodes,
        env.observation_space,
        env.action_space,
        {"env_id": "FakeEnv", "ref_min_score": 0.0, "ref_max_score": 10.0},
    )
