"""Gymnasium wrappers of tt-agents.

- :class:`AddPreviousReward` (and :class:`VectorAddPreviousReward`): put the previous step's
  reward into the observation, the one way agents that condition on rewards (return-to-go,
  TT context) receive it, also under SB3's ``evaluate_policy``.
- :class:`ActionLogger` (and :class:`VectorActionLogger`): record every episode into a
  Minari-format dataset.
- :class:`ProcgenEnv`, :class:`ProcgenVectorEnv`: Procgen games as Gymnasium envs (they live in
  :mod:`tt_agents.envs`; these names are kept for one release).
- :class:`VectorPlanner`: one batched planner acting for every sub-env of a vector env.
- :class:`LatentActionRelabel`, :class:`LatentActionSpace`: a trained latent action model's latents in
  ``info`` while an env runs, and an env acting in its latent action space.

Names are imported lazily, so that ``import wrappers`` does not import Procgen or MuJoCo.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AddPreviousReward": "wrappers.reward",
    "VectorAddPreviousReward": "wrappers.reward",
    "ActionLogger": "wrappers.action_logger",
    "VectorActionLogger": "wrappers.action_logger",
    "ProcgenEnv": "tt_agents.envs.procgen",
    "ProcgenVectorEnv": "tt_agents.envs.procgen",
    "VectorPlanner": "wrappers.planning",
    "LatentActionRelabel": "wrappers.latent",
    "LatentActionSpace": "wrappers.latent",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wrappers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
