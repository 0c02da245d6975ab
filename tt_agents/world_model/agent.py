"""``WorldModelController``: World Models (V, M, C) as one agent with three stages, ``vae -> memory -> controller``.

- ``vae``: the :class:`~tt_agents.world_model.models.ConvVAE` on the dataset's frames (resized to
  64x64 when they are another size).
- ``memory``: M (``memory_kind``: ``"mdnrnn"``, ``"transformer"`` or ``"trade"``) on sequences of V's
  latents (each drawn from V's posterior, as the paper does) and the actions, with reward and done
  heads; TraDE adds the MMD penalty (``mmd_weight``).
- ``controller``: C by CMA-ES (:mod:`tt_agents.world_model.controller`), each generation
  ``pop_size`` candidates times ``n_samples`` rollouts, in M's dream (``controller_env="dream"``:
  no rendering, the cheap path on a CPU) or in a real vector env (an env id, or ``"dataset"`` for
  the dataset's own), split across torchrun ranks.

``predict`` encodes each frame with V (its mean; a posterior sample with ``deterministic=False``),
acts with C on ``[z, h]`` and then feeds ``(z, a)`` to M; the state holds M's state and the last
latent per env, and rows with ``episode_start`` start afresh.

Spaces: observations must be uint8 frames ``(H, W, C)`` (any size, resized to 64x64; 1 to 4
channels); vector, Dict or float observations are refused. Actions: a bounded 1-d Box (C's tanh
outputs are mapped onto it) or Discrete (C's argmax; M reads one-hot actions).

Example:
    >>> import gymnasium as gym, numpy as np
    >>> obs_space = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
    >>> act_space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    >>> agent = WorldModelController(obs_space, act_space, device="cpu", seed=0)
    >>> agent.model.controller.n_params  # [z (32), h (256)] -> 3 actions, as in the paper
    867
    >>> action, state = agent.predict(obs_space.sample())
    >>> action.shape, state.z.shape
    ((3,), torch.Size([1, 32]))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from tt_agents.agent import Agent, Preset
from tt_agents.data.sampler import WindowSampler
from tt_agents.preprocessing import ActionScaler
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError, is_image_space
from tt_agents.stages import GradientStage, SearchStage
from tt_agents.trainer import TrainConfig, TrainResult
from tt_agents.world_model.controller import (
    CMAESSearch,
    EnvEvaluator,
    dream_returns,
    flat_params,
    gather_returns,
    plot_fitness,
    split_jobs,
)
from tt_agents.world_model.frames import ResizeFrames, frames_to_tensor
from tt_agents.world_model.models import MEMORY_KINDS, WorldModel, memory_loss, vae_loss

__all__ = ["WorldModelConfig", "WorldModelController", "WorldModelState", "LatentSequenceSampler"]

FRAME = 64
"""V's frame size (the paper's 64x64)."""


@dataclass
class WorldModelConfig:
    """V, M and C's sizes (the paper's by default) and the controller search's settings."""

    latent: int = 32
    """Size of z (32 for CarRacing in the paper)."""
    vae_widths: tuple[int, ...] = (32, 64, 128, 256)
    """The encoder's 4 conv widths (the paper's)."""
    kl_tolerance: float = 0.5
    """KL floor per latent dimension (the paper's free bits): keeps V from collapsing its posterior early."""
    memory_kind: str = "mdnrnn"
    """``"mdnrnn"`` (LSTM), ``"transformer"`` (causal transformer) or ``"trade"`` (TraDE)."""
    hidden: int = 256
    """LSTM units of the MDN-RNN (256 in the paper)."""
    n_mixtures: int = 5
    """Gaussians per latent dimension (5 in the paper)."""
    d_model: int = 32
    """Width of the transformer kinds (32: the Transformer-memory variant's)."""
    n_head: int = 8
    n_layer: int = 3
    context: int = 32
    """Steps the transformer kinds attend over (their window, training and acting)."""
    sequence_len: int = 32
    """Steps per training sequence of M (at most ``context`` for the transformer kinds)."""
    mmd_weight: float = 1.0
    """Weight of TraDE's MMD penalty (used by ``memory_kind="trade"`` only)."""
    controller_hidden: int = 0
    """0: C is one linear layer (the paper's); > 0: one tanh hidden layer of this width."""
    controller_uses_memory: bool = True
    """False: C reads z only (the paper's "V only" ablation)."""
    controller_input_norm: bool = False
    """C reads ``[z, h]`` standardized per dimension (mean 0, std 1 over the dataset's episodes, run through V and
    M as they are when the controller stage starts; kept in the checkpoint). Off: the paper's raw ``[z, h]``, whose
    parts differ in scale and offset (a trained M's ``h`` is far from 0, an untrained one's near it), so the same
    CMA-ES step size perturbs C's actions by different amounts for each. Measured on CarRacing (benchmarks.md,
    world-model-input-norm and world-model-vm-budget-input-norm) it helped the untrained M at one budget and
    hurt the trained M at a larger one: off by default."""
    pop_size: int = 64
    """CMA-ES candidates per generation (64 in the paper)."""
    n_samples: int = 16
    """Rollouts per candidate; its fitness is their mean return (16 in the paper)."""
    sigma0: float = 0.1
    """CMA-ES initial step size (0.1 in the paper)."""
    target_return: float | None = None
    """Stop searching (keep the best) once a candidate's fitness reaches this."""
    controller_env: str = "dream"
    """Where candidates are evaluated: ``"dream"`` (inside M), ``"dataset"`` (the dataset's env id) or an env id."""
    eval_envs: int = 8
    """Sub-envs of a real-env evaluation per rank (candidate rollouts stepped together)."""
    eval_vectorization: str = "sync"
    """``"sync"`` (sub-envs in this process) or ``"async"`` (one process per sub-env: many cores, costly envs)."""
    max_episode_steps: int = 1000
    """Longest real-env rollout of the search (CarRacing's own limit is 1000)."""
    dream_horizon: int = 1000
    """Longest dream; M's done head ends one earlier."""
    dream_temperature: float = 1.0
    """Temperature of M's mixture in dreams (the paper's Doom dreams used 1.15)."""
    log_generations: bool = True
    """Print best / mean / std fitness for every generation (rank 0)."""
    on_cma_stop: str = "raise"
    """When CMA-ES meets a termination criterion (flat fitness, collapsed sigma): ``"raise"`` or ``"warn"`` and go on."""


@dataclass
class WorldModelState:
    """Per-env context of :meth:`WorldModelController.predict`."""

    memory: Any
    """M's state (the LSTM's ``(h, c)``, or the transformer's window), one row per env."""
    z: torch.Tensor
    """``(n_envs, latent)``: the last latent V gave each env."""


class LatentSequenceSampler:
    """Windows of ``seq_len`` steps of V's latents (drawn from its posterior), M's actions, rewards and dones.

    Batch ``i`` is a pure function of ``(seed, rank, world_size, i)``. Keys: ``z``, ``next_z``
    ``(B, T, D)``; ``actions`` ``(B, T, A)``; ``rewards``, ``dones``, ``mask`` ``(B, T)``.
    """

    def __init__(self, mu: list[np.ndarray], logvar: list[np.ndarray], actions: list[np.ndarray],
                 rewards: list[np.ndarray], dones: list[np.ndarray], seq_len: int, batch_size: int, seed: int,
                 rank: int, world_size: int) -> None:
        keep = [i for i, a in enumerate(actions) if len(a)]
        if not keep:
            raise ValueError("the dataset has no steps to train M on")
        self.mu, self.logvar = [mu[i] for i in keep], [logvar[i] for i in keep]
        self.actions, self.rewards, self.dones = ([x[i] for i in keep] for x in (actions, rewards, dones))
        self.lengths = np.array([len(a) for a in self.actions])
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def sample(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, step])
        B, T = self.batch_size, self.seq_len
        D, A = self.mu[0].shape[1], self.actions[0].shape[1]
        eps = rng.standard_normal((B, T + 1, D)).astype(np.float32)
        out = {"z": np.zeros((B, T, D), np.float32), "next_z": np.zeros((B, T, D), np.float32),
               "actions": np.zeros((B, T, A), np.float32), "rewards": np.zeros((B, T), np.float32),
               "dones": np.zeros((B, T), np.float32), "mask": np.zeros((B, T), bool)}
        episodes = rng.choice(len(self.lengths), size=B, p=self.lengths / self.lengths.sum())
        for b, e in enumerate(episodes):
            n = int(self.lengths[e])
            start = int(rng.integers(0, n))
            t = min(T, n - start)
            z = self.mu[e][start: start + t + 1] + np.exp(0.5 * self.logvar[e][start: start + t + 1]) * eps[b, : t + 1]
            out["z"][b, :t], out["next_z"][b, :t] = z[:t], z[1: t + 1]
            out["actions"][b, :t] = self.actions[e][start: start + t]
            out["rewards"][b, :t] = self.rewards[e][start: start + t]
            out["dones"][b, :t] = self.dones[e][start: start + t]
            out["mask"][b, :t] = True
        return out


@register_agent
class WorldModelController(Agent):
    """World Models: a VAE (V), a memory model (M: MDN-RNN, Transformer or TraDE) and a CMA-ES controller (C)."""

    config_class = WorldModelConfig
    config: WorldModelConfig
    cli_name = "world-model"
    stage_names = ("vae", "memory", "controller")
    presets = {
        "default": Preset(
            WorldModelConfig(),
            {"vae": TrainConfig(steps=10_000, batch_size=32, lr=1e-3, warmup_steps=100, weight_decay=0.0),
             "memory": TrainConfig(steps=10_000, batch_size=16, lr=1e-3, warmup_steps=100, weight_decay=0.0),
             "controller": TrainConfig(steps=300, log_every=1, checkpoint_every=1)},
            "the paper's sizes: V 32-d, MDN-RNN 256 units x 5 Gaussians, C 867 parameters, CMA-ES 64 x 16"),
        "cpu": Preset(
            WorldModelConfig(vae_widths=(16, 32, 64, 128), hidden=64, pop_size=16, n_samples=4, dream_horizon=300),
            {"vae": TrainConfig(steps=1500, batch_size=32, lr=1e-3, warmup_steps=50, weight_decay=0.0),
             "memory": TrainConfig(steps=1500, batch_size=16, lr=1e-3, warmup_steps=50, weight_decay=0.0),
             "controller": TrainConfig(steps=30, log_every=1, checkpoint_every=1)},
            "a CPU-sized run: narrower V, 64-unit MDN-RNN, CMA-ES 16 x 4 in dreams of 300 steps"),
        "tiny": Preset(
            WorldModelConfig(latent=8, vae_widths=(8, 8, 8, 8), hidden=16, n_mixtures=2, d_model=16, n_head=2,
                             n_layer=1, context=8, sequence_len=8, pop_size=6, n_samples=2, dream_horizon=20,
                             on_cma_stop="warn"),
            {"vae": TrainConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2),
             "memory": TrainConfig(steps=20, batch_size=4, lr=1e-3, warmup_steps=2),
             "controller": TrainConfig(steps=3, log_every=1)},
            "a smoke test: every part at a toy size"),
    }

    # ------------------------------------------------------------------ hooks
    def _check_spaces(self) -> None:
        obs = self.observation_space
        if not is_image_space(obs) or not 1 <= obs.shape[2] <= 4:
            raise SpaceMismatchError(
                f"WorldModelController needs pixel observations, a uint8 Box (H, W, C) with 1 to 4 channels; got "
                f"{obs}. For vector observations use BCPolicy, TTPlanner or DecisionTransformer"
            )
        act = self.action_space
        if isinstance(act, gym.spaces.Discrete):
            return
        if not (isinstance(act, gym.spaces.Box) and len(act.shape) == 1 and np.all(np.isfinite(act.low))
                and np.all(np.isfinite(act.high))):
            raise SpaceMismatchError(
                f"WorldModelController needs a bounded 1-d Box or a Discrete action space, got {act}"
            )
        c = self.config
        if c.memory_kind not in MEMORY_KINDS:
            raise ValueError(f"memory_kind must be one of {MEMORY_KINDS}, got {c.memory_kind!r}")
        if c.memory_kind != "mdnrnn" and c.sequence_len > c.context:
            raise ValueError(f"sequence_len {c.sequence_len} exceeds the transformer's context {c.context}; "
                             "lower sequence_len or raise context")

    def _setup_preprocessing(self) -> None:
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.action_dim = int(self.action_space.n) if self.discrete else int(self.action_space.shape[0])
        self.scaler = None if self.discrete else ActionScaler(self.action_space)

    def _build_model(self) -> nn.Module:
        c = self.config
        return WorldModel(self.observation_space.shape[2], self.action_dim, c.latent, tuple(c.vae_widths),
                          c.memory_kind, c.hidden, c.n_mixtures, c.d_model, c.n_head, c.n_layer, c.context,
                          c.controller_hidden, c.controller_uses_memory, c.controller_input_norm)

    # ------------------------------------------------------------------ pieces
    def frames(self, observations: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(N, H, W, C)`` -> V's input ``(N, C, 64, 64)`` in [0, 1] on the agent's device."""
        return frames_to_tensor(observations, FRAME, FRAME, self.device)

    @torch.no_grad()
    def encode(self, observations: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """V's posterior ``(mu, logvar)`` of uint8 frames ``(N, H, W, C)``, each ``(N, latent)``."""
        outs = [self.model.vae.encode(self.frames(observations[i: i + batch])) for i in range(0, len(observations),
                                                                                               batch)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def memory_actions(self, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Env actions ``(N, ...)`` -> what M reads ``(N, A)``: scaled to [-1, 1] (Box) or one-hot (Discrete)."""
        a = torch.as_tensor(np.asarray(actions), device=self.device)
        if self.discrete:
            return F.one_hot(a.reshape(-1).long(), self.action_dim).float()
        return self.scaler.scale(a.reshape(len(a), -1))

    def _raw_to_memory(self, raw: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return F.one_hot(raw.argmax(-1), self.action_dim).float()
        return torch.tanh(raw)

    def _raw_to_actions(self, raw: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """C's raw outputs -> (M's actions, env actions as numpy)."""
        if self.discrete:
            idx = raw.argmax(-1)
            return F.one_hot(idx, self.action_dim).float(), idx.cpu().numpy()
        a = torch.tanh(raw)
        return a, self.scaler.unscale(a.cpu().numpy())

    # ------------------------------------------------------------------ acting
    def initial_state(self, n_envs: int, act: Any = None) -> WorldModelState:
        super().initial_state(n_envs, act)
        return WorldModelState(self.model.memory.initial_state(n_envs, self.device),
                               torch.zeros(n_envs, self.config.latent, device=self.device))

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        n = len(observation)
        if state is None:
            state = self.initial_state(n)
        if not isinstance(state, WorldModelState) or state.z.shape[0] != n:
            raise ValueError(f"state holds {getattr(getattr(state, 'z', None), 'shape', ['?'])[0]} envs but predict got "
                             f"{n} observations; pass the state predict returned for these envs (or None)")
        rows = torch.as_tensor(episode_start, device=self.device)
        memory = self.model.memory.reset_rows(state.memory, rows)
        mu, logvar = self.model.vae.encode(self.frames(observation))
        z = mu if deterministic else mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        raw = self.model.controller(self.model.controller_input(z, memory))
        m_action, actions = self._raw_to_actions(raw)
        if self.model.controller_uses_memory:
            _, memory = self.model.memory.step(z, m_action, memory)
        return actions, WorldModelState(memory, z)

    # ------------------------------------------------------------------ training
    def stages(self):
        return [
            GradientStage("vae", module=self.model.vae, loss=self._vae_loss,
                          make_sampler=lambda ds, bs, seed, rank, ws: WindowSampler(ds, 1, bs, seed=seed, rank=rank,
                                                                                   world_size=ws)),
            GradientStage("memory", module=self.model.memory, loss=self._memory_loss, make_sampler=self._latent_sampler),
            SearchStage("controller", start=self._start_search),
        ]

    def _vae_loss(self, vae: nn.Module, batch: dict[str, torch.Tensor]):
        x = self.frames(batch["observations"][:, 0])
        recon, mu, logvar = vae(x)
        return vae_loss(x, recon, mu, logvar, self.config.kl_tolerance)

    def _memory_loss(self, memory: nn.Module, batch: dict[str, torch.Tensor]):
        out, _ = memory(batch["z"], batch["actions"])
        mmd = self.config.mmd_weight if self.config.memory_kind == "trade" else 0.0
        return memory_loss(out, batch["next_z"], batch["rewards"], batch["dones"], batch["mask"], mmd_weight=mmd)

    def _latent_sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int):
        mus, logvars, actions, rewards, dones = [], [], [], [], []
        was = self.model.training
        self.model.eval()
        for ep in tqdm(list(dataset), desc="encoding frames with V", disable=len(dataset) < 20 or rank > 0):
            mu, logvar = self.encode(np.asarray(ep.observations))
            mus.append(mu.cpu().numpy())
            logvars.append(logvar.cpu().numpy())
            actions.append(self.memory_actions(np.asarray(ep.actions)).cpu().numpy() if len(ep) else
                           np.zeros((0, self.action_dim), np.float32))
            rewards.append(np.asarray(ep.rewards, np.float32))
            dones.append(np.asarray(ep.terminations, np.float32))
        self.model.train(was)
        return LatentSequenceSampler(mus, logvars, actions, rewards, dones, self.config.sequence_len, batch_size,
                                     seed, rank, world_size)

    @torch.no_grad()
    def _fit_input_norm(self, dataset: Any) -> None:
        """Set C's input standardization from ``[z, h]`` over the dataset's episodes (V's means, M stepped on
        the dataset's actions), the same on every rank."""
        feats = []
        for ep in dataset:
            obs = np.asarray(ep.observations)[: len(ep)]
            if len(obs) == 0:
                continue
            z = self.encode(obs)[0]
            actions = self.memory_actions(np.asarray(ep.actions))
            state = self.model.memory.initial_state(1, self.device)
            for t in range(len(z)):
                feats.append(self.model.controller_features(z[t: t + 1], state))
                if self.model.controller_uses_memory:
                    _, state = self.model.memory.step(z[t: t + 1], actions[t: t + 1], state)
        if not feats:
            raise ValueError("controller_input_norm needs a dataset with at least one step")
        x = torch.cat(feats)
        self.model.input_mean.copy_(x.mean(0))
        self.model.input_std.copy_(x.std(0, unbiased=False).clamp_min(1e-3))

    def _start_search(self, dataset: Any, seed: int, rank: int, world_size: int) -> CMAESSearch:
        c = self.config
        P, S = c.pop_size, c.n_samples
        model = self.model
        if c.controller_input_norm:
            was = model.training
            model.eval()
            self._fit_input_norm(dataset)
            model.train(was)
        if c.controller_env == "dream":
            z0 = self.encode(np.stack([np.asarray(ep.observations[0]) for ep in dataset]))[0]

            def evaluate(candidates: torch.Tensor, generation: int) -> torch.Tensor:
                jobs = split_jobs(P * S, rank, world_size)
                mine = dream_returns(model, candidates, jobs, S, z0, c.dream_horizon, c.dream_temperature, seed,
                                     generation, self._raw_to_memory)
                return gather_returns(mine, jobs, P * S, world_size).view(P, S).mean(1)
        else:
            env_id = c.controller_env
            if env_id == "dataset":
                env_id = (getattr(dataset, "metadata", None) or {}).get("env_id")
                if not env_id:
                    raise ValueError("controller_env='dataset' but the dataset records no env_id; give the env id")
            evaluator = EnvEvaluator(lambda n: self.make_env(env_id, n, vectorization_mode=c.eval_vectorization),
                                     c.eval_envs,
                                     lambda obs: self.encode(obs)[0], self._raw_to_actions, c.max_episode_steps)

            def evaluate(candidates: torch.Tensor, generation: int) -> torch.Tensor:
                jobs = split_jobs(P * S, rank, world_size)
                mine = evaluator.returns(model, candidates, jobs, S, seed, generation)
                return gather_returns(mine, jobs, P * S, world_size).view(P, S).mean(1)

        def write_best(x: torch.Tensor) -> None:
            nn.utils.vector_to_parameters(x.to(self.device), model.controller.parameters())

        log = tqdm.write if rank == 0 and c.log_generations else None
        return CMAESSearch(flat_params(model.controller).cpu(), c.sigma0, P, seed, evaluate, write_best,
                           c.target_return, log, c.on_cma_stop)

    def make_env(self, env_id: str, num_envs: int, vectorization_mode: str = "sync",
                 **kwargs: Any) -> gym.vector.VectorEnv:
        """A vector env of ``env_id`` whose frames are resized to this agent's observation space if needed."""
        H, W = self.observation_space.shape[:2]
        probe = gym.make(env_id, **kwargs)
        space = probe.observation_space
        probe.close()
        wrappers = []
        if space != self.observation_space:
            if not is_image_space(space) or space.shape[2] != self.observation_space.shape[2]:
                raise SpaceMismatchError(f"{env_id}'s observations {space} cannot be resized to the agent's "
                                         f"{self.observation_space}")
            wrappers = [lambda e: ResizeFrames(e, H, W)]
        if vectorization_mode not in ("sync", "async"):
            raise ValueError(f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}")
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, wrappers=wrappers,
                            **kwargs)

    def fit(self, dataset: Any, config: Any = None, stage: str | None = None, **overrides: Any) -> TrainResult:
        """:meth:`Agent.fit`; the ``controller`` stage checkpoints every generation (a generation costs far more
        than a checkpoint of the search's state), and a run directory also gets ``fitness_curve.png`` (best /
        mean / std fitness per generation)."""
        if overrides:
            config = ({k: dataclasses.replace(v, **overrides) for k, v in config.items()} if isinstance(config, dict)
                      else dataclasses.replace(config or TrainConfig(), **overrides))
        configs = dict(config) if isinstance(config, dict) else {n: config or TrainConfig() for n in self.stage_names}
        configs["controller"] = dataclasses.replace(configs.get("controller") or TrainConfig(), checkpoint_every=1)
        result = super().fit(dataset, configs, stage)
        run_dir = result.run_dir
        if run_dir and run_dir != "None" and int(os.environ.get("RANK", "0")) == 0:
            plot_fitness(Path(run_dir) / "metrics.jsonl", Path(run_dir) / "fitness_curve.png")
        return result

    @torch.no_grad()
    def reconstructions(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Side-by-side frames of an episode: the real frame, V's reconstruction, and M's prediction of it.

        Args:
            observations: uint8 frames ``(T + 1, H, W, C)``; actions: ``(T, ...)`` (an episode's).

        Returns:
            uint8 ``(T + 1, 64, 3 * 64, C)``: ``[real | V(real) | decode(M's next-latent mean)]``; M's
            column is black on the first frame (nothing predicts it). Write it with
            :meth:`reconstruction_video`.
        """
        mu, _ = self.encode(np.asarray(observations))
        real = self.frames(np.asarray(observations))
        recon = self.model.vae.decode(mu)
        predicted = torch.zeros_like(real)
        if len(actions):
            out, _ = self.model.memory(mu[None, :-1], self.memory_actions(np.asarray(actions))[None])
            k = out.logit_pi[0].argmax(-1, keepdim=True)  # (T, D, 1): each dimension's most likely component
            predicted[1:] = self.model.vae.decode(out.mu[0].gather(-1, k)[..., 0])
        strip = torch.cat([real, recon, predicted], dim=3)  # (T + 1, C, 64, 192)
        return (strip.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def reconstruction_video(self, observations: np.ndarray, actions: np.ndarray, path: str | os.PathLike,
                             fps: int = 30) -> Path:
        """Write :meth:`reconstructions` of an episode as a video (``.mp4`` or ``.gif``)."""
        from tt_agents.evaluation import _write_video

        frames = self.reconstructions(observations, actions)
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        _write_video(list(frames), path, fps=fps)
        return Path(path)

    @torch.no_grad()
    def episode_reconstruction_video(self, env: str | gym.vector.VectorEnv, path: str | os.PathLike, seed: int = 0,
                                     deterministic: bool = True, fps: int = 30) -> Path:
        """Act for one episode in ``env`` and write its :meth:`reconstructions` (real frame | V's reconstruction | M's
        predicted frame) to ``path`` (``.mp4`` or ``.gif``); what ``scripts/eval.py --reconstruction-video`` does.

        Args:
            env: an env id (made with :meth:`make_env`, resized to V's frames) or a 1-env vector env.
            seed: the episode's reset seed.
        """
        envs = self.make_env(env, 1) if isinstance(env, str) else env
        try:
            obs, _ = envs.reset(seed=seed)
            frames, actions, state, done = [obs[0]], [], None, False
            while not done:
                action, state = self.predict(obs, state=state, episode_start=np.array([not actions]),
                                             deterministic=deterministic)
                obs, _, term, trunc, _ = envs.step(action)
                frames.append(obs[0])  # the vector env resets on the next step: this is the episode's last frame
                actions.append(action[0])
                done = bool(term[0] or trunc[0])
        finally:
            if isinstance(env, str):
                envs.close()
        return self.reconstruction_video(np.stack(frames), np.stack(actions), path, fps=fps)

    def with_config(self, **changes: Any) -> WorldModelController:
        """A new agent with some config fields changed and this one's weights (for ablations: another
        ``controller_env`` or search size over the same trained V and M)."""
        other = type(self)(self.observation_space, self.action_space, dataclasses.replace(self.config, **changes),
                           device=self.device, act=self.act)
        result = other.model.load_state_dict(self.model.state_dict(), strict=False)
        norm = {"input_mean", "input_std"}  # C's input standardization: set by the controller stage
        if set(result.missing_keys) - norm or set(result.unexpected_keys) - norm:
            raise ValueError(f"with_config({changes}) changes the network: missing {result.missing_keys}, "
                             f"unexpected {result.unexpected_keys}")
        other.data_info = dict(self.data_info)
        return other
