"""D4RL-format HDF5 files: flat arrays of transitions, split into episodes.

A D4RL file holds, for ``N`` transitions, the datasets ``observations (N, ...)``,
``actions (N, ...)``, ``rewards (N,)``, ``terminals (N,)`` and ``timeouts (N,)``, and optionally
``next_observations (N, ...)``. An episode ends at the first step whose ``terminals`` or
``timeouts`` flag is set; steps after the last flag form a final, truncated episode.

The last observation of an episode (the one after its final step) is only in the file when it
has ``next_observations``. Without it, as D4RL's own ``qlearning_dataset`` does:

- an episode that ends by a timeout (or the end of the file) loses its final transition, so that
  its last observation is a real one and the step before is marked truncated;
- an episode that ends by a terminal keeps every transition, and its last observation repeats
  the one before (nothing is bootstrapped from past a terminal).

The metadata key ``final_observation`` says which was done (``"next_observations"`` or
``"d4rl_convention"``). Metadata also takes ``env_id``, ``ref_min_score`` and ``ref_max_score`` from
the file's root attributes or its ``metadata/`` group where present.

- :func:`load_d4rl`: read a D4RL file into an :class:`~tt_agents.data.EpisodeDataset`.
- :func:`is_d4rl_file`: whether an HDF5 file is laid out as D4RL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset
from tt_agents.data.hdf5 import check_decoded_size, open_hdf5
from tt_agents.data.validate import read_episodes, validate_episode

__all__ = ["is_d4rl_file", "load_d4rl"]

_REQUIRED = ("observations", "actions", "rewards", "terminals")
_CHUNK = 1 << 18  # rows per read when scanning a large file


def is_d4rl_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file with D4RL's flat ``observations``/``actions``/... datasets."""
    with open_hdf5(Path(path)) as f:
        return all(isinstance(f.get(k), h5py.Dataset) for k in _REQUIRED)


def _scalar(v: Any) -> Any:
    v = v[()] if isinstance(v, h5py.Dataset) else v
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    return v.decode() if isinstance(v, bytes) else v


def _file_metadata(f: h5py.File) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    sources = [dict(f.attrs)]
    if isinstance(f.get("metadata"), h5py.Group):
        sources.append(
            {
                k: v
                for k, v in f["metadata"].items()
                if isinstance(v, h5py.Dataset) and v.shape == () and v.dtype.itemsize <= 1 << 16  # a scalar, small
            }
        )
    for src in sources:
        for k, v in src.items():
            v = _scalar(v)
            if isinstance(v, (str, int, float, bool)):
                meta[k.split("/")[-1]] = v
    if "env_id" not in meta:
        for k in ("env_name", "env"):
            if isinstance(meta.get(k), str):
                meta["env_id"] = meta[k]
                break
    return meta


def _column_range(ds: h5py.Dataset) -> tuple[np.ndarray, np.ndarray]:
    lo = np.full(ds.shape[1:], np.inf)
    hi = np.full(ds.shape[1:], -np.inf)
    for k in range(0, ds.shape[0], _CHUNK):
        a = ds[k : k + _CHUNK]
        lo = np.minimum(lo, a.min(axis=0))
        hi = np.maximum(hi, a.max(axis=0))
    return lo, hi


def _spaces(f: h5py.File) -> tuple[gym.Space, gym.Space]:
    obs = f["observations"]
    if obs.dtype == np.uint8:
        obs_space = gym.spaces.Box(0, 255, obs.shape[1:], np.uint8)
    else:
        obs_space = gym.spaces.Box(-np.inf, np.inf, obs.shape[1:], obs.dtype)
    act = f["actions"]
    if act.dtype.kind in "iu":
        if act.ndim != 1:
            raise DatasetError(f"integer actions must have shape (N,), got {act.shape}; only Discrete actions are read")
        lo, hi = _column_range(act) if act.shape[0] else (np.zeros(()), np.zeros(()))
        if lo < 0:
            raise DatasetError(f"discrete actions must be >= 0, found {int(lo)}; remap them to 0..n-1")
        act_space: gym.Space = gym.spaces.Discrete(int(hi) + 1)
    else:
        lo, hi = _column_range(act)
        if np.all(lo >= -1) and np.all(hi <= 1):  # D4RL's continuous-control actions live in [-1, 1]
            lo, hi = -np.ones(act.shape[1:]), np.ones(act.shape[1:])
        act_space = gym.spaces.Box(lo.astype(act.dtype), hi.astype(act.dtype), act.shape[1:], act.dtype)
    return obs_space, act_space


def _boundaries(f: h5py.File, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per episode: first row, last row (inclusive), whether it ended by a terminal; and whether next_obs exist."""
    n = f["observations"].shape[0]
    names = [*_REQUIRED, *(k for k in ("timeouts", "next_observations") if k in f)]
    for k in names:
        ds = f.get(k)
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{path}: {k!r} is not a dataset (D4RL files hold flat arrays)")
        if ds.shape[0] != n:
            raise DatasetError(
                f"{path}: {k} has {ds.shape[0]} rows but observations has {n}; every D4RL array needs one row per "
                "transition — the file is inconsistent, regenerate it"
            )
    rshape = f["rewards"].shape
    if rshape not in ((n,), (n, 1)):
        raise DatasetError(f"{path}: rewards has shape {rshape}, expected ({n},)")
    terminals = np.asarray(f["terminals"][()]).reshape(n).astype(bool)
    timeouts = np.asarray(f["timeouts"][()]).reshape(n).astype(bool) if "timeouts" in f else np.zeros(n, bool)
    ends = np.flatnonzero(terminals | timeouts)
    if n and (len(ends) == 0 or ends[-1] != n - 1):
        ends = np.append(ends, n - 1)  # trailing steps: a truncated episode
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)
    return starts, ends.astype(np.int64), terminals[ends] if len(ends) else np.zeros(0, bool), "next_observations" in f


def _read(f: h5py.File, s: int, e: int, terminal: bool, has_next: bool, i: int) -> Episode:
    obs = f["observations"]
    if has_next:
        observations = np.concatenate([obs[s : e + 1], f["next_observations"][e : e + 1]])
        stop = e + 1
    elif terminal:
        part = obs[s : e + 1]
        observations = np.concatenate([part, part[-1:]])
        stop = e + 1
    else:
        observations = obs[s : e + 1]
        stop = e  # drop the final transition: its next observation is not in the file
    T = stop - s
    rewards = np.asarray(f["rewards"][s:stop], dtype=np.float32).reshape(T)
    terminations = np.zeros(T, dtype=bool)
    truncations = np.zeros(T, dtype=bool)
    if T:
        terminations[-1] = terminal
        truncations[-1] = not terminal
    return Episode(observations, f["actions"][s:stop], rewards, terminations, truncations, id=i)


def load_d4rl(
    path: str | os.PathLike,
    *,
    lazy: bool = False,
    validate: bool = True,
    allow_external: bool | None = None,
    max_bytes: int | None = None,
) -> EpisodeDataset:
    """Read a D4RL-format HDF5 file into episodes.

    Args:
        path: the ``.hdf5`` file.
        lazy: read each episode from the file when it is first used instead of all now.
        validate: check each episode's values (NaN/Inf, shapes) as it is read.
        allow_external, max_bytes: as for :func:`~tt_agents.data.load_dataset` (indirections to
            other files refused; what the headers claim bounded before anything is read).

    Raises:
        DatasetError: missing or inconsistent arrays, an unreadable file, or bad values (naming the
            episode, its rows in the file and the step).
    """
    path = Path(path)
    with open_hdf5(path, allow_external) as f:
        missing = [k for k in _REQUIRED if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise DatasetError(
                f"{path} is not a D4RL file: it lacks the datasets {missing} "
                f"(it holds {sorted(f.keys())[:10]}); D4RL files have flat {list(_REQUIRED)} and 'timeouts'"
            )
        used = [f[k] for k in (*_REQUIRED, "timeouts", "next_observations") if isinstance(f.get(k), h5py.Dataset)]
        check_decoded_size(path, sum(int(d.size or 0) * d.dtype.itemsize for d in used), max_bytes)
        starts, ends, terminal, has_next = _boundaries(f, path)
        obs_space, act_space = _spaces(f)
        file_meta = _file_metadata(f)
    lengths = np.where(terminal | has_next, ends - starts + 1, ends - starts)
    keep = np.flatnonzero(lengths > 0)
    starts, ends, terminal, lengths = starts[keep], ends[keep], terminal[keep], lengths[keep]
    metadata = {
        **file_meta,
        "dataset_id": file_meta.get("dataset_id", path.stem),
        "format": "d4rl",
        "source": str(path),
        "final_observation": "next_observations" if has_next else "d4rl_convention",
        "total_episodes": len(lengths),
        "total_steps": int(lengths.sum()),
    }

    def read(f: h5py.File, i: int) -> Episode:
        try:
            ep = _read(f, int(starts[i]), int(ends[i]), bool(terminal[i]), has_next, i)
        except OSError as e:
            raise DatasetError(f"{path}, episode {i}: cannot read rows {starts[i]}..{ends[i]} ({e})") from None
        if validate:
            where = f"episode {i} (rows {starts[i]}..{ends[i]} of {path})"
            validate_episode(ep, obs_space, act_space, where=where)
        return ep

    if lazy:

        def loader(i: int) -> Episode:
            with open_hdf5(path, allow_external) as f:
                return read(f, i)

        return EpisodeDataset.from_loader(len(lengths), lengths, loader, obs_space, act_space, metadata)
    with open_hdf5(path, allow_external) as f:
        episodes = read_episodes(lambda i: read(f, i), len(lengths))
    return EpisodeDataset(episodes, obs_space, act_space, metadata)
