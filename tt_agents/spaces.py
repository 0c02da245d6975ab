"""Gymnasium spaces as JSON (no pickle), checks of observations against a space, and the space predicates.

- :func:`space_to_json` / :func:`space_from_json` / :func:`spaces_equal`: spaces as data.
- :func:`check_observation`: one observation or a batch, against a space.
- :func:`is_image_space`: what the agents treat as frames (uint8 ``(H, W, C)``).
- :data:`REWARD_KEYS` / :func:`split_previous_reward`: the observation layout of
  :class:`wrappers.AddPreviousReward` (the one way agents receive the previous reward).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "SpaceMismatchError",
    "space_to_json",
    "space_from_json",
    "spaces_equal",
    "check_observation",
    "is_image_space",
    "REWARD_KEYS",
    "split_previous_reward",
]

REWARD_KEYS = frozenset({"observation", "previous_reward"})
"""The keys of an :class:`wrappers.AddPreviousReward` observation."""


class SpaceMismatchError(ValueError):
    """An observation, action or env does not live in the space an agent was built for."""


def _array_to_json(a: np.ndarray) -> Any:
    # inf is not valid JSON: encode as strings
    return [x if np.isfinite(x) else ("inf" if x > 0 else "-inf") for x in np.asarray(a, np.float64).ravel().tolist()]


def _array_from_json(a: list, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.array([float(x) for x in a], dtype=np.float64).reshape(shape).astype(dtype)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """Describe a Box, Discrete, MultiDiscrete, MultiBinary or Dict space as JSON-able data.

    Example:
        >>> space_to_json(gym.spaces.Discrete(3))
        {'type': 'Discrete', 'n': 3, 'start': 0}
    """
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _array_to_json(space.low),
            "high": _array_to_json(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    raise TypeError(f"cannot serialize space {space!r}: supported are Box, Discrete, MultiDiscrete, MultiBinary, Dict")


def space_from_json(d: dict[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json`.

    Example:
        >>> box = gym.spaces.Box(-1.0, np.inf, (2,), np.float32)
        >>> space_from_json(space_to_json(box)) == box
        True
    """
    try:
        kind = d["type"]
        if kind == "Box":
            shape = tuple(int(s) for s in d["shape"])
            dtype = np.dtype(d["dtype"])
            return gym.spaces.Box(
                _array_from_json(d["low"], shape, dtype), _array_from_json(d["high"], shape, dtype), shape, dtype
            )
        if kind == "Discrete":
            return gym.spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(np.asarray(d["nvec"], dtype=np.int64))
        if kind == "MultiBinary":
            return gym.spaces.MultiBinary(d["n"])
        if kind == "Dict":
            return gym.spaces.Dict({k: space_from_json(v) for k, v in d["spaces"].items()})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed space description {d!r}: {e}") from e
    raise ValueError(f"unknown space type {kind!r} in {d!r}")


def spaces_equal(a: gym.Space, b: gym.Space) -> bool:
    """Equal type, shape, dtype and bounds (NaN-safe for Box bounds)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, gym.spaces.Box):
        return (
            a.shape == b.shape
            and a.dtype == b.dtype
            and np.array_equal(a.low, b.low, equal_nan=True)
            and np.array_equal(a.high, b.high, equal_nan=True)
        )
    return a == b


def _obs_shape_dtype(space: gym.Space) -> tuple[tuple[int, ...], np.dtype]:
    if isinstance(space, gym.spaces.Discrete):
        return (), np.dtype(np.int64)
    return tuple(space.shape), np.dtype(space.dtype)


def check_observation(observation: Any, space: gym.Space) -> tuple[np.ndarray, bool]:
    """Validate ``observation`` against ``space``; return it as a batch and whether it was batched.

    A single observation has the space's shape; a batch has one leading dimension more. The
    dtype must be castable to the space's dtype without changing kind (floats for a uint8 image
    space are refused, float64 for a float32 space is accepted).

    Raises:
        SpaceMismatchError: naming the expected space and what was received.

    Example:
        >>> batch, vectorized = check_observation(np.zeros(3), gym.spaces.Box(-1, 1, (3,)))
        >>> batch.shape, vectorized
        ((1, 3), False)
    """
    if isinstance(space, gym.spaces.Dict):
        raise SpaceMismatchError(
            "Dict observation spaces are not supported by this agent; flatten them with "
            "gymnasium.wrappers.FlattenObservation or pick one key"
        )
    shape, dtype = _obs_shape_dtype(space)
    try:
        obs = np.asarray(observation)
    except Exception as e:  # ragged lists and the like
        raise SpaceMismatchError(f"observation could not be read as an array ({e}); expected {space}") from e
    ok_kind = obs.dtype.kind in "biuf" and (
        np.can_cast(obs.dtype, dtype, casting="same_kind") or (obs.dtype.kind in "iu" and dtype.kind in "iu")
    )
    if not ok_kind:
        raise SpaceMismatchError(
            f"observation has dtype {obs.dtype}, which does not fit the agent's observation space {space} "
            f"(dtype {dtype}); convert the observation or wrap the env so it matches"
        )
    if obs.shape == shape:
        return obs[None].astype(dtype, copy=False), False
    if obs.ndim == len(shape) + 1 and obs.shape[1:] == shape:
        return obs.astype(dtype, copy=False), True
    raise SpaceMismatchError(
        f"observation has shape {obs.shape}, but the agent's observation space is {space}: expected {shape} "
        f"for one observation or (n_envs, {', '.join(map(str, shape))}) for a batch"
    )


def is_image_space(space: gym.Space) -> bool:
    """Frames, as the agents see them: a uint8 Box of shape ``(H, W, C)`` (encoded with a CNN).

    Minari's rule for storing a space as JPEG is stricter (see
    :func:`tt_agents.data.minari_io.is_jpeg_space`).

    Example:
        >>> is_image_space(gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)), is_image_space(gym.spaces.Box(0, 1, (3,)))
        (True, False)
    """
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def split_previous_reward(observation: Any) -> tuple[Any, np.ndarray | None]:
    """Split an :class:`wrappers.AddPreviousReward` observation into ``(observation, reward)``.

    Plain observations come back unchanged with ``None``.

    Example:
        >>> obs, r = split_previous_reward({"observation": np.zeros(3), "previous_reward": np.array([1.5])})
        >>> obs.shape, r.tolist()
        ((3,), [1.5])
    """
    if isinstance(observation, dict) and set(observation) == REWARD_KEYS:
        r = np.asarray(observation["previous_reward"], dtype=np.float32).reshape(-1)
        return observation["observation"], r
    return observation, None
