"""Windows of K steps from an :class:`~tt_agents.data.EpisodeDataset`, the one sampler every agent reads.

A batch is a dict of numpy arrays, all with leading shape ``(B, K)``:

=================== ============================================================
``observations``    ``(B, K, *obs_shape)``
``next_observations`` ``(B, K, *obs_shape)`` (the observation after each step)
``actions``         ``(B, K, *action_shape)`` (or the configured ``action_field``)
``rewards``         ``(B, K)`` float32 (termination penalty included, if set)
``returns_to_go``   ``(B, K)`` float32, undiscounted sum of rewards from the step on
``values``          ``(B, K)`` float32, discounted return from the step on
``timesteps``       ``(B, K)`` int64, the step's index in its episode
``terminals``       ``(B, K)`` bool, the step ended the MDP
``mask``            ``(B, K)`` bool, false on padding
=================== ============================================================

Batch ``i`` is a pure function of ``(seed, rank, i)``: training resumes from a step count alone,
and each data-parallel rank draws its own stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tt_agents.data.episodes import DatasetError, EpisodeDataset

__all__ = ["WindowSampler", "discounted_cumsum"]


def discounted_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """``y[t] = sum_k gamma**k * x[t + k]`` along the first axis.

    Example:
        >>> discounted_cumsum(np.array([1.0, 1.0, 1.0]), 0.5).tolist()
        [1.75, 1.5, 1.0]
    """
    y = np.zeros(len(x), dtype=np.float64)
    acc = 0.0
    for t in range(len(x) - 1, -1, -1):
        acc = float(x[t]) + gamma * acc
        y[t] = acc
    return y


@dataclass
class _Flat:
    all_obs: np.ndarray  # every episode's observations, final ones included, each stored once
    obs_index: np.ndarray  # per step: its observation's row in all_obs (the next one is the row after)
    actions: np.ndarray
    rewards: np.ndarray
    rtg: np.ndarray
    values: np.ndarray
    timesteps: np.ndarray
    terminals: np.ndarray
    episode_end: np.ndarray  # per step: index one past the last step of its episode


class WindowSampler:
    """Sample windows of ``context_len`` consecutive steps, each from a single episode.

    Every step of the dataset is equally likely to start a window. A window that runs past the
    end of its episode is padded (zeros, ``mask`` false) on the right, or on the left with
    ``pad_side="left"`` (the Decision Transformer's convention: the last real step sits at the end).

    Args:
        dataset: the episodes.
        context_len: K, steps per window.
        batch_size: windows per batch (per rank).
        gamma: discount of the ``values`` targets.
        termination_penalty: added to the reward of a terminal (not truncated) step, as the
            Trajectory Transformer does; ``None`` adds nothing.
        action_field: which per-step field is returned as ``actions`` (an extra such as
            ``latent_actions`` for agents trained on relabeled data).
        seed, rank, world_size: the stream; batch ``i`` depends on ``(seed, rank, i)`` only.

    Example:
        >>> import gymnasium as gym
        >>> from tt_agents.data import Episode, EpisodeDataset
        >>> ep = Episode(np.arange(4, dtype=np.float32)[:, None], np.zeros((3, 1), np.float32),
        ...              np.ones(3, np.float32), np.array([0, 0, 1], bool), np.zeros(3, bool))
        >>> ds = EpisodeDataset([ep], gym.spaces.Box(0, 9, (1,)), gym.spaces.Box(-1, 1, (1,)))
        >>> batch = WindowSampler(ds, context_len=2, batch_size=4, gamma=1.0).sample(0)
        >>> batch["observations"].shape, batch["mask"].shape
        ((4, 2, 1), (4, 2))
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        context_len: int = 1,
        batch_size: int = 256,
        gamma: float = 0.99,
        termination_penalty: float | None = None,
        action_field: str = "actions",
        pad_side: str = "right",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        if len(dataset) == 0 or dataset.total_steps == 0:
            raise DatasetError("cannot sample from an empty dataset (no episodes with steps)")
        self.dataset = dataset
        self.context_len = context_len
        self.batch_size = batch_size
        self.gamma = gamma
        self.termination_penalty = termination_penalty
        self.action_field = action_field
        self.pad_side = pad_side
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._flat = self._flatten()

    def _flatten(self) -> _Flat:
        obs, obs_index, actions, rewards, rtg, values, ts, terms, ends = ([] for _ in range(9))
        offset = obs_offset = 0
        for ep in self.dataset:
            n = len(ep)
            if n == 0:
                continue
            if isinstance(ep.observations, dict):
                raise DatasetError(
                    f"episode {ep.id}: Dict observations are not supported by WindowSampler; "
                    "flatten them first (gymnasium.wrappers.FlattenObservation)"
                )
            r = np.asarray(ep.rewards, dtype=np.float64).copy()
            term = np.asarray(ep.terminations, dtype=bool)
            if self.termination_penalty is not None:
                r[term] += self.termination_penalty
            obs.append(np.asarray(ep.observations[: n + 1]))
            obs_index.append(obs_offset + np.arange(n, dtype=np.int64))
            obs_offset += n + 1
            actions.append(np.asarray(ep.field(self.action_field)))
            rewards.append(r.astype(np.float32))
            rtg.append(np.cumsum(r[::-1])[::-1].astype(np.float32))
            values.append(discounted_cumsum(r, self.gamma).astype(np.float32))
            ts.append(np.arange(n, dtype=np.int64))
            terms.append(term)
            ends.append(np.full(n, offset + n, dtype=np.int64))
            offset += n
        return _Flat(*(np.concatenate(x) for x in (obs, obs_index, actions, rewards, rtg, values, ts, terms, ends)))

    def __len__(self) -> int:
        """Number of possible window starts (steps in the dataset)."""
        return len(self._flat.rewards)

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, self.world_size, step])

    def sample(self, step: int) -> dict[str, np.ndarray]:
        """Return batch number ``step`` of this rank's stream."""
        f = self._flat
        K, B = self.context_len, self.batch_size
        starts = self.rng(step).integers(0, len(self), size=B)
        idx = starts[:, None] + np.arange(K)[None, :]  # (B, K)
        mask = idx < f.episode_end[starts][:, None]
        idx = np.where(mask, idx, 0)
        if self.pad_side == "left":
            # shift every row right so that its last real step sits at position K - 1
            n_valid = mask.sum(1)
            shift = K - n_valid  # (B,)
            cols = np.arange(K)[None, :] - shift[:, None]  # (B, K), negative on the padding
            mask = cols >= 0
            idx = np.where(mask, np.take_along_axis(idx, np.clip(cols, 0, K - 1), 1), 0)

        def take(a: np.ndarray, index: np.ndarray = idx) -> np.ndarray:
            out = a[index]
            m = mask.reshape(mask.shape + (1,) * (out.ndim - 2))
            return np.where(m, out, np.zeros((), dtype=out.dtype))

        obs_rows = f.obs_index[idx]  # (B, K)
        return {
            "observations": take(f.all_obs, obs_rows),
            "next_observations": take(f.all_obs, obs_rows + 1),
            "actions": take(f.actions),
            "rewards": take(f.rewards),
            "returns_to_go": take(f.rtg),
            "values": take(f.values),
            "timesteps": take(f.timesteps),
            "terminals": take(f.terminals),
            "mask": mask,
        }
