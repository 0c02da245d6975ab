"""load_dataset: the real Minari fixtures (0.5.3 and 0.5.4), Minari folders, D4RL files, lazy loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from tests.data.helpers import ACT_SPACE, FIXTURE_DATA, FIXTURES, OBS_SPACE, write_d4rl
from tt_agents.data import DatasetError, EpisodeDataset, WindowSampler, load_dataset
from tt_agents.data.reader import MinariReader
from tt_agents.data.writer import EpisodeRecord, MinariWriter
from tt_agents.spaces import deserialize_space, serialize_space


@pytest.fixture
def shared_data(tmp_path: Path) -> Path:
    """A writable copy of tests/data/minari, the real datasets written by Minari (kept pristine in the repo)."""
    dst = tmp_path / "minari-data"
    shutil.copytree(FIXTURE_DATA, dst)
    return dst


def _raw_episodes(folder: Path) -> list[dict[str, np.ndarray]]:
    """Read a Minari dataset's HDF5 file directly (independently of the loader)."""
    meta = json.loads((folder / "data" / "metadata.json").read_text())
    with h5py.File(folder / "data" / "main_data.hdf5", "r") as f:
        return [
            {k: f[f"episode_{i}"][k][()] for k in ("observations", "actions", "rewards", "terminations", "truncations")}
            for i in range(meta["total_episodes"])
        ]


@pytest.mark.parametrize("dataset_id", sorted(FIXTURES))
def test_fixture_by_id_matches_the_file(shared_data, monkeypatch, dataset_id):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(shared_data))
    n_episodes, n_steps, env_id = FIXTURES[dataset_id]
    ds = load_dataset(dataset_id)
    assert isinstance(ds, EpisodeDataset)
    assert (len(ds), ds.total_steps) == (n_episodes, n_steps)
    assert ds.metadata["env_id"] == env_id
    assert ds.metadata["dataset_id"] == dataset_id
    raw = _raw_episodes(shared_data / dataset_id)
    for i, (ep, r) in enumerate(zip(ds, raw)):
        assert ep.id == i
        np.testing.assert_array_equal(ep.observations, r["observations"])
        np.testing.assert_array_equal(ep.actions, r["actions"])
        np.testing.assert_allclose(ep.rewards, r["rewards"], rtol=1e-6)
        np.testing.assert_array_equal(ep.terminations, r["terminations"])
        np.testing.assert_array_equal(ep.truncations, r["truncations"])
        assert len(ep.observations) == len(ep) + 1
        assert ep.terminations[-1] or ep.truncations[-1]
    assert ds.observation_space.contains(ds[0].observations[0].astype(ds.observation_space.dtype))


@pytest.mark.parametrize("dataset_id", ["fixtures/hopper/random-v0", "fixtures/cartpole/random-v0"])
def test_fixture_matches_minari(shared_data, monkeypatch, dataset_id):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(shared_data))
    ours = load_dataset(dataset_id)
    theirs = minari.load_dataset(dataset_id)
    assert ours.observation_space == theirs.observation_space
    assert ours.action_space == theirs.action_space
    for ep, mep in zip(ours, theirs.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(ep.observations, mep.observations)
        np.testing.assert_array_equal(ep.actions, mep.actions)


def test_fixture_written_by_minari_054_loads_whatever_minari_is_installed(shared_data):
    folder = shared_data / "fixtures/hopper/random-minari054-v0"
    assert json.loads((folder / "data/metadata.json").read_text())["minari_version"] == "0.5.4"
    ds = load_dataset(folder)
    assert len(ds) == 10 and ds.metadata["env_id"] == "Hopper-v5"


def test_fixture_by_folder_data_folder_and_file(shared_data):
    folder = shared_data / "fixtures/cartpole/random-v0"
    a, b, c = (load_dataset(p) for p in (folder, folder / "data", folder / "data" / "main_data.hdf5"))
    assert len(a) == len(b) == len(c) == 20
    np.testing.assert_array_equal(a[7].actions, c[7].actions)
    assert isinstance(a.action_space, gym.spaces.Discrete) and a[0].actions.dtype.kind == "i"


def test_lazy_matches_eager_and_reads_on_demand(shared_data, monkeypatch):
    folder = shared_data / "fixtures/hopper/random-v0"
    eager = load_dataset(folder)
    reads = []
    original = MinariReader.read_episode
    monkeypatch.setattr(MinariReader, "read_episode", lambda self, f, i: reads.append(i) or original(self, f, i))
    lazy = load_dataset(folder, lazy=True)
    assert reads == [] and len(lazy) == 20
    np.testing.assert_array_equal(lazy.lengths, eager.lengths)
    np.testing.assert_array_equal(lazy[13].observations, eager[13].observations)
    assert reads == [13]
    np.testing.assert_allclose(lazy.returns(), eager.returns())


def test_loaded_fixture_feeds_the_sampler(shared_data):
    ds = load_dataset(shared_data / "fixtures/hopper/random-v0")
    batch = WindowSampler(ds, context_len=4, batch_size=8).sample(0)
    assert batch["observations"].shape == (8, 4, 11) and batch["actions"].shape == (8, 4, 3)


def test_unknown_id_names_the_store_and_what_is_there(shared_data, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(shared_data))
    with pytest.raises(DatasetError, match="no Minari dataset 'fixtures/hopper/expert-v0'") as e:
        load_dataset("fixtures/hopper/expert-v0")
    assert str(shared_data) in str(e.value) and "fixtures/hopper/random-v0" in str(e.value)
    with pytest.raises(DatasetError, match="not an existing file or folder"):
        load_dataset("no such thing")


def test_metadata_reference_scores_and_extras(tmp_path):
    writer = MinariWriter(
        "tests/extras-v0",
        OBS_SPACE,
        ACT_SPACE,
        path=tmp_path / "ds",
        extra_spaces={"latent": gym.spaces.Box(-1, 1, (4,), np.float32)},
        metadata={"ref_min_score": -3.0, "ref_max_score": 7.5},
        fsync=False,
    )
    rng = np.random.default_rng(0)
    rec = EpisodeRecord(
        rng.normal(size=(4, 3)),
        rng.uniform(-1, 1, (3, 2)).astype(np.float32),
        np.ones(3),
        np.array([0, 0, 1], bool),
        np.zeros(3, bool),
        extras={"latent": rng.uniform(-1, 1, (3, 4)).astype(np.float32)},
    )
    writer.write_episodes([rec])
    ds = load_dataset(tmp_path / "ds")
    assert ds.metadata["ref_min_score"] == -3.0 and ds.metadata["ref_max_score"] == 7.5
    assert ds.metadata["dataset_id"] == "tests/extras-v0"
    np.testing.assert_array_equal(ds[0].extras["latent"], rec.extras["latent"])
    batch = WindowSampler(ds, context_len=2, batch_size=2, action_field="latent").sample(0)
    assert batch["actions"].shape == (2, 2, 4)


def test_dict_and_tuple_observations_round_trip(tmp_path):
    obs_space = gym.spaces.Dict(
        {"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "inner": gym.spaces.Tuple((gym.spaces.Discrete(3),))}
    )
    w = MinariWriter("tests/dict-v0", obs_space, gym.spaces.Discrete(2), path=tmp_path / "ds", fsync=False)
    obs = {"pos": np.zeros((3, 2), np.float32), "inner": (np.array([0, 1, 2]),)}
    w.write_episodes([EpisodeRecord(obs, np.array([0, 1]), np.ones(2), np.array([0, 1], bool), np.zeros(2, bool))])
    ep = load_dataset(tmp_path / "ds")[0]
    np.testing.assert_array_equal(ep.observations["inner"][0], [0, 1, 2])
    assert ep.observations["pos"].shape == (3, 2)
    assert deserialize_space(json.dumps(serialize_space(obs_space))) == obs_space


@pytest.mark.parametrize("jpeg", [True, False])
def test_image_observations_jpeg_or_raw(tmp_path, monkeypatch, jpeg):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[:, :, :32] = 200
    frames[1, 10:20] = 50
    w = MinariWriter("tests/img-v0", space, gym.spaces.Discrete(2), jpeg_encoding=jpeg, fsync=False)
    w.write_episodes([EpisodeRecord(frames, np.array([0, 1]), np.ones(2), np.array([0, 1], bool), np.zeros(2, bool))])
    ep = load_dataset("tests/img-v0")[0]
    assert ep.observations.shape == frames.shape and ep.observations.dtype == np.uint8
    if jpeg:  # lossy, as Minari's; and Minari itself decodes it
        assert np.abs(ep.observations.astype(int) - frames).mean() < 3
        np.testing.assert_array_equal(
            next(minari.load_dataset("tests/img-v0").iterate_episodes()).observations, ep.observations
        )
    else:
        np.testing.assert_array_equal(ep.observations, frames)


@pytest.mark.parametrize("next_observations", [True, False])
def test_d4rl_file(tmp_path, next_observations):
    path = tmp_path / "hopper-medium.hdf5"
    data = write_d4rl(path, next_observations=next_observations)
    ds = load_dataset(path)
    assert ds.metadata["env_id"] == "Fake-v0" and ds.metadata["dataset_id"] == "hopper-medium"
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (-1.0, 5.0)
    obs = data["observations"]
    # episode 0: rows 0..4, ended by a terminal
    ep = ds[0]
    assert len(ep) == 5 and ep.terminations.tolist() == [False] * 4 + [True] and not ep.truncations.any()
    np.testing.assert_array_equal(ep.observations[:5], obs[0:5])
    np.testing.assert_array_equal(ep.actions, data["actions"][0:5])
    np.testing.assert_array_equal(ep.observations[5], data["next_observations"][4] if next_observations else obs[4])
    # episode 1: rows 5..9, ended by a timeout; episode 2: rows 10..12, the end of the file
    for ep, (s, e) in zip(ds[1:], [(5, 9), (10, 12)]):
        assert ep.truncations[-1] and not ep.terminations.any()
        if next_observations:
            assert len(ep) == e - s + 1
            np.testing.assert_array_equal(ep.observations[-1], data["next_observations"][e])
        else:  # D4RL's convention: the final transition, whose next observation is unknown, is dropped
            assert len(ep) == e - s
            np.testing.assert_array_equal(ep.observations, obs[s : e + 1])
    assert ds.metadata["total_steps"] == ds.total_steps
    lazy = load_dataset(path, lazy=True)
    np.testing.assert_array_equal(lazy[2].observations, ds[2].observations)


def test_d4rl_discrete_actions(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", discrete=True)
    ds = load_dataset(tmp_path / "d.hdf5")
    assert isinstance(ds.action_space, gym.spaces.Discrete) and ds[0].actions.dtype.kind == "i"
