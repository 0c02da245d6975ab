"""Derived datasets: the source's fields copied byte for byte, new fields beside them, the source untouched."""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from tests.data.helpers import write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.derive import derive_dataset


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").iterdir())}


def _leaves(group, prefix=""):
    out = {}
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            out.update(_leaves(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = (v.dtype.str, v.shape, v[()].tobytes())
    return out


def _labels(episodes):
    return [{"step": np.arange(len(e), dtype=np.int64), "flag": (np.arange(len(e)) % 3 == 0)[:, None]} for e in episodes]


SPACES = {"step": gym.spaces.Box(0, 10_000, (), np.int64), "flag": gym.spaces.MultiBinary(1)}


def test_every_source_field_is_copied_byte_for_byte_and_the_source_is_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    src = tmp_path / "tests" / "small-v0"
    write_minari(src, lengths=(5, 7, 4, 6)).close()
    before = _digest(src)
    out = derive_dataset("tests/small-v0", "tests/small-labelled-v0", _labels, SPACES, batch_episodes=3, progress=False)
    assert _digest(src) == before  # the source is only read
    with h5py.File(src / "data" / "main_data.hdf5") as a, h5py.File(out / "data" / "main_data.hdf5") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            theirs = _leaves(b[name])
            extras = {k: theirs.pop(k) for k in list(theirs) if k.startswith("extras/")}
            assert _leaves(a[name]) == theirs  # every other field, byte for byte
            assert sorted(extras) == ["extras/flag", "extras/step"]
            assert dict(a[name].attrs) == dict(b[name].attrs)
    ds = load_dataset("tests/small-labelled-v0")
    assert [len(e) for e in ds] == [5, 7, 4, 6]
    for e in ds:
        np.testing.assert_array_equal(e.extras["step"], np.arange(len(e)))
    meta = json.loads((out / "data" / "metadata.json").read_text())
    assert meta["derived_from"] == "tests/small-v0" and sorted(meta["extra_spaces"]) == ["flag", "step"]
    theirs = minari.load_dataset("tests/small-labelled-v0")  # Minari itself reads it
    assert theirs.total_steps == 22 and theirs.total_episodes == 4


def test_refuses_to_overwrite_the_source_or_an_existing_dataset(tmp_path):
    src = tmp_path / "src"
    write_minari(src).close()
    with pytest.raises(DatasetError, match="overwrite its source"):
        derive_dataset(src, "tests/x-v0", _labels, SPACES, path=src, progress=False)
    out = tmp_path / "out"
    derive_dataset(src, "tests/x-v0", _labels, SPACES, path=out, progress=False)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        derive_dataset(src, "tests/x-v0", _labels, SPACES, path=out, progress=False)
    derive_dataset(src, "tests/x-v0", _labels, SPACES, path=out, progress=False, overwrite=True)
    with pytest.raises(DatasetError, match="already has the fields"):
        derive_dataset(out, "tests/y-v0", _labels, SPACES, path=tmp_path / "y", progress=False)


def test_a_field_of_the_wrong_shape_names_the_episode_and_commits_nothing(tmp_path):
    src = tmp_path / "src"
    write_minari(src).close()

    def bad(episodes):
        return [{"step": np.arange(len(e) + (e.id == 1)), "flag": np.zeros((len(e), 1), bool)} for e in episodes]

    with pytest.raises(ValueError, match=r"source episode 1 \(7 steps\): 'step' has shape \(8,\), expected \(7,\)"):
        derive_dataset(src, "tests/x-v0", bad, SPACES, path=tmp_path / "out", progress=False)
    assert len(load_dataset(tmp_path / "out")) == 0  # the failed batch left no episode behind
