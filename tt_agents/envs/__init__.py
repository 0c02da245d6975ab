"""Environments that Gymnasium does not ship, as Gymnasium envs.

- :class:`ProcgenEnv`, :class:`ProcgenVectorEnv` (:mod:`tt_agents.envs.procgen`): Procgen games,
  one batched Procgen env for a vector env; importing the module registers ``procgen/<game>-v0``.
- :class:`FastCarRacing` (:mod:`tt_agents.envs.car_racing`): gymnasium's CarRacing-v3 with its road computed by
  numpy, the same frames in about half the time per step; registered as ``tt_agents/CarRacing-v3`` when
  ``tt_agents`` is imported (the module itself, and pygame, load only when such an env is made).
- :class:`SwitchingPointMass`, :class:`SwitchingPolicy`, :func:`switching_dataset`
  (:mod:`tt_agents.envs.switching`): a point mass driven by piecewise-constant actions with known
  switch points, the ground truth for temporal segmentation (``tt_agents/SwitchingPointMass-v0``).

Names are imported lazily, so that ``import tt_agents.envs`` does not import Procgen.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FastCarRacing": "tt_agents.envs.car_racing",
    "ProcgenEnv": "tt_agents.envs.procgen",
    "ProcgenVectorEnv": "tt_agents.envs.procgen",
    "SwitchingPointMass": "tt_agents.envs.switching",
    "SwitchingPolicy": "tt_agents.envs.switching",
    "switching_dataset": "tt_agents.envs.switching",
}

__all__ = sorted(_LAZY)


def _register() -> None:
    """Register the ids whose modules load only when an env is made (an entry point string imports nothing)."""
    import gymnasium as gym

    if "tt_agents/CarRacing-v3" not in gym.registry:
        spec = gym.spec("CarRacing-v3")
        gym.register("tt_agents/CarRacing-v3", entry_point="tt_agents.envs.car_racing:FastCarRacing",
                     max_episode_steps=spec.max_episode_steps, reward_threshold=spec.reward_threshold)


_register()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tt_agents.envs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
