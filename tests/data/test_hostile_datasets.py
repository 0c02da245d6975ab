"""Crafted datasets that claim more than they hold are refused from their headers, before anything is allocated.

Each load runs in a subprocess under a 3 GiB address-space limit, so that a loader that did allocate
what the file claims fails there (MemoryError) instead of taking the machine's memory.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from PIL import Image

from tests.data.helpers import write_d4rl, write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.writer import EpisodeRecord, MinariWriter

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
HUGE = 10**9  # rows: 24 GB of float64 (T, 3) observations, in a file of a few KiB

_LOAD_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # 3 GiB of address space in all
    sys.path.insert(0, {repo!r})
    from tt_agents.data import DatasetError, load_dataset
    try:
        load_dataset({path!r}, lazy={lazy}, validate={validate})
        print("loaded")
    except DatasetError as e:
        print("DatasetError:", e)
    """
)


def _load_under_limit(path: Path, lazy: bool = False, validate: bool = True) -> str:
    code = _LOAD_UNDER_LIMIT.format(repo=str(REPO), path=str(path), lazy=lazy, validate=validate)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _unwritten(group: h5py.Group, name: str, shape: tuple[int, ...], dtype, **kwargs) -> None:
    """A dataset of ``shape`` whose chunks were never written: it reads as zeros but takes no room."""
    if name in group:
        del group[name]
    chunks = (min(shape[0], 1024), *shape[1:])
    group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **kwargs)


def _huge_minari_episode(tmp_path: Path) -> Path:
    path = tmp_path / "ds"
    write_minari(path)
    main = path / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:
        g = f["episode_1"]
        _unwritten(g, "observations", (HUGE + 1, 3), np.float64)
        _unwritten(g, "actions", (HUGE, 2), np.float32)
        _unwritten(g, "rewards", (HUGE,), np.float64)
        _unwritten(g, "terminations", (HUGE,), bool)
        _unwritten(g, "truncations", (HUGE,), bool)
        g.attrs["total_steps"] = HUGE
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["total_steps"] = 5 + HUGE + 4
    meta_file.write_text(json.dumps(meta))
    assert main.stat().st_size < 1 << 20
    return path


@pytest.mark.parametrize("lazy, validate", [(False, True), (True, True), (False, False)])
def test_a_minari_episode_claiming_billions_of_steps_is_refused(tmp_path, lazy, validate):
    out = _load_under_limit(_huge_minari_episode(tmp_path), lazy=lazy, validate=validate)
    assert out.startswith("DatasetError:") and "main_data.hdf5: its headers claim" in out, out


def test_a_compressed_bomb_is_refused(tmp_path):
    path = tmp_path / "ds"
    write_minari(path, lengths=(5,))
    main = path / "data" / "main_data.hdf5"
    T = 10_000_000  # 240 MB of zeros, gzip-compressed to a few hundred KiB
    with h5py.File(main, "a") as f:
        g = f["episode_0"]
        for name, shape, dtype in (
            ("observations", (T + 1, 3), np.float64),
            ("actions", (T, 2), np.float32),
            ("rewards", (T,), np.float64),
            ("terminations", (T,), bool),
            ("truncations", (T,), bool),
        ):
            del g[name]
            ds = g.create_dataset(
                name,
                shape=shape,
                dtype=dtype,
                chunks=(min(T, 1 << 18), *shape[1:]),
                compression="gzip",
                compression_opts=9,
            )
            ds[-1] = 0  # one written chunk at the end; the data is all zeros anyway
        del g.attrs["total_steps"]
        del g.attrs["rewards_sum"]
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["total_steps"] = T
    meta_file.write_text(json.dumps(meta))
    out = _load_under_limit(path)
    assert out.startswith("DatasetError:") and "times the file's" in out, out


@pytest.mark.parametrize("claim", [10**15, -1, 2.5, "many", float("inf")])
def test_metadata_claiming_an_impossible_episode_count_is_refused(tmp_path, claim):
    path = tmp_path / "ds"
    write_minari(path)
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["total_episodes"] = claim
    meta_file.write_text(json.dumps(meta))
    out = _load_under_limit(path)
    if claim == 10**15:
        assert "DatasetError:" in out and "episode 3 (group episode_3" in out and "holds 3 episode groups" in out, out
    else:
        assert "DatasetError:" in out and "total_episodes is" in out, out


def test_a_d4rl_file_claiming_billions_of_rows_is_refused(tmp_path):
    path = tmp_path / "d.hdf5"
    write_d4rl(path)
    with h5py.File(path, "a") as f:
        for name, shape, dtype in (
            ("observations", (HUGE, 3), np.float32),
            ("next_observations", (HUGE, 3), np.float32),
            ("actions", (HUGE, 2), np.float32),
            ("rewards", (HUGE,), np.float32),
            ("terminals", (HUGE,), bool),
            ("timeouts", (HUGE,), bool),
        ):
            _unwritten(f, name, shape, dtype)
    out = _load_under_limit(path)
    assert out.startswith("DatasetError:") and "d.hdf5: its headers claim" in out, out


def test_max_bytes_sets_the_bound(tmp_path):
    write_minari(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"at most 100 are read.*pass max_bytes="):
        load_dataset(tmp_path / "ds", max_bytes=100)
    assert len(load_dataset(tmp_path / "ds", max_bytes=10**6)) == 3
    write_d4rl(tmp_path / "d.hdf5")
    with pytest.raises(DatasetError, match=r"d.hdf5: its headers claim"):
        load_dataset(tmp_path / "d.hdf5", max_bytes=100)


def test_a_jpeg_frame_larger_than_the_space_is_refused_before_decoding(tmp_path):
    space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    w = MinariWriter("tests/img-v0", space, gym.spaces.Discrete(2), path=tmp_path / "ds", fsync=False)
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    w.write_episodes([EpisodeRecord(frames, np.array([0, 1]), np.ones(2), np.array([0, 1], bool), np.zeros(2, bool))])
    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(buf, format="JPEG")  # 192 MB once decoded
    big = np.frombuffer(buf.getvalue(), np.uint8)
    with h5py.File(tmp_path / "ds" / "data" / "main_data.hdf5", "a") as f:
        old = f["episode_0/observations"][()]
        del f["episode_0/observations"]
        rows = np.empty(3, dtype=object)
        rows[:] = [np.asarray(old[0]), big, np.asarray(old[2])]
        f["episode_0"].create_dataset("observations", data=rows, dtype=h5py.vlen_dtype(np.uint8))
    with pytest.raises(
        DatasetError,
        match=r"step 1: the frame is a 8000x8000 JPEG image .* expected a JPEG of "
        r"the space's shape \(32, 32, 3\)",
    ):
        load_dataset(tmp_path / "ds")


def test_hard_link_cycles_and_deep_space_descriptions_do_not_hang(tmp_path):
    path = tmp_path / "ds"
    write_minari(path)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_0/infos/loop"] = f["episode_0"]  # a group inside itself
    assert len(load_dataset(path)) == 3
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["observation_space"] = '{"type": "Dict", "subspaces": {"a": ' * 5000 + "{}" + "}}" * 5000
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="space description"):
        load_dataset(path)
