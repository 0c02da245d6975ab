"""``TrajectoryAutoencoder``: latent trajectories that are sparse in time, and a policy that acts with them.

Per step ``t`` of a trajectory, ``alpha_t`` is the probability that a new latent transition (a
new "latent action") begins at ``t``; between transitions the latent holds its value, and a
low-level policy reconstructs the actions from (state, held latent). A sparsity prior pulls the
fraction of steps that begin a transition to a target rate (or one over a target mean segment
length). The networks and the hold are in :mod:`tt_agents.models.autoencoder`.

Two stages, trained by the shared trainer on minibatches of many trajectory windows:

1. ``autoencoder``: encoder, decoder and latent dynamics (the next segment's latent from the
   previous one and the state where it begins, trained across hard transitions only, on detached
   targets), with the soft hold, the Gumbel straight-through hold or REINFORCE
   (:attr:`TAEConfig.hold`). Its checkpoints save the alphas figure (``figures/alphas.png``).
2. ``policy``: the high-level policy's switch head, the hazard that a new segment begins given the
   state, the held latent and its age, fitted to the frozen encoder's transitions.

Acting (:meth:`TrajectoryAutoencoder.predict`): the state holds each env's current latent and its
age; when the switch head says a transition begins (sampled with ``deterministic=False``; with
``deterministic=True`` once the survival probability of the segment falls below one half, i.e. at
its median duration), the latent dynamics choose a new latent; the decoder maps (state, latent)
to the action.

:meth:`TrajectoryAutoencoder.encode` segments one episode; :func:`segment_dataset` writes a
Minari dataset with ``segment_start`` and ``latent`` per step; :func:`boundary_f1` scores
transitions against known switch points; :func:`plot_alphas` and :func:`plot_segments` draw them.

Example:
    >>> from tt_agents.envs.switching import switching_dataset
    >>> ds = switching_dataset(n_episodes=4, episode_len=40)
    >>> agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, TAEConfig.tiny(), device="cpu")
    >>> _ = agent.fit(ds, TrainConfig(steps=2, batch_size=4, progress=False))
    >>> enc = agent.encode(ds[0])
    >>> enc.alphas.shape, enc.segments[0].start
    ((40,), 0)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.agent import Agent, Preset
from tt_agents.data.episodes import Episode
from tt_agents.data.sampler import WindowSampler
from tt_agents.models.autoencoder import (
    TrajectoryAutoencoderNet,
    hard_hold,
    sparsity_prior,
)
from tt_agents.preprocessing import policy_preprocessing
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError
from tt_agents.stages import GradientStage
from tt_agents.trainer import TrainConfig

__all__ = [
    "TAEConfig",
    "TAEState",
    "Segment",
    "Encoding",
    "TrajectoryAutoencoder",
    "segment_dataset",
    "boundary_f1",
    "plot_alphas",
    "plot_segments",
]


@dataclass
class TAEConfig:
    """Network and loss settings of :class:`TrajectoryAutoencoder` (its two stages' training settings are TrainConfigs)."""

    latent_dim: int = 8
    """Size of the latents (``tanh``-bounded)."""
    d_model: int = 64
    """Width of the encoder's transformer and of the state features."""
    n_layers: int = 2
    """Transformer layers of the encoder."""
    n_heads: int = 4
    """Attention heads (``d_model`` must be a multiple)."""
    window: int = 16
    """Each step attends to the steps within this distance (local attention: any episode length)."""
    causal: bool = False
    """Alphas from the past only (steps <= t) instead of both sides."""
    conv_kernel: int = 3
    """Width of the convolution over neighbouring steps in front of the transformer."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """MLP widths of the decoder, the latent dynamics and the switch head."""
    context_len: int = 64
    """Steps per training window."""
    hold: Literal["soft", "gumbel", "reinforce"] = "soft"
    """How transitions are held while training: soft cumulative product, Gumbel straight-through, or REINFORCE."""
    gumbel_tau: float = 0.5
    """Temperature of the relaxed Bernoulli (``hold="gumbel"``)."""
    reinforce_baseline: bool = True
    """Subtract a leave-one-out batch baseline from REINFORCE's per-trajectory loss (``hold="reinforce"``)."""
    target_segment_length: float = 10.0
    """The sparsity prior's target: one transition every this many steps on average (rate ``1 / length``)."""
    rate_weight: float = 10.0
    """Weight of ``(mean alpha - target rate)^2``."""
    binary_weight: float = 0.5
    """Weight of ``mean alpha (1 - alpha)`` (pushes alphas to 0 or 1)."""
    dynamics_weight: float = 0.1
    """Weight of the latent dynamics' loss across hard transitions."""
    fixed_stride: int = 0
    """A baseline instead of learned transitions: a new latent every ``fixed_stride`` steps of an episode
    (1: at every step); 0 learns them."""
    predict_next_state: bool = False
    """Also reconstruct the next state from (state, held latent, action) (vector observations)."""
    next_state_weight: float = 1.0
    """Weight of the next-state reconstruction (``predict_next_state``)."""
    normalize_observations: bool = True
    """Standardise vector observations with the training data's statistics."""

    @classmethod
    def tiny(cls) -> TAEConfig:
        """A few thousand parameters, for tests."""
        return cls(latent_dim=4, d_model=16, n_layers=1, n_heads=2, window=4, hidden_sizes=(16,), context_len=16)


@dataclass
class TAEState:
    """Per-env acting state: the held latent, its age in steps, and the segment's survival probability."""

    latent: np.ndarray
    age: np.ndarray
    survival: np.ndarray


@dataclass
class Segment:
    start: int
    end: int
    """One past the segment's last step."""
    latent: np.ndarray


@dataclass
class Encoding:
    """What :meth:`TrajectoryAutoencoder.encode` finds in one episode of ``T`` steps."""

    alphas: np.ndarray
    """``(T,)``: probability that a new latent transition begins at each step (``alphas[0] = 1``)."""
    starts: np.ndarray
    """``(T,)`` bool: the hard transitions (``alpha > 0.5``; always at step 0)."""
    latents: np.ndarray
    """``(T, latent_dim)``: the held latent at each step."""
    segments: list[Segment] = field(default_factory=list)


_TAE_PRESETS = {
    "default": Preset(
        TAEConfig(),
        {"autoencoder": TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=100),
         "policy": TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup_steps=50)},
        "transformer d_model 64 x 2 layers, local window 16, 64-step windows, latent 8",
    ),
    "tiny": Preset(
        TAEConfig.tiny(),
        {"autoencoder": TrainConfig(steps=200, batch_size=16, lr=3e-3, warmup_steps=10),
         "policy": TrainConfig(steps=100, batch_size=16, lr=3e-3, warmup_steps=10)},
        "a few thousand parameters: a smoke test that runs in seconds",
    ),
}


@register_agent
class TrajectoryAutoencoder(Agent):
    """Latent trajectories that are sparse in time, and a policy acting through them.

    Vector (Box) or image (uint8 ``(H, W, C)``) observations; bounded Box or Discrete actions.
    """

    config_class = TAEConfig
    config: TAEConfig
    cli_name = "autoencoder"
    stage_names = ("autoencoder", "policy")
    presets = _TAE_PRESETS

    # ---- spaces, preprocessing, network
    def _check_spaces(self) -> None:
        if not isinstance(self.observation_space, gym.spaces.Box):
            raise SpaceMismatchError(f"TrajectoryAutoencoder needs a Box observation space, got {self.observation_space}")
        if isinstance(self.action_space, gym.spaces.Box):
            if len(self.action_space.shape) != 1 or not (
                np.isfinite(self.action_space.low).all() and np.isfinite(self.action_space.high).all()
            ):
                raise SpaceMismatchError(
                    f"TrajectoryAutoencoder needs a flat bounded Box action space, got {self.action_space}; "
                    "rescale the actions (gymnasium.wrappers.RescaleAction) first"
                )
        elif not isinstance(self.action_space, gym.spaces.Discrete):
            raise SpaceMismatchError(
                f"TrajectoryAutoencoder needs a Box or Discrete action space, got {self.action_space}"
            )
        c = self.config
        if c.target_segment_length < 1:
            raise ValueError(f"TAEConfig.target_segment_length must be >= 1 step, got {c.target_segment_length}")
        if c.context_len < 2:
            raise ValueError(f"TAEConfig.context_len must be >= 2, got {c.context_len}")
        if c.fixed_stride < 0:
            raise ValueError(f"TAEConfig.fixed_stride must be >= 0 (0: learned transitions), got {c.fixed_stride}")
        if c.hold not in ("soft", "gumbel", "reinforce"):
            raise ValueError(f"TAEConfig.hold must be 'soft', 'gumbel' or 'reinforce', got {c.hold!r}")
        if c.d_model % c.n_heads:
            raise ValueError(f"TAEConfig.d_model ({c.d_model}) must be a multiple of n_heads ({c.n_heads})")

    def _setup_preprocessing(self) -> None:
        self.image, self.discrete, self.normalizer, self.scaler = policy_preprocessing(
            self.observation_space, self.action_space, self.config.normalize_observations
        )

    def _build_model(self) -> nn.Module:
        c = self.config
        n_act = int(self.action_space.n) if self.discrete else int(self.action_space.shape[0])
        return TrajectoryAutoencoderNet(
            tuple(self.observation_space.shape), self.image, n_act, n_act, self.discrete, c.latent_dim, c.d_model,
            c.n_layers, c.n_heads, c.window, c.causal, c.conv_kernel, tuple(c.hidden_sizes),
            c.predict_next_state and not self.image, horizon=4 * c.target_segment_length,
        )

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.normalizer.state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state(state)

    # ---- training
    def stages(self) -> list[GradientStage]:
        return [
            GradientStage("autoencoder", self.model.autoencoder, self._autoencoder_loss, self._sampler,
                          setup=self.normalizer.fit, on_checkpoint=self._save_alphas_figure),
            GradientStage("policy", self.model.policy, self._policy_loss, self._sampler),
        ]

    def _sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> WindowSampler:
        return WindowSampler(dataset, self.config.context_len, batch_size, seed=seed, rank=rank, world_size=world_size)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized observations, the actions as the network reads them (scaled or ints), the mask."""
        obs = self.normalizer(batch["observations"])
        actions = batch["actions"]
        actions = actions.long() if self.discrete else self.scaler.scale(actions)
        return obs, actions, batch["mask"].bool()

    def _action_error(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-step reconstruction error ``(B, T)``: cross-entropy, or squared error summed over dimensions."""
        if self.discrete:
            return F.cross_entropy(out.flatten(0, 1).float(), actions.flatten(), reduction="none").view(actions.shape)
        return ((out.float() - actions) ** 2).sum(-1)

    def _autoencoder_loss(self, module: nn.Module, batch: dict[str, torch.Tensor]):
        c = self.config
        obs, actions, mask = self._inputs(batch)
        B, T = mask.shape
        fixed = (batch["timesteps"] % c.fixed_stride == 0) if c.fixed_stride else None
        out = module(obs, self.model.action_features(actions), mask, batch["timesteps"][:, 0] == 0, c.hold,
                     c.gumbel_tau, fixed)
        alpha, b = out["alpha"], out["b"]
        counted = mask.clone()
        counted[:, 0] = False  # the steps whose alpha counts (a window's first step is a transition by fiat)
        err = self._action_error(out["decoded"], actions)
        m = mask.float()
        recon = (err * m).sum() / m.sum().clamp(min=1)
        loss = recon
        metrics: dict[str, float] = {}
        if c.fixed_stride:
            return loss, {"recon": float(recon.detach())}
        if c.hold == "reinforce":
            per_seq = ((err * m).sum(1) / m.sum(1).clamp(min=1)).detach()
            if c.reinforce_baseline and B > 1:
                per_seq = per_seq - (per_seq.sum() - per_seq) / (B - 1)  # leave-one-out baseline
            logp = b * torch.log(alpha.clamp(min=1e-6)) + (1 - b) * torch.log1p(-alpha.clamp(max=1 - 1e-6))
            logp = (logp * counted).sum(1) / counted.sum(1).clamp(min=1)
            loss = loss + (per_seq * logp).mean()
        binary, rate = sparsity_prior(alpha, counted, 1.0 / c.target_segment_length)
        loss = loss + c.binary_weight * binary + c.rate_weight * rate
        if out["dyn_target"].shape[0]:
            dyn = F.mse_loss(out["dyn_pred"], out["dyn_target"])
            loss = loss + c.dynamics_weight * dyn
            metrics["dynamics"] = float(dyn.detach())
        if "next_pred" in out:
            nobs = self.normalizer(batch["next_observations"]).flatten(2)
            nxt = (((out["next_pred"] - nobs) ** 2).mean(-1) * m).sum() / m.sum().clamp(min=1)
            loss = loss + c.next_state_weight * nxt
            metrics["next_state"] = float(nxt.detach())
        with torch.no_grad():
            n = counted.float().sum().clamp(min=1)
            metrics.update(recon=float(recon), mean_alpha=float((alpha * counted).sum() / n),
                           hard_rate=float(((alpha > 0.5) & counted).float().sum() / n), binary=float(binary))
        return loss, metrics

    def _policy_loss(self, module: nn.Module, batch: dict[str, torch.Tensor]):
        obs, actions, mask = self._inputs(batch)
        B, T = mask.shape
        with torch.no_grad():
            _, logits, g = self.model.encode(obs, actions, mask)
            if self.config.fixed_stride:
                starts = (batch["timesteps"] % self.config.fixed_stride == 0) & mask
            else:
                starts = (torch.sigmoid(logits) > 0.5) & mask
            starts[:, 0] = True
            held = hard_hold(starts, g)
            idx = torch.arange(T, device=mask.device).expand(B, T)
            began = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values  # start of each step's segment
        # at step t >= 1: was a new segment begun, given the state, the latent held at t-1 and its age at t?
        age = idx[:, 1:] - began[:, :-1]
        known = (batch["timesteps"][:, :1] == 0) | (began[:, :-1] > 0)  # the segment's true start is in the window
        use = mask[:, 1:] & known
        logit = module(obs[:, 1:], held[:, :-1], age)
        target = starts[:, 1:].float()
        w = use.float()
        loss = (F.binary_cross_entropy_with_logits(logit, target, reduction="none") * w).sum() / w.sum().clamp(min=1)
        return loss, {"switch_rate": float((target * w).sum() / w.sum().clamp(min=1))}

    # ---- encoding
    @torch.no_grad()
    def encode(self, episode: Episode | tuple[np.ndarray, np.ndarray], chunk: int = 1024) -> Encoding:
        """Alphas, hard transitions, held latents and segments of one episode.

        Args:
            episode: an :class:`~tt_agents.data.Episode` (its first ``T`` observations are used) or
                ``(observations, actions)`` with ``T`` rows each (or ``T + 1`` observations).
            chunk: steps encoded at once; longer episodes are encoded in chunks with margins that
                cover the encoder's receptive field, so the result does not depend on ``chunk``.
        """
        if isinstance(episode, Episode):
            observations, actions = episode.observations, episode.actions
        else:
            observations, actions = episode
        actions = np.asarray(actions)
        T = len(actions)
        observations = np.asarray(observations)[:T]
        if T == 0 or len(observations) != T:
            raise ValueError(f"encode needs T >= 1 actions and T (or T + 1) observations, got {len(observations)}, {T}")
        was_training = self.model.training
        self.model.eval()
        try:
            obs_t = self.normalizer(torch.as_tensor(observations, device=self.device)[None])
            act_t = torch.as_tensor(actions, device=self.device)[None]
            act_t = act_t.long() if self.discrete else self.scaler.scale(act_t)
            c = self.config
            margin = c.n_layers * c.window + c.conv_kernel
            logits, g = [], []
            for lo in range(0, T, chunk):
                a, b = max(0, lo - margin), min(T, lo + chunk + margin)
                mask = torch.ones(1, b - a, dtype=torch.bool, device=self.device)
                _, lg, gg = self.model.encode(obs_t[:, a:b], act_t[:, a:b], mask)
                keep = slice(lo - a, lo - a + min(chunk, T - lo))
                logits.append(lg[:, keep])
                g.append(gg[:, keep])
            alpha = torch.sigmoid(torch.cat(logits, 1))[0].float()
            latent = torch.cat(g, 1)[0].float()
        finally:
            if was_training:
                self.model.train()
        alpha[0] = 1.0
        if self.config.fixed_stride:
            alpha = (torch.arange(T, device=alpha.device) % self.config.fixed_stride == 0).float()
        starts = alpha > 0.5
        held = hard_hold(starts[None], latent[None])[0]
        alphas, starts_np, held_np = alpha.cpu().numpy(), starts.cpu().numpy(), held.cpu().numpy()
        begin = np.flatnonzero(starts_np)
        ends = np.append(begin[1:], T)
        segments = [Segment(int(s), int(e), held_np[s].copy()) for s, e in zip(begin, ends)]
        return Encoding(alphas, starts_np, held_np, segments)

    @torch.no_grad()
    def reconstruct(self, episode: Episode, encoding: Encoding | None = None) -> np.ndarray:
        """The decoder's actions for an episode from its own held latents (hard transitions): ``(T, ...)``.

        The reconstruction error against ``episode.actions`` is what a latent segmentation keeps of them.
        """
        enc = encoding or self.encode(episode)
        T = len(enc.alphas)
        obs = self.normalizer(torch.as_tensor(np.asarray(episode.observations)[:T], device=self.device)[None])
        s = self.model.autoencoder.state(obs)
        out = self.model.autoencoder.decoder(s, torch.as_tensor(enc.latents, device=self.device)[None])[0]
        if self.discrete:
            return out.argmax(-1).cpu().numpy()
        return self.scaler.unscale(out.cpu().numpy())

    # ---- acting
    def initial_state(self, n_envs: int, act: Any = None) -> TAEState:
        super().initial_state(n_envs, act)
        return TAEState(np.zeros((n_envs, self.config.latent_dim), np.float32), np.zeros(n_envs, np.int64),
                        np.ones(n_envs, np.float32))

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        n = observation.shape[0]
        if state is None:
            state = self.initial_state(n)
        if state.latent.shape[0] != n:
            raise ValueError(f"state holds {state.latent.shape[0]} envs, the observation {n}")
        net = self.model
        obs = self.normalizer(torch.as_tensor(observation, device=self.device))[:, None]
        s = net.autoencoder.state(obs)[:, 0]
        latent = torch.as_tensor(state.latent, device=self.device)
        age = torch.as_tensor(state.age, device=self.device) + 1
        survival = torch.as_tensor(state.survival, device=self.device)
        fresh = torch.as_tensor(episode_start, device=self.device)
        hazard = torch.sigmoid(net.policy(obs, latent[:, None], age[:, None])[:, 0])
        if deterministic:
            survival = survival * (1 - hazard)
            switch = survival < 0.5  # the segment's median duration
        else:
            switch = torch.rand(n, device=self.device) < hazard
        new = fresh | switch
        prev = torch.where(fresh[:, None], net.autoencoder.dynamics.start.expand(n, -1), latent)
        chosen = net.autoencoder.dynamics(prev, s)
        latent = torch.where(new[:, None], chosen, latent)
        age = torch.where(new, torch.zeros_like(age), age)
        survival = torch.where(new, torch.ones_like(survival), survival)
        out = net.autoencoder.decoder(s, latent)
        if self.discrete:
            actions = out.argmax(-1) if deterministic else torch.distributions.Categorical(logits=out).sample()
            actions = actions.cpu().numpy()
        else:
            actions = self.scaler.unscale(out.cpu().numpy())
        return actions, TAEState(latent.cpu().numpy().astype(np.float32), age.cpu().numpy(),
                                 survival.cpu().numpy().astype(np.float32))

    # ---- figures
    def _save_alphas_figure(self, dataset: Any, run_dir: Path, step: int) -> None:
        episodes = [dataset[i] for i in range(min(len(dataset), 24))]
        alphas = [self.encode(ep).alphas[:200] for ep in episodes if len(ep)]
        from tt_agents.utils import atomic_write_bytes

        out = Path(run_dir) / "figures"
        png = plot_alphas(alphas, out / f"alphas_{step:07d}.png", title=f"alphas at step {step}")
        atomic_write_bytes(out / "alphas.png", png.read_bytes())  # the latest, drawn once


# ----------------------------------------------------------------------------------------------
# datasets, scores, figures


def segment_dataset(
    source: str | os.PathLike,
    agent: TrajectoryAutoencoder,
    dataset_id: str,
    *,
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``dataset_id``: ``source``'s episodes with ``segment_start`` and ``latent`` per step.

    Every field of the source is copied byte for byte (:func:`tt_agents.data.derive.derive_dataset`);
    ``segment_start`` is 1 where a new latent transition begins (``Discrete(2)``), ``latent`` the
    held latent (``Box(-1, 1, (latent_dim,))``). Returns the new dataset's folder.
    """
    from tt_agents.data.derive import derive_dataset

    def compute(episodes: list[Episode]) -> list[dict[str, np.ndarray]]:
        out = []
        for ep in episodes:
            enc = agent.encode(ep)
            out.append({"segment_start": enc.starts.astype(np.int64), "latent": enc.latents.astype(np.float32)})
        return out

    spaces = {
        "segment_start": gym.spaces.Discrete(2),
        "latent": gym.spaces.Box(-1.0, 1.0, (agent.config.latent_dim,), np.float32),
    }
    meta = {"segmented_by": type(agent).__name__, "segmentation_config": agent.checkpoint_sections()["agent"]}
    return derive_dataset(source, dataset_id, compute, spaces, path=path, metadata=meta, overwrite=overwrite,
                          progress=progress, description=f"segment {source}")


def boundary_f1(predicted: np.ndarray, true: np.ndarray, tolerance: int = 1, skip_first: bool = True) -> dict[str, float]:
    """Precision, recall and F1 of predicted transition steps against true ones, within ``tolerance`` steps.

    Each true transition matches at most one predicted one (greedily, nearest first), as LOVE
    scores boundaries; ``tolerance=0`` is exact match. Step 0, a transition by definition, is left
    out with ``skip_first``. Also returns the counts.

    Example:
        >>> boundary_f1(np.array([0, 0, 1, 0, 0, 1, 0]), np.array([0, 1, 0, 0, 0, 0, 1]))["f1"]
        1.0
    """
    p = np.flatnonzero(np.asarray(predicted).astype(bool))
    t = np.flatnonzero(np.asarray(true).astype(bool))
    if skip_first:
        p, t = p[p > 0], t[t > 0]
    pairs = sorted((abs(int(i) - int(j)), int(i), int(j)) for i in p for j in t if abs(int(i) - int(j)) <= tolerance)
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    hits = len(used_p)
    precision = hits / len(p) if len(p) else float(len(t) == 0)
    recall = hits / len(t) if len(t) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": float(len(p)), "true": float(len(t)),
            "matched": float(hits)}


def plot_alphas(alphas: list[np.ndarray], path: str | os.PathLike, title: str = "alphas") -> Path:
    """The alphas figure: each column a trajectory, top to bottom in time, colour = alpha (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = max(len(a) for a in alphas)
    grid = np.full((T, len(alphas)), np.nan)
    for j, a in enumerate(alphas):
        grid[: len(a), j] = a
    fig, ax = plt.subplots(figsize=(max(3.0, 0.25 * len(alphas) + 1.5), min(10.0, 2 + T / 25)))
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("trajectory")
    ax.set_ylabel("step")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="alpha (yellow: a new latent action begins)")
    return _save(fig, path)


def plot_segments(actions: np.ndarray, starts: np.ndarray, path: str | os.PathLike,
                  true_starts: np.ndarray | None = None, title: str = "actions and segments") -> Path:
    """One episode's actions against time, its segments shaded in alternating colours (PNG).

    ``true_starts`` (known switch points) are drawn as dashed lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = np.asarray(actions, np.float64)
    actions = actions[:, None] if actions.ndim == 1 else actions.reshape(len(actions), -1)
    T = len(actions)
    fig, ax = plt.subplots(figsize=(min(14.0, 3 + T / 25), 3.5))
    begin = np.flatnonzero(np.asarray(starts).astype(bool))
    if len(begin) == 0 or begin[0] != 0:
        begin = np.concatenate([[0], begin])
    for k, (s, e) in enumerate(zip(begin, np.append(begin[1:], T))):
        ax.axvspan(s - 0.5, e - 0.5, color=("#dbe9f6" if k % 2 else "#fde3c8"), lw=0)
    for d in range(actions.shape[1]):
        ax.plot(np.arange(T), actions[:, d], lw=1.2, label=f"action[{d}]")
    if true_starts is not None:
        for s in np.flatnonzero(np.asarray(true_starts).astype(bool))[1:]:
            ax.axvline(s - 0.5, color="k", ls="--", lw=0.7)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xlabel("step")
    ax.set_title(title + (" (dashed: true switches)" if true_starts is not None else ""))
    if actions.shape[1] <= 6:
        ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    from tt_agents.utils import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path

