"""Latent actions: learn actions from observation-only data, relabel datasets, decode with few labels, act.

This is the pipeline of LAPO (Schmidt & Jiang, "Learning to Act without Actions", ICLR 2024) as
agents of this package (every model a stage of one agent, one checkpoint):

- :class:`LatentActionPolicy`: stages ``lam`` -> ``relabel`` -> ``latent_bc`` -> ``decoder``.
- :class:`VPTPolicy`: the VPT baseline, stages ``idm`` (on the labelled transitions) -> ``relabel`` -> ``bc``.
- :func:`relabel`: a new Minari dataset with each transition's ``latent_actions`` and ``latent_codes``.
- :mod:`tt_agents.latent.models`: the IDM, FDM, quantizers, latent policy and decoder.

The wrappers :class:`wrappers.LatentActionRelabel` and :class:`wrappers.LatentActionSpace` use a
trained :class:`LatentActionPolicy` while an env runs.
"""

from tt_agents.latent.agents import LatentActionPolicy, LatentConfig, VPTConfig, VPTPolicy, labelled_actions
from tt_agents.latent.models import QUANTIZERS, LAMConfig, codebook_perplexity

__all__ = [
    "LAMConfig",
    "LatentActionPolicy",
    "LatentConfig",
    "QUANTIZERS",
    "VPTConfig",
    "VPTPolicy",
    "codebook_perplexity",
    "labelled_actions",
]
