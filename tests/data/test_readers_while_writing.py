"""Readers never disturb the dataset's writer, and read it (ours and Minari's) while the writer holds its lock."""

from __future__ import annotations

import subprocess
import sys

import minari
import numpy as np
import pytest

from tests.data.helpers import random_episode, write_minari
from tt_agents.data import load_dataset

pytestmark = pytest.mark.timeout(60)

_HOLD_OPEN = (
    "import h5py, sys, time\n"
    "f = h5py.File(sys.argv[1], 'r')  # h5py's defaults, HDF5's file lock included, as any other reader\n"
    "print('open', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_reader_in_another_process_does_not_make_a_write_fail(tmp_path):
    writer = write_minari(tmp_path / "ds")
    main = tmp_path / "ds" / "data" / "main_data.hdf5"
    reader = subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, str(main)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        rng = np.random.default_rng(1)
        for k in range(3):  # failed with BlockingIOError ("unable to lock file") while the file was open elsewhere
            assert writer.write_episodes([random_episode(rng, 4 + k)]) == [3 + k]
    finally:
        reader.kill()
        reader.wait()
    writer.close()
    assert load_dataset(tmp_path / "ds").lengths.tolist() == [5, 7, 4, 4, 5, 6]


def test_our_loader_and_minaris_read_while_the_writer_holds_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    writer = write_minari(tmp_path / "tests" / "small-v0")  # the id's folder in the store; the lock is held
    assert writer.lock_path.exists()
    assert len(load_dataset("tests/small-v0")) == 3
    assert len(load_dataset("tests/small-v0", lazy=True)[2]) == 4
    assert "tests/small-v0" in minari.list_local_datasets()  # the lock file is not taken for a dataset
    theirs = minari.load_dataset("tests/small-v0")
    assert theirs.total_episodes == 3
    np.testing.assert_allclose(next(theirs.iterate_episodes()).rewards, load_dataset("tests/small-v0")[0].rewards)
    writer.write_episodes([random_episode(np.random.default_rng(2), 3)])  # and the writer goes on
    assert minari.load_dataset("tests/small-v0").total_episodes == 4
    writer.close()
