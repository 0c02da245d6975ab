"""Helpers of the data tests: the shared real Minari fixtures, and small Minari / D4RL files made here."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from tt_agents.data.writer import EpisodeRecord, MinariWriter

# Real datasets written by Minari's own DataCollector (with jax), checked in under tests/data/minari
# (see its README.md): the loaders are tested against the real format, with nothing beside the repo.
FIXTURE_DATA = Path(__file__).resolve().parent / "minari"
FIXTURES = {  # id: (episodes, steps, env id), from tests/data/minari/README.md
    "fixtures/hopper/random-v0": (20, 550, "Hopper-v5"),
    "fixtures/cartpole/random-v0": (20, 390, "CartPole-v1"),
    "fixtures/hopper/random-minari054-v0": (10, 209, "Hopper-v5"),
}

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def random_episode(rng: np.random.Generator, T: int, terminal: bool = True) -> EpisodeRecord:
    term = np.zeros(T, bool)
    trunc = np.zeros(T, bool)
    (term if terminal else trunc)[-1] = True
    return EpisodeRecord(
        observations=rng.normal(size=(T + 1, 3)),
        actions=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        rewards=rng.normal(size=T),
        terminations=term,
        truncations=trunc,
    )


def write_minari(path: Path, lengths=(5, 7, 4), seed: int = 0, dataset_id: str = "tests/small-v0") -> MinariWriter:
    """A small Minari dataset (Box obs (3,), Box actions (2,)) at ``path``."""
    rng = np.random.default_rng(seed)
    writer = MinariWriter(dataset_id, OBS_SPACE, ACT_SPACE, path=path, fsync=False)
    writer.write_episodes([random_episode(rng, T, terminal=k % 2 == 0) for k, T in enumerate(lengths)])
    return writer


def write_d4rl(
    path: Path,
    ends=((4, "terminal"), (9, "timeout"), (12, None)),
    next_observations: bool = True,
    discrete: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A D4RL-format file whose episodes end at the given rows (None: the file ends mid-episode)."""
    rng = np.random.default_rng(seed)
    n = ends[-1][0] + 1
    data = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.integers(0, 4, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    for row, kind in ends:
        if kind == "terminal":
            data["terminals"][row] = True
        elif kind == "timeout":
            data["timeouts"][row] = True
    if next_observations:
        data["next_observations"] = rng.normal(size=(n, 3)).astype(np.float32)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
        f.attrs["env_id"] = "Fake-v0"
        f.attrs["ref_min_score"] = -1.0
        f.attrs["ref_max_score"] = 5.0
    return data
