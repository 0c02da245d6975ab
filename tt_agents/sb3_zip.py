"""Stable-Baselines3 ``.zip`` models read without unpickling anything.

An SB3 zip keeps its weights as ``torch.save`` files (SB3 reads them with ``torch.load(weights_only=True)``),
but its ``data`` JSON holds a cloudpickle of every setting JSON cannot express: the policy class, the spaces,
the learning-rate and clip schedules, the last observation, the buffer classes, sometimes ``policy_kwargs``.
``PPO.load`` unpickles them, so a zip from elsewhere can run code when it is loaded. :func:`load_sb3_zip`
gives SB3 a safe replacement for each of them (SB3's own ``custom_objects``), so that no pickle is read:

- the spaces are the caller's (the env the model acts in), checked against the shapes and sizes the JSON
  shows in plain text;
- the policy class is the algorithm's class for that observation space (``MlpPolicy``, ``CnnPolicy``,
  ``MultiInputPolicy``), checked against the module the JSON names;
- the schedules become constants (their value where the JSON shows one in plain text), the buffers SB3's
  defaults, the train frequency one step, the action noise and the last observation none: enough to act
  (training settings are not carried over);
- ``policy_kwargs`` are the JSON's when it holds them in plain JSON, else the caller's (a class such as an
  activation function is pickled: pass the ``policy_kwargs`` the model was built with); anything else that is
  pickled is refused, naming it.

Example (tested in ``tests/test_sb3_zip.py``)::

    model = load_sb3_zip("expert.zip", env.observation_space, env.action_space)
    action, _ = model.predict(obs, deterministic=True)
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["load_sb3_zip", "sb3_algo_of_zip", "sb3_zip_data", "SB3ZipError"]


class SB3ZipError(ValueError):
    """The file is not an SB3 zip that can be read without unpickling, or does not fit the given spaces."""


_ALGOS = ("sac", "td3", "ppo", "a2c", "dqn", "ddpg")


def _algo_class(algo: str) -> Any:
    import stable_baselines3 as sb3

    return getattr(sb3, algo.upper())


def sb3_zip_data(path: str | Path) -> dict[str, Any]:
    """An SB3 zip's ``data`` entry as JSON, as it is (its pickled settings left as base64 text, never unpickled)."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SB3ZipError(f"{path} is not an SB3 model .zip ({e}); pass a file saved by model.save()") from None


def sb3_algo_of_zip(path: str | Path) -> str:
    """The SB3 algorithm a .zip was saved by (``"ppo"``, ``"sac"``, ...), from the policy module its JSON names."""
    return _algo_of(sb3_zip_data(path), path)


def _algo_of(data: dict[str, Any], path: str | Path) -> str:
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    for algo in _ALGOS:
        if f"stable_baselines3.{algo}." in module or module.endswith(f".{algo}.policies"):
            return algo
    if module == "stable_baselines3.common.policies":  # PPO's and A2C's policies live there
        return "ppo" if "clip_range" in data else "a2c"
    raise SB3ZipError(f"cannot tell which algorithm saved {path} (policy module {module!r})")


def _model_observation_space(space: gym.Space) -> gym.Space:
    """The space SB3's model sees: images channels first (its ``VecTransposeImage``)."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({k: _model_observation_space(v) for k, v in space.spaces.items()})
    if is_image_space(space, check_channels=False) and not is_image_space_channels_first(space):  # type: ignore
        return VecTransposeImage.transpose_space(space)
    return space


def _shape_of(entry: dict[str, Any]) -> list[int] | None:
    shape = entry.get("_shape")
    try:
        shape = json.loads(shape) if isinstance(shape, str) else shape
        return None if shape is None else [int(v) for v in shape]
    except (TypeError, ValueError):
        return None


def _check_space(path: str | Path, what: str, entry: Any, space: gym.Space) -> None:
    """The zip's space as far as its JSON shows it in plain text (type, shape, size) against ``space``."""
    if not isinstance(entry, dict):
        return
    kind = str(entry.get(":type:", ""))
    if kind and type(space).__name__ not in kind:
        raise SB3ZipError(f"{path}: the model's {what} space is a {kind}, the env's is {space}")
    shape = _shape_of(entry)
    if shape is not None and getattr(space, "shape", None) is not None and list(space.shape) != shape:
        raise SB3ZipError(f"{path}: the model's {what} space has shape {tuple(shape)}, the env's {space}")
    if isinstance(space, gym.spaces.Discrete) and "n" in entry and str(entry["n"]) != str(int(space.n)):
        raise SB3ZipError(f"{path}: the model acts in Discrete({entry['n']}), the env in {space}")


def _constant(entry: Any) -> Any:
    """A constant schedule with the value the JSON shows in plain text (``ConstantSchedule(val=0.0005)``), or 0
    when it shows none (a schedule that varies: it only matters to training)."""
    from stable_baselines3.common.utils import ConstantSchedule

    text = json.dumps(entry)
    m = re.search(r"ConstantSchedule\(val=([-+0-9.eE]+)\)", text)
    return ConstantSchedule(float(m.group(1))) if m else ConstantSchedule(0.0)


def load_sb3_zip(path: str | Path, observation_space: gym.Space, action_space: gym.Space, algo: str | None = None,
                 policy_kwargs: dict[str, Any] | None = None, device: str = "auto") -> Any:
    """The SB3 model in ``path``, for an env with these (single, unwrapped) spaces; nothing in it is unpickled.

    Args:
        path: a file written by SB3's ``model.save``.
        observation_space, action_space: the env's (one sub-env's); images may be channels last, as SB3's
            wrappers then see them.
        algo: ``"ppo"``, ``"sac"``, ... (default: read from the zip's JSON).
        policy_kwargs: the policy's settings, needed only when the zip holds them pickled (a class such as an
            activation function); plain-JSON ``policy_kwargs`` in the zip win.
        device: the torch device.

    Raises:
        SB3ZipError: not an SB3 zip; spaces that do not fit; a pickled setting this function does not replace.
    """
    from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
    from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

    data = sb3_zip_data(path)
    algo = algo or _algo_of(data, path)
    cls = _algo_class(algo)
    obs_space = _model_observation_space(observation_space)
    _check_space(path, "observation", data.get("observation_space"), obs_space)
    _check_space(path, "action", data.get("action_space"), action_space)
    if isinstance(obs_space, gym.spaces.Dict):
        alias = "MultiInputPolicy"
    elif len(getattr(obs_space, "shape", ()) or ()) == 3 and obs_space.dtype == np.uint8:
        alias = "CnnPolicy"
    else:
        alias = "MlpPolicy"
    policy_class = cls.policy_aliases[alias]
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if module and module != policy_class.__module__:
        raise SB3ZipError(f"{path}: its policy class comes from {module!r}, not {policy_class.__module__!r} "
                          f"({algo.upper()}'s {alias}): a custom policy cannot be read without unpickling it")
    safe: dict[str, Any] = {
        "policy_class": policy_class,
        "observation_space": obs_space,
        "action_space": action_space,
        "_last_obs": None,
        "_last_original_obs": None,
        "_last_episode_starts": None,
        "ep_info_buffer": None,
        "ep_success_buffer": None,
        "action_noise": None,
        "rollout_buffer_class": RolloutBuffer,
        "replay_buffer_class": ReplayBuffer,
        "lr_schedule": _constant(data.get("lr_schedule")),
        "learning_rate": _constant(data.get("learning_rate")),
        "clip_range": _constant(data.get("clip_range")),
        "clip_range_vf": _constant(data.get("clip_range_vf")),
        "train_freq": TrainFreq(1, TrainFrequencyUnit.STEP),  # off-policy training's; acting does not use it
        "env": None,
    }
    pk = data.get("policy_kwargs")
    if isinstance(pk, dict) and ":serialized:" in pk:
        if policy_kwargs is None:
            raise SB3ZipError(f"{path}: its policy_kwargs are pickled (a class, such as an activation function, in "
                              "them); pass the policy_kwargs the model was built with")
        safe["policy_kwargs"] = dict(policy_kwargs)
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    unknown = sorted(pickled - set(safe))
    if unknown:
        raise SB3ZipError(f"{path}: its {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} pickled, which "
                          "this loader does not read (nothing in a zip is unpickled here)")
    # SB3 takes these instead of unpickling its own; settings stored as plain JSON are kept as they are
    custom = {k: v for k, v in safe.items() if k in pickled or k in ("policy_class", "observation_space",
                                                                      "action_space")}
    try:
        return cls.load(path, device=device, custom_objects=custom)
    except RuntimeError as e:  # the weights do not fit the policy built for these spaces and settings
        raise SB3ZipError(f"{path}: its weights do not fit a {algo.upper()} {alias} for {observation_space} -> "
                          f"{action_space} ({str(e).splitlines()[0]}); pass the env and policy_kwargs it was "
                          "trained with") from None
