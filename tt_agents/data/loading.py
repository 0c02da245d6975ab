"""Load a dataset from a Minari id, a Minari dataset folder or a D4RL HDF5 file into episodes.

Minari datasets are read with h5py and JSON directly (see :mod:`tt_agents.data.minari_io`), so
datasets written by any Minari version with the HDF5 layout load whatever Minari is installed.

- :func:`load_dataset`: the one entry point every agent uses.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tt_agents.data.d4rl import load_d4rl
from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset
from tt_agents.data.hdf5 import open_hdf5
from tt_agents.data.minari_format import dataset_path, datasets_root, parse_dataset_id
from tt_agents.data.reader import MinariReader
from tt_agents.data.validate import read_episodes, validate_episode, validate_reward_sum, validate_totals

__all__ = ["load_dataset"]


def _local_ids(root: Path, limit: int = 200) -> list[str]:
    found: list[str] = []
    if not root.is_dir():
        return found
    for meta in root.glob("**/data/metadata.json"):
        found.append(meta.parent.parent.relative_to(root).as_posix())
        if len(found) >= limit:
            break
    return sorted(found)


def _resolve(source: str | os.PathLike, allow_external: bool | None) -> tuple[str, Path]:
    """``("d4rl" | "minari", path)`` for a source; raises DatasetError saying where it looked."""
    p = Path(source).expanduser()
    if p.is_file():
        with open_hdf5(p, allow_external) as f:
            keys = set(f.keys())
        if "observations" in keys and "episode_0" not in keys:
            return "d4rl", p
        if p.name == "main_data.hdf5" or any(k.startswith("episode_") for k in keys):
            return "minari", p.parent
        raise DatasetError(
            f"{p} is neither a D4RL file (flat 'observations', 'actions', 'rewards', 'terminals', 'timeouts') nor a "
            f"Minari main_data.hdf5 (groups 'episode_0', ...); it holds {sorted(keys)[:10]}"
        )
    if p.is_dir():
        return "minari", p
    source = str(source)
    try:
        parse_dataset_id(source)
    except ValueError:
        raise DatasetError(
            f"{source!r} is not an existing file or folder, nor a Minari dataset id ('namespace/name-vN')"
        ) from None
    folder = dataset_path(source)
    if (folder / "data").is_dir():
        return "minari", folder
    root = datasets_root()
    known = _local_ids(root)
    raise DatasetError(
        f"no Minari dataset {source!r} in the local store {root} "
        f"({'$MINARI_DATASETS_PATH' if os.environ.get('MINARI_DATASETS_PATH') else 'set $MINARI_DATASETS_PATH to change it'}); "
        f"local datasets: {known[:20] or 'none'}. Pass a dataset folder or D4RL file path, or download it "
        "with `minari download`"
    )


def _metadata(reader: MinariReader, folder: Path) -> dict[str, Any]:
    meta = dict(reader.metadata)
    spec = reader.env_spec
    if not meta.get("env_id") and spec is not None and spec.get("id"):
        meta["env_id"] = spec["id"]
    meta.setdefault("dataset_id", folder.name)
    meta["format"] = "minari"
    meta["source"] = str(folder)
    return meta


def _load_minari(
    folder: Path, lazy: bool, validate: bool, allow_external: bool | None, max_bytes: int | None
) -> EpisodeDataset:
    reader = MinariReader(folder, allow_external=allow_external, max_bytes=max_bytes)
    meta = _metadata(reader, folder)
    source = f"dataset {meta['dataset_id']!r} ({reader.data_path})"
    with reader.open() as f:
        if validate:
            lengths = reader.lengths(f)
        else:
            reader.check_size(f)  # skipping the checks never means allocating what a file merely claims
            lengths = np.array([f[f"episode_{i}"]["rewards"].shape[0] for i in range(reader.total_episodes)], np.int64)
        sums = [reader.episode_attrs(f, i).get("rewards_sum") for i in range(reader.total_episodes)] if validate else []
        extra = sum(1 for k in f.keys() if k.startswith("episode_")) - reader.total_episodes
    if extra > 0:
        warnings.warn(
            f"{source}: {extra} episode group(s) beyond total_episodes={reader.total_episodes} are ignored "
            "(written by a process that stopped before committing them)",
            stacklevel=3,
        )
    if validate:
        validate_totals(lengths, meta, source=source)

    def read(f: h5py.File, i: int) -> Episode:
        ep = reader.read_episode(f, i)
        if validate:
            where = f"{source}, episode {i}"
            validate_episode(ep, reader.observation_space, reader.action_space, reader.extra_spaces, where=where)
            # rewards_sum is checked on the stored (float64) rewards, before the cast to float32
            validate_reward_sum(where, f[f"episode_{i}"]["rewards"][()], sums[i])
        return ep

    if lazy:

        def loader(i: int) -> Episode:
            with reader.open() as f:
                return read(f, i)

        return EpisodeDataset.from_loader(
            len(lengths), lengths, loader, reader.observation_space, reader.action_space, meta
        )
    with reader.open() as f:
        episodes = read_episodes(lambda i: read(f, i), len(lengths))
    return EpisodeDataset(episodes, reader.observation_space, reader.action_space, meta)


def load_dataset(
    source: str | os.PathLike,
    *,
    lazy: bool = False,
    validate: bool = True,
    allow_external: bool | None = None,
    max_bytes: int | None = None,
) -> EpisodeDataset:
    """Load episodes from a Minari id, a Minari dataset folder, or a D4RL-format HDF5 file.

    Args:
        source: a Minari dataset id (``"hopper/medium-v0"``, looked up in ``$MINARI_DATASETS_PATH``,
            default ``~/.minari/datasets``); the path of a Minari dataset folder (the one holding
            ``data/``), of its ``data/`` folder or of its ``main_data.hdf5``; or the path of a
            D4RL-format ``.hdf5`` file.
        lazy: read each episode from disk when it is first used (datasets larger than RAM); the
            lengths and structure are still checked now.
        validate: check structure, lengths against spaces, NaN/Inf, done flags and totals against
            the metadata, raising :class:`~tt_agents.data.DatasetError` naming the episode and step
            (NaN/Inf of every episode at once: :class:`~tt_agents.data.validate.NonFiniteError`).
        allow_external: read HDF5 files whose data lives in other files (external links, external
            raw storage, virtual datasets). Default: refused with ``DatasetError`` naming the
            objects, unless ``TT_AGENTS_ALLOW_HDF5_EXTERNAL=1`` is set; only for files you trust.
        max_bytes: the most bytes the load may decode, added up from the file's headers before any
            value is read; default 128 times the file's size plus 64 MiB (see :mod:`tt_agents.data.hdf5`).

    Returns:
        The episodes, with ``metadata`` holding ``dataset_id``, ``env_id``, ``ref_min_score`` and
        ``ref_max_score`` where the source records them, plus the source's other metadata.

    Raises:
        DatasetError: the source cannot be found or read, or its data is malformed.

    Example (with ``MINARI_DATASETS_PATH`` pointing at the repository's ``tests/data/minari``; tested in
    ``tests/data/test_loading.py``)::

        ds = load_dataset("fixtures/hopper/random-v0")
        ds.metadata["env_id"], len(ds)    # ('Hopper-v5', 20)
    """
    kind, path = _resolve(source, allow_external)
    if kind == "d4rl":
        return load_d4rl(path, lazy=lazy, validate=validate, allow_external=allow_external, max_bytes=max_bytes)
    return _load_minari(path, lazy, validate, allow_external, max_bytes)
