"""NaN and Inf in a dataset are reported by episode and field, for every episode at once."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest

from tests.data.helpers import write_d4rl, write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.validate import NonFinite, NonFiniteError, non_finite_report, validate_dataset
from tt_agents.data.writer import EpisodeRecord, MinariWriter

pytestmark = pytest.mark.timeout(60)


def _spoil(path, episode, field, rows, value):
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        data = f[f"episode_{episode}"][field][()]
        data[rows] = value
        del f[f"episode_{episode}"][field]
        f[f"episode_{episode}"].create_dataset(field, data=data)


@pytest.fixture
def spoiled(tmp_path):
    path = tmp_path / "ds"
    write_minari(path, lengths=(5, 7, 4, 6))
    _spoil(path, 0, "rewards", [2], np.nan)
    _spoil(path, 2, "observations", [1, 3], np.inf)
    _spoil(path, 2, "actions", [0], -np.inf)
    return path


def _found(findings):
    return [(f.where.split(", ")[-1], f.field, f.steps, f.first_step, str(f.value)) for f in findings]


EXPECTED = [
    ("episode 0", "rewards", 1, 2, "nan"),
    ("episode 2", "observations", 2, 1, "inf"),
    ("episode 2", "actions", 1, 0, "-inf"),
]


def test_every_episode_and_field_is_reported_at_once(spoiled):
    with pytest.raises(NonFiniteError) as e:
        load_dataset(spoiled)
    assert isinstance(e.value, DatasetError)
    assert _found(e.value.findings) == EXPECTED
    message = str(e.value)
    assert message.startswith("2 episodes hold non-finite values (NaN/Inf):")
    assert "episode 0, step 2: rewards is nan (not finite)" in message
    assert "episode 2, step 1: observations is inf (not finite; 1 more step(s) of observations too)" in message
    assert "episode 2, step 0: actions is -inf (not finite)" in message
    assert "tests/small-v0" in message  # the dataset is named


def test_lazily_each_episode_when_it_is_read(spoiled):
    ds = load_dataset(spoiled, lazy=True)
    assert len(ds[1]) == 7 and len(ds[3]) == 6
    with pytest.raises(NonFiniteError, match=r"episode 2, step 1: observations is inf") as e:
        ds[2]
    assert _found(e.value.findings) == EXPECTED[1:]


def test_a_report_for_data_loaded_without_checks(spoiled):
    ds = load_dataset(spoiled, validate=False)
    assert _found(non_finite_report(ds)) == EXPECTED
    with pytest.raises(NonFiniteError) as e:
        validate_dataset(ds)
    assert _found(e.value.findings) == EXPECTED


def test_a_clean_dataset_has_an_empty_report(tmp_path):
    write_minari(tmp_path / "ds")
    assert non_finite_report(load_dataset(tmp_path / "ds")) == []


def test_other_problems_still_stop_at_the_first_episode(spoiled):
    _spoil(spoiled, 3, "terminations", [0], True)  # a done flag before the last step: not a NaN
    with pytest.raises(DatasetError, match=r"episode 3, step 0: terminations is set before the last step") as e:
        load_dataset(spoiled)
    assert not isinstance(e.value, NonFiniteError)


def test_nested_fields_are_named(tmp_path):
    obs_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "n": gym.spaces.Discrete(3)})
    w = MinariWriter("tests/dict-v0", obs_space, gym.spaces.Discrete(2), path=tmp_path / "ds", fsync=False)
    pos = np.zeros((3, 2), np.float32)
    pos[2, 1] = np.nan
    w.write_episodes(
        [
            EpisodeRecord(
                {"pos": pos, "n": np.zeros(3, np.int64)},
                np.array([0, 1]),
                np.ones(2),
                np.array([0, 1], bool),
                np.zeros(2, bool),
            )
        ]
    )
    with pytest.raises(NonFiniteError, match=r"episode 0, step 2: observations\['pos'\] is nan") as e:
        load_dataset(tmp_path / "ds")
    assert e.value.findings[0].field == "observations['pos']"
    assert [f.field for f in non_finite_report(load_dataset(tmp_path / "ds", validate=False))] == [
        "observations['pos']"
    ]


def test_d4rl_episodes_are_reported_together(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    with h5py.File(path, "a") as f:
        f["rewards"][1] = np.nan  # episode 0 (rows 0..4)
        f["observations"][11] = np.inf  # episode 2 (rows 10..12)
    with pytest.raises(NonFiniteError) as e:
        load_dataset(path)
    assert [(f.where, f.field, f.first_step) for f in e.value.findings] == [
        (f"episode 0 (rows 0..4 of {path})", "rewards", 1),
        (f"episode 2 (rows 10..12 of {path})", "observations", 1),
    ]


def test_finding_text():
    f = NonFinite("episode 3", "rewards", 4, 2, float("nan"))
    assert str(f) == "episode 3, step 2: rewards is nan (not finite; 3 more step(s) of rewards too)"
    many = NonFiniteError([NonFinite(f"episode {i}", "rewards", 1, 0, float("inf")) for i in range(25)])
    assert "... and 5 more field(s)" in str(many) and len(many.findings) == 25
