"""Decision Transformer (Chen et al., 2021): return-conditioned, optionally prompted, constant-time inference.

The agent is a thin layer over :class:`~tt_agents.models.dt.DecisionTransformerNet`: it keeps
the preprocessing (observation statistics, the return scale, the target return), turns batches
into the network's inputs and loss, and runs the per-env bookkeeping of ``predict``.

**Return-to-go.** An episode starts at ``act.target_return`` (an act-time setting, :class:`DTActConfig`:
``agent.act.target_return = x``, or per state with ``initial_state(n, act=...)``) and every previous reward is subtracted from it; the network sees it divided by
``return_scale``. The previous reward comes from :class:`wrappers.AddPreviousReward` observations;
given a plain observation, ``predict`` raises :class:`MissingRewardError` (DT never assumes a zero
reward).

**Inference.** ``predict`` keeps a sliding-window KV cache per env in its state, so a step costs
the same at step 10 and step 10 000. The state can instead recompute every step from the
history: ``"recompute"`` gives exactly the cached actions (the reference the cache is tested
against) and ``"window"`` is the original DT evaluation (recompute the last K steps, which
differs from the cache once an episode is longer than K). The state is updated in place.

**Prompts.** With ``prompt_episodes > 0`` the model trains on a K-step window preceded by
segments of ``prompt_episodes`` other episodes of the same task (``task_field``), and acts on a
few-shot prompt of demonstrations: ``agent.set_prompt(episodes)`` (the default of new states) or
``agent.initial_state(n_envs, prompt=...)`` (one prompt per env if you like).

**Latent actions.** ``action_field`` names the per-step dataset field the head learns and
``action_space`` (given to the constructor) says what it is, so DT can be trained on a dataset
relabeled with latent actions; ``predict`` then returns latent actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.agent import Agent, Preset
from tt_agents.data.episodes import Episode
from tt_agents.data.prompts import PromptSampler, make_prompt
from tt_agents.data.sampler import WindowSampler
from tt_agents.models.dt import DecisionTransformerNet, DTNetConfig, DTStepCache
from tt_agents.models.kv_cache import KV_DTYPES
from tt_agents.preprocessing import ActionScaler, ObservationNormalizer
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError, is_image_space
from tt_agents.trainer import TrainConfig

__all__ = ["DTConfig", "DTActConfig", "DTPreset", "DT_PRESETS", "DTState", "DecisionTransformer", "MissingRewardError"]

INFERENCE_MODES = ("cache", "recompute", "window")


class MissingRewardError(ValueError):
    """``predict`` of a return-conditioned agent was given no previous reward."""


@dataclass
class DTConfig:
    """Hyperparameters of :class:`DecisionTransformer` (training-loop ones are in ``TrainConfig``)."""

    context_len: int = 20
    """K, steps of context; Chen et al. (2021) use 20 on MuJoCo (30 on Atari)."""
    n_layer: int = 3
    """Chen et al.'s MuJoCo model (6 on Atari)."""
    n_head: int = 1
    """Chen et al.'s MuJoCo model (8 on Atari)."""
    n_embd: int = 128
    """Chen et al.'s width for both MuJoCo and Atari."""
    dropout: float = 0.1
    """As in Chen et al."""
    max_timestep: int = 4096
    """Rows of the timestep embedding (the reference code's value: covers 1000-step MuJoCo and
    Procgen episodes); later steps reuse the last row."""
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    """IMPALA CNN widths for image observations (Espeholt et al., 2018)."""
    return_scale: float | None = None
    """Returns-to-go are divided by this; ``None``: the largest absolute episode return of the
    training data, so that they lie in [-1, 1] (Chen et al. use 1000 on MuJoCo)."""
    normalize_observations: bool = True
    """Standardise vector observations with the training data's statistics."""
    action_field: str = "actions"
    """The per-step dataset field the action head learns (``latent_actions`` on relabeled data)."""
    train_context_len: int | None = None
    """Steps per unprompted training sequence; ``None`` means ``context_len`` (the paper). Longer
    sequences train under the same sliding window that inference uses beyond K steps."""
    prompt_episodes: int = 0
    """Demonstrations in a prompt; 0 trains and acts without prompts."""
    prompt_len: int = 20
    """Steps per demonstration in a prompt (a whole episode if it is this short)."""
    task_field: str | None = None
    """Per-step extras field giving each episode's task, whose episodes prompt each other
    (e.g. a Procgen level seed); ``None``: all episodes are one task."""


@dataclass
class DTActConfig:
    """How a :class:`DecisionTransformer` acts (act-time settings: not part of training)."""

    target_return: float | None = None
    """Return-to-go at every episode start; ``None`` until ``fit`` sets it to the best episode
    return of the training data (the DT paper asks for about the best return seen)."""
    inference: str = "cache"
    """``"cache"`` (constant time per step), ``"recompute"`` (the exact reference) or ``"window"``
    (the original DT evaluation); see the module docstring."""
    compile: bool = False
    """Run the cached step through ``torch.compile`` (the first step of a state compiles, once per
    process and shape; falls back to the eager step where compilation is unavailable). Off by
    default: benchmarks.md ("dt") has what it gains and what compiling costs."""
    kv_dtype: str = "float32"
    """Dtype of the cached keys and values: ``"float32"`` (the model's own, exact), ``"bfloat16"`` or ``"float16"``
    (half the bytes, not exact: benchmarks.md has the deviation)."""
    native: bool = True
    """Run the cached step as one fused C function (:mod:`tt_agents.models.native`, compiled for this CPU on
    first use) where it applies: vector observations, float32 keys and values, a CPU, ``compile`` off.
    Its outputs equal the torch step's within float32 rounding (tests/test_native.py); elsewhere, or
    where no C compiler works (one warning), the torch step runs. benchmarks.md ("dt") has what it gains."""

    def __post_init__(self) -> None:
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {self.inference!r}")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {tuple(KV_DTYPES)}, got {self.kv_dtype!r}")


DTPreset = Preset
"""A DT config with the training settings it is meant for (the one preset shape, :class:`tt_agents.Preset`)."""


DT_PRESETS: dict[str, Preset] = {
    # Chen et al. (2021), MuJoCo: lr 1e-4, weight decay 1e-4, 10k warmup steps then constant, clip 0.25
    "paper": Preset(
        DTConfig(),
        TrainConfig(steps=100_000, batch_size=64, lr=1e-4, weight_decay=1e-4, warmup_steps=10_000,
                    min_lr_ratio=1.0, grad_clip=0.25),
        "Chen et al.'s MuJoCo model (3 layers x 128, K = 20) and schedule (100k steps)",
    ),
    # a few minutes on 2 CPU cores
    "cpu": Preset(
        DTConfig(context_len=10, n_layer=2, n_head=2, n_embd=64, cnn_channels=(8, 16, 16)),
        TrainConfig(steps=2_000, batch_size=32, lr=3e-4, weight_decay=1e-4, warmup_steps=100, grad_clip=0.25),
        "2 layers x 64, K = 10: a few minutes on 2 CPU cores",
    ),
}
"""Named configs for ``scripts/train.py dt``: ``"paper"`` (Chen et al.'s MuJoCo run) and ``"cpu"``."""


@dataclass
class DTState:
    """What ``predict`` carries between calls, one row per env (SB3's ``state``).

    Attributes:
        returns_to_go: ``(n_envs,)`` the current return-to-go of each env (unscaled).
        timesteps: ``(n_envs,)`` the step of each env's episode; -1 before its first step.
        target_return: where ``returns_to_go`` starts at every episode start.
        inference: ``"cache"``, ``"recompute"`` or ``"window"`` (see the module docstring).
        prompt: the network's prompt inputs, ``(1 or n_envs, P, ...)`` each, or ``None``.
    """

    returns_to_go: np.ndarray
    timesteps: np.ndarray
    target_return: float
    inference: str = "cache"
    prompt: dict[str, torch.Tensor] | None = None
    prev_action: torch.Tensor | None = None
    cache: DTStepCache | None = None
    history: dict[str, torch.Tensor] | None = None
    act: DTActConfig | None = None

    @property
    def n_envs(self) -> int:
        return len(self.timesteps)


@register_agent
class DecisionTransformer(Agent):
    """Decision Transformer over vector or image observations, discrete or continuous actions.

    Example:
        >>> import gymnasium as gym
        >>> from wrappers import AddPreviousReward
        >>> env = AddPreviousReward(gym.make("CartPole-v1"))
        >>> agent = DecisionTransformer(env.observation_space["observation"], env.action_space,
        ...                             DTConfig(context_len=4, n_layer=1, n_embd=16), device="cpu", seed=0)
        >>> obs, _ = env.reset(seed=0)
        >>> action, state = agent.predict(obs)
        >>> obs, *_ = env.step(action)
        >>> action, state = agent.predict(obs, state)
        >>> env.action_space.contains(action), state.timesteps.tolist(), state.returns_to_go.tolist()
        (True, [1], [-1.0])
    """

    config_class = DTConfig
    config: DTConfig
    needs_reward = True
    cli_name = "dt"
    presets = DT_PRESETS
    act_class = DTActConfig
    act: DTActConfig

    def _check_spaces(self) -> None:
        cfg = self.config
        if not isinstance(self.observation_space, gym.spaces.Box):
            raise SpaceMismatchError(f"DecisionTransformer needs a Box observation space, got {self.observation_space}")
        if not isinstance(self.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise SpaceMismatchError(f"DecisionTransformer needs a Box or Discrete action space, got {self.action_space}")
        for name in ("context_len", "n_layer", "n_head", "n_embd", "max_timestep", "prompt_len"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"DTConfig.{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.prompt_episodes < 0:
            raise ValueError(f"DTConfig.prompt_episodes must be >= 0, got {cfg.prompt_episodes}")
        if cfg.return_scale is not None and not cfg.return_scale > 0:
            raise ValueError(f"DTConfig.return_scale must be > 0, got {cfg.return_scale}")

    def _setup_preprocessing(self) -> None:
        cfg = self.config
        if isinstance(self.action_space, gym.spaces.Discrete):
            self.head = "categorical"
        else:
            bounded = np.all(np.isfinite(self.action_space.low)) and np.all(np.isfinite(self.action_space.high))
            self.head = "tanh" if bounded else "linear"
        self.image = is_image_space(self.observation_space)
        self.discrete = self.head == "categorical"
        self.normalizer = ObservationNormalizer(
            self.observation_space.shape, enabled=cfg.normalize_observations and not self.image
        )
        self.scaler = ActionScaler(self.action_space) if self.head == "tanh" else None
        self.return_scale = float(cfg.return_scale or 1.0)
        self._prompt: list[dict[str, np.ndarray]] | None = None

    def _build_model(self) -> nn.Module:
        cfg = self.config
        action_dim = int(self.action_space.n) if self.discrete else int(np.prod(self.action_space.shape))
        return DecisionTransformerNet(
            DTNetConfig(
                obs_shape=tuple(self.observation_space.shape), image=self.image, action_dim=action_dim,
                head=self.head, context_len=cfg.context_len, n_layer=cfg.n_layer, n_head=cfg.n_head,
                n_embd=cfg.n_embd, dropout=cfg.dropout, max_timestep=cfg.max_timestep,
                cnn_channels=tuple(cfg.cnn_channels), prompt=cfg.prompt_episodes > 0,
            )
        )

    # ------------------------------------------------------------------ preprocessing
    def _fit_preprocessing(self, dataset: Any) -> None:
        cfg = self.config
        self.normalizer.fit(dataset)
        returns = dataset.returns()
        if cfg.return_scale is None:
            self.return_scale = float(np.max(np.abs(returns))) if len(returns) and np.any(returns != 0) else 1.0
        if self.act.target_return is None and len(returns):
            self.act.target_return = float(np.max(returns))

    @property
    def target_return(self) -> float:
        """``act.target_return`` (0 while unset): where new states start their returns-to-go; settable."""
        return float(self.act.target_return or 0.0)

    @target_return.setter
    def target_return(self, value: float) -> None:
        self.act.target_return = float(value)

    def _preprocessing_state(self) -> dict[str, Any]:
        return {**self.normalizer.state(), "return_scale": self.return_scale}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state({k: v for k, v in state.items() if k != "target_return"})
        self.return_scale = float(state["return_scale"])

    @classmethod
    def _upgrade_agent_section(cls, info: dict[str, Any]) -> dict[str, Any]:
        # before act-time settings (commit 014639a): the target return was DTConfig.target_return, and its
        # resolved value (that, or the data's best return) was saved with the preprocessing
        config = dict(info.get("config") or {})
        target = config.pop("target_return", None)
        if "act" not in info and isinstance(info.get("preprocessing"), dict):
            target = info["preprocessing"].get("target_return", target)
            info["act"] = {"target_return": target, "inference": "cache"}
        info["config"] = config
        return info

    # ---- numpy / batch fields -> network inputs
    def _obs_tensor(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        if not self.image and isinstance(obs, np.ndarray) and self.device.type == "cpu":
            return torch.from_numpy(self.normalizer.numpy(obs))  # predict's path: the same values, fewer ops
        x = torch.as_tensor(obs, device=self.device)
        return x if self.image else self.normalizer(x)

    def _action_tensor(self, actions: np.ndarray | torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        """Dataset actions ``(*lead, ...)`` as the network's inputs and targets: indices ``lead`` or ``(*lead, A)``."""
        a = torch.as_tensor(actions, device=self.device)
        if self.discrete:
            return a.long().reshape(lead)
        a = a.float().reshape(*lead, -1)  # (*lead, A)
        return a if self.scaler is None else self.scaler.scale(a)

    def _inputs(self, batch: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
        ts = torch.as_tensor(batch[prefix + "timesteps"], device=self.device)
        return {
            "returns_to_go": torch.as_tensor(batch[prefix + "returns_to_go"], device=self.device).float()
            / self.return_scale,
            "observations": self._obs_tensor(batch[prefix + "observations"]),
            "actions": self._action_tensor(batch[prefix + "actions"], tuple(ts.shape)),
            "timesteps": ts,
            "valid": torch.as_tensor(batch[prefix + "mask"], device=self.device).bool(),
        }

    # ------------------------------------------------------------------ training
    def make_sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> Any:
        cfg = self.config
        if cfg.prompt_episodes > 0:
            return PromptSampler(
                dataset, cfg.context_len, cfg.prompt_episodes, cfg.prompt_len, batch_size=batch_size,
                task_field=cfg.task_field, action_field=cfg.action_field, seed=seed, rank=rank, world_size=world_size,
            )
        return WindowSampler(
            dataset, context_len=cfg.train_context_len or cfg.context_len, batch_size=batch_size,
            action_field=cfg.action_field, pad_side="left", seed=seed, rank=rank, world_size=world_size,
        )

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._inputs(batch)
        prompt = self._inputs(batch, "prompt_") if "prompt_mask" in batch else None
        out = model(x["returns_to_go"], x["observations"], x["actions"], x["timesteps"], x["valid"], prompt)
        valid = x["valid"]  # (B, T)
        if self.discrete:
            logits = out.float()[valid]  # (N, n_actions)
            target = x["actions"][valid]  # (N,)
            loss = F.cross_entropy(logits, target)
            return loss, {"accuracy": float((logits.argmax(-1) == target).float().mean())}
        return F.mse_loss(out.float()[valid], x["actions"][valid]), {}

    # ------------------------------------------------------------------ prompts
    def set_prompt(self, episodes: Sequence[Episode] | Sequence[Sequence[Episode]] | None, segment: str = "end") -> None:
        """Set the few-shot prompt of the states ``predict`` creates (``state=None``).

        Args:
            episodes: demonstrations of the task (shared by every env), a sequence of such
                sequences (one prompt per env of a vector env), or ``None`` to clear it.
            segment: ``"end"`` or ``"start"``: which ``prompt_len`` steps of a longer demonstration.
        """
        self._prompt = None if episodes is None else self._make_prompts(episodes, segment)

    def _make_prompts(self, episodes: Any, segment: str) -> list[dict[str, np.ndarray]]:
        if self.config.prompt_episodes == 0:
            raise ValueError("this DecisionTransformer was built without prompts (DTConfig.prompt_episodes=0)")
        if len(episodes) == 0:
            raise ValueError("a prompt needs at least one demonstration episode")
        per_env = not isinstance(episodes[0], Episode)
        groups = episodes if per_env else [episodes]
        return [make_prompt(g, self.config.prompt_len, segment, self.config.action_field) for g in groups]

    def _prompt_inputs(self, prompts: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Stack prompts of possibly different lengths (left-padded) into the network's ``(N, P, ...)`` inputs."""
        P = max(len(p["mask"]) for p in prompts)
        batch = {}
        for k in prompts[0]:
            rows = []
            for p in prompts:
                pad = np.zeros((P - len(p[k]), *p[k].shape[1:]), p[k].dtype)
                rows.append(np.concatenate([pad, p[k]]))
            batch[k] = np.stack(rows)
        return self._inputs(batch)

    # ------------------------------------------------------------------ acting
    def initial_state(
        self,
        n_envs: int,
        act: DTActConfig | None = None,
        prompt: Sequence[Episode] | Sequence[Sequence[Episode]] | None = None,
        target_return: float | None = None,
        inference: str | None = None,
    ) -> DTState:
        """A fresh state for ``n_envs`` envs, to pass to ``predict``.

        Args:
            n_envs: envs in a batch of observations.
            act: act-time settings of this state (``None``: ``agent.act``).
            prompt: demonstrations (as in :meth:`set_prompt`); ``None`` takes the agent's prompt.
            target_return: overrides ``act.target_return`` for this state.
            inference: overrides ``act.inference`` for this state: ``"cache"`` (constant time),
                ``"recompute"`` (the exact reference: every step runs the network over the history
                that can reach it) or ``"window"`` (the original DT: recompute over the last K steps).
        """
        act = act if act is not None else self.act
        inference = act.inference if inference is None else inference
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {inference!r}")
        if target_return is None:
            target_return = float(act.target_return or 0.0)
        prompts = self._make_prompts(prompt, "end") if prompt is not None else self._prompt
        if self.config.prompt_episodes > 0 and prompts is None:
            raise ValueError(
                "this DecisionTransformer was trained with prompts: set one with agent.set_prompt(episodes) "
                "or agent.initial_state(n_envs, prompt=episodes)"
            )
        if prompts is not None and len(prompts) not in (1, n_envs):
            raise ValueError(f"got {len(prompts)} prompts for {n_envs} envs: give one prompt, or one per env")
        return DTState(
            returns_to_go=np.zeros(n_envs, np.float64),
            timesteps=np.full(n_envs, -1, np.int64),
            target_return=float(target_return),
            inference=inference,
            prompt=self._prompt_inputs(prompts) if prompts is not None else None,
            act=act,
        )

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        n = len(observation)
        if previous_reward is None:
            raise MissingRewardError(
                "DecisionTransformer needs the previous step's reward to update its return-to-go, but predict "
                "got a plain observation: wrap the env with wrappers.AddPreviousReward "
                "(wrappers.VectorAddPreviousReward for a vector env), or pass "
                "{'observation': obs, 'previous_reward': reward}"
            )
        if state is None:
            state = self.initial_state(n)
        if not isinstance(state, DTState):
            raise TypeError(f"state must be a DTState returned by predict or initial_state, got {type(state).__name__}")
        if state.n_envs != n:
            raise ValueError(f"the state is for {state.n_envs} envs, but got {n} observations")
        starts = np.asarray(episode_start, bool) | (state.timesteps < 0)
        state.timesteps = np.where(starts, 0, state.timesteps + 1)
        state.returns_to_go = np.where(starts, state.target_return, state.returns_to_go - previous_reward)

        obs = self._obs_tensor(observation)
        rtg = torch.as_tensor((state.returns_to_go / self.return_scale).astype(np.float32), device=self.device)
        ts = torch.as_tensor(state.timesteps, device=self.device)
        starts_t = torch.as_tensor(starts, device=self.device)
        if state.prev_action is None:
            state.prev_action = self._action_tensor(np.zeros((n, *self.action_space.shape)), (n,))
        step = self._step_cached if state.inference == "cache" else self._step_recompute
        out = step(state, obs, rtg, ts, starts_t)
        if self.discrete:
            action = out.argmax(-1) if deterministic else torch.distributions.Categorical(logits=out).sample()
        else:
            action = out
        state.prev_action = action
        if state.history is not None:
            state.history["actions"][:, -1] = action  # now known: the next step's context
        return self._env_actions(action), state

    def _step_cached(self, state: DTState, obs, rtg, ts, starts: torch.Tensor) -> torch.Tensor:
        model: DecisionTransformerNet = self.model  # type: ignore[assignment]
        n = len(ts)
        if state.cache is None:
            act = state.act if state.act is not None else self.act
            prefix_k = prefix_v = pvalid = None
            if state.prompt is not None:
                prefix_k, prefix_v, pvalid = model.encode_prompt(state.prompt)  # (N, n_head, 3P, head_dim) each
                pvalid = pvalid.expand(n, -1)  # (n_envs, 3P)
            dtype = model.head.weight.dtype if act.kv_dtype == "float32" else KV_DTYPES[act.kv_dtype]  # exact: the model's
            state.cache = DTStepCache(model, n, prefix_k, prefix_v, pvalid, dtype, act.compile, act.native)
        return state.cache.step(state.prev_action, ~starts, rtg, obs, ts, starts)

    def _step_recompute(self, state: DTState, obs, rtg, ts, starts: torch.Tensor) -> torch.Tensor:
        model: DecisionTransformerNet = self.model  # type: ignore[assignment]
        cfg = model.config
        if state.history is None:
            if state.inference == "window":
                keep = cfg.context_len
            else:
                # the last token's output depends on the last n_layer * (window - 1) + 1 tokens only;
                # keep the steps whose 3 * keep - 1 tokens up to s_t cover that
                keep = -(-(cfg.n_layer * (cfg.attn_window - 1) + 2) // 3)
            n = len(ts)
            state.history = {
                "returns_to_go": rtg.new_zeros(n, keep),
                "observations": obs.new_zeros(n, keep, *obs.shape[1:]),
                "actions": state.prev_action.new_zeros(n, keep, *state.prev_action.shape[1:]),
                "timesteps": ts.new_zeros(n, keep),
                "valid": torch.zeros(n, keep, dtype=torch.bool, device=self.device),
            }
        h = state.history
        new = {"returns_to_go": rtg, "observations": obs, "actions": state.prev_action * 0, "timesteps": ts,
               "valid": torch.ones_like(starts)}
        h["valid"] &= ~starts[:, None]  # hide the previous episodes' steps of restarting envs
        for k, v in new.items():
            h[k] = torch.cat([h[k][:, 1:], v[:, None]], dim=1)  # (n_envs, keep, ...): drop the oldest step
        prompt = None
        if state.prompt is not None:
            prompt = {k: v.expand(len(ts), *v.shape[1:]) for k, v in state.prompt.items()}  # (n_envs, P, ...)
        return model(
            h["returns_to_go"], h["observations"], h["actions"], h["timesteps"], h["valid"], prompt, last_step_only=True
        )  # (n_envs, A), from the last step's observation token

    def _env_actions(self, action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        if self.discrete:
            return a
        a = a.reshape((-1, *self.action_space.shape))
        return a if self.scaler is None else self.scaler.unscale(a.reshape(len(a), -1)).reshape(a.shape)

