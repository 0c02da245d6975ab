"""WindowSampler: every field of every window equals its episode's steps; padding; streams; errors."""

import gymnasium as gym
import numpy as np
import pytest

from tt_agents.data import DatasetError, Episode, EpisodeDataset, WindowSampler, discounted_cumsum


def _dataset(lengths=(5, 1, 9, 3)) -> EpisodeDataset:
    """Observations ``1000 * episode + t`` (so a window says where it came from); the last episode is truncated."""
    rng = np.random.default_rng(0)
    episodes = []
    for e, n in enumerate(lengths):
        obs = (1000.0 * e + np.arange(n + 1, dtype=np.float32))[:, None].repeat(2, 1)  # (n + 1, 2)
        terminal = np.zeros(n, bool)
        if e < len(lengths) - 1:
            terminal[-1] = True
        episodes.append(Episode(obs, rng.normal(size=(n, 1)).astype(np.float32), rng.normal(size=n).astype(np.float32),
                                terminal, ~terminal & (np.arange(n) == n - 1), id=e))
    return EpisodeDataset(episodes, gym.spaces.Box(-np.inf, np.inf, (2,)), gym.spaces.Box(-1, 1, (1,)))


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_windows_equal_their_episodes(pad_side):
    ds = _dataset()
    K, gamma, penalty = 4, 0.9, -10.0
    sampler = WindowSampler(ds, context_len=K, batch_size=64, gamma=gamma, termination_penalty=penalty,
                            pad_side=pad_side, seed=1)
    seen = set()
    for step in range(3):
        batch = sampler.sample(step)
        assert batch["observations"].shape == (64, K, 2) and batch["mask"].shape == (64, K)
        for b in range(64):
            mask = batch["mask"][b]
            valid = np.flatnonzero(mask)
            assert len(valid) and np.all(np.diff(valid) == 1)  # one contiguous run of real steps
            assert valid[0] == 0 if pad_side == "right" else valid[-1] == K - 1
            first = batch["observations"][b, valid[0], 0]
            e, t0 = int(first // 1000), int(first % 1000)
            ep = ds[e]
            n = len(valid)
            assert n == min(K, len(ep) - t0)  # runs to the episode's end or fills the window
            steps = np.arange(t0, t0 + n)
            rewards = ep.rewards.astype(np.float64) + penalty * ep.terminations
            expected = {
                "observations": ep.observations[steps],
                "next_observations": ep.observations[steps + 1],
                "actions": ep.actions[steps],
                "rewards": rewards[steps],
                "returns_to_go": np.cumsum(rewards[::-1])[::-1][steps],
                "values": discounted_cumsum(rewards, gamma)[steps],
                "timesteps": steps,
                "terminals": ep.terminations[steps],
            }
            for name, want in expected.items():
                np.testing.assert_allclose(batch[name][b, valid], want, rtol=1e-6, err_msg=name)
                assert not np.any(batch[name][b, ~mask]), f"{name}: padding is not zero"
            seen.add((e, t0))
    assert len(seen) > 10  # many different windows, from every episode
    assert {e for e, _ in seen} == set(range(len(ds)))


def test_batches_are_a_function_of_seed_rank_and_step():
    ds = _dataset()
    a = WindowSampler(ds, context_len=3, batch_size=8, seed=5, rank=0, world_size=2)
    b = WindowSampler(ds, context_len=3, batch_size=8, seed=5, rank=0, world_size=2)
    c = WindowSampler(ds, context_len=3, batch_size=8, seed=5, rank=1, world_size=2)
    np.testing.assert_array_equal(a.sample(7)["observations"], b.sample(7)["observations"])
    assert not np.array_equal(a.sample(7)["observations"], a.sample(8)["observations"])
    assert not np.array_equal(a.sample(7)["observations"], c.sample(7)["observations"])


def test_bad_arguments_and_data_are_refused():
    ds = _dataset()
    with pytest.raises(ValueError, match="context_len"):
        WindowSampler(ds, context_len=0)
    with pytest.raises(ValueError, match="pad_side"):
        WindowSampler(ds, pad_side="middle")
    empty = EpisodeDataset([], ds.observation_space, ds.action_space)
    with pytest.raises(DatasetError, match="empty"):
        WindowSampler(empty)
