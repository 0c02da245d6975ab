"""FastCarRacing draws the same frames as gymnasium's CarRacing-v3."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("Box2D")
pygame = pytest.importorskip("pygame")

import tt_agents  # noqa: E402,F401  (registers tt_agents/CarRacing-v3)
from tt_agents.envs import car_racing  # noqa: E402


def _episode(env_id: str, seed: int, steps: int, **kwargs) -> tuple[np.ndarray, list, gym.Env]:
    """Frames, rewards and the env after ``steps`` steps of a fixed random driver (resetting when done)."""
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for _ in range(steps):
        # mostly gas, some steering: the car visits tiles (they change colour) and sometimes leaves the road
        a = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1), rng.uniform(0, 0.2)], np.float32)
        obs, r, term, trunc, _ = env.step(a)
        frames.append(obs)
        rewards.append(r)
        if term or trunc:
            obs, _ = env.reset()
            frames.append(obs)
    return np.stack(frames), rewards, env


@pytest.mark.parametrize("seed, kwargs", [(0, {}), (1, {"domain_randomize": True}), (2, {"max_episode_steps": 60})])
def test_same_frames_and_rewards_as_gymnasium(seed, kwargs):
    steps = 150
    fast, fast_rewards, env = _episode("tt_agents/CarRacing-v3", seed, steps, **kwargs)
    slow, slow_rewards, _ = _episode("CarRacing-v3", seed, steps, **kwargs)
    assert isinstance(env.unwrapped, car_racing.FastCarRacing)
    assert not env.unwrapped._fallback  # the fast road was drawn, not gymnasium's
    assert fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)
    assert fast_rewards == slow_rewards
    # the driver visited tiles (their colour changes, read at draw time) and the road moved on screen
    assert sum(r > 0 for r in fast_rewards) > 3
    assert len(np.unique(fast.reshape(len(fast), -1), axis=0)) > steps // 2


def test_same_video_frames():
    def frames(env_id):
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=4)
        out = []
        for i in range(30):
            env.step(np.array([math.sin(i / 5), 0.6, 0.0], np.float32))
            out.append(env.render())
        return np.stack(out)

    np.testing.assert_array_equal(frames("tt_agents/CarRacing-v3"), frames("CarRacing-v3"))


def test_transform_matches_pygame_rotation_bit_for_bit():
    rng = np.random.default_rng(0)
    angles = list(rng.normal(0, 10, 200)) + [k * math.pi / 2 + d for k in range(-9, 10)
                                              for d in (0.0, 5e-7, -9e-7, 1.1e-6, -1.1e-6, 3e-6)]
    pts = rng.normal(0, 300, (16, 2))
    for angle in angles:
        zoom, tr = float(rng.uniform(1, 30)), (float(rng.uniform(0, 1000)), float(rng.uniform(-50, 800)))
        got = car_racing.transform(pts, zoom, tr, float(angle))
        for (x, y), g in zip(pts, got):
            v = pygame.math.Vector2(float(x), float(y)).rotate_rad(float(angle))
            assert (v[0] * zoom + tr[0], v[1] * zoom + tr[1]) == (g[0], g[1]), angle


def test_falls_back_to_gymnasium_when_its_check_fails(monkeypatch):
    """A road that differs from gymnasium's on the checked frame: a warning, then gymnasium's drawing."""
    real = car_racing.transform
    monkeypatch.setattr(car_racing, "transform", lambda p, z, t, a: real(p, z, t, a) + 3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast, _, env = _episode("tt_agents/CarRacing-v3", 5, 20)
    assert env.unwrapped._fallback
    assert any("differs from gymnasium" in str(w.message) for w in caught)
    slow, _, _ = _episode("CarRacing-v3", 5, 20)
    np.testing.assert_array_equal(fast, slow)  # the checked frame too: the reference was kept


def test_registered_like_car_racing_v3():
    fast, ref = gym.spec("tt_agents/CarRacing-v3"), gym.spec("CarRacing-v3")
    assert (fast.max_episode_steps, fast.reward_threshold) == (ref.max_episode_steps, ref.reward_threshold)
    assert fast.entry_point == "tt_agents.envs.car_racing:FastCarRacing"
