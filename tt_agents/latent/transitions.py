"""A dataset's transitions as windows of observations, and the one sampler of the latent-action stages.

A transition ``t`` of an episode with observations ``o_0 .. o_T`` is the window
``(o_{t-history}, ..., o_t, o_{t+1})`` (with ``future=k``: up to ``o_{t+k}``, for k-step prediction);
frames before the episode's start repeat ``o_0``. Only
the observations (and the episode lengths) are read here, never the actions: the latent action
model's stage is built on this, and ``tests/latent`` checks that it never touches an action.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tt_agents.data.episodes import DatasetError

__all__ = ["Transitions", "TransitionSampler"]


class Transitions:
    """Every transition of a dataset, in dataset order, as rows into one array of observations.

    Example:
        >>> import gymnasium as gym
        >>> from tt_agents.data import Episode, EpisodeDataset
        >>> ep = Episode(np.arange(4, dtype=np.float32)[:, None], np.zeros((3, 1), np.float32),
        ...              np.ones(3, np.float32), np.array([0, 0, 1], bool), np.zeros(3, bool))
        >>> tr = Transitions(EpisodeDataset([ep], gym.spaces.Box(0, 9, (1,)), gym.spaces.Box(-1, 1, (1,))), history=1)
        >>> len(tr), tr.frames(np.array([0, 2]))[:, :, 0].tolist()
        (3, [[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])
    """

    def __init__(self, dataset: Any, history: int, future: int = 1) -> None:
        if future < 1:
            raise ValueError(f"future must be >= 1, got {future}")
        obs, rows, valid = [], [], []
        offset = 0
        lengths = np.asarray(dataset.lengths)
        for i, n in enumerate(lengths):
            n = int(n)
            if n == 0:
                continue
            o = dataset[i].observations
            if isinstance(o, dict):
                raise DatasetError(
                    f"episode {i}: Dict observations are not supported by the latent action model; flatten them "
                    "first (gymnasium.wrappers.FlattenObservation)"
                )
            o = np.asarray(o)
            if len(o) != n + 1:
                raise DatasetError(f"episode {i} has {len(o)} observations for {n} steps, expected {n + 1}")
            t = np.arange(n)[:, None] + np.arange(-history, 1 + future)[None, :]  # (n, history + 1 + future)
            rows.append(offset + np.clip(t, 0, n))
            valid.append(t[:, history + 1:] <= n)  # (n, future): the future frames inside the episode
            obs.append(o)
            offset += n + 1
        if not rows:
            raise DatasetError("the dataset has no transitions (no episode with steps)")
        self.all_obs = np.concatenate(obs)
        self.rows = np.concatenate(rows)  # (N, history + 1 + future)
        self.future_valid = np.concatenate(valid)  # (N, future)
        self.window = history + 1 + future
        self.history, self.future = history, future

    def __len__(self) -> int:
        return len(self.rows)

    def frames(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``(len(idx), history + 1 + future, *obs_shape)`` of the transitions ``idx``; frames
        past the episode's end repeat its last (``future_valid`` says which are real)."""
        return self.all_obs[self.rows[idx]]

    def observations(self, idx: np.ndarray) -> np.ndarray:
        """``o_t`` of the transitions ``idx``, ``(len(idx), *obs_shape)``."""
        return self.all_obs[self.rows[idx, self.history]]


class TransitionSampler:
    """Batches of transitions: ``frames`` and/or ``observations`` (o_t), plus per-transition ``fields``.

    Batch ``i`` is a pure function of ``(seed, rank, i)`` (exact resume). With ``subset=n`` only the
    first ``n`` transitions are drawn (the labelled ones of the few-label stages).
    """

    def __init__(
        self,
        transitions: Transitions,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fields: dict[str, np.ndarray] | None = None,
        subset: int | None = None,
        frames: bool = True,
        observations: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.transitions, self.batch_size = transitions, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.fields = dict(fields or {})
        self.n = len(transitions) if subset is None else min(int(subset), len(transitions))
        for k, v in self.fields.items():
            if len(v) < self.n:
                raise ValueError(f"field {k!r} has {len(v)} rows for {self.n} transitions")
        self.with_frames, self.with_observations = frames, observations

    def sample(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, step])
        idx = rng.integers(0, self.n, size=self.batch_size)
        batch = {k: v[idx] for k, v in self.fields.items()}
        if self.with_frames:
            batch["frames"] = self.transitions.frames(idx)
            if self.transitions.future > 1:
                batch["future_valid"] = self.transitions.future_valid[idx]
        if self.with_observations:
            batch["observations"] = self.transitions.observations(idx)
        return batch
