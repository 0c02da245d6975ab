"""Prompts of demonstrations for the prompted (in-context) Decision Transformer.

- :func:`episode_tasks`: each episode's task id (the same Procgen level, the same MuJoCo variant).
- :func:`make_prompt`: a prompt from demonstration episodes: one segment of each, concatenated.
- :class:`PromptSampler`: training batches of a K-step window of one episode together with a
  prompt of other episodes of the same task, so that the model learns to read the task from
  the prompt.

A prompt is a dict of arrays over ``P = n_episodes * prompt_len`` steps, concatenated
segment after segment, each segment left-padded to ``prompt_len`` steps (the Decision
Transformer's padding side, as in :class:`~tt_agents.data.WindowSampler`):

===================== ===========================================================
``observations``      ``(P, *obs_shape)``
``actions``           ``(P, *action_shape)`` (the configured ``action_field``)
``returns_to_go``     ``(P,)`` float32, undiscounted return from the step to its episode's end
``timesteps``         ``(P,)`` int64, the step's index in its episode
``mask``              ``(P,)`` bool, false on padding
===================== ===========================================================

:class:`PromptSampler` batches hold the target window under WindowSampler's names
(``observations``, ``actions``, ``returns_to_go``, ``timesteps``, ``mask``, each ``(B, K, ...)``)
and the prompt under the same names prefixed with ``prompt_`` (``(B, P, ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset

__all__ = ["PROMPT_FIELDS", "episode_tasks", "make_prompt", "PromptSampler"]

PROMPT_FIELDS = ("observations", "actions", "returns_to_go", "timesteps", "mask")


def episode_tasks(episodes: Sequence[Episode], task_field: str | None) -> np.ndarray:
    """The task id of every episode: ``extras[task_field][0]``, or 0 for all when ``task_field`` is None.

    Example:
        >>> ep = Episode(np.zeros((3, 1)), np.zeros(2, np.int64), np.zeros(2), np.zeros(2, bool),
        ...              np.zeros(2, bool), extras={"level": np.array([7, 7])})
        >>> episode_tasks([ep, ep], "level").tolist(), episode_tasks([ep], None).tolist()
        ([7, 7], [0])
    """
    if task_field is None:
        return np.zeros(len(episodes), dtype=np.int64)
    out = []
    for ep in episodes:
        if task_field not in ep.extras:
            raise DatasetError(
                f"episode {ep.id} has no extras field {task_field!r} to read its task from; "
                f"available: {sorted(ep.extras)} (set task_field=None to treat all episodes as one task)"
            )
        values = np.asarray(ep.extras[task_field])
        out.append(values.reshape(len(values), -1)[0, 0] if len(values) else -1)
    return np.asarray(out, dtype=np.int64)


class _Arrays:
    """One episode's per-step arrays, with its returns-to-go computed once."""

    def __init__(self, ep: Episode, action_field: str) -> None:
        self.observations = np.asarray(ep.observations)
        self.actions = np.asarray(ep.field(action_field))
        rewards = np.asarray(ep.rewards, dtype=np.float64)
        self.returns_to_go = np.cumsum(rewards[::-1])[::-1].astype(np.float32)
        self.length = len(ep)
        if isinstance(ep.observations, dict):
            raise DatasetError(f"episode {ep.id}: Dict observations are not supported; flatten them first")
        if len(self.actions) != self.length:
            raise DatasetError(f"episode {ep.id}: field {action_field!r} has {len(self.actions)} steps, expected {self.length}")


def _empty(first: _Arrays, batch: int, steps: int) -> dict[str, np.ndarray]:
    return {
        "observations": np.zeros((batch, steps, *first.observations.shape[1:]), first.observations.dtype),
        "actions": np.zeros((batch, steps, *first.actions.shape[1:]), first.actions.dtype),
        "returns_to_go": np.zeros((batch, steps), np.float32),
        "timesteps": np.zeros((batch, steps), np.int64),
        "mask": np.zeros((batch, steps), bool),
    }


def _fill(out: dict[str, np.ndarray], row: int, col: int, ep: _Arrays, start: int, length: int) -> None:
    """Write steps ``[start, start + length)`` of ``ep`` (cut at its end) into ``out[row, col:col + length]``,
    right-aligned (the padding, if any, comes first)."""
    stop = min(start + length, ep.length)
    n = stop - start
    lo = col + length - n
    out["observations"][row, lo : col + length] = ep.observations[start:stop]
    out["actions"][row, lo : col + length] = ep.actions[start:stop]
    out["returns_to_go"][row, lo : col + length] = ep.returns_to_go[start:stop]
    out["timesteps"][row, lo : col + length] = np.arange(start, stop)
    out["mask"][row, lo : col + length] = True


def make_prompt(
    episodes: Sequence[Episode], prompt_len: int, segment: str = "end", action_field: str = "actions"
) -> dict[str, np.ndarray]:
    """A prompt: ``prompt_len`` steps of each demonstration, concatenated (see the module docstring).

    Args:
        episodes: the demonstrations, in prompt order (episodes with no steps are refused).
        prompt_len: steps per demonstration; shorter episodes are left-padded.
        segment: which steps of a longer episode: ``"end"`` (the last ``prompt_len``, where the
            task is solved) or ``"start"``.
        action_field: the per-step field the agent learned as its action.

    Example:
        >>> ep = Episode(np.zeros((4, 2), np.float32), np.arange(3), np.ones(3), np.zeros(3, bool), np.zeros(3, bool))
        >>> p = make_prompt([ep, ep], prompt_len=2)
        >>> p["observations"].shape, p["actions"].tolist(), p["returns_to_go"].tolist()
        ((4, 2), [1, 2, 1, 2], [2.0, 1.0, 2.0, 1.0])
    """
    if segment not in ("start", "end"):
        raise ValueError(f"segment must be 'start' or 'end', got {segment!r}")
    if not episodes:
        raise ValueError("a prompt needs at least one episode")
    arrays = [_Arrays(ep, action_field) for ep in episodes]
    for ep, a in zip(episodes, arrays):
        if a.length == 0:
            raise DatasetError(f"episode {ep.id} has no steps and cannot be a demonstration")
    out = _empty(arrays[0], 1, prompt_len * len(arrays))
    for i, a in enumerate(arrays):
        start = max(0, a.length - prompt_len) if segment == "end" else 0
        _fill(out, 0, i * prompt_len, a, start, prompt_len)
    return {k: v[0] for k, v in out.items()}


class PromptSampler:
    """Batches of a K-step target window plus a prompt of ``prompt_episodes`` episodes of its task.

    The target window is drawn like :class:`~tt_agents.data.WindowSampler` (every step equally
    likely to start it, left padding at the episode's end); its prompt concatenates one random
    ``prompt_len``-step segment of each of ``prompt_episodes`` other episodes of the same task
    (drawn with replacement only when the task has too few; the target's own episode is used
    only when it is the task's only one). Batch ``i`` is a pure function of ``(seed, rank, i)``.

    Args:
        dataset: the episodes.
        context_len: K, steps of the target window.
        prompt_episodes: demonstrations per prompt.
        prompt_len: steps per demonstration.
        batch_size: sequences per batch (per rank).
        task_field: the per-step extras field holding each episode's task (see :func:`episode_tasks`).
        action_field: which per-step field is returned as ``actions``.

    Example:
        >>> import gymnasium as gym
        >>> eps = [Episode(np.zeros((6, 2), np.float32), np.zeros(5, np.int64), np.ones(5), np.zeros(5, bool),
        ...                np.zeros(5, bool), extras={"task": np.full(5, i % 2)}, id=i) for i in range(4)]
        >>> ds = EpisodeDataset(eps, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3))
        >>> batch = PromptSampler(ds, 3, prompt_episodes=2, prompt_len=4, batch_size=8, task_field="task").sample(0)
        >>> batch["observations"].shape, batch["prompt_observations"].shape, batch["prompt_mask"].shape
        ((8, 3, 2), (8, 8, 2), (8, 8))
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        context_len: int,
        prompt_episodes: int,
        prompt_len: int,
        batch_size: int = 64,
        task_field: str | None = None,
        action_field: str = "actions",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for name, value in (("context_len", context_len), ("prompt_episodes", prompt_episodes),
                            ("prompt_len", prompt_len), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        keep = [i for i in range(len(dataset)) if dataset.lengths[i] > 0]
        if not keep:
            raise DatasetError("cannot sample from an empty dataset (no episodes with steps)")
        episodes = [dataset[i] for i in keep]
        self.episodes = [_Arrays(ep, action_field) for ep in episodes]
        self.tasks = episode_tasks(episodes, task_field)
        self.by_task = {int(t): np.flatnonzero(self.tasks == t) for t in np.unique(self.tasks)}
        self.lengths = np.array([a.length for a in self.episodes], dtype=np.int64)
        self.ends = np.cumsum(self.lengths)
        self.context_len, self.prompt_episodes, self.prompt_len = context_len, prompt_episodes, prompt_len
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        """Number of possible window starts (steps in the dataset)."""
        return int(self.ends[-1])

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, self.world_size, step])

    def sample(self, step: int) -> dict[str, np.ndarray]:
        """Return batch number ``step`` of this rank's stream."""
        rng = self.rng(step)
        B, K, n, L = self.batch_size, self.context_len, self.prompt_episodes, self.prompt_len
        flat = rng.integers(0, len(self), size=B)
        eps = np.searchsorted(self.ends, flat, side="right")  # (B,) the episode of each window
        starts = flat - (self.ends[eps] - self.lengths[eps])  # (B,) its first step in that episode
        target = _empty(self.episodes[0], B, K)
        prompt = _empty(self.episodes[0], B, n * L)
        for row, (e, s) in enumerate(zip(eps, starts)):
            _fill(target, row, 0, self.episodes[e], int(s), K)
            same = self.by_task[int(self.tasks[e])]
            others = same[same != e] if len(same) > 1 else same
            for j, d in enumerate(rng.choice(others, size=n, replace=len(others) < n)):
                demo = self.episodes[d]
                start = int(rng.integers(0, max(0, demo.length - L) + 1))
                _fill(prompt, row, j * L, demo, start, L)
        return {**target, **{f"prompt_{k}": v for k, v in prompt.items()}}
