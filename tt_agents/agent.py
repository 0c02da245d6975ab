"""The agent protocol every tt-agents model follows, with Stable-Baselines3's ``predict`` semantics.

An :class:`Agent` is a thin object over a torch module (d3rlpy's split): it holds a typed
``config`` dataclass, the ``observation_space`` and ``action_space`` it was built for, the
preprocessing fitted on its training data (normalizers, discretizer bins, return scales, all
JSON), and ``model``, the ``nn.Module`` with the weights.

``predict(observation, state=None, episode_start=None, deterministic=True) -> (action, state)``
takes one observation or a batch (leading dimension, one row per env of a vector env). Per-env
context (history, KV cache, RNN state) lives in the returned ``state``, which the caller passes
back; rows where ``episode_start`` is true start afresh. This is exactly what
``stable_baselines3.common.evaluation.evaluate_policy`` does, so any agent works there unchanged.

**Rewards.** Agents that condition on rewards (return-to-go, TT context) receive the previous
step's reward in one way only: the env is wrapped in :class:`wrappers.AddPreviousReward`, whose
observations are ``{"observation": obs, "previous_reward": r}``. ``predict`` accepts those dicts
(single or batched) next to plain observations; ``needs_reward`` says whether an agent uses it.
What an agent does when it is *not* given a reward is its own documented choice (TT fills in its
own predicted reward; DT refuses), never a silent zero.

**Training.** An agent trains as named stages (:meth:`Agent.stages`, see :mod:`tt_agents.stages`),
in order or one at a time: ``agent.fit(dataset, TrainConfig(...), stage=None)``. An agent with one
gradient stage only implements ``make_sampler`` and ``compute_loss``.

**Hooks**, in the order the constructor calls them: ``_check_spaces`` (refuse spaces the agent
cannot handle), ``_setup_preprocessing`` (create the normalizers, bins, scales that ``fit``
fits and checkpoints save), ``_build_model``. Agents register with
:func:`~tt_agents.registry.register_agent` (the package's own are listed in
:mod:`tt_agents.registry`), so :func:`load_agent` needs no import by the user.

**Checkpoints.** ``agent.save(path)`` writes one atomic file (see :mod:`tt_agents.checkpoint`);
``SomeAgent.load(path, env=None, device="auto")`` re-creates the agent (a new object, like SB3's
``load``); :func:`load_agent` finds the class from the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from tt_agents.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from tt_agents.registry import AGENT_REGISTRY, agent_class
from tt_agents.spaces import (
    REWARD_KEYS,
    SpaceMismatchError,
    check_observation,
    space_from_json,
    space_to_json,
    spaces_equal,
    split_previous_reward,
)
from tt_agents.stages import GradientStage, Stage
from tt_agents.trainer import TrainConfig, Trainer, TrainResult
from tt_agents.utils import config_from_dict, config_to_dict, resolve_device, set_seed

__all__ = ["Agent", "Preset", "NonFiniteInputError", "load_agent", "load_weights", "AGENT_REGISTRY"]

A = TypeVar("A", bound="Agent")

DATA_INFO_KEYS = ("env_id", "dataset_id", "ref_min_score", "ref_max_score")


def _jsonable(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


@dataclass
class EmptyConfig:
    pass


@dataclass
class Preset:
    """A named starting point for an agent: its network config and the training settings it is meant for.

    ``train`` is one :class:`~tt_agents.trainer.TrainConfig` for every stage, or one per stage name.
    """

    config: Any
    train: TrainConfig | dict[str, TrainConfig] = field(default_factory=TrainConfig)
    description: str = ""
    """One line for ``--help``: what the preset is for and what it costs."""
    act: Any = None
    """The act-time settings the preset is meant for (``None``: the agent's defaults)."""


class NonFiniteInputError(SpaceMismatchError):
    """``predict`` was given an observation or a previous reward holding NaN or Inf."""


class Agent:
    """Base class of every agent. Subclasses set ``config_class`` and implement the hooks below.

    Hooks:
        ``_check_spaces()``: raise :class:`SpaceMismatchError` for spaces the agent cannot handle.
        ``_setup_preprocessing()``: create the preprocessing objects (normalizers, bins, scales).
        ``_build_model() -> nn.Module``: the torch module, from ``config`` and the spaces.
        ``_predict(obs, previous_reward, state, episode_start, deterministic) -> (actions, state)``:
            ``obs`` is a validated batch ``(n_envs, *obs_shape)``, ``previous_reward`` is ``(n_envs,)``
            or ``None``; ``state`` is ``None`` on the first call unless the caller passed
            :meth:`initial_state`'s.
        ``initial_state(n_envs) -> state``: the per-env context ``predict`` starts from (``None``
            for stateless agents).
        ``_preprocessing_state() -> dict`` / ``_load_preprocessing_state(dict)``: JSON-able
            preprocessing saved with the weights.
        ``stages() -> list[Stage]``: what ``fit`` trains, in order. The default is one
            :class:`~tt_agents.stages.GradientStage` named ``"model"`` over ``self.model``, built
            from ``_fit_preprocessing(dataset)`` (its setup), ``make_sampler(dataset, batch_size,
            seed, rank, world_size)`` and ``compute_loss(model, batch) -> (loss, metrics)``.
    """

    config_class: ClassVar[type] = EmptyConfig
    needs_reward: ClassVar[bool] = False
    """Whether ``predict`` uses the previous reward (see the module docstring)."""
    presets: ClassVar[dict[str, Preset]] = {}
    """Named configs with their training settings; the scripts offer each as a subcommand."""
    cli_name: ClassVar[str | None] = None
    """The agent's subcommand in ``scripts/train.py`` (default: the class name in lower case)."""
    act_class: ClassVar[type | None] = None
    """The dataclass of the act-time settings (``None``: the agent has none)."""
    stage_names: ClassVar[tuple[str, ...]] = ("model",)
    """The names of :meth:`stages`, in order, known without building the agent (for the scripts)."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: Any = None,
        device: str | torch.device = "auto",
        seed: int | None = None,
        act: Any = None,
    ) -> None:
        if config is None:
            config = self.config_class()
        if act is None and self.act_class is not None:
            act = self.act_class()
        if self.act_class is not None and not isinstance(act, self.act_class):
            raise TypeError(f"{type(self).__name__} expects {self.act_class.__name__} act settings, got {type(act).__name__}")
        self.act = act
        """How the agent acts (search width, target return, ...): saved as the default with the
        checkpoint, changeable at any time, and overridable per run (``initial_state(n, act=...)``,
        ``evaluate(..., act=...)``, ``scripts/eval.py --act.*``)."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__} config, got {type(config).__name__}"
            )
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = resolve_device(device)
        self._check_spaces()
        self._setup_preprocessing()
        self.data_info: dict[str, Any] = {}
        """What the agent was trained on: env id, dataset id, reference scores (used by ``evaluate``)."""
        if seed is not None:
            set_seed(seed)
        self.model: nn.Module = self._build_model().to(self.device)
        self.model.eval()  # acting mode; the trainer switches to train() and back

    @classmethod
    def from_preset(
        cls: type[A], name: str, observation_space: gym.Space, action_space: gym.Space, **kwargs: Any
    ) -> A:
        """An agent built from ``cls.presets[name]``: its config and its act-time settings.

        Example:
            >>> import gymnasium as gym
            >>> from tt_agents import TTPlanner
            >>> space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
            >>> TTPlanner.from_preset("tiny", space, space, device="cpu").act.beam_width
            3
        """
        if name not in cls.presets:
            raise KeyError(f"{cls.__name__} has no preset {name!r}; its presets are {sorted(cls.presets)}")
        preset = cls.presets[name]
        kwargs.setdefault("act", dataclasses.replace(preset.act) if preset.act is not None else None)
        return cls(observation_space, action_space, dataclasses.replace(preset.config), **kwargs)

    # ------------------------------------------------------------------ hooks
    def _check_spaces(self) -> None:
        """Raise :class:`SpaceMismatchError` if this agent cannot handle the spaces."""

    def _setup_preprocessing(self) -> None:
        """Create the preprocessing objects (unfitted); ``_fit_preprocessing`` fits them on data."""

    def _build_model(self) -> nn.Module:
        raise NotImplementedError

    def _predict(
        self,
        observation: np.ndarray,
        previous_reward: np.ndarray | None,
        state: Any,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _preprocessing_state(self) -> dict[str, Any]:
        return {}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        if state:
            raise CheckpointError(f"{type(self).__name__} has no preprocessing, but the checkpoint has {list(state)}")

    def _fit_preprocessing(self, dataset: Any) -> None:
        """Fit preprocessing (normalizers, bins) on the training data; called by ``fit``."""

    def make_sampler(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> Any:
        """The batches of the default one-stage training (see :meth:`stages`)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither make_sampler nor its own stages()")

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the default one-stage training; ``model`` is what to call (DDP-wrapped under torchrun)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither compute_loss nor its own stages()")

    def stages(self) -> list[Stage]:
        """What :meth:`fit` trains, in order (see :mod:`tt_agents.stages`)."""
        return [
            GradientStage(
                "model",
                module=self.model,
                # looked up at call time, so that an instance's compute_loss / make_sampler may be replaced
                loss=lambda model, batch: self.compute_loss(model, batch),
                make_sampler=lambda *args: self.make_sampler(*args),
                setup=self._fit_preprocessing,
            )
        ]

    def initial_state(self, n_envs: int, act: Any = None) -> Any:
        """The state ``predict`` starts from for ``n_envs`` envs (``None``: a stateless agent).

        Args:
            n_envs: rows of the observations ``predict`` will get.
            act: act-time settings for this state (``None``: ``self.act``).
        """
        if act is not None and self.act_class is None:
            raise ValueError(f"{type(self).__name__} has no act-time settings, got {act!r}")
        return None

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        check_finite: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for one observation or a batch, SB3-style.

        Args:
            observation: one observation of ``observation_space``, a batch ``(n_envs, ...)``,
                or either wrapped by :class:`wrappers.AddPreviousReward`.
            state: what the previous call returned (``None`` to start).
            episode_start: ``(n_envs,)`` bools; true rows reset their context. ``None`` means
                "all true" when ``state`` is ``None`` and "all false" otherwise.
            deterministic: the most likely action rather than a sample.
            check_finite: refuse NaN and Inf in observations and previous rewards before anything
                enters the agent's context (``False`` skips the check, for speed).

        Returns:
            ``(action, state)``; ``action`` is batched exactly when ``observation`` was.

        Raises:
            SpaceMismatchError: the observation's shape or dtype does not fit ``observation_space``.
            NonFiniteInputError: an observation or previous reward holds NaN or Inf (the message
                names the env rows); the state is unchanged.
        """
        obs, reward = split_previous_reward(observation)
        batch, vectorized = check_observation(obs, self.observation_space)
        n = batch.shape[0]
        if reward is not None and reward.shape != (n,):
            raise SpaceMismatchError(f"previous_reward has {reward.shape[0]} entries for {n} observations")
        if check_finite:
            _check_finite(batch, reward)
        if episode_start is None:
            starts = np.ones(n, bool) if state is None else np.zeros(n, bool)
        else:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape != (n,):
                raise ValueError(f"episode_start has shape {np.shape(episode_start)}, expected ({n},)")
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.inference_mode():
                actions, state = self._predict(batch, reward, state, starts, deterministic)
        finally:
            if was_training:
                self.model.train()
        actions = self._postprocess_actions(actions)
        return (actions if vectorized else actions[0]), state

    def _postprocess_actions(self, actions: np.ndarray) -> np.ndarray:
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            return np.minimum(np.maximum(np.asarray(actions, dtype=space.dtype), space.low), space.high)
        if isinstance(space, gym.spaces.Discrete):
            return np.asarray(actions, dtype=np.int64).reshape(-1)
        return np.asarray(actions)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        dataset: Any,
        config: TrainConfig | Mapping[str, TrainConfig] | None = None,
        stage: str | None = None,
        **overrides: Any,
    ) -> TrainResult:
        """Train on ``dataset`` (an :class:`~tt_agents.data.EpisodeDataset`) with the shared trainer.

        Args:
            dataset: the episodes; their spaces must match the agent's.
            config: a :class:`~tt_agents.trainer.TrainConfig` for every stage, or one per stage
                name (defaults if ``None``).
            stage: train only this stage (see :meth:`stages`); ``None`` trains them all, in order.
            **overrides: fields of the config(s) to replace, e.g. ``steps=1000``.

        Returns:
            The :class:`~tt_agents.trainer.TrainResult` of the last stage trained (``.stages``
            holds every stage's).
        """
        if overrides:
            if isinstance(config, Mapping):
                config = {k: dataclasses.replace(v, **overrides) for k, v in config.items()}
            else:
                config = dataclasses.replace(config or TrainConfig(), **overrides)
        self._check_dataset(dataset)
        meta = getattr(dataset, "metadata", {}) or {}
        self.data_info = {k: _jsonable(meta[k]) for k in DATA_INFO_KEYS if meta.get(k) is not None}
        return Trainer(self, config, stage).fit(dataset)

    def _check_dataset(self, dataset: Any) -> None:
        """The dataset's observations, and the field the agent learns as actions, fit the agent's spaces.

        Agents whose config has an ``action_field`` other than ``"actions"`` (latent actions on a
        relabeled dataset) check that field's per-step shape against their action space instead.
        """
        field = getattr(self.config, "action_field", "actions")
        checks = [("observation", self.observation_space, dataset.observation_space)]
        if field == "actions":
            checks.append(("action", self.action_space, dataset.action_space))
        for what, mine, theirs in checks:
            if not _compatible(mine, theirs):
                raise SpaceMismatchError(
                    f"the dataset's {what} space {theirs} does not match the agent's {mine}; "
                    f"build the agent from the dataset's spaces"
                )
        if field == "actions":
            return
        ep = next((e for e in dataset if len(e)), None)
        if ep is None:
            return
        values = np.asarray(ep.field(field))
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        expected = [(), (1,)] if discrete else [tuple(self.action_space.shape)]
        if values.shape[1:] not in expected:
            raise SpaceMismatchError(
                f"dataset field {field!r} has per-step shape {values.shape[1:]}, "
                f"but the agent's action space is {self.action_space}"
            )

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_sections(self) -> dict[str, Any]:
        """The JSON part of this agent's checkpoint."""
        return {
            "agent": {
                "class": type(self).__name__,
                "config": config_to_dict(self.config),
                "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space),
                "preprocessing": self._preprocessing_state(),
                "data": self.data_info,
                **({"act": config_to_dict(self.act)} if self.act is not None else {}),
            }
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Save to one file, atomically; a path without a suffix gets ``.zip`` (like SB3).

        Returns:
            The path written.
        """
        path = _with_suffix(path)
        return write_checkpoint(path, "agent", self.checkpoint_sections(), {"model": self.model.state_dict()})

    @classmethod
    def load(cls: type[A], path: str | os.PathLike, env: Any = None, device: str | torch.device = "auto") -> A:
        """Re-create an agent from a checkpoint written by :meth:`save` (or a training checkpoint).

        Args:
            path: the file (``.zip`` is tried if ``path`` has no suffix and does not exist).
            env: if given (an Env or VectorEnv), its spaces must equal the saved ones.
            device: where to put the weights; ``"auto"`` picks CUDA when present.

        Raises:
            CheckpointError: unreadable, corrupted or incompatible file, missing or extra weights,
                or a checkpoint of an agent class that is not ``cls``.
            SpaceMismatchError: ``env`` has other spaces than the agent.
        """
        path = Path(path)
        if not path.exists() and not path.suffix:
            path = path.with_suffix(".zip")
        ckpt = read_checkpoint(path)
        return cls._from_checkpoint(ckpt.manifest, ckpt.tensors, path, env, device)

    @classmethod
    def _from_checkpoint(
        cls: type[A],
        manifest: dict[str, Any],
        tensors: dict[str, dict[str, torch.Tensor]],
        path: Path,
        env: Any = None,
        device: str | torch.device = "auto",
    ) -> A:
        info = manifest.get("agent")
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: the checkpoint holds no agent")
        name = info.get("class")
        try:
            agent_cls = agent_class(name)  # type: ignore[arg-type]
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None
        if cls is not Agent and not issubclass(agent_cls, cls):
            raise CheckpointError(f"{path}: holds a {name}, not a {cls.__name__}; use tt_agents.load_agent")
        try:
            info = agent_cls._upgrade_agent_section(dict(info))
            config = config_from_dict(agent_cls.config_class, info["config"], "config")
            act = None
            if agent_cls.act_class is not None and "act" in info:
                act = config_from_dict(agent_cls.act_class, info["act"], "act")
            obs_space = space_from_json(info["observation_space"])
            act_space = space_from_json(info["action_space"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: malformed agent section: {e}") from e
        if env is not None:
            for what, saved, theirs in (
                ("observation", obs_space, _single_space(env, "observation")),
                ("action", act_space, _single_space(env, "action")),
            ):
                if not spaces_equal(saved, theirs):
                    raise SpaceMismatchError(
                        f"{path}: the env's {what} space {theirs} differs from the agent's {saved}"
                    )
        weights = tensors.get("model")
        if weights is None:
            raise CheckpointError(f"{path}: no model weights in the checkpoint")
        # build the network without memory first: a config that does not fit the weights (a crafted
        # file asking for a huge network, say) is refused before anything is allocated
        try:
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in agent_cls(obs_space, act_space, config, device="meta", act=act)
                          .model.state_dict().items()}
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: the agent's config or spaces are invalid: {e}") from e
        _check_shapes(shapes, weights, path)
        agent = agent_cls(obs_space, act_space, config, device=device, act=act)
        agent._restore_training_state(manifest, tensors, path)
        agent.data_info = dict(info.get("data") or {})
        return agent  # type: ignore[return-value]

    @classmethod
    def _upgrade_agent_section(cls, info: dict[str, Any]) -> dict[str, Any]:
        """Bring the agent section of a checkpoint written by an older version to today's layout."""
        return info

    def _restore_training_state(
        self, manifest: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], path: Path | str
    ) -> None:
        """Load a checkpoint's preprocessing and weights into this agent (the trainer's resume, and ``load``)."""
        info = manifest.get("agent")
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: the checkpoint holds no agent")
        if info.get("class") != type(self).__name__:
            raise CheckpointError(f"{path}: was written by a {info.get('class')}, cannot load it into a {type(self).__name__}")
        info = self._upgrade_agent_section(dict(info))
        try:
            self._load_preprocessing_state(info.get("preprocessing") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed preprocessing state: {type(e).__name__}: {e}") from e
        weights = tensors.get("model")
        if weights is None:
            raise CheckpointError(f"{path}: no model weights in the checkpoint")
        load_weights(self.model, weights, path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(observation_space={self.observation_space}, "
            f"action_space={self.action_space}, config={self.config})"
        )


def _check_shapes(own: Mapping[str, tuple[int, ...]], weights: Mapping[str, torch.Tensor], path: Path | str) -> None:
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing}, unexpected {extra}")
    for k, v in weights.items():
        if tuple(own[k]) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: weight {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k])}"
            )


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path | str) -> None:
    """Load ``weights`` into ``model``, refusing missing, extra or mis-shaped tensors."""
    _check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, weights, path)
    model.load_state_dict(weights, strict=True)


def _check_finite(observation: np.ndarray, reward: np.ndarray | None) -> None:
    if (observation.dtype.kind != "f" or np.isfinite(observation).all()) and (
        reward is None or np.isfinite(reward).all()
    ):
        return  # the common case, in one pass: rows are named only when something is wrong
    bad: dict[str, np.ndarray] = {}
    if np.issubdtype(observation.dtype, np.floating):
        finite = np.isfinite(observation.reshape(len(observation), -1)).all(axis=1)
        if not finite.all():
            bad["observations"] = np.flatnonzero(~finite)
    if reward is not None and not np.isfinite(reward).all():
        bad["previous rewards"] = np.flatnonzero(~np.isfinite(reward))
    if bad:
        where = "; ".join(f"{what} of env rows {rows.tolist()}" for what, rows in bad.items())
        raise NonFiniteInputError(
            f"predict got NaN or Inf in the {where}; nothing was added to the agent's context. Reset or repair "
            "those envs (or pass check_finite=False to skip this check)"
        )


def _single_space(env: Any, what: str) -> gym.Space:
    single = getattr(env, f"single_{what}_space", None)
    space = single if single is not None else getattr(env, f"{what}_space")
    if what == "observation" and isinstance(space, gym.spaces.Dict) and set(space.spaces) == REWARD_KEYS:
        space = space["observation"]  # an AddPreviousReward-wrapped env
    return space


def _compatible(mine: gym.Space, theirs: gym.Space) -> bool:
    if type(mine) is not type(theirs):
        return False
    if isinstance(mine, gym.spaces.Box):
        return mine.shape == theirs.shape
    return mine == theirs


def _with_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix else path.with_suffix(".zip")


def load_agent(path: str | os.PathLike, env: Any = None, device: str | torch.device = "auto") -> Agent:
    """Load any tt-agents checkpoint; the agent class is read from the file (see :mod:`tt_agents.registry`).

    Example:
        >>> import tempfile, gymnasium as gym
        >>> from tt_agents import BCPolicy
        >>> env = gym.make("CartPole-v1")
        >>> agent = BCPolicy(env.observation_space, env.action_space, device="cpu")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     type(load_agent(agent.save(f"{d}/bc"), device="cpu")).__name__
        'BCPolicy'
    """
    return Agent.load(path, env=env, device=device)
