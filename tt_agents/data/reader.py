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

__all__ = ["MinariReader", "open_hdf5"]

ALLOW_EXTERNAL_ENV = "TT_AGENTS_ALLOW_HDF5_EXTERNAL"
"""Set to ``1`` to read HDF5 files whose data lives in other files (external links, external storage,
virtual datasets); by default such files are refused, since loading them reads files the user never named."""

_checked: dict[tuple[str, int, int], None] = {}


def _indirections(f: h5py.File) -> list[str]:
    """The objects of ``f`` that point outside it: external links, external raw storage, virtual datasets."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(group: h5py.Group, prefix: str) -> None:
        for name in group:
            path = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append(f"{path} (external link to {link.filename}:{link.path})")
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a path inside this file; its target is visited where it lives
            obj = group[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                continue
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                walk(obj, path)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    found.append(f"{path} (virtual dataset over {sorted({s.file_name for s in obj.virtual_sources()})})")
                elif obj.external:
                    found.append(f"{path} (raw storage in {[e[0] for e in obj.external]})")

    walk(f, "")
    return found


def open_hdf5(path: str | os.PathLike, allow_external: bool | None = None) -> h5py.File:
    """Open an HDF5 file for reading; a damaged or truncated file raises a DatasetError saying so.

    A file whose data lives in other files (external links, external raw storage, virtual datasets)
    is refused with :class:`DatasetError` naming the objects, unless ``allow_external`` (default:
    the ``TT_AGENTS_ALLOW_HDF5_EXTERNAL=1`` environment variable) opts in.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        hint = (
            "the file is shorter than its header says (truncated: an interrupted copy or download?); "
            "copy or download it again"
            if "truncated" in str(e)
            else "the file is damaged or not HDF5; copy or regenerate it"
        )
        raise DatasetError(f"cannot read {path}: {e}; {hint}") from None
    if allow_external is None:
        allow_external = os.environ.get(ALLOW_EXTERNAL_ENV) == "1"
    if not allow_external:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
        if key not in _checked:  # lazy loading reopens the file per episode: scan it once per version
            found = _indirections(f)
            if found:
                f.close()
                raise DatasetError(
                    f"{path} points outside itself: {'; '.join(found[:5])}"
                    + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                    + f". Loading it would read files you did not name; if you trust it, set {ALLOW_EXTERNAL_ENV}=1"
                )
            _checked[key] = None
    return f


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

    Raises:
        DatasetError: no metadata.json, malformed metadata, or an unreadable HDF5 file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
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
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{meta_file} is not valid JSON ({e}); the dataset's metadata is damaged") from None
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
        self.total_episodes = int(self.metadata["total_episodes"])
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
        return open_hdf5(self.file)

    def lengths(self, f: h5py.File) -> np.ndarray:
        """Steps of every committed episode, from the HDF5 headers; checks each episode's structure.

        Raises:
            DatasetError: a missing episode or field, or fields whose lengths or shapes disagree.
        """
        out = np.zeros(self.total_episodes, dtype=np.int64)
        for i in range(self.total_episodes):
            out[i] = self._check_structure(f, i)
        return out

    def _where(self, i: int) -> str:
        return f"episode {i} (group episode_{i} of {self.file})"

    def _check_structure(self, f: h5py.File, i: int) -> int:
        where = self._where(i)
        g = f.get(f"episode_{i}")
        if not isinstance(g, h5py.Group):
            raise DatasetError(
                f"{where} is missing: metadata.json says total_episodes={self.total_episodes} but the file "
                f"holds {sum(1 for k in f.keys() if k.startswith('episode_'))} episode groups; the data file is "
                "incomplete — regenerate the dataset"
            )
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
        if attr is not None and int(attr) != T:
            raise DatasetError(f"{where}: attribute total_steps={int(attr)} but the episode holds {T} steps")
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
