"""Behaviour cloning: ``BCPolicy``, the first customer of the agent protocol and a baseline.

Discrete actions are learned with cross-entropy (``deterministic=False`` samples from the
softmax); continuous actions with mean squared error on actions rescaled to [-1, 1] (the policy
is deterministic, so ``deterministic`` has no effect for Box actions). Vector observations are
standardised with the dataset's mean and standard deviation; image observations (uint8
``(H, W, C)``) go through a Nature CNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.agent import Agent, Preset
from tt_agents.data.sampler import WindowSampler
from tt_agents.models.bc import BCNet
from tt_agents.preprocessing import policy_preprocessing
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError
from tt_agents.trainer import TrainConfig

__all__ = ["BCConfig", "BCPolicy"]


@dataclass
class BCConfig:
    hidden_sizes: tuple[int, ...] = (256, 256)
    """MLP widths (for images, the last one is the CNN's feature size)."""
    normalize_observations: bool = True
    """Standardise vector observations with the training data's statistics."""
    action_field: str = "actions"
    """Which per-step dataset field to imitate (e.g. ``latent_actions`` on relabeled data)."""


@register_agent
class BCPolicy(Agent):
    """Behaviour cloning with an MLP (vectors) or CNN (images).

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("CartPole-v1")
        >>> agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
        >>> obs, _ = env.reset(seed=0)
        >>> action, state = agent.predict(obs)
        >>> env.action_space.contains(action), state
        (True, None)
    """

    config_class = BCConfig
    config: BCConfig
    cli_name = "bc"
    presets = {
        "default": Preset(BCConfig(), TrainConfig(steps=5000, batch_size=256, lr=1e-3),
                          "MLP 256x256 (vectors) or Nature CNN (images)"),
    }

    def _check_spaces(self) -> None:
        if not isinstance(self.observation_space, gym.spaces.Box):
            raise SpaceMismatchError(f"BCPolicy needs a Box observation space, got {self.observation_space}")
        if not isinstance(self.action_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise SpaceMismatchError(f"BCPolicy needs a Box or Discrete action space, got {self.action_space}")
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        if not discrete and not (np.isfinite(self.action_space.low).all() and np.isfinite(self.action_space.high).all()):
            raise SpaceMismatchError(
                f"BCPolicy needs a bounded Box action space (its head is tanh-squashed), got {self.action_space}; "
                "rescale the actions (gymnasium.wrappers.RescaleAction) first"
            )

    def _setup_preprocessing(self) -> None:
        self.image, self.discrete, self.normalizer, self.scaler = policy_preprocessing(
            self.observation_space, self.action_space, self.config.normalize_observations
        )

    def _build_model(self) -> nn.Module:
        n_out = int(self.action_space.n) if self.discrete else int(np.prod(self.action_space.shape))
        return BCNet(self.observation_space.shape, self.image, tuple(self.config.hidden_sizes), n_out, self.discrete)

    # ---- preprocessing
    def _fit_preprocessing(self, dataset: Any) -> None:
        self.normalizer.fit(dataset)

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.normalizer.state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state(state)

    # ---- training
    def make_sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> WindowSampler:
        return WindowSampler(
            dataset,
            context_len=1,
            batch_size=batch_size,
            action_field=self.config.action_field,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.normalizer(batch["observations"][:, 0])
        out = model(obs)
        if self.discrete:
            return F.cross_entropy(out.float(), batch["actions"][:, 0].long().reshape(-1)), {}
        target = self.scaler.scale(batch["actions"][:, 0].reshape(out.shape[0], -1))
        return F.mse_loss(out.float(), target), {}

    # ---- acting
    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        out = self.model(self.normalizer(torch.as_tensor(observation, device=self.device)))
        if self.discrete:
            if deterministic:
                return out.argmax(-1).cpu().numpy(), state
            return torch.distributions.Categorical(logits=out).sample().cpu().numpy(), state
        return self.scaler.unscale(out.cpu().numpy()).reshape((-1, *self.action_space.shape)), state
