"""Derived datasets: a Minari dataset's episodes copied byte for byte, with new per-step fields beside them.

A model that labels trajectories (a latent action model's latent actions, a trajectory
autoencoder's segment starts and latents) writes its labels as a *new* dataset: every field of
the source (observations, actions, rewards, flags, infos, its own extras) is copied as its HDF5
groups, never decoded and re-encoded, and the source is only read.

Example:
    >>> import tempfile, numpy as np, gymnasium as gym
    >>> from tt_agents.data.minari_format import EpisodeRecord
    >>> from tt_agents.data.writer import MinariWriter
    >>> root = tempfile.mkdtemp()
    >>> with MinariWriter("demo/src-v0", gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2),
    ...                   path=root + "/demo/src-v0", fsync=False) as w:
    ...     _ = w.write_episodes([EpisodeRecord(np.zeros((4, 2), np.float32), np.array([0, 1, 1]), np.ones(3),
    ...                                         np.array([False, False, True]), np.zeros(3, bool))])
    >>> out = derive_dataset(root + "/demo/src-v0", "demo/labelled-v0",
    ...                      lambda eps: [{"flag": (np.arange(len(e)) == 0)[:, None]} for e in eps],
    ...                      {"flag": gym.spaces.MultiBinary(1)}, path=root + "/demo/labelled-v0", progress=False)
    >>> from tt_agents.data import load_dataset
    >>> load_dataset(out)[0].extras["flag"].ravel().tolist()
    [1, 0, 0]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from tt_agents.data.episodes import DatasetError, Episode
from tt_agents.data.loading import _resolve
from tt_agents.data.minari_format import _RESERVED_KEYS, dataset_path
from tt_agents.data.reader import MinariReader
from tt_agents.data.writer import MinariWriter

__all__ = ["derive_dataset", "FieldFn"]

FieldFn = Callable[[list[Episode]], Sequence[Mapping[str, np.ndarray]]]
"""``compute(episodes) -> [fields of episode 0, fields of episode 1, ...]``: a batch of episodes in,
the new per-step fields of each out (``T`` rows per field)."""


def derive_dataset(
    source: str | os.PathLike,
    dataset_id: str,
    compute: FieldFn,
    field_spaces: Mapping[str, gym.Space],
    *,
    path: str | os.PathLike | None = None,
    metadata: Mapping[str, Any] | None = None,
    batch_episodes: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    description: str | None = None,
    fsync: bool = True,
) -> Path:
    """Write dataset ``dataset_id``: the episodes of ``source`` with the fields ``compute`` adds.

    Args:
        source: a Minari dataset id in the local store or a dataset folder; only read.
        dataset_id: the new dataset's id (``namespace/name-vN``).
        compute: see :data:`FieldFn`; called on ``batch_episodes`` episodes at a time.
        field_spaces: the space of one step of each new field (``Box``, ``Discrete``, ``MultiBinary``, ...).
        path: the new dataset's folder; default: ``dataset_id`` in the local store.
        metadata: more metadata for the new dataset (merged over the source's; ``derived_from`` is
            always set to the source).
        overwrite: replace an existing dataset at the destination (else it is an error).
        progress: show a progress bar.
        description: the progress bar's label.
        fsync: flush each batch to the disk (survives a power loss), as :class:`MinariWriter` does.

    Returns:
        the new dataset's folder (``load_dataset`` reads it; so does ``minari.load_dataset`` when
        it is in the local store).

    Raises:
        DatasetError: the source is missing, is a D4RL file, or is the destination; the
            destination exists and ``overwrite`` is false; a new field clashes with the source's.
    """
    kind, src = _resolve(source, None)
    if kind != "minari":
        raise DatasetError(f"{source}: derived datasets are made from Minari datasets, not D4RL files; "
                           "convert it first (tt_agents.data.load_dataset, then MinariWriter)")
    dest = Path(path) if path is not None else dataset_path(dataset_id)
    if dest.resolve() == src.resolve():
        raise DatasetError(f"the derived dataset {dataset_id} would overwrite its source {src}; give another id or path")
    if (dest / "data").exists() and not overwrite:
        raise DatasetError(f"{dest} already holds a dataset; pass overwrite=True to replace it, or another id")
    reader = MinariReader(src)
    clash = sorted(set(field_spaces) & set(reader.extra_spaces))
    if clash:
        raise DatasetError(f"{src} already has the fields {clash}; derive from a dataset without them")
    if batch_episodes < 1:
        raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}")
    meta = {k: v for k, v in reader.metadata.items() if k not in _RESERVED_KEYS}
    meta.update(metadata or {})
    meta["derived_from"] = str(source)
    writer = MinariWriter(
        dataset_id, reader.observation_space, reader.action_space, path=dest,
        env_spec=reader.metadata.get("env_spec"), extra_spaces={**reader.extra_spaces, **field_spaces},
        metadata=meta, jpeg_encoding=reader.jpeg_encoding, fsync=fsync, overwrite=overwrite,
    )
    n = reader.total_episodes
    with writer, tqdm(total=n, desc=description or f"derive {dataset_id}", unit="episode", disable=not progress) as bar:
        for lo in range(0, n, batch_episodes):
            idx = list(range(lo, min(n, lo + batch_episodes)))
            episodes = list(reader.iter_episodes(idx))
            fields = list(compute(episodes))
            writer.copy_episodes(src, idx, add_fields=fields)
            bar.update(len(idx))
    return dest
