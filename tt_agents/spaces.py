"""Gymnasium spaces as JSON (no pickle), checks of observations against a space, and the space predicates.

- :func:`serialize_space` / :func:`deserialize_space`: spaces as Minari's JSON (the one format, also in
  checkpoints); :func:`space_to_json` / :func:`space_from_json`: the same as strict JSON;
  :func:`spaces_equal`: NaN-safe equality.
- :func:`check_observation`: one observation or a batch, against a space.
- :func:`is_image_space`: what the agents treat as frames (uint8 ``(H, W, C)``).
- :data:`REWARD_KEYS` / :func:`split_previous_reward`: the observation layout of
  :class:`wrappers.AddPreviousReward` (the one way agents receive the previous reward).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "SpaceMismatchError",
    "SpaceFormatError",
    "serialize_space",
    "deserialize_space",
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


class SpaceFormatError(ValueError):
    """A space description that cannot be read (not JSON, an unknown type, missing or bad fields)."""


# ----------------------------------------------------------------------------------------------
# spaces as JSON: Minari's format, the one format (metadata.json must stay what Minari writes)

_SPACE_TYPES = "Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple, Text"


def _strict(values: Any) -> Any:
    # strict JSON has no Infinity/NaN: "inf", "-inf", "nan" instead, which numpy (so Minari's reader) parses
    if isinstance(values, list):
        return [_strict(v) for v in values]
    return values if math.isfinite(values) else str(values)


def _bounds(a: np.ndarray, strict: bool) -> Any:
    values = a.tolist()
    return _strict(values) if strict and a.dtype.kind == "f" and not np.isfinite(a).all() else values


def _describe(space: gym.Space, strict: bool) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "dtype": str(space.dtype),
            "shape": list(space.shape),
            "low": _bounds(space.low, strict),
            "high": _bounds(space.high, strict),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "dtype": "int64", "start": int(space.start), "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "dtype": str(space.dtype),
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
        }
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.isscalar(n) else list(n)}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "subspaces": {k: _describe(s, strict) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "subspaces": [_describe(s, strict) for s in space.spaces]}
    if isinstance(space, gym.spaces.Text):
        return {
            "type": "Text",
            "max_length": space.max_length,
            "min_length": space.min_length,
            "charset": space.characters,
        }
    raise TypeError(f"cannot describe {type(space).__name__} spaces as JSON; supported: {_SPACE_TYPES}")


def serialize_space(space: gym.Space) -> dict[str, Any]:
    """Minari's JSON description of a space, exactly as Minari writes it (``json.dumps`` it for metadata.json).

    Infinite Box bounds stay floats, so ``json.dumps`` writes them as ``Infinity`` as Minari does; use
    :func:`space_to_json` for strict JSON.

    Example:
        >>> serialize_space(gym.spaces.Discrete(3))
        {'type': 'Discrete', 'dtype': 'int64', 'start': 0, 'n': 3}
    """
    return _describe(space, strict=False)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """The same description as :func:`serialize_space`, as strict JSON (what checkpoints store).

    Non-finite Box bounds become the strings ``"inf"``, ``"-inf"``, ``"nan"``, which
    :func:`space_from_json` and Minari's reader parse back.

    Example:
        >>> space_to_json(gym.spaces.Box(0.0, np.inf, (2,), np.float32))["high"]
        ['inf', 'inf']
    """
    return _describe(space, strict=True)


def _box_bounds(values: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    # Minari writes nested lists, the old checkpoint dialect flat ones: both reshape; a list of
    # another size is an error (never broadcast: a tiny description must not claim a huge space)
    a = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
    if a.dtype.kind not in "biuf":
        a = a.astype(np.float64)  # "inf" strings of a non-float Box: refused below by the cast
    return a.reshape(shape).astype(dtype)


def _space(desc: Any) -> gym.Space:
    if not isinstance(desc, Mapping) or "type" not in desc:
        raise SpaceFormatError(f"space description must be a JSON object with a 'type', got {desc!r:.200}")
    kind = desc["type"]
    try:
        if kind == "Box":
            dtype = np.dtype(desc["dtype"])
            shape = tuple(int(s) for s in desc["shape"])
            low, high = _box_bounds(desc["low"], shape, dtype), _box_bounds(desc["high"], shape, dtype)
            return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
        if kind == "Discrete":
            return gym.spaces.Discrete(n=int(desc["n"]), start=int(desc.get("start", 0)))
        if kind == "MultiDiscrete":
            nvec = np.asarray(desc["nvec"], dtype=np.int64)
            return gym.spaces.MultiDiscrete(nvec=nvec, dtype=desc.get("dtype", "int64"), start=desc.get("start"))
        if kind == "MultiBinary":
            return gym.spaces.MultiBinary(n=desc["n"])
        if kind == "Dict":
            subspaces = desc["subspaces"] if "subspaces" in desc else desc["spaces"]  # "spaces": old checkpoints
            return gym.spaces.Dict({k: _space(v) for k, v in subspaces.items()})
        if kind == "Tuple":
            return gym.spaces.Tuple(tuple(_space(v) for v in desc["subspaces"]))
        if kind == "Text":
            return gym.spaces.Text(
                max_length=int(desc["max_length"]), min_length=int(desc["min_length"]), charset=desc["charset"]
            )
    except SpaceFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise SpaceFormatError(f"malformed {kind} space description ({type(e).__name__}: {e}): {desc!r:.300}") from None
    raise SpaceFormatError(f"unknown space type {kind!r}; supported: {_SPACE_TYPES}")


def deserialize_space(desc: str | Mapping[str, Any]) -> gym.Space:
    """Parse a space description (a JSON string or a parsed dict) into a Gymnasium space, without eval.

    Reads what :func:`serialize_space` and :func:`space_to_json` write (Minari's format), and the
    dialect of checkpoints written before (Dict subspaces under ``"spaces"``, flat Box bounds).

    Raises:
        SpaceFormatError: not JSON, an unknown type, or missing or malformed fields.

    Example:
        >>> deserialize_space('{"type": "Box", "dtype": "float32", "shape": [2], "low": [-1, -1], "high": [1, 1]}')
        Box(-1.0, 1.0, (2,), float32)
    """
    if isinstance(desc, str):
        try:
            desc = json.loads(desc)
        except (json.JSONDecodeError, RecursionError) as e:
            raise SpaceFormatError(f"space description is not valid JSON ({e}): {desc[:200]!r}") from None
    return _space(desc)


def space_from_json(desc: str | Mapping[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json` (and of :func:`serialize_space`): :func:`deserialize_space`.

    Example:
        >>> box = gym.spaces.Box(-1.0, np.inf, (2,), np.float32)
        >>> space_from_json(space_to_json(box)) == box
        True
    """
    return deserialize_space(desc)


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
    if type(observation) is np.ndarray and type(space) is gym.spaces.Box and observation.dtype == space.dtype:
        obs, shape, dtype = observation, space.shape, space.dtype  # the common case: nothing to read or refuse
    else:
        obs, shape, dtype = _readable_observation(observation, space)
    if obs.shape == shape:
        return obs[None].astype(dtype, copy=False), False
    if obs.ndim == len(shape) + 1 and obs.shape[1:] == shape:
        return obs.astype(dtype, copy=False), True
    raise SpaceMismatchError(
        f"observation has shape {obs.shape}, but the agent's observation space is {space}: expected {shape} "
        f"for one observation or (n_envs, {', '.join(map(str, shape))}) for a batch"
    )


def _readable_observation(observation: Any, space: gym.Space) -> tuple[np.ndarray, tuple[int, ...], np.dtype]:
    """``observation`` as an array, with the space's shape and dtype; refused (``SpaceMismatchError``) where it
    cannot be read or its dtype does not fit."""
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
    return obs, shape, dtype


def is_image_space(space: gym.Space) -> bool:
    """Frames, as the agents see them: a uint8 Box of shape ``(H, W, C)`` (encoded with a CNN).

    Minari's rule for storing a space as JPEG is stricter (see
    :func:`tt_agents.data.minari_format.is_jpeg_space`).

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
