"""The one episode representation every agent's sampler reads.

An :class:`Episode` holds one trajectory as numpy arrays, Minari-style: ``T`` transitions and
``T + 1`` observations (the last observation is kept, so that value bootstrapping and the
"next observation" of the final step are available). An :class:`EpisodeDataset` is an ordered,
indexable collection of episodes together with the spaces they live in and the dataset's
metadata (env id, reference scores, collecting policy, ...).

Episodes may be materialised lazily: ``EpisodeDataset`` only needs a length and a way to fetch
episode ``i`` (see :class:`EpisodeDataset.from_loader`), so datasets larger than RAM are read
from disk one episode at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["Episode", "EpisodeDataset", "DatasetError"]


class DatasetError(ValueError):
    """A dataset is malformed; the message names the episode, the step and the field at fault."""


@dataclass
class Episode:
    """One trajectory.

    Attributes:
        observations: ``(T + 1, *obs_shape)``; for Dict observation spaces a dict of such arrays.
        actions: ``(T, *action_shape)`` (``(T,)`` integers for Discrete actions).
        rewards: ``(T,)`` float32.
        terminations: ``(T,)`` bool; true where the MDP ended (no bootstrapping past it).
        truncations: ``(T,)`` bool; true where the episode was cut by a time limit.
        extras: extra per-step fields, each ``(T, ...)`` (latent actions, plans, ...).
        id: the episode's id in its dataset.
    """

    observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    id: int = 0

    def __len__(self) -> int:
        return int(len(self.rewards))

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def field(self, name: str) -> np.ndarray:
        """Return a per-step field by name: ``actions``, ``rewards`` or an extra."""
        if name in ("actions", "rewards", "terminations", "truncations"):
            return getattr(self, name)
        if name in self.extras:
            return self.extras[name]
        raise KeyError(
            f"episode {self.id} has no field {name!r}; available: "
            f"{['actions', 'rewards', 'terminations', 'truncations', *self.extras]}"
        )


class EpisodeDataset(Sequence[Episode]):
    """An ordered collection of episodes with their spaces and metadata.

    Args:
        episodes: the episodes, in order.
        observation_space: the space every observation lives in.
        action_space: the space every action lives in.
        metadata: free-form JSON-able metadata; keys that agents and ``evaluate`` read:
            ``env_id``, ``ref_min_score``, ``ref_max_score``, ``dataset_id``.

    Example:
        >>> import numpy as np, gymnasium as gym
        >>> ep = Episode(np.zeros((3, 2), np.float32), np.zeros((2, 1), np.float32),
        ...              np.ones(2, np.float32), np.array([False, True]), np.zeros(2, bool))
        >>> ds = EpisodeDataset([ep], gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)))
        >>> len(ds), ds.total_steps
        (1, 2)
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._episodes = list(episodes)
        self._loader: Callable[[int], Episode] | None = None
        self._lengths = np.array([len(e) for e in self._episodes], dtype=np.int64)
        self.observation_space = observation_space
        self.action_space = action_space
        self.metadata: dict[str, Any] = dict(metadata or {})

    @classmethod
    def from_loader(
        cls,
        n_episodes: int,
        lengths: Sequence[int],
        loader: Callable[[int], Episode],
        observation_space: gym.Space,
        action_space: gym.Space,
        metadata: Mapping[str, Any] | None = None,
    ) -> EpisodeDataset:
        """A lazy dataset: episode ``i`` is read by ``loader(i)`` when it is first needed."""
        ds = cls([], observation_space, action_space, metadata)
        ds._episodes = [None] * n_episodes  # type: ignore[list-item]
        ds._loader = loader
        ds._lengths = np.asarray(lengths, dtype=np.int64)
        return ds

    def __len__(self) -> int:
        return len(self._episodes)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        ep = self._episodes[i]
        if ep is None:
            assert self._loader is not None
            ep = self._loader(i if i >= 0 else len(self) + i)
        return ep

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        """Number of transitions in each episode, ``(n_episodes,)`` int64."""
        return self._lengths

    @property
    def total_steps(self) -> int:
        return int(self._lengths.sum())

    def returns(self) -> np.ndarray:
        """Undiscounted return of every episode."""
        return np.array([ep.total_return for ep in self], dtype=np.float64)

    def materialize(self) -> EpisodeDataset:
        """Read every episode into memory (no-op for in-memory datasets)."""
        if self._loader is None:
            return self
        return EpisodeDataset(list(self), self.observation_space, self.action_space, self.metadata)

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset(episodes={len(self)}, steps={self.total_steps}, "
            f"observation_space={self.observation_space}, action_space={self.action_space})"
        )
