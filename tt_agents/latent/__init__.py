"""Latent actions: learn actions from observation-only data, relabel datasets, decode with few labels, act.

This is the pipeline of LAPO (Schmidt & Jiang, "Learning to Act without Actions", ICLR 2024) as
agents of this package (every model a stage of one agent, one checkpoint):

- :class:`LatentActionPolicy`: stages ``lam`` -> ``relabel`` -> ``latent_bc`` -> ``decoder``.
- :class:`VPTPolicy`: the VPT baseline, stages ``idm`` (on the labelled transitions) -> ``relabel`` -> ``bc``.
- :func:`finetune_ppo`: LAPO's online stage, PPO (SB3) on the agent's own latent policy and decoder.
- :func:`relabel`: a new Minari dataset with each transition's ``latent_actions`` and ``latent_codes``.
- :mod:`tt_agents.latent.models`: the IDM, FDM, quantizers, latent policy and decoder.

The wrappers :class:`wrappers.LatentActionRelabel` and :class:`wrappers.LatentActionSpace` use a
trained :class:`LatentActionPolicy` while an env runs.
"""

from tt_agents.latent.agents import LatentActionPolicy, LatentConfig, VPTConfig, VPTPolicy, labelled_actions
from tt_agents.latent.models import QUANTIZERS, LAMConfig, codebook_perplexity

__all__ = [
    "FinetuneResult",
    "LAMConfig",
    "LatentActorCritic",
    "LatentActionPolicy",
    "LatentConfig",
    "QUANTIZERS",
    "VPTConfig",
    "VPTPolicy",
    "codebook_perplexity",
    "finetune_ppo",
    "labelled_actions",
]


def __getattr__(name: str):
    # the online stage needs Stable-Baselines3: imported on first use, not with the package
    if name in ("FinetuneResult", "LatentActorCritic", "finetune_ppo"):
        from tt_agents.latent import finetune

        return getattr(finetune, name)
    raise AttributeError(f"module 'tt_agents.latent' has no attribute {name!r}")
