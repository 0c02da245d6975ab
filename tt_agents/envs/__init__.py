"""Environments that Gymnasium does not ship, as Gymnasium envs.

- :class:`ProcgenEnv`, :class:`ProcgenVectorEnv` (:mod:`tt_agents.envs.procgen`): Procgen games,
  one batched Procgen env for a vector env; importing the module registers ``procgen/<game>-v0``.
- :class:`SwitchingPointMass`, :class:`SwitchingPolicy`, :func:`switching_dataset`
  (:mod:`tt_agents.envs.switching`): a point mass driven by piecewise-constant actions with known
  switch points, the ground truth for temporal segmentation (``tt_agents/SwitchingPointMass-v0``).

Names are imported lazily, so that ``import tt_agents.envs`` does not import Procgen.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ProcgenEnv": "tt_agents.envs.procgen",
    "ProcgenVectorEnv": "tt_agents.envs.procgen",
    "SwitchingPointMass": "tt_agents.envs.switching",
    "SwitchingPolicy": "tt_agents.envs.switching",
    "switching_dataset": "tt_agents.envs.switching",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tt_agents.envs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
