"""The Trajectory Transformer agent: ``TTPlanner``, trained on logged data, planning by beam search.

``agent = TTPlanner.load(path); action, state = agent.predict(obs, state)`` plans for one
observation or a batch of ``n_envs`` (one batched beam search over every beam of every env).
The network and its discretizer are in :mod:`tt_agents.models.tt`, the search in
:mod:`tt_agents.planning`.

**Context.** Each env's history (observations, the actions taken, rewards, value tokens) lives in
the returned ``state`` as a KV cache (or, with ``PlanConfig.use_cache=False``, as tokens for the
reference planner); a step appends one transition to it instead of re-encoding the context, and
rows where ``episode_start`` is true start afresh.

**Rewards.** Wrap the env in :class:`wrappers.AddPreviousReward` and the reward the env returned
fills the context. Given a plain observation, the context gets the reward the model itself
predicted for the action it chose (the reward token of the winning plan); planning still works,
but the model then conditions on its own guesses.

**Determinism.** The search samples actions as the paper's does. ``deterministic=True`` draws
that randomness from a per-env generator seeded with ``PlanConfig.seed`` at every episode start,
so a given history always gives the same action (and an env's action does not depend on the
other envs in the batch); ``deterministic=False`` draws from torch's global generator.

Observations must be flat vectors (``Box`` of one dimension) and actions a flat ``Box``; images
and discrete actions are refused with a :class:`~tt_agents.spaces.SpaceMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from tt_agents.agent import Agent, Preset
from tt_agents.checkpoint import CheckpointError
from tt_agents.data.sampler import WindowSampler, discounted_cumsum
from tt_agents.models.gpt import GPTConfig
from tt_agents.models.tt import STRATEGIES, Discretizer, TrajectoryTransformer
from tt_agents.planning import CachedContext, Noise, Plan, PlanConfig, ReferenceContext, beam_plan
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError
from tt_agents.trainer import TrainConfig

__all__ = ["TTConfig", "TTPlanner", "TTState", "TT_PRESETS", "PlanConfig"]


@dataclass
class TTConfig:
    """Network, discretization and training targets of a Trajectory Transformer (its search is ``agent.act``).

    The defaults are the paper's for MuJoCo locomotion (``TTConfig.paper()``);
    ``TTConfig.small()`` trains in minutes on a CPU.
    """

    n_bins: int = 100
    """Bins per dimension (the paper's N)."""
    strategy: str = "quantile"
    """``"quantile"`` (equal counts per bin, the paper's default) or ``"uniform"`` (equal widths)."""
    n_layer: int = 4
    """Transformer blocks (paper: 4)."""
    n_head: int = 4
    """Attention heads (paper: 4)."""
    n_embd: int = 128
    """Width (paper: 32 per head, times 4 heads)."""
    dropout: float = 0.1
    """Embedding, attention and residual dropout (paper: 0.1)."""
    sequence_transitions: int = 10
    """Transitions per training window (the paper's subsampled_sequence_length)."""
    context_transitions: int = 5
    """Each token attends to the last ``context_transitions * transition_dim`` tokens (the paper
    crops the planner's input to its last 5 transitions; here the model is trained with the same
    window, which is what lets the planner cache keys and values across steps)."""
    gamma: float = 0.99
    """Discount of the value targets (paper: 0.99)."""
    termination_penalty: float | None = -100.0
    """Added to the reward of a terminal step (paper: -100), so plans avoid falling over."""
    action_weight: float = 5.0
    """Loss weight of action tokens (paper: 5)."""
    reward_weight: float = 1.0
    """Loss weight of reward tokens (paper: 1)."""
    value_weight: float = 1.0
    """Loss weight of value tokens (paper: 1)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.n_bins < 2 or self.sequence_transitions < 1 or self.context_transitions < 1:
            raise ValueError("n_bins must be >= 2, sequence_transitions and context_transitions >= 1")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError("n_embd / n_head must be an even integer (rotary embeddings)")

    @classmethod
    def paper(cls) -> TTConfig:
        """The paper's MuJoCo configuration (the defaults)."""
        return cls()

    @classmethod
    def small(cls) -> TTConfig:
        """A model that trains in minutes on a CPU and plans in about a second per step."""
        return cls(
            n_bins=50,
            n_layer=2,
            n_head=2,
            n_embd=64,
            sequence_transitions=6,
            context_transitions=3,
        )

    @classmethod
    def tiny(cls) -> TTConfig:
        """For tests: a few thousand weights and a search of a few beams."""
        return cls(
            n_bins=8,
            n_layer=1,
            n_head=2,
            n_embd=16,
            dropout=0.0,
            sequence_transitions=3,
            context_transitions=2,
        )


TT_PRESETS: dict[str, Preset] = {
    "paper": Preset(TTConfig.paper(), TrainConfig(steps=20_000, batch_size=256),
                    "the paper's MuJoCo network (4 layers x 128) and search (beam 128, horizon 15)", PlanConfig()),
    "small": Preset(TTConfig.small(), TrainConfig(steps=3_000, batch_size=64),
                    "2 layers x 64, beam 16 horizon 5: trains in minutes on a CPU", PlanConfig.small()),
    "tiny": Preset(TTConfig.tiny(), TrainConfig(steps=200, batch_size=32), "for tests: a few thousand weights",
                   PlanConfig.tiny()),
}
"""Named configurations with their training settings and searches (``scripts/train.py tt-small``)."""


class TTState:
    """Per-env planning context, returned by :meth:`TTPlanner.predict` and passed back to it.

    Attributes:
        act: the search this state plans with (may be replaced between calls, in the same
            ``use_cache`` mode).
        context: one row per env: its history as a KV cache (or as tokens, reference mode).
        pending: ``(n_envs, act_dim + 2)`` tokens of the last chosen action and of the reward and
            value the model predicted for it, appended to the context at the next step.
        has_pending: ``(n_envs,)`` whether ``pending`` belongs to the current episode.
        generators: each env's sampling stream under ``deterministic=True``.
        last_plan: the last plans (tokens and scores), for inspection.
    """

    def __init__(self, agent: TTPlanner, n_envs: int, act: PlanConfig | None = None) -> None:
        model: TrajectoryTransformer = agent.model  # type: ignore[assignment]
        self.n_envs = n_envs
        act = act if act is not None else agent.act
        self.act = act
        self.use_cache = act.use_cache
        ctx_cls = CachedContext if self.use_cache else ReferenceContext
        self.context: CachedContext | ReferenceContext = ctx_cls.empty(model, n_envs)
        self.pending = torch.zeros(n_envs, model.action_dim + 2, dtype=torch.long, device=agent.device)
        self.has_pending = np.zeros(n_envs, dtype=bool)
        self.generators = [torch.Generator(device=agent.device) for _ in range(n_envs)]
        self.last_plan: Plan | None = None

    def reset(self, rows: np.ndarray, seed: int) -> None:
        """Start the envs where ``rows`` is true afresh."""
        self.context.forget(torch.as_tensor(rows, device=self.pending.device))
        self.has_pending[rows] = False
        for i in np.flatnonzero(rows):
            self.generators[i].manual_seed(seed)


@register_agent
class TTPlanner(Agent):
    """The Trajectory Transformer: a GPT over discretized transitions, acting by beam search.

    Example:
        >>> import gymnasium as gym
        >>> space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        >>> agent = TTPlanner(space, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), TTConfig.tiny(), device="cpu", seed=0,
        ...                   act=PlanConfig.tiny())  # or TTPlanner.from_preset("tiny", ...)
        >>> action, state = agent.predict(np.zeros(3, np.float32))
        >>> action.shape, state.n_envs
        ((2,), 1)
    """

    config_class = TTConfig
    config: TTConfig
    act_class = PlanConfig
    act: PlanConfig
    needs_reward = True
    cli_name = "tt"
    presets = TT_PRESETS

    # ---- spaces and model
    def _check_spaces(self) -> None:
        obs, act = self.observation_space, self.action_space
        if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
            raise SpaceMismatchError(
                f"TTPlanner needs a flat Box observation space (a vector), got {obs}; image observations "
                "are not supported (use DecisionTransformer or BCPolicy), flatten others with "
                "gymnasium.wrappers.FlattenObservation"
            )
        if not (isinstance(act, gym.spaces.Box) and len(act.shape) == 1):
            raise SpaceMismatchError(
                f"TTPlanner needs a flat Box action space (continuous actions), got {act}; "
                "discrete actions are not supported"
            )

    def _setup_preprocessing(self) -> None:
        self.obs_dim, self.act_dim = int(self.observation_space.shape[0]), int(self.action_space.shape[0])
        self.discretizer = self._default_discretizer()

    def _default_discretizer(self) -> Discretizer:
        """Before ``fit``: uniform bins over the spaces' bounds ([-1, 1] where unbounded)."""
        low = np.concatenate([self.observation_space.low, self.action_space.low, [-1.0, -1.0]]).astype(np.float64)
        high = np.concatenate([self.observation_space.high, self.action_space.high, [1.0, 1.0]]).astype(np.float64)
        bounded = np.isfinite(low) & np.isfinite(high)
        return Discretizer.uniform(np.where(bounded, low, -1.0), np.where(bounded, high, 1.0), self.config.n_bins)

    def _build_model(self) -> nn.Module:
        c = self.config
        td = self.obs_dim + self.act_dim + 2
        gpt = GPTConfig(
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout,
            attn_window=c.context_transitions * td, rope=True,
        )
        model = TrajectoryTransformer(self.obs_dim, self.act_dim, c.n_bins, gpt)
        model.set_discretizer(self.discretizer)
        return model

    # ---- preprocessing
    def _set_discretizer(self, discretizer: Discretizer) -> None:
        self.discretizer = discretizer
        self.model.set_discretizer(discretizer)  # type: ignore[operator]

    def _fit_preprocessing(self, dataset: Any) -> None:
        c = self.config
        columns = []
        for ep in dataset:
            n = len(ep)
            if n == 0:
                continue
            r = np.asarray(ep.rewards, np.float64).copy()
            if c.termination_penalty is not None:
                r[np.asarray(ep.terminations, bool)] += c.termination_penalty
            columns.append(
                np.concatenate(
                    [
                        np.asarray(ep.observations[:-1], np.float64).reshape(n, -1),
                        np.asarray(ep.actions, np.float64).reshape(n, -1),
                        r[:, None],
                        discounted_cumsum(r, c.gamma)[:, None],
                    ],
                    axis=1,
                )
            )
        if not columns:
            raise ValueError("cannot fit TTPlanner's bins on a dataset without steps")
        self._set_discretizer(Discretizer.fit(np.concatenate(columns), c.n_bins, c.strategy))

    def _preprocessing_state(self) -> dict[str, Any]:
        return {"discretizer": self.discretizer.to_json()}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        try:
            discretizer = Discretizer.from_json(state["discretizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"TTPlanner: malformed discretizer in the checkpoint: {e}") from e
        if discretizer.dim != self.obs_dim + self.act_dim + 2 or discretizer.n_bins != self.config.n_bins:
            raise CheckpointError(
                f"TTPlanner: the checkpoint's discretizer has {discretizer.dim} dimensions of "
                f"{discretizer.n_bins} bins, the agent needs {self.obs_dim + self.act_dim + 2} of {self.config.n_bins}"
            )
        self._set_discretizer(discretizer)

    # ---- training
    def make_sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> WindowSampler:
        c = self.config
        return WindowSampler(
            dataset, context_len=c.sequence_transitions, batch_size=batch_size, gamma=c.gamma,
            termination_penalty=c.termination_penalty, pad_side="right", seed=seed, rank=rank, world_size=world_size,
        )

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        tt: TrajectoryTransformer = self.model  # type: ignore[assignment]
        c = self.config
        tokens = tt.tokenize(batch["observations"], batch["actions"], batch["rewards"], batch["values"])  # (B, K * td)
        mask = batch["mask"].repeat_interleave(tt.transition_dim, dim=1)  # (B, K * td)
        logits = model(tokens[:, :-1])  # (B, K * td - 1, n_bins): position i predicts token i + 1
        weights = (1.0, c.action_weight, c.reward_weight, c.value_weight)
        loss, per_kind = tt.loss(logits, tokens[:, 1:], mask[:, 1:], 1, weights)
        values = torch.stack(list(per_kind.values())).tolist()
        return loss, dict(zip(per_kind, values))

    # ---- acting
    def initial_state(self, n_envs: int, act: PlanConfig | None = None) -> TTState:
        """A fresh planning context for ``n_envs`` envs; ``act`` is its search (``None``: ``agent.act``)."""
        state = TTState(self, n_envs, act if act is not None else self.act)
        state.reset(np.ones(n_envs, bool), state.act.seed)
        return state

    @classmethod
    def _upgrade_agent_section(cls, info: dict[str, Any]) -> dict[str, Any]:
        # before act-time settings (commit 014639a) the search was TTConfig.plan
        config = dict(info.get("config") or {})
        plan = config.pop("plan", None)
        if plan is not None and "act" not in info:
            info["act"] = plan
        info["config"] = config
        return info

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        n = observation.shape[0]
        if not isinstance(state, TTState) or state.n_envs != n:
            if state is not None and not episode_start.all():
                raise ValueError(
                    f"the state passed to predict is not a TTPlanner state for {n} envs; "
                    "pass state=None (or episode_start all true) to start afresh"
                )
            state = self.initial_state(n)
        elif state.use_cache != state.act.use_cache:
            if not episode_start.all():
                raise ValueError(
                    f"this state's context was built with use_cache={state.use_cache}, but its act settings now say "
                    f"use_cache={state.act.use_cache}; start afresh (episode_start all true) to change the mode"
                )
            state = self.initial_state(n, state.act)
        elif episode_start.any():
            state.reset(episode_start, state.act.seed)
        plan_cfg = state.act
        model: TrajectoryTransformer = self.model  # type: ignore[assignment]
        D, A = self.obs_dim, self.act_dim
        obs_tokens = torch.as_tensor(self.discretizer.subset(0, D).discretize(observation), device=self.device)
        has_prev = state.has_pending
        if has_prev.any():
            prev = state.pending.clone()  # (n, A + 2): last action, its reward and value tokens
            if previous_reward is not None:
                r = self.discretizer.subset(model.reward_dim, model.reward_dim + 1).discretize(previous_reward[:, None])
                prev[:, A] = torch.as_tensor(r[:, 0], device=self.device)
            tokens = torch.cat([prev, obs_tokens], dim=1)  # (n, A + 2 + D), from action dimension 0
            pad = None
            if not has_prev.all():  # envs starting an episode pad the previous transition
                pad = torch.zeros_like(tokens, dtype=torch.bool)
                pad[torch.as_tensor(~has_prev, device=self.device), : A + 2] = True
            logits = state.context.append(tokens, D, pad)  # (n, n_bins): first action token
        else:
            logits = state.context.append(obs_tokens, 0)
        noise = Noise(n, state.generators if deterministic else None)
        plan = beam_plan(model, state.context, logits, obs_tokens, plan_cfg, noise)
        state.pending = plan.tokens[:, 0, D:].clone()  # (n, A + 2)
        state.has_pending[:] = True
        state.last_plan = plan
        actions = self.discretizer.subset(D, D + A).reconstruct(plan.tokens[:, 0, D : D + A].cpu().numpy())
        return actions.astype(np.float32), state
