"""The Minari dataset writer: create or append to a dataset, one batch of finished episodes at a time.

Durability and layout are described in :mod:`tt_agents.data.minari_io`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from tt_agents.data.episodes import DatasetError
from tt_agents.data.lock import WriterLock, lock_path
from tt_agents.data.minari_format import (
    _MINARI_VERSION,
    _MINARI_VERSION_RAW_IMAGES,
    _RESERVED_KEYS,
    MAIN_FILE,
    METADATA_FILE,
    DatasetMismatchError,
    EpisodeRecord,
    LeafPath,
    _atomic_write_json,
    _encode_jpeg,
    _env_spec_json,
    _h5name,
    _json_default,
    _spec_diff,
    dataset_path,
    datasets_root,
    deserialize_space,
    flatten_space,
    get_leaf,
    is_jpeg_space,
    parse_dataset_id,
    serialize_space,
)
from tt_agents.data.reader import MinariReader
from tt_agents.utils import fsync_file

__all__ = ["DatasetWriteError", "EpisodeRecord", "MinariWriter"]


class DatasetWriteError(DatasetError):
    """Writing episodes failed (disk full, I/O error); the message names the episodes safe and those lost."""


class MinariWriter:
    """Create a Minari dataset, or append to one, a batch of finished episodes at a time.

    Args:
        dataset_id: ``namespace/name-vN``.
        observation_space, action_space: the spaces of one (unbatched) env.
        path: the dataset's folder (holding ``data/``); default: ``dataset_path(dataset_id)`` in the
            local store (``$MINARI_DATASETS_PATH``).
        env_spec: the env's ``EnvSpec`` (or its JSON), recorded so ``recover_environment`` works.
        extra_spaces: spaces of extra per-step fields (latent actions, plans, ...), by name.
        metadata: more metadata (``algorithm_name``, ``ref_min_score``, ``policy``, ...).
        jpeg_encoding: JPEG-encode image spaces as Minari does (lossy; any Minari >= 0.5.3 reads it).
            ``False`` stores them raw (lossless; Minari >= 0.5.4 reads it).
        fsync: ``fsync`` the files after each batch, so committed episodes survive a power loss too.
        overwrite: delete an existing dataset at ``path`` instead of appending to it.

    Raises:
        DatasetMismatchError: appending with other spaces, env spec or extra fields.

    Example:
        >>> import tempfile
        >>> w = MinariWriter("demo/random-v0", gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2),
        ...                  path=tempfile.mkdtemp() + "/demo/random-v0", fsync=False)
        >>> w.write_episodes([EpisodeRecord(np.zeros((3, 2), np.float32), np.array([0, 1]), np.ones(2),
        ...                                 np.array([False, True]), np.zeros(2, bool))])
        [0]
        >>> w.total_episodes, w.total_steps
        (1, 2)
    """

    def __init__(
        self,
        dataset_id: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        path: str | os.PathLike | None = None,
        env_spec: gym.envs.registration.EnvSpec | str | None = None,
        extra_spaces: Mapping[str, gym.Space] | None = None,
        metadata: Mapping[str, Any] | None = None,
        jpeg_encoding: bool = True,
        fsync: bool = True,
        overwrite: bool = False,
    ) -> None:
        parse_dataset_id(dataset_id)
        self.dataset_id = dataset_id
        self.path = Path(path) if path is not None else dataset_path(dataset_id)
        self.data_path = self.path / "data"
        self._failed_write = False  # the last write failed: its uncommitted groups are removed before the next
        # before anything is read or written: one writer per dataset, for its whole life
        self._lock: WriterLock | None = WriterLock(self.path, dataset_id)
        try:
            self._setup(
                observation_space, action_space, env_spec, extra_spaces, metadata, jpeg_encoding, fsync, overwrite
            )
        except BaseException:
            self.close()
            raise

    def _setup(
        self, observation_space, action_space, env_spec, extra_spaces, metadata, jpeg_encoding, fsync, overwrite
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.extra_spaces = dict(extra_spaces or {})
        self.jpeg_encoding = bool(jpeg_encoding)
        self.fsync = fsync
        self._obs_leaves = flatten_space(observation_space)
        self._act_leaves = flatten_space(action_space)
        self._extra_leaves = {k: flatten_space(s) for k, s in self.extra_spaces.items()}
        for name in self.extra_spaces:
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(f"extra field name {name!r} must be letters, digits, '_', '.' or '-'")
        bad = _RESERVED_KEYS.intersection(metadata or {})
        if bad:
            raise ValueError(f"metadata keys {sorted(bad)} are set by the writer; remove them from metadata=")
        self._jpeg_paths = {
            "observations": {p for p, s in self._obs_leaves if self.jpeg_encoding and is_jpeg_space(s)},
            "actions": {p for p, s in self._act_leaves if self.jpeg_encoding and is_jpeg_space(s)},
        }
        spec_json = _env_spec_json(env_spec)
        meta_file = self.data_path / METADATA_FILE
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        if meta_file.exists():
            self._metadata = self._open_existing(spec_json)
            if metadata:
                self.update_metadata(metadata)
        else:
            self._metadata = self._create(spec_json, metadata or {})

    # -- the writer's lock (see tt_agents.data.lock) ---------------------------------------------

    @property
    def lock_path(self) -> Path:
        """The lock file, beside the dataset's folder (so that ``overwrite`` cannot delete it while held)."""
        return lock_path(self.path)

    def close(self) -> None:
        """Release the dataset for other writers (every episode written so far is already committed)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def __enter__(self) -> MinariWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- creation / appending -----------------------------------------------------------------

    def _create(self, spec_json: str | None, metadata: Mapping[str, Any]) -> dict[str, Any]:
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._write_namespace_metadata()
        raw_images = not self.jpeg_encoding and any(is_jpeg_space(s) for _, s in [*self._obs_leaves, *self._act_leaves])
        meta: dict[str, Any] = {
            "total_episodes": 0,
            "total_steps": 0,
            "data_format": "hdf5",
            "observation_space": json.dumps(serialize_space(self.observation_space)),
            "action_space": json.dumps(serialize_space(self.action_space)),
        }
        if spec_json is not None:
            meta["env_spec"] = spec_json
            meta["env_id"] = json.loads(spec_json).get("id")
        meta.update(
            {
                "dataset_id": self.dataset_id,
                "minari_version": _MINARI_VERSION_RAW_IMAGES if raw_images else _MINARI_VERSION,
                "jpeg_encoding": self.jpeg_encoding,
                "dataset_size": 0.0,
                "extra_spaces": {k: json.dumps(serialize_space(s)) for k, s in self.extra_spaces.items()},
            }
        )
        meta.update(metadata)
        # The HDF5 file first, then the metadata that makes the folder a dataset.
        with _open_hdf5_for_writing(self.data_path / MAIN_FILE, "w"):
            pass
        _atomic_write_json(self.data_path / METADATA_FILE, meta, self.fsync)
        return meta

    def _write_namespace_metadata(self) -> None:
        # Minari lists namespaces by a namespace_metadata.json in each namespace folder.
        root = datasets_root().resolve()
        folder = self.path.parent.resolve()
        ns = parse_dataset_id(self.dataset_id)[0]
        for _ in range(len(ns.split("/")) if ns else 0):
            if folder == root or root not in folder.parents:
                break
            f = folder / "namespace_metadata.json"
            if not f.exists():
                f.write_text("{}")
            folder = folder.parent

    def _open_existing(self, spec_json: str | None) -> dict[str, Any]:
        reader = MinariReader(self.path)
        meta = reader.metadata
        problems = []
        if meta.get("dataset_id") != self.dataset_id:
            problems.append(f"dataset_id: dataset has {meta.get('dataset_id')!r}, new data has {self.dataset_id!r}")
        for name, new in (("observation_space", self.observation_space), ("action_space", self.action_space)):
            old = json.loads(meta[name]) if isinstance(meta.get(name), str) else meta.get(name)
            if old != serialize_space(new):
                problems.append(f"{name}: dataset has {deserialize_space(old)}, new data has {new}")
        old_extras = {k: json.loads(v) for k, v in (meta.get("extra_spaces") or {}).items()}
        new_extras = {k: serialize_space(s) for k, s in self.extra_spaces.items()}
        if old_extras != new_extras:
            problems.append(f"extra_spaces: dataset has {sorted(old_extras)}, new data has {sorted(new_extras)}")
        old_jpeg = bool(meta.get("jpeg_encoding", True))
        if old_jpeg != self.jpeg_encoding:
            problems.append(f"jpeg_encoding: dataset has {old_jpeg}, new data has {self.jpeg_encoding}")
        problems += _spec_diff(meta.get("env_spec"), spec_json)
        if problems:
            raise DatasetMismatchError(
                f"cannot append to the dataset at {self.path}: it does not match the new data:\n  - "
                + "\n  - ".join(problems)
                + "\nlog into a new dataset id (e.g. bump the version -vN), or pass overwrite=True to replace it"
            )
        # Remove episodes written but never committed by a process that died between the two steps.
        committed = int(meta["total_episodes"])
        try:
            with _open_hdf5_for_writing(self.data_path / MAIN_FILE, "a") as f:
                stale = [k for k in f.keys() if k.startswith("episode_") and int(k[8:]) >= committed]
                for k in stale:
                    del f[k]
        except OSError as e:
            raise DatasetError(
                f"cannot open {self.data_path / MAIN_FILE} to append to it: {e}; the file is damaged "
                "(was a writer killed while writing?) — log into a new dataset id or pass overwrite=True"
            ) from None
        return meta

    # -- properties ------------------------------------------------------------------------------

    @property
    def total_episodes(self) -> int:
        return int(self._metadata["total_episodes"])

    @property
    def total_steps(self) -> int:
        return int(self._metadata["total_steps"])

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the committed metadata.json."""
        return json.loads(json.dumps(self._metadata, default=_json_default))

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Add or change metadata keys (not the ones the writer owns) and commit them atomically."""
        bad = _RESERVED_KEYS.intersection(metadata)
        if bad:
            raise ValueError(f"metadata keys {sorted(bad)} are set by the writer and cannot be updated")
        new = {**self._metadata, **metadata}
        _atomic_write_json(self.data_path / METADATA_FILE, new, self.fsync)
        self._metadata = json.loads(json.dumps(new, default=_json_default))

    # -- writing ---------------------------------------------------------------------------------

    def write_episodes(self, episodes: Sequence[EpisodeRecord], metadata: Mapping[str, Any] | None = None) -> list[int]:
        """Write finished episodes and commit them (with ``metadata`` updates, if any); returns their ids.

        When this returns, the episodes are on disk (and ``fsync``ed if ``fsync``) and counted in
        metadata.json; no later crash can lose them.

        Raises:
            ValueError: an episode whose arrays do not match the spaces or each other.
            DatasetWriteError: the write or the commit failed (a full disk, a quota, an I/O error),
                naming the dataset, the episodes already safe and those lost; the dataset still
                loads, and this writer can go on once the cause is fixed.
        """
        episodes = [e for e in episodes if len(e) > 0]
        if metadata:
            bad = _RESERVED_KEYS.intersection(metadata)
            if bad:
                raise ValueError(f"metadata keys {sorted(bad)} are set by the writer and cannot be updated")
        if not episodes:
            if metadata:
                self.update_metadata(metadata)
            return []
        for ep in episodes:
            self._check(ep)
        first = self.total_episodes

        def write(f: h5py.File) -> int:
            for k, ep in enumerate(episodes):
                self._write_group(f.create_group(f"episode_{first + k}"), first + k, ep)
            return sum(len(e) for e in episodes)

        return self._append(len(episodes), write, metadata)

    def _append(
        self, n: int, write: Callable[[h5py.File], int], metadata: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Write ``n`` episodes with ``write(file)`` (which returns their steps), then commit them.

        Raises:
            DatasetWriteError: the write or the commit failed (a full disk, a quota, an I/O error);
                the committed episodes are untouched and this writer can go on afterwards.
        """
        first = self.total_episodes
        try:
            with _open_hdf5_for_writing(self.data_path / MAIN_FILE, "a") as f:
                if self._failed_write:  # groups of the failed write, never committed
                    for key in [k for k in f if k.startswith("episode_") and int(k[8:]) >= first]:
                        del f[key]
                    self._failed_write = False
                steps = write(f)
            self._commit(n, steps, metadata)
        except (OSError, RuntimeError) as e:  # h5py raises either
            self._failed_write = True
            try:
                self._metadata = json.loads((self.data_path / METADATA_FILE).read_text())  # what is committed
            except (OSError, ValueError):
                pass  # the commit never began: what this writer holds is what is on disk
            lost = f"episode {first}" if n == 1 else f"episodes {first} to {first + n - 1}"
            safe = f"episodes 0 to {first - 1} are safe" if first else "no episode was committed before"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetWriteError(
                f"dataset {self.dataset_id} at {self.path}: writing {lost} failed ({type(e).__name__}: {reason}); "
                f"{safe} and the dataset still loads with them; {lost} {'is' if n == 1 else 'are'} lost. "
                "Free some disk space (or fix the I/O error) and log again"
            ) from e
        return list(range(first, first + n))

    def _commit(self, episodes: int, steps: int, metadata: Mapping[str, Any] | None = None) -> None:
        """Make the episodes just written durable, then count them in metadata.json (atomically)."""
        main = self.data_path / MAIN_FILE
        if metadata:
            self._metadata.update(json.loads(json.dumps(metadata, default=_json_default)))
        if self.fsync:
            fsync_file(main)
        self._metadata["total_episodes"] = self.total_episodes + episodes
        self._metadata["total_steps"] = self.total_steps + steps
        self._metadata["dataset_size"] = round(main.stat().st_size / 1e6, 1)
        _atomic_write_json(self.data_path / METADATA_FILE, self._metadata, self.fsync)

    def copy_episodes(
        self,
        source: str | os.PathLike,
        indices: Sequence[int],
        add_fields: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> list[int]:
        """Append episodes of another dataset (same spaces), copying their HDF5 groups byte for byte.

        Nothing is decoded and re-encoded, so JPEG frames lose nothing more. Returns the new ids.

        Args:
            source: the source dataset's folder; it is only read.
            indices: the source's episodes to copy, in order.
            add_fields: per copied episode, new extra per-step fields (``T`` rows each) written
                beside the copied ones: the fields of this dataset's ``extra_spaces`` that the
                source lacks (derived datasets: latent actions, segment starts, ...).

        Raises:
            DatasetMismatchError: the source's spaces, extra fields or image encoding differ.
            ValueError: ``add_fields`` misses a field, or a field's shape does not fit its space.
            DatasetWriteError: the write failed (see :meth:`write_episodes`).
        """
        reader = MinariReader(source)
        problems = []
        if reader.observation_space != self.observation_space or reader.action_space != self.action_space:
            problems.append(
                f"spaces: source has {reader.observation_space} / {reader.action_space}, "
                f"this dataset {self.observation_space} / {self.action_space}"
            )
        new_fields = sorted(set(self.extra_spaces) - set(reader.extra_spaces))
        if not set(reader.extra_spaces) <= set(self.extra_spaces) or (new_fields and add_fields is None):
            problems.append(
                f"extra fields: source has {sorted(reader.extra_spaces)}, this dataset {sorted(self.extra_spaces)}"
            )
        if reader.jpeg_encoding != self.jpeg_encoding:
            problems.append(f"jpeg_encoding: source has {reader.jpeg_encoding}, this dataset {self.jpeg_encoding}")
        if problems:
            raise DatasetMismatchError(f"cannot copy episodes from {source}: " + "; ".join(problems))
        indices = [int(i) for i in indices]
        if add_fields is not None and len(add_fields) != len(indices):
            raise ValueError(f"add_fields has {len(add_fields)} entries for {len(indices)} episodes")
        if not indices:
            return []
        first = self.total_episodes
        with reader.open() as src:
            lengths = [reader._check_structure(src, i) for i in indices]  # the source's problems, before any write
            if add_fields is not None:
                for i, T, fields in zip(indices, lengths, add_fields):
                    self._check_added(i, T, fields, new_fields)

            def write(dst: h5py.File) -> int:
                for k, i in enumerate(indices):
                    name = f"episode_{first + k}"
                    src.copy(src[f"episode_{i}"], dst, name=name)
                    dst[name].attrs["id"] = first + k
                    if add_fields is not None and new_fields:
                        xg = dst[name].require_group("extras")
                        for field_name in new_fields:
                            self._write_leaves(xg, field_name, add_fields[k][field_name], self._extra_leaves[field_name])
                return sum(lengths)  # checked above, before anything was written

            return self._append(len(indices), write)

    def truncate_episodes(self, n: int) -> None:
        """Keep only the first ``n`` committed episodes (a resumed run drops what it will write again).

        The count in metadata.json is committed first, so a crash part-way leaves the dataset at ``n``
        episodes (the groups past it are stale and removed by the next writer that opens it).
        """
        n = int(n)
        if not 0 <= n <= self.total_episodes:
            raise ValueError(f"truncate_episodes({n}): the dataset has {self.total_episodes} episodes")
        if n == self.total_episodes:
            return
        main = self.data_path / MAIN_FILE
        with _open_hdf5_for_writing(main, "a") as f:
            steps = sum(int(f[f"episode_{i}"].attrs["total_steps"]) for i in range(n))
        self._metadata["total_episodes"], self._metadata["total_steps"] = n, steps
        _atomic_write_json(self.data_path / METADATA_FILE, self._metadata, self.fsync)
        with _open_hdf5_for_writing(main, "a") as f:
            for key in [k for k in f if k.startswith("episode_") and int(k[8:]) >= n]:
                del f[key]

    def _check_added(self, i: int, T: int, fields: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        problems = [f"{n!r} is missing" for n in names if n not in fields]
        problems += [f"{n!r} is not a new field of this dataset {list(names)}" for n in fields if n not in names]
        for n in names:
            if n not in fields:
                continue
            for path, space in self._extra_leaves[n]:
                shape = np.shape(get_leaf(fields[n], path))
                if shape != (T, *space.shape):
                    problems.append(f"{n!r}{list(path) if path else ''} has shape {shape}, expected {(T, *space.shape)}")
        if problems:
            raise ValueError(f"new fields for source episode {i} ({T} steps): " + "; ".join(problems))

    def _check(self, ep: EpisodeRecord) -> None:
        T = len(ep)
        problems = []
        for name, value, n in (("terminations", ep.terminations, T), ("truncations", ep.truncations, T)):
            if np.shape(value) != (n,):
                problems.append(f"{name} has shape {np.shape(value)}, expected ({n},)")
        for name, value, leaves, n in (
            ("observations", ep.observations, self._obs_leaves, T + 1),
            ("actions", ep.actions, self._act_leaves, T),
            *((f"extras[{k!r}]", ep.extras.get(k), self._extra_leaves[k], T) for k in self.extra_spaces),
        ):
            if value is None:
                problems.append(f"{name} is missing")
                continue
            for path, space in leaves:
                try:
                    shape = np.shape(get_leaf(value, path))
                except (KeyError, IndexError, TypeError):
                    problems.append(f"{name}{list(path)} is missing")
                    continue
                if shape != (n, *space.shape):
                    problems.append(
                        f"{name}{list(path) if path else ''} has shape {shape}, expected {(n, *space.shape)}"
                    )
        unknown = set(ep.extras) - set(self.extra_spaces)
        if unknown:
            problems.append(f"extras {sorted(unknown)} were not declared in extra_spaces {sorted(self.extra_spaces)}")
        if problems:
            raise ValueError(
                f"episode of {T} steps does not match the dataset {self.dataset_id!r}: " + "; ".join(problems)
            )

    def _write_group(self, g: h5py.Group, episode_id: int, ep: EpisodeRecord) -> None:
        rewards = np.asarray(ep.rewards, dtype=np.float64)
        _set_attr(g, "id", np.int64(episode_id))
        _set_attr(g, "total_steps", np.int64(len(rewards)))
        if ep.seed is not None:
            _set_attr(g, "seed", np.int64(ep.seed))
        _set_attr(g, "rewards_sum", np.float64(rewards.sum()))  # checked on load: rewards altered after writing
        for k, v in ep.attrs.items():
            g.attrs[k] = v
        self._write_leaves(g, "observations", ep.observations, self._obs_leaves)
        self._write_leaves(g, "actions", ep.actions, self._act_leaves)
        _new_dataset(g, "rewards", rewards)
        _new_dataset(g, "terminations", np.asarray(ep.terminations, dtype=bool))
        _new_dataset(g, "truncations", np.asarray(ep.truncations, dtype=bool))
        info_group = g.create_group("infos")
        if ep.infos:
            _write_info(info_group, ep.infos)
        if self.extra_spaces:
            xg = g.create_group("extras")
            for name, leaves in self._extra_leaves.items():
                self._write_leaves(xg, name, ep.extras[name], leaves)

    def _write_leaves(self, g: h5py.Group, name: str, value: Any, leaves: list[tuple[LeafPath, gym.Space]]) -> None:
        jpeg = self._jpeg_paths.get(name, set())
        for path, space in leaves:
            parent = g
            names = [name, *(_h5name(p) for p in path)]
            for n in names[:-1]:
                parent = parent.require_group(n)
            arr = np.asarray(get_leaf(value, path))
            if path in jpeg:
                frames = _encode_jpeg(np.asarray(arr, dtype=np.uint8))
                if len({len(f) for f in frames}) == 1:
                    parent.create_dataset(names[-1], data=np.stack(frames))
                else:
                    obj = np.empty(len(frames), dtype=object)
                    obj[:] = frames
                    parent.create_dataset(names[-1], data=obj, dtype=h5py.vlen_dtype(np.uint8))
            else:
                _new_dataset(parent, names[-1], arr.astype(space.dtype, copy=False))


def _open_hdf5_for_writing(path: Path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)`` without HDF5's own file lock.

    The writer's lock (see :meth:`MinariWriter._lock`) already keeps other writers out, and HDF5's lock
    would let any reader (another process loading the dataset, Minari's loader) make a write fail
    with ``BlockingIOError``; readers trust only the episodes metadata.json counts.
    """
    return h5py.File(path, mode, locking=False)


def _new_dataset(parent: h5py.Group, name: str, arr: np.ndarray) -> None:
    """``parent.create_dataset(name, data=arr)`` through h5py's low-level API (half the cost per episode)."""
    arr = np.ascontiguousarray(arr)
    tid = h5py.h5t.py_create(arr.dtype, logical=True)
    sid = h5py.h5s.create_simple(arr.shape) if arr.shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(parent.id, name.encode(), tid, sid)
    if arr.size:
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)


def _set_attr(obj: h5py.Group, name: str, value: np.generic) -> None:
    """``obj.attrs[name] = value`` (a new numeric scalar) through h5py's low-level API."""
    arr = np.asarray(value)
    attr = h5py.h5a.create(obj.id, name.encode(), h5py.h5t.py_create(arr.dtype), h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(arr)


def _write_info(g: h5py.Group, infos: Mapping[str, Any]) -> None:
    for k, v in infos.items():
        if isinstance(v, Mapping):
            _write_info(g.create_group(k), v)
        else:
            arr = np.asarray(v)
            if arr.dtype.kind in "US":
                g.create_dataset(k, data=arr.astype(object), dtype=h5py.string_dtype())
            elif arr.dtype.kind in "biuf":
                g.create_dataset(k, data=arr)
