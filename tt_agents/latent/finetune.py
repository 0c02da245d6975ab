"""LAPO's online stage: fine-tune a trained :class:`LatentActionPolicy` in the env with SB3's PPO.

The actor PPO trains is the agent's own networks, not a copy: observation -> latent policy ->
decoder -> the action distribution's mean (continuous: a Gaussian around the decoder's action, in
the scaled [-1, 1] space the decoder was trained in) or logits (discrete). The critic is new (the
latent policy's encoder, copied, with a linear value head). PPO updates the shared modules in
place, so after :func:`finetune_ppo` the agent acts fine-tuned, ``agent.save`` keeps it, and its
checkpoint still holds every stage.

Example:
    >>> import gymnasium as gym
    >>> from tt_agents.latent import LatentActionPolicy
    >>> env = gym.make("CartPole-v1")
    >>> agent = LatentActionPolicy.from_preset("tiny", env.observation_space, env.action_space, device="cpu")
    >>> result = finetune_ppo(agent, "CartPole-v1", steps=64, n_envs=2, eval_episodes=2, progress=False,
    ...                       ppo_kwargs=dict(n_steps=32, batch_size=32, n_epochs=1))
    >>> [point["step"] for point in result.curve]
    [0, 64]
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from torch import nn

__all__ = ["FinetuneResult", "LatentActorCritic", "finetune_ppo"]


class _Raw(nn.Module):
    """SB3's features extractor slot, left empty: the latent policy reads the observation itself."""

    def __init__(self, observation_space: gym.Space) -> None:
        super().__init__()
        self.features_dim = 1  # not used: LatentActorCritic builds its own heads

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs


class _Heads(nn.Module):
    """SB3's ``mlp_extractor`` slot: ``forward_actor`` is the agent's policy and decoder, ``forward_critic`` new."""

    def __init__(self, agent: Any, transpose: bool) -> None:
        super().__init__()
        self.policy, self.decoder = agent.model.policy, agent.model.decoder  # shared, trained in place
        self.critic = copy.deepcopy(agent.model.policy)  # its encoder; the head is not used
        self.normalizer, self.image = agent.normalizer, agent.image
        self.uses_obs, self.transpose = agent.config.decoder_uses_obs, transpose
        self.latent_dim_pi = agent.n_action_outputs
        self.latent_dim_vf = self.critic.feature_dim

    def _obs(self, obs: torch.Tensor) -> torch.Tensor:
        if self.image:
            return obs.permute(0, 2, 3, 1) if self.transpose else obs  # SB3's (B, C, H, W) -> the agent's (B, H, W, C)
        return self.normalizer(obs)

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        feats = self.policy.features(self._obs(obs))
        return self.decoder(self.policy.head(feats), feats if self.uses_obs else None)

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic.features(self._obs(obs))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)


def _policy_base() -> type:
    from tt_agents.utils import import_sb3

    import_sb3()
    from stable_baselines3.common.policies import ActorCriticPolicy

    return ActorCriticPolicy


class LatentActorCritic(_policy_base()):  # type: ignore[misc]
    """An SB3 ``ActorCriticPolicy`` whose actor is a :class:`LatentActionPolicy`'s latent policy and decoder.

    Pass it to PPO with ``policy_kwargs=dict(agent=agent)``; no orthogonal re-initialization (the actor
    is pretrained), the action net is the identity (the decoder's output is the mean or the logits).
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, lr_schedule: Any, agent: Any = None,
                 **kwargs: Any) -> None:
        if agent is None:
            raise ValueError("LatentActorCritic needs policy_kwargs=dict(agent=<a LatentActionPolicy>)")
        self._agent = agent
        agent_shape = tuple(agent.observation_space.shape)
        self._transpose = tuple(observation_space.shape) != agent_shape  # SB3 made the images channel-first
        kwargs.update(features_extractor_class=_Raw, features_extractor_kwargs={}, ortho_init=False,
                      normalize_images=False, share_features_extractor=True)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _Heads(self._agent, self._transpose)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()  # the decoder already gives the mean (or the logits)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


@dataclass
class FinetuneResult:
    """What :func:`finetune_ppo` did: the return curve (the agent's own deterministic ``predict``) and PPO."""

    curve: list[dict[str, float]] = field(default_factory=list)
    """``{"step", "return", "stderr"}`` at step 0 (before any update) and every ``eval_every`` env steps."""
    model: Any = None
    """The SB3 PPO model (its policy holds the agent's modules)."""


def finetune_ppo(
    agent: Any,
    env: str | Callable[[], gym.Env],
    steps: int,
    n_envs: int = 8,
    seed: int = 0,
    eval_every: int = 0,
    eval_episodes: int = 10,
    log_std_init: float = -2.0,
    ppo_kwargs: dict[str, Any] | None = None,
    tensorboard_log: str | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``agent`` (a trained :class:`LatentActionPolicy`) with PPO for ``steps`` env steps, in place.

    Args:
        env: an env id or a factory; Box actions are rescaled to [-1, 1] (the decoder's space).
        eval_every: env steps between evaluations of the return curve (0: only before and after).
        log_std_init: the Gaussian's initial log std (continuous actions): small, so that the first
            rollouts act like the pretrained policy rather than like noise.
        ppo_kwargs: more PPO arguments (n_steps, batch_size, learning_rate, ...).
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    from tt_agents.evaluation import evaluate
    from tt_agents.latent.agents import LatentActionPolicy

    if not isinstance(agent, LatentActionPolicy):
        raise TypeError(f"finetune_ppo needs a LatentActionPolicy, got {type(agent).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def make() -> gym.Env:
        e = gym.make(env) if isinstance(env, str) else env()
        if isinstance(e.action_space, gym.spaces.Box):
            e = gym.wrappers.RescaleAction(e, -1.0, 1.0)
        return e

    def raw() -> gym.Env:
        return gym.make(env) if isinstance(env, str) else env()

    result = FinetuneResult()

    def point(step: int) -> None:
        res = evaluate(agent, raw, n_episodes=eval_episodes, n_envs=min(n_envs, eval_episodes), seed=seed + 10_000,
                       progress=False)
        result.curve.append({"step": int(step), "return": float(res.mean_return), "stderr": float(res.stderr_return)})

    class Curve(BaseCallback):
        def _on_training_start(self) -> None:
            self.next = eval_every if eval_every > 0 else None

        def _on_step(self) -> bool:
            if self.next is not None and self.num_timesteps >= self.next and self.num_timesteps < steps:
                with torch.random.fork_rng():
                    point(self.num_timesteps)
                self.next += eval_every
            return True

    kwargs = dict(n_steps=max(8, min(2048, steps // n_envs)), batch_size=64, n_epochs=10, learning_rate=3e-4)
    kwargs.update(ppo_kwargs or {})
    policy_kwargs = {"agent": agent}
    if isinstance(agent.action_space, gym.spaces.Box):
        policy_kwargs["log_std_init"] = log_std_init
    venv = make_vec_env(make, n_envs=n_envs, seed=seed)
    point(0)
    model = PPO(LatentActorCritic, venv, policy_kwargs=policy_kwargs, seed=seed, device=agent.device, verbose=0,
                tensorboard_log=tensorboard_log, **kwargs)
    if tensorboard_log is None:  # no output: otherwise SB3 makes an empty /tmp/SB3-* folder at every learn()
        model.set_logger(Logger(None, []))
    was = [m.training for m in (agent.model.policy, agent.model.decoder)]
    model.learn(steps, callback=Curve(), progress_bar=progress)
    agent.model.policy.train(was[0])
    agent.model.decoder.train(was[1])
    venv.close()
    point(model.num_timesteps)
    result.model = model
    return result

