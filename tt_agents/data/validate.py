"""Checks that a dataset holds sound episodes; every error names the episode, the step and the field.

Loaders run these on load (:func:`tt_agents.data.load_dataset`, ``validate=True``): structure
(lengths, shapes) from the file headers for every episode, values when an episode is read
(eagerly: all at load; lazily: each episode when it is first read).

- :func:`validate_episode`: lengths, shapes against the spaces, NaN/Inf, integer actions in
  range, and done flags only on the last step.
- :func:`validate_totals`: episode and step counts against the dataset's metadata.
- :func:`validate_reward_sum`: an episode's rewards against the sum recorded when it was written.
- :func:`validate_dataset`: both, over a whole :class:`~tt_agents.data.EpisodeDataset`.
- :func:`read_episodes`: read and validate episodes, reporting NaN/Inf of all of them at once.
- :class:`NonFiniteError`, :class:`NonFinite`, :func:`non_finite_report`: NaN/Inf by episode and
  field (the error a validating load raises; the report for data loaded with ``validate=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset
from tt_agents.data.minari_format import deserialize_space, flatten_space

__all__ = [
    "NonFinite",
    "NonFiniteError",
    "non_finite_report",
    "validate_dataset",
    "validate_episode",
    "read_episodes",
    "validate_reward_sum",
    "validate_totals",
]

_FIX = "fix or regenerate the data, or load it with validate=False to skip these checks"


def _label(name: str, path: tuple) -> str:
    return name + "".join(f"[{p!r}]" for p in path)


def _first_bad(mask: np.ndarray) -> int:
    """Index of the first row (along axis 0) where ``mask`` is true anywhere."""
    rows = mask.reshape(len(mask), -1).any(axis=1)
    return int(np.argmax(rows))


@dataclass(frozen=True)
class NonFinite:
    """NaN or Inf in one field of one episode.

    Attributes:
        where: the episode, as errors name it (``"episode 3"``, ``"dataset 'x' (...), episode 3"``).
        field: the field (``"rewards"``, ``"observations"``, ``"observations['pos']"``, ``"extras['z']"`` ...).
        steps: how many steps of the field hold a non-finite value.
        first_step: the first of them.
        value: the first non-finite value (``nan``, ``inf`` or ``-inf``).
    """

    where: str
    field: str
    steps: int
    first_step: int
    value: float

    def __str__(self) -> str:
        more = f"; {self.steps - 1} more step(s) of {self.field} too" if self.steps > 1 else ""
        return f"{self.where}, step {self.first_step}: {self.field} is {self.value} (not finite{more})"


class NonFiniteError(DatasetError):
    """Episodes hold NaN or Inf; :attr:`findings` lists each field of each episode (see :class:`NonFinite`)."""

    def __init__(self, findings: Sequence[NonFinite], limit: int = 20) -> None:
        self.findings = list(findings)
        episodes = list(dict.fromkeys(f.where for f in self.findings))
        lines = [str(f) for f in self.findings[:limit]]
        if len(self.findings) > limit:
            lines.append(f"... and {len(self.findings) - limit} more field(s)")
        head = "" if len(episodes) == 1 else f"{len(episodes)} episodes hold non-finite values (NaN/Inf):\n  - "
        super().__init__(head + "\n  - ".join(lines) + f"; {_FIX}")


def _non_finite(where: str, label: str, arr: np.ndarray, step_offset: int = 0) -> NonFinite | None:
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    rows = bad.reshape(len(bad), -1).any(axis=1)
    t = int(np.argmax(rows))
    value = arr[t].flat[int(np.argmax(bad[t].reshape(-1)))] if arr.ndim > 1 else arr[t]
    return NonFinite(where, label, int(rows.sum()), t + step_offset, float(value))


def _check_leaf(
    where: str, label: str, arr: Any, n: int, space: gym.Space, findings: list[NonFinite], step_offset: int = 0
) -> None:
    arr = np.asarray(arr)
    expected = (n, *space.shape)
    if arr.shape != expected:
        rows = "T + 1" if label.startswith("observations") else "T"
        raise DatasetError(
            f"{where}: {label} has shape {arr.shape}, expected {expected} ({rows} rows of the space's shape "
            f"{space.shape}); {_FIX}"
        )
    if arr.dtype.kind == "f":
        found = _non_finite(where, label, arr, step_offset)
        if found is not None:
            findings.append(found)
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


def _check_structured(where: str, name: str, value: Any, n: int, space: gym.Space, findings: list[NonFinite]) -> None:
    for path, leaf_space in flatten_space(space):
        v = value
        try:
            for p in path:
                v = v[p]
        except (KeyError, IndexError, TypeError):
            raise DatasetError(f"{where}: {_label(name, path)} is missing (the space is {space}); {_FIX}") from None
        _check_leaf(where, _label(name, path), v, n, leaf_space, findings)


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

    Raises:
        NonFiniteError: NaN or Inf (after every other check passed), naming each field that holds
            some, with its first step and how many steps.
        DatasetError: any other problem.

    Example:
        >>> ep = Episode(np.zeros((3, 2)), np.zeros((2, 1)), np.array([0.0, np.nan]),
        ...              np.array([False, True]), np.zeros(2, bool), id=7)
        >>> validate_episode(ep, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)))
        Traceback (most recent call last):
        ...
        tt_agents.data.validate.NonFiniteError: episode 7, step 1: rewards is nan (not finite); ...
    """
    where = where or f"episode {episode.id}"
    findings: list[NonFinite] = []
    rewards = np.asarray(episode.rewards)
    if rewards.ndim != 1:
        raise DatasetError(f"{where}: rewards has shape {rewards.shape}, expected (T,); {_FIX}")
    T = len(rewards)
    _check_leaf(where, "rewards", rewards, T, gym.spaces.Box(-np.inf, np.inf, (), np.float64), findings)
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
    _check_structured(where, "observations", episode.observations, T + 1, observation_space, findings)
    _check_structured(where, "actions", episode.actions, T, action_space, findings)
    extra_spaces = extra_spaces or {}
    for name, value in episode.extras.items():
        if name in extra_spaces:
            _check_structured(where, f"extras[{name!r}]", value, T, extra_spaces[name], findings)
        elif len(value) != T:
            raise DatasetError(f"{where}: extras[{name!r}] has {len(value)} rows, expected T={T}; {_FIX}")
    if findings:
        raise NonFiniteError(findings)


def read_episodes(read: Callable[[int], Episode], n: int) -> list[Episode]:
    """``[read(i) for i in range(n)]`` where ``read`` validates, with NaN/Inf reported for every episode at once.

    Any other :class:`DatasetError` stops at once; non-finite values are collected over all ``n``
    episodes and raised together, by episode and field, as one :class:`NonFiniteError`.
    """
    episodes, findings = [], []
    for i in range(n):
        try:
            episodes.append(read(i))
        except NonFiniteError as e:
            findings += e.findings
    if findings:
        raise NonFiniteError(findings)
    return episodes


def _leaves(value: Any, label: str) -> Iterator[tuple[str, np.ndarray]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{label}[{k!r}]")
    elif isinstance(value, tuple):
        for k, v in enumerate(value):
            yield from _leaves(v, f"{label}[{k!r}]")
    else:
        yield label, np.asarray(value)


def non_finite_report(dataset: EpisodeDataset) -> list[NonFinite]:
    """Every field of every episode that holds NaN or Inf (reading lazy episodes), without raising.

    For a dataset loaded with ``validate=False``; a validating load raises :class:`NonFiniteError`
    with the same findings.

    Example:
        >>> ep = Episode(np.zeros((3, 2)), np.zeros((2, 1)), np.array([np.inf, np.nan]),
        ...              np.array([False, True]), np.zeros(2, bool), id=7)
        >>> ds = EpisodeDataset([ep], gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)))
        >>> [str(f) for f in non_finite_report(ds)]
        ['episode 0, step 0: rewards is inf (not finite; 1 more step(s) of rewards too)']
    """
    found = []
    for i, ep in enumerate(dataset):
        fields = [("rewards", ep.rewards), ("observations", ep.observations), ("actions", ep.actions)]
        fields += [(f"extras[{k!r}]", v) for k, v in ep.extras.items()]
        for name, value in fields:
            for label, arr in _leaves(value, name):
                if arr.dtype.kind == "f" and arr.ndim >= 1:
                    f = _non_finite(f"episode {i}", label, arr)
                    if f is not None:
                        found.append(f)
    return found


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
    """Validate every episode of ``dataset`` (reading lazy ones) and its totals against its metadata.

    NaN/Inf are reported for every episode at once (:class:`NonFiniteError`); any other problem
    raises :class:`DatasetError` at the first episode that has it.
    """
    extra = {k: deserialize_space(v) for k, v in (dataset.metadata.get("extra_spaces") or {}).items()}

    def check(i: int) -> Episode:
        ep = dataset[i]
        validate_episode(ep, dataset.observation_space, dataset.action_space, extra, where=f"episode {i}")
        return ep

    read_episodes(check, len(dataset))
    if check_totals:
        validate_totals(
            dataset.lengths, dataset.metadata, source=str(dataset.metadata.get("dataset_id", "the dataset"))
        )
