"""Bad data gives a DatasetError that names what is wrong (episode, step, field), never a hang or garbage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from tests.data.helpers import ACT_SPACE, OBS_SPACE, random_episode, write_d4rl, write_minari
from tt_agents.data import DatasetError, Episode, load_dataset
from tt_agents.data.minari_format import DatasetMismatchError, deserialize_space
from tt_agents.data.validate import validate_episode, validate_totals
from tt_agents.data.writer import MinariWriter

pytestmark = pytest.mark.timeout(60)


def _replace(path: Path, episode: int, field: str, value: np.ndarray) -> None:
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f[f"episode_{episode}"][field]
        f[f"episode_{episode}"].create_dataset(field, data=value)


def _meta(path: Path, **changes) -> None:
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta.update(changes)
    meta_file.write_text(json.dumps(meta))


@pytest.fixture
def small(tmp_path) -> Path:
    write_minari(tmp_path / "ds", lengths=(5, 7, 4))
    return tmp_path / "ds"


def test_good_data_loads(small):
    assert load_dataset(small).lengths.tolist() == [5, 7, 4]


def test_nan_reward_names_episode_and_step(small):
    rewards = np.ones(7)
    rewards[3] = np.nan
    _replace(small, 1, "rewards", rewards)
    with pytest.raises(DatasetError, match=r"episode 1, step 3: rewards is nan"):
        load_dataset(small, validate=True)
    with pytest.raises(DatasetError, match=r"episode 1, step 3: rewards is nan"):
        load_dataset(small, lazy=True)[1]  # lazily: when the episode is read
    assert np.isnan(load_dataset(small, validate=False)[1].rewards[3])  # checks can be skipped on purpose


def test_inf_observation_names_episode_and_step(small):
    with h5py.File(small / "data" / "main_data.hdf5", "r") as f:
        obs = f["episode_2"]["observations"][()]
    obs[4, 1] = np.inf
    _replace(small, 2, "observations", obs)
    with pytest.raises(DatasetError, match=r"episode 2, step 4: observations is inf"):
        load_dataset(small)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("observations", np.zeros((7, 3)), r"episode 1 .*observations has shape \(7, 3\), expected \(8, 3\)"),
        ("observations", np.zeros((8, 4)), r"episode 1 .*observations has shape \(8, 4\), expected \(8, 3\)"),
        ("actions", np.zeros((7, 5), np.float32), r"episode 1 .*actions has shape \(7, 5\), expected \(7, 2\)"),
        ("terminations", np.zeros(6, bool), r"episode 1 .*terminations has shape \(6,\) but rewards has 7 steps"),
    ],
)
def test_wrong_shapes_name_the_field(small, field, value, message):
    _replace(small, 1, field, value)
    with pytest.raises(DatasetError, match=message):
        load_dataset(small)


def test_done_flag_before_the_last_step(small):
    term = np.zeros(7, bool)
    term[2] = term[6] = True
    _replace(small, 1, "terminations", term)
    with pytest.raises(DatasetError, match=r"episode 1, step 2: terminations is set before the last step"):
        load_dataset(small)


def test_totals_against_metadata(small):
    _meta(small, total_steps=17)
    with pytest.raises(DatasetError, match=r"total_steps=17 but the episodes hold 16 steps"):
        load_dataset(small)


def test_missing_episode(small):
    _meta(small, total_episodes=4)
    with pytest.raises(DatasetError, match=r"episode 3 \(group episode_3 .*\) is missing"):
        load_dataset(small)


def test_rewards_altered_after_writing(small):
    with h5py.File(small / "data" / "main_data.hdf5", "r") as f:
        rewards = f["episode_0"]["rewards"][()]
    _replace(small, 0, "rewards", rewards + 1.0)
    with pytest.raises(DatasetError, match=r"episode 0: rewards sum to .* rewards_sum attribute records"):
        load_dataset(small)


def test_truncated_hdf5_file(small):
    main = small / "data" / "main_data.hdf5"
    size = os.path.getsize(main)
    with open(main, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match=r"cannot read .*main_data.hdf5.*truncated"):
        load_dataset(small)


def test_garbage_files(tmp_path, small):
    (small / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="metadata.json is not valid JSON"):
        load_dataset(small)
    bogus = tmp_path / "bogus.hdf5"
    bogus.write_bytes(b"\x00" * 4096)
    with pytest.raises(DatasetError, match="cannot read .*bogus.hdf5"):
        load_dataset(bogus)
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("pixels", data=np.zeros(3))
    with pytest.raises(DatasetError, match=r"neither a D4RL file .* nor a Minari main_data.hdf5"):
        load_dataset(tmp_path / "other.hdf5")
    with pytest.raises(DatasetError, match="not a Minari dataset folder"):
        load_dataset(tmp_path)


def test_bad_space_description():
    with pytest.raises(DatasetError, match="unknown space type 'Graph'"):
        deserialize_space('{"type": "Graph"}')
    with pytest.raises(DatasetError, match="malformed Box space description"):
        deserialize_space('{"type": "Box", "dtype": "float32"}')


def test_discrete_action_out_of_range(tmp_path):
    w = MinariWriter("tests/disc-v0", OBS_SPACE, gym.spaces.Discrete(3), path=tmp_path / "ds", fsync=False)
    rec = random_episode(np.random.default_rng(0), 4)
    rec.actions = np.array([0, 1, 2, 1])
    w.write_episodes([rec])
    _replace(tmp_path / "ds", 0, "actions", np.array([0, 1, 7, 1]))
    with pytest.raises(DatasetError, match=r"episode 0, step 2: actions is 7, outside Discrete\(3\)"):
        load_dataset(tmp_path / "ds")


def test_d4rl_mismatched_lengths(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    with h5py.File(path, "a") as f:
        r = f["rewards"][()]
        del f["rewards"]
        f.create_dataset("rewards", data=r[:-1])
    with pytest.raises(DatasetError, match=r"rewards has 12 rows but observations has 13"):
        load_dataset(path)


def test_d4rl_nan_reward_names_episode_step_and_rows(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    with h5py.File(path, "a") as f:
        f["rewards"][7] = np.nan
    with pytest.raises(DatasetError, match=r"episode 1 \(rows 5..9 of .*d.hdf5\), step 2: rewards is nan"):
        load_dataset(path)


def test_d4rl_missing_arrays(tmp_path):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f.create_dataset("observations", data=np.zeros((4, 2)))
        f.create_dataset("actions", data=np.zeros((4, 1)))
    with pytest.raises(DatasetError, match=r"not a D4RL file: it lacks the datasets \['rewards', 'terminals'\]"):
        load_dataset(tmp_path / "d.hdf5")


def test_append_with_mismatched_spaces_is_refused(tmp_path):
    write_minari(tmp_path / "ds")
    other = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
    with pytest.raises(DatasetMismatchError, match=r"observation_space: dataset has Box\(-inf, inf, \(3,\), float64\)"):
        MinariWriter("tests/small-v0", other, ACT_SPACE, path=tmp_path / "ds")
    with pytest.raises(DatasetMismatchError, match=r"action_space: .* new data has Discrete\(2\)"):
        MinariWriter("tests/small-v0", OBS_SPACE, gym.spaces.Discrete(2), path=tmp_path / "ds")
    # nothing was changed: the dataset still loads, and appending with the same spaces works
    w = MinariWriter("tests/small-v0", OBS_SPACE, ACT_SPACE, path=tmp_path / "ds", fsync=False)
    w.write_episodes([random_episode(np.random.default_rng(1), 3)])
    assert load_dataset(tmp_path / "ds").lengths.tolist() == [5, 7, 4, 3]


def test_writer_refuses_inconsistent_episodes(tmp_path):
    w = MinariWriter("tests/w-v0", OBS_SPACE, ACT_SPACE, path=tmp_path / "ds", fsync=False)
    rec = random_episode(np.random.default_rng(0), 4)
    rec.observations = rec.observations[:-1]
    with pytest.raises(ValueError, match=r"observations has shape \(4, 3\), expected \(5, 3\)"):
        w.write_episodes([rec])
    assert w.total_episodes == 0


def test_validate_episode_and_totals_directly():
    ep = Episode(np.zeros((3, 3)), np.zeros((2, 2), np.float32), np.zeros(2), np.array([0, 1], bool), np.zeros(2, bool))
    validate_episode(ep, OBS_SPACE, ACT_SPACE)
    with pytest.raises(DatasetError, match=r"episode 0: actions has shape \(2, 2\), expected \(2, 5\)"):
        validate_episode(ep, OBS_SPACE, gym.spaces.Box(-1, 1, (5,)))
    with pytest.raises(DatasetError, match="total_episodes=3 but 2 episodes"):
        validate_totals(np.array([1, 2]), {"total_episodes": 3})
