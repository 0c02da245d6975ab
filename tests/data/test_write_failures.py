"""A write that fails (disk full, I/O error) raises the package's error and leaves the dataset loadable."""

from __future__ import annotations

import errno

import h5py
import numpy as np
import pytest

from tests.data.helpers import random_episode, write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.writer import DatasetWriteError, MinariWriter


def test_a_failed_write_names_the_dataset_the_safe_and_the_lost_episodes(tmp_path, monkeypatch):
    writer = write_minari(tmp_path / "ds")  # episodes 0, 1, 2 committed
    rng = np.random.default_rng(5)
    calls = {"n": 0}
    real = MinariWriter._write_group

    def full_disk(self, group, i, ep):
        calls["n"] += 1
        if calls["n"] == 2:  # the second episode of the batch hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, group, i, ep)

    monkeypatch.setattr(MinariWriter, "_write_group", full_disk)
    with pytest.raises(DatasetWriteError, match=r"dataset tests/small-v0 at .*: writing episodes 3 to 4 failed "
                                                r"\(OSError: .*No space left on device\); episodes 0 to 2 are safe") as e:
        writer.write_episodes([random_episode(rng, 4), random_episode(rng, 5)])
    assert isinstance(e.value, DatasetError) and "episodes 3 to 4 are lost" in str(e.value)
    ds = load_dataset(str(tmp_path / "ds"))
    assert len(ds) == 3 and writer.total_episodes == 3
    # the same writer goes on once the disk has room again; the failed write's groups are gone
    monkeypatch.setattr(MinariWriter, "_write_group", real)
    assert writer.write_episodes([random_episode(rng, 6)]) == [3]
    ds = load_dataset(str(tmp_path / "ds"))
    assert len(ds) == 4 and len(ds[3]) == 6


def test_a_failure_while_committing_keeps_the_previous_metadata(tmp_path, monkeypatch):
    writer = write_minari(tmp_path / "ds")
    import tt_agents.data.writer as w

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(w, "_atomic_write_json", broken)
    with pytest.raises(DatasetWriteError, match="episode 3 failed .*Input/output error.*episodes 0 to 2 are safe"):
        writer.write_episodes([random_episode(np.random.default_rng(0), 3)])
    assert len(load_dataset(str(tmp_path / "ds"))) == 3


def test_a_failed_copy_is_reported_the_same_way_and_the_writer_goes_on(tmp_path, monkeypatch):
    write_minari(tmp_path / "src", lengths=(3, 4, 5)).close()
    writer = write_minari(tmp_path / "ds")
    real_copy = h5py.Group.copy
    calls = {"n": 0}

    def full_disk(self, source, dest, name=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second episode copied hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(self, source, dest, name=name, **kwargs)

    monkeypatch.setattr(h5py.Group, "copy", full_disk)
    with pytest.raises(DatasetWriteError, match=r"writing episodes 3 to 4 failed .*episodes 0 to 2 are safe"):
        writer.copy_episodes(tmp_path / "src", [0, 1])
    monkeypatch.setattr(h5py.Group, "copy", real_copy)
    assert len(load_dataset(str(tmp_path / "ds"))) == 3
    assert writer.copy_episodes(tmp_path / "src", [2]) == [3]  # the failed copy's group is gone first
    assert writer.write_episodes([random_episode(np.random.default_rng(0), 2)]) == [4]
    assert load_dataset(str(tmp_path / "ds")).lengths.tolist() == [5, 7, 4, 5, 2]
