"""tt-agents: sequence-model agents for Gymnasium with a Stable-Baselines3-style ``predict``.

Agents (all follow :class:`Agent`: ``predict``, ``save``, ``load``, ``fit``):

- :class:`TTPlanner`: the Trajectory Transformer, a discretized GPT with batched beam-search planning.
- :class:`DecisionTransformer`: return-conditioned, optionally few-shot prompted (in-context).
- :class:`BCPolicy`: behaviour cloning (MLP or CNN), a baseline.
- :class:`LatentActionPolicy`: learning to act without actions (LAPO): latent action model, latent BC,
  few-label decoder; :class:`VPTPolicy`, its IDM-relabel-BC baseline (see :mod:`tt_agents.latent`).
- :class:`WorldModelController`: World Models (VAE, MDN-RNN / Transformer / TraDE memory, CMA-ES controller).
- :class:`TrajectoryAutoencoder`: latent trajectories that are sparse in time (a learned probability per
  step that a new latent transition begins), and a policy acting through them (see :mod:`tt_agents.autoencoder`).

Functions: :func:`load_agent` (any checkpoint), :func:`evaluate` (episodes on a vector env).
"""

import tt_agents.envs  # noqa: F401  (registers tt_agents/CarRacing-v3)
from tt_agents._version import __version__
from tt_agents.agent import AGENT_REGISTRY, Agent, NonFiniteInputError, Preset, load_agent
from tt_agents.autoencoder import TAEConfig, TrajectoryAutoencoder
from tt_agents.bc import BCConfig, BCPolicy
from tt_agents.checkpoint import CheckpointError
from tt_agents.dt import DT_PRESETS, DecisionTransformer, DTActConfig, DTConfig, DTState, MissingRewardError
from tt_agents.evaluation import EvalResult, evaluate
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError
from tt_agents.trainer import TrainConfig, Trainer, TrainResult
from tt_agents.tt import TT_PRESETS, PlanConfig, TTConfig, TTPlanner, TTState

# Agents whose modules import heavy libraries (vector-quantize-pytorch pulls in torch._dynamo; cma) load on
# first use, so that `import tt_agents` (and every script's start) stays fast.
_LAZY = {
    "LatentActionPolicy": "tt_agents.latent",
    "LatentConfig": "tt_agents.latent",
    "VPTConfig": "tt_agents.latent",
    "VPTPolicy": "tt_agents.latent",
    "WorldModelConfig": "tt_agents.world_model.agent",
    "WorldModelController": "tt_agents.world_model.agent",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tt_agents' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

__all__ = [
    "AGENT_REGISTRY",
    "Agent",
    "BCConfig",
    "BCPolicy",
    "CheckpointError",
    "DT_PRESETS",
    "DTActConfig",
    "DTConfig",
    "DTState",
    "DecisionTransformer",
    "LatentActionPolicy",
    "LatentConfig",
    "MissingRewardError",
    "NonFiniteInputError",
    "Preset",
    "EvalResult",
    "SpaceMismatchError",
    "TAEConfig",
    "TrajectoryAutoencoder",
    "PlanConfig",
    "TT_PRESETS",
    "TTConfig",
    "TTPlanner",
    "TTState",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "VPTConfig",
    "VPTPolicy",
    "WorldModelConfig",
    "WorldModelController",
    "__version__",
    "evaluate",
    "load_agent",
    "register_agent",
]
