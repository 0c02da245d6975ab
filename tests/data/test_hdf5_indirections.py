"""HDF5 files that point outside themselves are refused by the dataset loaders unless the user opts in.

Three indirections, each crafted here: an external link to another HDF5 file, raw external storage
(a dataset whose bytes are a text file's), and a virtual dataset mapping another file's values.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.data.helpers import write_d4rl, write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.reader import ALLOW_EXTERNAL_ENV

OBS_SHAPE = {"minari": (6, 3), "d4rl": (13, 3)}  # episode_0's observations / the D4RL file's


def _other_file(tmp_path, shape):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["values"] = np.full(shape, 7.0, np.float64)
    return other


def _craft(kind, tmp_path, which):
    """A Minari dataset folder or a D4RL file whose observations use indirection ``which``."""
    if kind == "minari":
        root = tmp_path / "ds"
        write_minari(root)
        main, key = root / "data" / "main_data.hdf5", "episode_0/observations"
    else:
        root = main = tmp_path / "d4rl.hdf5"
        write_d4rl(main)
        key = "observations"
    shape = OBS_SHAPE[kind]
    with h5py.File(main, "a") as f:
        dtype = f[key].dtype
        del f[key]
        if which == "external link":
            f[key] = h5py.ExternalLink(str(_other_file(tmp_path, shape)), "values")
        elif which == "external storage":
            text = tmp_path / "secret.txt"
            text.write_bytes(b"x" * (int(np.prod(shape)) * np.dtype(dtype).itemsize))
            f.create_dataset(key, shape=shape, dtype=dtype, external=[(str(text), 0, h5py.h5f.UNLIMITED)])
        else:
            layout = h5py.VirtualLayout(shape=shape, dtype=np.float64)
            layout[:] = h5py.VirtualSource(str(_other_file(tmp_path, shape)), "values", shape=shape)
            f.create_virtual_dataset(key, layout)
    return root


@pytest.mark.parametrize("kind", ["minari", "d4rl"])
@pytest.mark.parametrize("which", ["external link", "external storage", "virtual dataset"])
def test_indirections_are_refused_naming_the_object(kind, which, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_EXTERNAL_ENV, raising=False)
    source = _craft(kind, tmp_path, which)
    with pytest.raises(DatasetError, match=r"points outside itself: .*observations \((external link|raw storage|"
                                           r"virtual dataset)") as e:
        load_dataset(str(source))
    assert ALLOW_EXTERNAL_ENV in str(e.value)


@pytest.mark.parametrize("which", ["external link", "virtual dataset"])
def test_opting_in_reads_the_other_file(which, tmp_path, monkeypatch):
    source = _craft("d4rl", tmp_path, which)
    monkeypatch.setenv(ALLOW_EXTERNAL_ENV, "1")
    ds = load_dataset(str(source), validate=False)
    assert np.all(np.concatenate([ep.observations[:-1] for ep in ds]) == 7.0)  # the last row: next_observations


def test_plain_files_still_load(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_EXTERNAL_ENV, raising=False)
    write_minari(tmp_path / "ds")
    write_d4rl(tmp_path / "d.hdf5")
    assert len(load_dataset(str(tmp_path / "ds"))) == 3 and len(load_dataset(str(tmp_path / "d.hdf5"))) == 3


@pytest.mark.parametrize("kind", ["minari", "d4rl"])
def test_allow_external_opts_in_per_call_and_wins_over_the_environment(kind, tmp_path, monkeypatch):
    source = _craft(kind, tmp_path, "external link")
    monkeypatch.delenv(ALLOW_EXTERNAL_ENV, raising=False)
    ds = load_dataset(str(source), validate=False, allow_external=True)
    assert np.all(ds[0].observations[:-1] == 7.0)
    ds = load_dataset(str(source), validate=False, allow_external=True, lazy=True)
    assert np.all(ds[0].observations[:-1] == 7.0)  # lazily read episodes keep the choice
    monkeypatch.setenv(ALLOW_EXTERNAL_ENV, "1")
    with pytest.raises(DatasetError, match="points outside itself"):
        load_dataset(str(source), allow_external=False)
