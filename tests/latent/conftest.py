"""Shared by the latent-action tests: one LatentActionPolicy trained on the vector point env, for the session."""

from __future__ import annotations

import pytest

from tests.latent.point_env import collect
from tt_agents import TrainConfig
from tt_agents.latent import LAMConfig, LatentActionPolicy, LatentConfig

# LAPO's settings except the EMA decay: 0.999 needs LAPO's 50k steps; a test trains a thousand
VECTOR_LAM = LAMConfig(n_latents=1, code_dim=8, codebook_size=8, mlp_hidden=(64, 64), vq_decay=0.95, kmeans_init=True)


def fit_latent(ds, lam: LAMConfig, lam_steps: int, batch: int = 64, labels: int = 128, **kw) -> LatentActionPolicy:
    agent = LatentActionPolicy(ds.observation_space, ds.action_space,
                               LatentConfig(lam=lam, labels=labels, decoder_hidden=(64,), **kw),
                               device="cpu", seed=0)
    agent.fit(ds, {
        "lam": TrainConfig(steps=lam_steps, batch_size=batch, lr=3e-3, warmup_steps=10, progress=False),
        "relabel": TrainConfig(steps=1, progress=False),
        "latent_bc": TrainConfig(steps=100, batch_size=64, lr=3e-3, warmup_steps=10, progress=False),
        "decoder": TrainConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=10, progress=False),
    })
    return agent


@pytest.fixture(scope="session")
def vector_data():
    return collect("vector", "discrete", n_episodes=40)


@pytest.fixture(scope="session")
def vector_agent(vector_data):
    # the distractor dimensions change more than the position: weight the FDM's error by each one's change
    return fit_latent(vector_data, VECTOR_LAM, lam_steps=1000, normalize_fdm_target=True)
