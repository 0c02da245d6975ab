"""Checks that a dataset holds sound episodes; every error names the episode, the step and the field.

Loaders run these on load (:func:`tt_agents.data.load_dataset`, ``validate=True``): structure
(lengths, shapes) from the file headers for every episode, values when an episode is read
(eagerly: all at load; lazily: each episode when it is first read).

- :func:`validate_episode`: lengths, shapes against the spaces, NaN/Inf, integer actions in
  range, and done flags only on the last step.
- :func:`validate_totals`: episode and step counts against the dataset's metadata.
- :func:`validate_reward_sum`: an episode's rewards against the sum recorded when it was written.
- :func:`validate_dataset`: both, over a whole :class:`~tt_agents.data.EpisodeDataset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset
from tt_agents.data.minari_io import deserialize_space, flatten_space

__all__ = ["validate_dataset", "validate_episode", "validate_reward_sum", "validate_totals"]

_FIX = "fix or regenerate the data, or load it with validate=False to skip these checks"


def _label(name: str, path: tuple) -> str:
    return name + "".join(f"[{p!r}]" for p in path)


def _first_bad(mask: np.ndarray) -> int:
    """Index of the first row (along axis 0) where ``mask`` is true anywhere."""
    rows = mask.reshape(len(mask), -1).any(axis=1)
    return int(np.argmax(rows))


def _check_leaf(where: str, label: str, arr: Any, n: int, space: gym.Space, step_offset: int = 0) -> None:
    arr = np.asarray(arr)
    expected = (n, *space.shape)
    if arr.shape != expected:
        rows = "T + 1" if label.startswith("observations") else "T"
        raise DatasetError(
            f"{where}: {label} has shape {arr.shape}, expected {expected} ({rows} rows of the space's shape "
            f"{space.shape}); {_FIX}"
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            t = _first_bad(bad)
            value = arr[t].flat[int(np.argmax(bad[t].reshape(-1)))] if arr.ndim > 1 else arr[t]
            raise DatasetError(f"{where}, step {t + step_offset}: {label} is {value} (not finite); {_FIX}")
    elif isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        if arr.dtype.kind not in "iub":
            raise DatasetError(f"{where}: {label} has dtype {arr.dtype}, expected integers for {space}; {_FIX}")
        low = np.asarray(space.start)
        high = low + (space.n if isinstance(space, gym.spaces.Discrete) else space.nvec) - 1
        bad = (arr < low) | (arr > high)
        if bad.any():
            t = _first_bad(bad)
            raise DatasetError(
                f"{where}, step {t + step_offset}: {label} is {arr[t]}, outside {space} "
                f"(values {low.tolist()}..{high.tolist()}); {_FIX}"
            )
    elif isinstance(space, gym.spaces.MultiBinary):
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            t = _first_bad(bad)
            raise DatasetError(f"{where}, step {t + step_offset}: {label} is {arr[t]}, not binary; {_FIX}")


def _check_structured(where: str, name: str, value: Any, n: int, space: gym.Space) -> None:
    for path, leaf_space in flatten_space(space):
        v = value
        try:
            for p in path:
                v = v[p]
        except (KeyError, IndexError, TypeError):
            raise DatasetError(f"{where}: {_label(name, path)} is missing (the space is {space}); {_FIX}") from None
        _check_leaf(where, _label(name, path), v, n, leaf_space)


def validate_episode(
    episode: Episode,
    observation_space: gym.Space,
    action_space: gym.Space,
    extra_spaces: Mapping[str, gym.Space] | None = None,
    *,
    where: str | None = None,
) -> None:
    """Check one episode against its spaces; raise :class:`DatasetError` naming what is wrong.

    Checks: ``T + 1`` observations and ``T`` of every per-step field, each of its space's shape;
    no NaN/Inf in rewards or float observations, actions and extras; Discrete/MultiDiscrete values
    in range; terminations/truncations boolean and set on no step but the last.

    Args:
        episode: the episode.
        observation_space, action_space: the dataset's spaces.
        extra_spaces: spaces of the extra fields to check (others are checked for length only).
        where: how errors name the episode (default ``"episode {id}"``).

    Example:
        >>> ep = Episode(np.zeros((3, 2)), np.zeros((2, 1)), np.array([0.0, np.nan]),
        ...              np.array([False, True]), np.zeros(2, bool), id=7)
        >>> validate_episode(ep, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)))
        Traceback (most recent call last):
        ...
        tt_agents.data.episodes.DatasetError: episode 7, step 1: rewards is nan (not finite); ...
    """
    where = where or f"episode {episode.id}"
    rewards = np.asarray(episode.rewards)
    if rewards.ndim != 1:
        raise DatasetError(f"{where}: rewards has shape {rewards.shape}, expected (T,); {_FIX}")
    T = len(rewards)
    _check_leaf(where, "rewards", rewards, T, gym.spaces.Box(-np.inf, np.inf, (), np.float64))
    for name in ("terminations", "truncations"):
        flags = np.asarray(getattr(episode, name))
        if flags.shape != (T,):
            raise DatasetError(f"{where}: {name} has shape {flags.shape}, expected ({T},) like rewards; {_FIX}")
        if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
            raise DatasetError(f"{where}: {name} holds values other than 0/1 ({np.unique(flags)[:5]}); {_FIX}")
        if T > 1 and flags[:-1].any():
            t = int(np.argmax(flags[:-1]))
            raise DatasetError(
                f"{where}, step {t}: {name} is set before the last step ({T - 1}); an episode ends at its first "
                f"termination or truncation — the episode boundaries are wrong; {_FIX}"
            )
    _check_structured(where, "observations", episode.observations, T + 1, observation_space)
    _check_structured(where, "actions", episode.actions, T, action_space)
    extra_spaces = extra_spaces or {}
    for name, value in episode.extras.items():
        if name in extra_spaces:
            _check_structured(where, f"extras[{name!r}]", value, T, extra_spaces[name])
        elif len(value) != T:
            raise DatasetError(f"{where}: extras[{name!r}] has {len(value)} rows, expected T={T}; {_FIX}")


def validate_totals(lengths: np.ndarray, metadata: Mapping[str, Any], *, source: str = "the dataset") -> None:
    """Check the episode count and total steps against the ``total_episodes`` / ``total_steps`` of metadata.

    Example:
        >>> validate_totals(np.array([3, 4]), {"total_episodes": 2, "total_steps": 8}, source="demo")
        Traceback (most recent call last):
        ...
        tt_agents.data.episodes.DatasetError: demo: metadata says total_steps=8 but the episodes hold 7 steps ...
    """
    n = metadata.get("total_episodes")
    if n is not None and int(n) != len(lengths):
        raise DatasetError(f"{source}: metadata says total_episodes={n} but {len(lengths)} episodes were found; {_FIX}")
    total = metadata.get("total_steps")
    if total is not None and int(total) != int(np.sum(lengths)):
        raise DatasetError(
            f"{source}: metadata says total_steps={total} but the episodes hold {int(np.sum(lengths))} steps "
            f"(per episode: {np.asarray(lengths).tolist()[:20]}{'...' if len(lengths) > 20 else ''}); {_FIX}"
        )


def validate_reward_sum(where: str, rewards: np.ndarray, recorded: float | None) -> None:
    """Check an episode's rewards against the reward sum recorded when it was written (if any)."""
    if recorded is None:
        return
    actual = float(np.sum(rewards, dtype=np.float64))
    if not np.isclose(actual, float(recorded), rtol=1e-4, atol=1e-3):
        raise DatasetError(
            f"{where}: rewards sum to {actual:.6g} but the episode's rewards_sum attribute records "
            f"{float(recorded):.6g}; the rewards were altered after writing; {_FIX}"
        )


def validate_dataset(dataset: EpisodeDataset, *, check_totals: bool = True) -> None:
    """Validate every episode of ``dataset`` (reading lazy ones) and its totals against its metadata."""
    extra = {k: deserialize_space(v) for k, v in (dataset.metadata.get("extra_spaces") or {}).items()}
    for i, ep in enumerate(dataset):
        validate_episode(ep, dataset.observation_space, dataset.action_space, extra, where=f"episode {i}")
    if check_totals:
        validate_totals(
            dataset.lengths, dataset.metadata, source=str(dataset.metadata.get("dataset_id", "the dataset"))
        )
