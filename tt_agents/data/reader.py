"""The Minari dataset reader: open a dataset folder, check its structure, read episodes (h5py only).

The format is described in :mod:`tt_agents.data.minari_io`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from tt_agents.data.episodes import DatasetError, Episode
from tt_agents.data.hdf5 import ALLOW_EXTERNAL_ENV, check_decoded_size, open_hdf5
from tt_agents.data.minari_format import (
    MAIN_FILE,
    METADATA_FILE,
    LeafPath,
    _decode_jpeg,
    _h5name,
    deserialize_space,
    flatten_space,
    is_jpeg_space,
    nest_leaves,
)

__all__ = ["ALLOW_EXTERNAL_ENV", "MinariReader", "open_hdf5"]


def _read_info(node: h5py.Group | h5py.Dataset) -> Any:
    if isinstance(node, h5py.Group):
        return {k: _read_info(v) for k, v in node.items()}
    if node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype) is not None:
        # newer Minari stores infos as JSON strings, one per step
        values = [v.decode() if isinstance(v, bytes) else v for v in node[()]]
        try:
            return [json.loads(v) for v in values]
        except (TypeError, json.JSONDecodeError):
            return values
    return node[()]


class MinariReader:
    """Read a Minari dataset folder (any Minari version's HDF5 layout) with h5py and JSON.

    Args:
        path: the dataset folder (holding ``data/``) or its ``data/`` folder.
        allow_external: read an HDF5 file whose data lives in other files (see :func:`open_hdf5`);
            default: the ``TT_AGENTS_ALLOW_HDF5_EXTERNAL`` environment variable, else refused.
        max_bytes: the most bytes a whole load may decode (see :meth:`check_size`); default
            :data:`~tt_agents.data.hdf5.MAX_EXPANSION` times the file's size plus 64 MiB.

    Raises:
        DatasetError: no metadata.json, malformed metadata, or an unreadable HDF5 file.
    """

    def __init__(
        self, path: str | os.PathLike, *, allow_external: bool | None = None, max_bytes: int | None = None
    ) -> None:
        path = Path(path)
        self.allow_external = allow_external
        self.max_bytes = max_bytes
        if (path / METADATA_FILE).exists() and not (path / "data" / METADATA_FILE).exists():
            data = path
        else:
            data = path / "data"
        meta_file = data / METADATA_FILE
        if not meta_file.exists():
            raise DatasetError(
                f"{path} is not a Minari dataset folder: {meta_file} does not exist "
                "(pass the folder that holds data/metadata.json, or a dataset id in $MINARI_DATASETS_PATH)"
            )
        try:
            self.metadata: dict[str, Any] = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise DatasetError(f"{meta_file} is not valid JSON ({e}); the dataset's metadata is damaged") from None
        if not isinstance(self.metadata, dict):
            raise DatasetError(f"{meta_file} holds a {type(self.metadata).__name__}, not a Minari dataset's metadata")
        self.data_path = data
        self.file = data / MAIN_FILE
        missing = [
            k for k in ("total_episodes", "total_steps", "observation_space", "action_space") if k not in self.metadata
        ]
        if missing:
            raise DatasetError(f"{meta_file} lacks the keys {missing}; it is not a Minari dataset's metadata")
        fmt = self.metadata.get("data_format", "hdf5")
        if fmt != "hdf5":
            raise DatasetError(
                f"{path}: data_format {fmt!r} is not supported (only 'hdf5'); convert it with Minari "
                "to an hdf5 dataset first"
            )
        if not self.file.exists():
            raise DatasetError(f"{path}: {self.file} does not exist; the dataset's data file is missing")
        self.observation_space = deserialize_space(self.metadata["observation_space"])
        self.action_space = deserialize_space(self.metadata["action_space"])
        self.extra_spaces = {k: deserialize_space(v) for k, v in (self.metadata.get("extra_spaces") or {}).items()}
        self.jpeg_encoding = bool(self.metadata.get("jpeg_encoding", True))
        total = self.metadata["total_episodes"]
        integral = isinstance(total, int) or (isinstance(total, float) and total.is_integer())
        if isinstance(total, bool) or not integral or total < 0:
            raise DatasetError(f"{meta_file}: total_episodes is {total!r:.50}, expected a count of episodes")
        self.total_episodes = int(total)
        self._obs_leaves = flatten_space(self.observation_space)
        self._act_leaves = flatten_space(self.action_space)
        self._extra_leaves = {k: flatten_space(s) for k, s in self.extra_spaces.items()}

    @property
    def env_spec(self) -> dict[str, Any] | None:
        spec = self.metadata.get("env_spec")
        if spec is None:
            return None
        try:
            return json.loads(spec) if isinstance(spec, str) else dict(spec)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.data_path}: env_spec in metadata.json is not valid JSON ({e})") from None

    def open(self) -> h5py.File:
        """Open the HDF5 file for reading (see :func:`open_hdf5`)."""
        return open_hdf5(self.file, self.allow_external)

    def check_size(self, f: h5py.File) -> None:
        """Refuse, from the headers alone, a file that claims more episodes or data than it can hold.

        ``total_episodes`` may not exceed the episode groups in the file, and the episodes' decoded
        size (every field read, JPEG frames decoded) may not exceed ``max_bytes`` (see
        :func:`~tt_agents.data.hdf5.check_decoded_size`), so that nothing huge is allocated or looped over.

        Raises:
            DatasetError: naming the file and what it claims.
        """
        present = {k[8:] for k in f.keys() if k.startswith("episode_")}
        if self.total_episodes > len(present):
            first = next(i for i in range(len(present) + 1) if str(i) not in present)
            raise self._missing(first, len(present))
        nbytes = sum(self._episode_nbytes(f.get(f"episode_{i}")) for i in range(self.total_episodes))
        check_decoded_size(self.file, nbytes, self.max_bytes)

    def _episode_nbytes(self, g: Any) -> int:
        """Bytes of episode group ``g`` as read: its datasets' sizes, plus the decoded size of JPEG frames."""
        if not isinstance(g, h5py.Group):
            return 0
        fields = [(k, None) for k in ("rewards", "terminations", "truncations")]
        fields += [("/".join(["observations", *(_h5name(p) for p in path)]), s) for path, s in self._obs_leaves]
        fields += [("/".join(["actions", *(_h5name(p) for p in path)]), s) for path, s in self._act_leaves]
        for k, leaves in self._extra_leaves.items():
            fields += [("/".join(["extras", k, *(_h5name(p) for p in path)]), None) for path, _ in leaves]
        total = 0
        for key, space in fields:
            ds = g.get(key)
            if not isinstance(ds, h5py.Dataset) or ds.shape is None:
                continue  # missing or empty: the structure check names it
            total += int(ds.size) * ds.dtype.itemsize
            if space is not None and self.jpeg_encoding and is_jpeg_space(space) and ds.shape[1:] != space.shape:
                total += int(ds.shape[0]) * int(np.prod(space.shape)) if ds.shape else 0
        return total

    def lengths(self, f: h5py.File) -> np.ndarray:
        """Steps of every committed episode, from the HDF5 headers; checks the size and each episode's structure.

        Raises:
            DatasetError: a missing episode or field, fields whose lengths or shapes disagree, or a
                file that claims more than it can hold (see :meth:`check_size`).
        """
        self.check_size(f)
        out = np.zeros(self.total_episodes, dtype=np.int64)
        for i in range(self.total_episodes):
            out[i] = self._check_structure(f, i)
        return out

    def _where(self, i: int) -> str:
        return f"episode {i} (group episode_{i} of {self.file})"

    def _missing(self, i: int, groups: int) -> DatasetError:
        return DatasetError(
            f"{self._where(i)} is missing: metadata.json says total_episodes={self.total_episodes} but the file "
            f"holds {groups} episode groups; the data file is incomplete — regenerate the dataset"
        )

    def _check_structure(self, f: h5py.File, i: int) -> int:
        where = self._where(i)
        g = f.get(f"episode_{i}")
        if not isinstance(g, h5py.Group):
            raise self._missing(i, sum(1 for k in f.keys() if k.startswith("episode_")))
        for k in ("rewards", "terminations", "truncations"):
            if not isinstance(g.get(k), h5py.Dataset):
                raise DatasetError(f"{where}: the field {k!r} is missing")
        T = int(g["rewards"].shape[0]) if g["rewards"].ndim == 1 else -1
        if T < 0:
            raise DatasetError(f"{where}: rewards has shape {g['rewards'].shape}, expected (T,)")
        for k in ("terminations", "truncations"):
            if g[k].shape != (T,):
                raise DatasetError(f"{where}: {k} has shape {g[k].shape} but rewards has {T} steps; expected ({T},)")
        checks = [
            ("observations", g, self._obs_leaves, T + 1, self.jpeg_encoding),
            ("actions", g, self._act_leaves, T, self.jpeg_encoding),
        ]
        if self.extra_spaces:
            xg = g.get("extras")
            if not isinstance(xg, h5py.Group):
                raise DatasetError(
                    f"{where}: the group 'extras' is missing (metadata declares {sorted(self.extra_spaces)})"
                )
            checks += [(k, xg, leaves, T, False) for k, leaves in self._extra_leaves.items()]
        for name, parent, leaves, n, jpeg in checks:
            for path, space in leaves:
                key = "/".join([name, *(_h5name(p) for p in path)])
                ds = parent.get(key)
                label = key if parent is g else f"extras/{key}"
                if not isinstance(ds, h5py.Dataset):
                    raise DatasetError(f"{where}: the field {label!r} is missing")
                encoded = jpeg and is_jpeg_space(space) and ds.shape[1:] != space.shape
                expected = (n,) if encoded else (n, *space.shape)
                got = ds.shape[:1] if encoded else ds.shape
                if got != expected:
                    what = "T + 1" if name == "observations" else "T"
                    raise DatasetError(
                        f"{where}: {label} has shape {ds.shape}, expected {(n, *space.shape)} "
                        f"({what} rows for T={T} steps, each of the space's shape {space.shape})"
                    )
        attr = g.attrs.get("total_steps")
        try:
            attr_steps = None if attr is None else int(attr)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: attribute total_steps is {attr!r:.50}, not a number of steps") from None
        if attr_steps is not None and attr_steps != T:
            raise DatasetError(f"{where}: attribute total_steps={attr_steps} but the episode holds {T} steps")
        return T

    def _read_leaves(
        self, parent: h5py.Group, name: str, leaves: list[tuple[LeafPath, gym.Space]], jpeg: bool, where: str
    ) -> Any:
        out = {}
        for path, space in leaves:
            ds = parent["/".join([name, *(_h5name(p) for p in path)])]
            if jpeg and is_jpeg_space(space) and ds.shape[1:] != space.shape:
                out[path] = _decode_jpeg(ds[()], space.shape, f"{where}, {name}")
            else:
                out[path] = ds[()]
        return nest_leaves(out)

    def read_episode(self, f: h5py.File, i: int) -> Episode:
        """Read episode ``i`` from the open file ``f`` (structure checked, values not validated)."""
        where = self._where(i)
        self._check_structure(f, i)
        g = f[f"episode_{i}"]
        try:
            extras = {}
            if self.extra_spaces:
                xg = g["extras"]
                extras = {k: self._read_leaves(xg, k, leaves, False, where) for k, leaves in self._extra_leaves.items()}
            return Episode(
                observations=self._read_leaves(g, "observations", self._obs_leaves, self.jpeg_encoding, where),
                actions=self._read_leaves(g, "actions", self._act_leaves, self.jpeg_encoding, where),
                rewards=np.asarray(g["rewards"][()], dtype=np.float32),
                terminations=np.asarray(g["terminations"][()], dtype=bool),
                truncations=np.asarray(g["truncations"][()], dtype=bool),
                extras=extras,
                id=i,
            )
        except OSError as e:
            raise DatasetError(f"{where}: cannot read its data ({e}); the file is damaged — regenerate it") from None

    def read_infos(self, f: h5py.File, i: int) -> dict[str, Any]:
        """The recorded infos of episode ``i`` (``{}`` when none were recorded)."""
        node = f[f"episode_{i}"].get("infos")
        return {} if node is None else _read_info(node)

    def episode_attrs(self, f: h5py.File, i: int) -> dict[str, Any]:
        return dict(f[f"episode_{i}"].attrs)

    def iter_episodes(self, indices: Iterable[int] | None = None) -> Iterator[Episode]:
        """Read episodes one by one (one open file for all)."""
        with self.open() as f:
            for i in range(self.total_episodes) if indices is None else indices:
                yield self.read_episode(f, i)
