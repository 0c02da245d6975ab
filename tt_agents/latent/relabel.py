"""Relabel a dataset with latent actions: a new Minari dataset, every original field kept byte for byte.

:func:`relabel` runs a trained :class:`~tt_agents.latent.LatentActionPolicy`'s inverse-dynamics
model over every transition (batched, with a progress bar) and writes a new dataset holding the
source's episodes plus two extra per-step fields: ``latent_actions`` (the IDM's unquantized
latent, float32 ``(T, latent_dim)``) and ``latent_codes`` (the code indices, int64
``(T, n_codes)``; absent without a quantizer). The source is only read.

When the source is a Minari dataset on disk, each episode's HDF5 group is copied as stored (JPEG
frames are not re-encoded, infos and attributes come along) and the new fields are added to its
``extras`` group, through :func:`tt_agents.data.derive.derive_dataset` (the writer's lock, its
atomic commits). An in-memory :class:`~tt_agents.data.EpisodeDataset` is written episode by episode with
the same arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from tt_agents.data.derive import derive_dataset
from tt_agents.data.episodes import DatasetError, EpisodeDataset
from tt_agents.data.loading import load_dataset
from tt_agents.data.minari_format import _RESERVED_KEYS, EpisodeRecord, dataset_path, parse_dataset_id
from tt_agents.data.reader import MinariReader
from tt_agents.data.writer import MinariWriter

__all__ = ["relabel", "relabeled_id", "LATENT_FIELDS"]

LATENT_FIELDS = ("latent_actions", "latent_codes")
"""The per-step fields :func:`relabel` adds."""


def relabeled_id(dataset_id: str) -> str:
    """The default id of a relabeled dataset: ``-latent`` before the version.

    Example:
        >>> relabeled_id("procgen/bigfish-expert-v0")
        'procgen/bigfish-expert-latent-v0'
    """
    head, _, version = dataset_id.rpartition("-v")
    return f"{head}-latent-v{version}"


def _source_folder(dataset: Any) -> Path | None:
    """The Minari folder a dataset (an id, a path, or a loaded EpisodeDataset) lives in; None if in memory."""
    if isinstance(dataset, EpisodeDataset):
        meta = dataset.metadata
        if meta.get("format") == "minari" and meta.get("source"):
            return Path(meta["source"])
        return None
    p = Path(dataset).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name == "main_data.hdf5":
        return p.parent.parent if p.parent.name == "data" else p.parent
    parse_dataset_id(str(dataset))
    folder = dataset_path(str(dataset))
    if not (folder / "data").is_dir():
        raise DatasetError(f"no Minari dataset {dataset!r} at {folder}; pass a dataset folder, a dataset id in "
                           "$MINARI_DATASETS_PATH or an EpisodeDataset")
    return folder


def _windows(observations: np.ndarray, history: int) -> np.ndarray:
    """Rows ``(T, history + 2)`` into an episode's ``T + 1`` observations (see :mod:`tt_agents.latent.transitions`)."""
    n = len(observations) - 1
    return np.clip(np.arange(n)[:, None] + np.arange(-history, 2)[None, :], 0, n)


class _Labeler:
    """Latent actions of whole episodes, in batches of transitions across episodes."""

    def __init__(self, lam: Any, batch_size: int) -> None:
        self.lam, self.batch_size = lam, batch_size
        self.history = lam.config.lam.history

    def __call__(self, observations: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        frames = [o[_windows(o, self.history)] for o in observations]  # each (T, history + 2, *obs)
        allf = np.concatenate(frames)
        zs, cs = [], []
        for s in range(0, len(allf), self.batch_size):
            z, c = self.lam.infer_latents(allf[s:s + self.batch_size])
            zs.append(z)
            cs.append(c)
        z, c = np.concatenate(zs), np.concatenate(cs)
        out, s = [], 0
        for f in frames:
            fields = {"latent_actions": z[s:s + len(f)].astype(np.float32)}
            if self.lam.n_codes:
                fields["latent_codes"] = c[s:s + len(f)].astype(np.int64)
            out.append(fields)
            s += len(f)
        return out


def _latent_spaces(lam: Any) -> dict[str, gym.Space]:
    spaces: dict[str, gym.Space] = {"latent_actions": lam.latent_space}
    if lam.n_codes:
        n = lam.model.lam.quantizer.codebook_size
        spaces["latent_codes"] = gym.spaces.Box(0, n - 1, (lam.n_codes,), np.int64)
    return spaces


def relabel(
    dataset: Any,
    lam: Any,
    dataset_id: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    episodes_per_batch: int = 16,
    batch_size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> EpisodeDataset:
    """Write a new Minari dataset: ``dataset``'s episodes plus ``latent_actions`` and ``latent_codes``.

    Args:
        dataset: a Minari dataset id, a dataset folder, or an :class:`~tt_agents.data.EpisodeDataset`
            (one loaded from Minari is copied from its folder, group by group).
        lam: a trained :class:`~tt_agents.latent.LatentActionPolicy` (its IDM labels the transitions).
        dataset_id: the new dataset's id; default the source's with ``-latent`` before the version.
        path: the new dataset's folder (default: its id in ``$MINARI_DATASETS_PATH``).
        episodes_per_batch: episodes read and written together.
        batch_size: transitions per IDM call (default: the agent's ``relabel_batch_size``).
        progress: show a progress bar over the episodes.
        overwrite: replace an existing dataset at the new id or path (otherwise refused).

    Returns:
        The new dataset, loaded (``validate=True``) from disk.

    Raises:
        DatasetError: the source cannot be read, already has a ``latent_actions`` field, or the new
            dataset exists and ``overwrite`` is false.
    """
    from tt_agents.latent.agents import LatentActionPolicy

    if not isinstance(lam, LatentActionPolicy):
        raise TypeError(f"relabel needs a trained LatentActionPolicy, got {type(lam).__name__}")
    folder = _source_folder(dataset)
    labeler = _Labeler(lam, batch_size or lam.config.relabel_batch_size)
    if folder is not None:
        reader = MinariReader(folder)
        obs_space, act_space = reader.observation_space, reader.action_space
        extras, jpeg = dict(reader.extra_spaces), reader.jpeg_encoding
        source_meta = reader.metadata
        n_episodes = reader.total_episodes
        source_id = source_meta.get("dataset_id") or folder.name
    else:
        obs_space, act_space = dataset.observation_space, dataset.action_space
        extras = {}
        first = next((e for e in dataset if len(e)), None)
        if first is not None:
            extras = {k: gym.spaces.Box(-np.inf, np.inf, np.shape(v)[1:], np.asarray(v).dtype)
                      for k, v in first.extras.items()}
        jpeg, source_meta, n_episodes = True, dict(dataset.metadata), len(dataset)
        source_id = source_meta.get("dataset_id") or "latent/relabeled-v0"
    clash = sorted(set(LATENT_FIELDS) & set(extras))
    if clash:
        raise DatasetError(f"the source already has the fields {clash}; relabel the original dataset instead")
    if obs_space != lam.observation_space and obs_space.shape != lam.observation_space.shape:
        raise DatasetError(f"the dataset's observations {obs_space} do not fit the agent's {lam.observation_space}")
    new_id = dataset_id or relabeled_id(source_id if "-v" in source_id else f"{source_id}-v0")
    target = Path(path) if path is not None else dataset_path(new_id)
    if folder is not None and target.resolve() == folder.resolve():
        raise DatasetError(f"the relabeled dataset would overwrite its source {folder}; give another id or path")
    if (target / "data").exists() and not overwrite:
        raise DatasetError(f"a dataset already exists at {target}; pass overwrite=True or another id")
    meta = {k: v for k, v in source_meta.items() if k not in _RESERVED_KEYS and k not in ("format", "source")}
    meta["relabeled_from"] = source_id
    if folder is not None:  # each episode's HDF5 group copied as stored, the latent fields beside it
        derive_dataset(folder, new_id, lambda eps: labeler([np.asarray(e.observations) for e in eps]),
                       _latent_spaces(lam), path=target, metadata=meta, batch_episodes=episodes_per_batch,
                       overwrite=overwrite, progress=progress, description=f"relabel {new_id}")
        return load_dataset(target)
    writer = MinariWriter(new_id, obs_space, act_space, path=target, env_spec=source_meta.get("env_spec"),
                          extra_spaces={**extras, **_latent_spaces(lam)}, metadata=meta, jpeg_encoding=jpeg,
                          overwrite=overwrite)
    bar = tqdm(total=n_episodes, desc=f"relabel {new_id}", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, n_episodes, episodes_per_batch):
            eps = [dataset[i] for i in range(start, min(n_episodes, start + episodes_per_batch))]
            labels = labeler([np.asarray(e.observations) for e in eps])
            writer.write_episodes([
                EpisodeRecord(e.observations, e.actions, e.rewards, e.terminations, e.truncations,
                              extras={**e.extras, **lab}) for e, lab in zip(eps, labels)])
            bar.update(len(eps))
    finally:
        bar.close()
        writer.close()
    return load_dataset(target)
