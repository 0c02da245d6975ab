"""Agents that learn to act from observation-only data: ``LatentActionPolicy`` (LAPO) and the ``VPTPolicy`` baseline.

:class:`LatentActionPolicy` trains four stages in one checkpoint (LAPO's stage 1 and 2):

1. ``lam``: the latent action model (IDM + quantizer + FDM) on observations only; the dataset's
   actions are never read.
2. ``relabel``: every transition gets its latent action (the IDM's unquantized latent) and code
   indices, in memory, batched with a progress bar; its loss is the FDM's prediction error over the
   whole dataset, and it reports the codebook perplexity. (:func:`tt_agents.latent.relabel` writes
   the same labels into a new Minari dataset.)
3. ``latent_bc``: the latent policy regresses o_t -> latent action (MSE).
4. ``decoder``: latent action (optionally with o_t's features) -> env action, on the first
   ``labels`` transitions of the dataset (the only stage that reads actions); label smoothing for
   discrete actions, MSE on [-1, 1]-scaled continuous actions.

``predict`` runs the latent policy, then the decoder. :class:`VPTPolicy` (Baker et al., 2022)
trains an IDM on the ``labels`` labelled transitions to predict actions, relabels every transition
with it, and behaviour-clones the relabeled data (stages ``idm``, ``relabel``, ``bc``).

Example:
    >>> import gymnasium as gym
    >>> from tt_agents.latent import LatentActionPolicy
    >>> agent = LatentActionPolicy.from_preset("tiny", gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3),
    ...                                        device="cpu", seed=0)
    >>> agent.stage_names, agent.latent_space.shape
    (('lam', 'relabel', 'latent_bc', 'decoder'), (8,))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from tt_agents.agent import Agent, Preset
from tt_agents.latent.models import (
    InverseDynamics,
    LAMConfig,
    LatentActionNet,
    LatentPolicy,
    codebook_perplexity,
)
from tt_agents.latent.transitions import Transitions, TransitionSampler
from tt_agents.preprocessing import policy_preprocessing
from tt_agents.registry import register_agent
from tt_agents.spaces import SpaceMismatchError, is_image_space
from tt_agents.stages import GradientStage, SearchStage
from tt_agents.trainer import TrainConfig

__all__ = ["LatentConfig", "LatentActionPolicy", "VPTConfig", "VPTPolicy", "labelled_actions"]


@dataclass
class LatentConfig:
    """Settings of :class:`LatentActionPolicy` (training-loop ones are per stage, in ``TrainConfig``)."""

    lam: LAMConfig = field(default_factory=LAMConfig)
    """The latent action model, the latent policy's encoder and the quantizer."""
    normalize_observations: bool = True
    """Standardise vector observations with the training data's statistics (images are only scaled)."""
    normalize_fdm_target: bool = False
    """Weight the FDM's error per channel (images) or dimension (vectors) by one over the standard deviation
    of the change o_{t+1} - o_t in the data (floored at a tenth of the largest), so that rarely changing
    parts count as much as busy ones (the prompt-DT work's ``normalize_obs_pred``)."""
    labels: int = 128
    """Labelled transitions the decoder learns from: the first ``labels`` of the dataset (LAPO: 16 to 8k)."""
    decoder_hidden: tuple[int, ...] = (256,)
    """Hidden widths of the action decoder."""
    decoder_uses_obs: bool = False
    """Give the decoder o_t's features (the latent policy's encoder) besides the latent action."""
    label_smoothing: float = 0.05
    """Label smoothing of the decoder's cross-entropy (discrete actions): a few labels overfit without it."""
    relabel_batch_size: int = 256
    """Transitions per batch when relabeling (memory, not results)."""
    joint_decoder: bool = False
    """Train the decoder together with the LAM in the ``lam`` stage (the prompt-DT work's joint order): each
    step adds the decoder's loss on a batch of the labelled transitions, with gradients into the IDM, so the
    labels shape the latent. The ``lam`` stage then reads the labelled transitions' actions (and only
    those); the ``decoder`` stage afterwards fine-tunes the decoder on the final latents."""
    joint_weight: float = 1.0
    """Weight of the decoder's loss in the joint ``lam`` stage."""


class _JointLAM(nn.Module):
    """The ``lam`` stage's module when the decoder trains with it: the LAM and the decoder (no weights of its own)."""

    def __init__(self, lam: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.lam, self.decoder = lam, decoder


class _JointSampler:
    """A batch of all transitions (``frames``) and one of the labelled ones (``label_*``), both pure in the step."""

    def __init__(self, unlabelled: TransitionSampler, labelled: TransitionSampler) -> None:
        self.unlabelled, self.labelled = unlabelled, labelled

    def sample(self, step: int) -> dict[str, np.ndarray]:
        return {**self.unlabelled.sample(step), **{f"label_{k}": v for k, v in self.labelled.sample(step).items()}}


def _check_common(agent: Agent, name: str) -> None:
    obs, act = agent.observation_space, agent.action_space
    if not isinstance(obs, gym.spaces.Box) or not (is_image_space(obs) or len(obs.shape) == 1):
        raise SpaceMismatchError(
            f"{name} needs uint8 (H, W, C) image or flat Box observations, got {obs}; flatten them first "
            "(gymnasium.wrappers.FlattenObservation)"
        )
    if not isinstance(act, (gym.spaces.Box, gym.spaces.Discrete)):
        raise SpaceMismatchError(f"{name} needs a Box or Discrete action space, got {act}")
    if isinstance(act, gym.spaces.Box) and not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
        raise SpaceMismatchError(
            f"{name} needs a bounded Box action space (its decoder is tanh-squashed), got {act}; rescale the "
            "actions (gymnasium.wrappers.RescaleAction) first"
        )


def labelled_actions(dataset: Any, n: int) -> np.ndarray:
    """The actions of the first ``n`` transitions of ``dataset``, in order (the labelled split)."""
    out, have = [], 0
    for ep in dataset:
        if have >= n:
            break
        if len(ep) == 0:
            continue
        a = np.asarray(ep.actions)[: n - have]
        out.append(a)
        have += len(a)
    if not out:
        raise ValueError("the dataset has no labelled transitions")
    return np.concatenate(out)


class _LatentBase(Agent):
    """What both agents share: spaces, preprocessing of windows and observations, the action head's loss."""

    def _setup_preprocessing(self) -> None:
        self.image, self.discrete, self.normalizer, self.scaler = policy_preprocessing(
            self.observation_space, self.action_space, self.config.normalize_observations
        )
        self._cache: tuple[Any, Transitions, dict[str, np.ndarray]] | None = None

    @property
    def n_action_outputs(self) -> int:
        return int(self.action_space.n) if self.discrete else int(np.prod(self.action_space.shape))

    def _frames(self, frames: Any) -> torch.Tensor:
        """A window batch ``(B, W, *obs)`` as the networks take it (images stay uint8)."""
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames, device=self.device)
        return x if self.image else self.normalizer(x)

    def _obs(self, obs: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs, device=self.device)
        return x if self.image else self.normalizer(x)

    def _action_loss(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return F.cross_entropy(out.float(), actions.long().reshape(-1), label_smoothing=self.config.label_smoothing)
        return F.mse_loss(out.float(), self.scaler.scale(actions.reshape(out.shape[0], -1)))

    def _to_actions(self, out: torch.Tensor, deterministic: bool) -> np.ndarray:
        if self.discrete:
            if deterministic:
                return out.argmax(-1).cpu().numpy()
            return torch.distributions.Categorical(logits=out.float()).sample().cpu().numpy()
        return self.scaler.unscale(out.float().cpu().numpy()).reshape((-1, *self.action_space.shape))

    def _fit_normalizer(self, dataset: Any) -> None:
        self.normalizer.fit(dataset)  # reads observations only

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.normalizer.state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state(state)

    def _transitions(self, dataset: Any) -> Transitions:
        if self._cache is not None and self._cache[0] is dataset:
            return self._cache[1]
        return Transitions(dataset, self._history)

    @property
    def _history(self) -> int:
        raise NotImplementedError

    def _relabeled(self, dataset: Any, progress: bool = False) -> tuple[Transitions, dict[str, np.ndarray]]:
        """Every transition's labels (computed once per dataset, then kept in memory)."""
        if self._cache is None or self._cache[0] is not dataset:
            tr = self._transitions(dataset)
            self._cache = (dataset, tr, self._label_all(dataset, tr, progress))
        return self._cache[1], self._cache[2]

    def _label_all(self, dataset: Any, tr: Transitions, progress: bool) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _RelabelSearch:
    """The ``relabel`` stage as a one-pass "search": step 0 labels every transition, later steps repeat its metrics."""

    def __init__(self, agent: _LatentBase, dataset: Any, progress: bool) -> None:
        self.agent, self.dataset, self.progress = agent, dataset, progress
        self.metrics: dict[str, float] | None = None

    def step(self, step: int) -> dict[str, float]:
        if self.metrics is None:
            t0 = time.perf_counter()
            self.agent._cache = None  # the model may have changed since a cache was made
            _, labels = self.agent._relabeled(self.dataset, self.progress)
            self.metrics = {k[7:]: float(v) for k, v in labels.items() if k.startswith("metric_")}
            self.metrics["seconds"] = time.perf_counter() - t0
        return dict(self.metrics)

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}  # the labels are a pure function of the trained model: recomputed on resume

    def load_state_dict(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pass


# ----------------------------------------------------------------------------- LatentActionPolicy
_TINY_LAM = LAMConfig(n_latents=1, code_dim=8, codebook_size=16, cnn_channels=(8, 16), cnn_features=32,
                      unet_channels=(8, 16), mlp_hidden=(64, 64), vq_decay=0.95)


@register_agent
class LatentActionPolicy(_LatentBase):
    """Learning to act without actions (LAPO): a latent action model, latent BC and a few-label decoder.

    See the module docstring for the stages; ``infer_latents`` and ``decode`` expose the LAM's IDM and
    the decoder to :func:`~tt_agents.latent.relabel` and the wrappers.
    """

    config_class = LatentConfig
    config: LatentConfig
    cli_name = "latent"
    stage_names = ("lam", "relabel", "latent_bc", "decoder")
    presets = {
        "default": Preset(
            LatentConfig(),
            {
                "lam": TrainConfig(steps=50_000, batch_size=128, lr=3e-4, grad_clip=2.0),
                "relabel": TrainConfig(steps=1),
                "latent_bc": TrainConfig(steps=20_000, batch_size=128, lr=3e-4, grad_clip=2.0),
                "decoder": TrainConfig(steps=2_000, batch_size=64, lr=1e-3, warmup_steps=20),
            },
            "LAPO's Procgen settings: IMPALA CNN 64/128/128, 8 tokens x 16 dims, 64 codes, EMA decay 0.999",
        ),
        "mujoco": Preset(
            LatentConfig(lam=LAMConfig(n_latents=2, code_dim=4, codebook_size=64, mlp_hidden=(256, 256)),
                         decoder_uses_obs=True),
            {
                "lam": TrainConfig(steps=20_000, batch_size=256, lr=3e-4, grad_clip=2.0),
                "relabel": TrainConfig(steps=1),
                "latent_bc": TrainConfig(steps=10_000, batch_size=256, lr=3e-4),
                "decoder": TrainConfig(steps=2_000, batch_size=64, lr=1e-3, warmup_steps=20),
            },
            "MLP LAM for MuJoCo states: 2 tokens x 4 dims, 64 codes; the decoder also sees o_t",
        ),
        "tiny": Preset(
            LatentConfig(lam=_TINY_LAM, decoder_hidden=(64,), relabel_batch_size=512),
            {
                "lam": TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10),
                "relabel": TrainConfig(steps=1),
                "latent_bc": TrainConfig(steps=200, batch_size=64, lr=3e-3, warmup_steps=10),
                "decoder": TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10),
            },
            "seconds on a CPU: 1 token x 8 dims, 16 codes (tests)",
        ),
    }

    def _check_spaces(self) -> None:
        _check_common(self, "LatentActionPolicy")
        self.config.lam.check()
        if self.config.labels < 1:
            raise ValueError(f"LatentConfig.labels must be >= 1, got {self.config.labels}")
        if not 0.0 <= self.config.label_smoothing < 1.0:
            raise ValueError(f"LatentConfig.label_smoothing must be in [0, 1), got {self.config.label_smoothing}")

    def _setup_preprocessing(self) -> None:
        super()._setup_preprocessing()
        c = 3 if self.image else int(np.prod(self.observation_space.shape))
        self.target_std = np.ones(self.observation_space.shape[-1] if self.image else c, np.float32)
        d = self.config.lam.latent_dim
        self.latent_low, self.latent_high = -np.ones(d, np.float32), np.ones(d, np.float32)

    def _build_model(self) -> nn.Module:
        cfg = self.config
        return LatentActionNet(tuple(self.observation_space.shape), self.image, cfg.lam, tuple(cfg.decoder_hidden),
                               self.n_action_outputs, self.discrete, cfg.decoder_uses_obs)

    @property
    def _history(self) -> int:
        return self.config.lam.history

    @property
    def latent_space(self) -> gym.spaces.Box:
        """The space of the latent actions (the IDM's unquantized output): bounded by the smallest and largest
        latents of the data the ``relabel`` stage labelled ([-1, 1] before), so that SB3's algorithms take it."""
        return gym.spaces.Box(self.latent_low, self.latent_high, dtype=np.float32)

    @property
    def n_codes(self) -> int:
        """Code indices per latent action (0 without a quantizer)."""
        cfg = self.config.lam
        if cfg.quantizer == "none":
            return 0
        return cfg.n_latents * (cfg.rvq_quantizers if cfg.quantizer == "rvq" else 1)

    # ---- preprocessing
    def _preprocessing_state(self) -> dict[str, Any]:
        return {**self.normalizer.state(), "target_std": self.target_std.tolist(),
                "latent_low": self.latent_low.tolist(), "latent_high": self.latent_high.tolist()}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.target_std = np.asarray(state.pop("target_std"), np.float32).reshape(self.target_std.shape)
        self.latent_low = np.asarray(state.pop("latent_low"), np.float32).reshape(self.latent_low.shape)
        self.latent_high = np.asarray(state.pop("latent_high"), np.float32).reshape(self.latent_high.shape)
        self.normalizer.load_state(state)

    def _setup_lam(self, dataset: Any) -> None:
        self._fit_normalizer(dataset)
        self._cache = None
        if not self.config.normalize_fdm_target:
            return
        tr = Transitions(dataset, self._history)
        idx = np.arange(len(tr))[:: max(1, len(tr) // 4096)]  # a sample is enough for a scale
        frames = self._frames(tr.frames(idx))
        change = self._target(frames) - self._target(frames[:, :-1])  # o_{t+1} - o_t
        dims = (0, 2, 3) if self.image else (0,)
        std = change.std(dim=dims)
        # parts that (almost) never change would get an enormous weight: floor them at a tenth of the busiest
        self.target_std = std.clamp(min=max(0.1 * float(std.max()), 1e-6)).cpu().numpy().astype(np.float32)

    def _target(self, frames: torch.Tensor) -> torch.Tensor:
        """The FDM's target, the window's last frame: images ``(B, C, H, W)`` in [-0.5, 0.5], vectors ``(B, D)``."""
        last = frames[:, -1]
        if self.image:
            return last.float().permute(0, 3, 1, 2) / 255.0 - 0.5  # (B, C, H, W)
        return last.float()

    # ---- the stages
    def _lam_loss(self, lam: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self._frames(batch["frames"])
        k = self.config.lam.k_step
        if k == 1:
            out = lam(frames)
            fdm = self._fdm_error(out["prediction"], frames)
            vq = out["vq_loss"]
        else:  # k-step: each step's error against its real frame, steps past an episode's end left out
            out = lam.rollout(frames, k)
            h = self._history + 1
            errs = torch.stack([self._fdm_error(out["predictions"][:, j], frames[:, : h + j + 1], reduce=False)
                                for j in range(k)], 1)  # (B, k)
            valid = torch.as_tensor(batch["future_valid"], device=errs.device, dtype=errs.dtype)
            fdm = (errs * valid).sum() / valid.sum().clamp(min=1.0)
            vq = out["vq_losses"].mean()
        metrics = {"fdm_mse": float(fdm.detach()), "vq_loss": float(vq.detach())}
        if "codes" in out:
            metrics["perplexity"] = float(codebook_perplexity(out["codes"], self.model.lam.quantizer.codebook_size))
        return fdm + vq, metrics

    def _fdm_error(self, prediction: torch.Tensor, frames: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        err = (prediction.float() - self._target(frames)) ** 2
        if self.config.normalize_fdm_target:
            std = torch.as_tensor(self.target_std, device=err.device)
            err = err / (std[None, :, None, None] if self.image else std) ** 2
        return err.mean() if reduce else err.flatten(1).mean(1)

    def _label_all(self, dataset: Any, tr: Transitions, progress: bool) -> dict[str, np.ndarray]:
        n, bs = len(tr), self.config.relabel_batch_size
        latents = np.zeros((n, self.config.lam.latent_dim), np.float32)
        codes = np.zeros((n, self.n_codes), np.int64)
        fdm = 0.0
        lam = self.model.lam
        was = lam.training
        lam.eval()
        try:
            with torch.inference_mode():
                for s in tqdm(range(0, n, bs), desc="relabel", disable=None if progress else True, dynamic_ncols=True):
                    idx = np.arange(s, min(n, s + bs))
                    frames = self._frames(tr.frames(idx))
                    out = lam(frames)
                    latents[idx] = out["latent"].float().cpu().numpy()
                    if "codes" in out:
                        codes[idx] = out["codes"].cpu().numpy()
                    fdm += float(self._fdm_error(out["prediction"], frames, reduce=False).sum())
        finally:
            lam.train(was)
        self.latent_low, self.latent_high = latents.min(0), np.maximum(latents.max(0), latents.min(0) + 1e-6)
        labels = {"latent_actions": latents, "latent_codes": codes, "metric_loss": np.float64(fdm / n)}
        if self.n_codes:
            cb = lam.quantizer.codebook_size
            labels["metric_perplexity"] = np.float64(codebook_perplexity(torch.as_tensor(codes), cb))
            labels["metric_codes_used"] = np.float64(len(np.unique(codes)))
        return labels

    def _latent_bc_sampler(self, dataset, batch_size, seed, rank, world_size) -> TransitionSampler:
        tr, labels = self._relabeled(dataset)
        return TransitionSampler(tr, batch_size, seed, rank, world_size, fields={"latents": labels["latent_actions"]},
                                 frames=False, observations=True)

    def _latent_bc_loss(self, policy: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return F.mse_loss(policy(self._obs(batch["observations"])).float(), batch["latents"].float()), {}

    def _decoder_sampler(self, dataset, batch_size, seed, rank, world_size) -> TransitionSampler:
        tr = self._transitions(dataset)
        n = min(self.config.labels, len(tr))
        actions = labelled_actions(dataset, n)  # the one place actions are read
        return TransitionSampler(tr, batch_size, seed, rank, world_size, subset=n, frames=False,
                                 observations=self.config.decoder_uses_obs,
                                 fields={"latents": self._labelled_latents(dataset, tr, n), "actions": actions})

    def _labelled_latents(self, dataset: Any, tr: Transitions, n: int) -> np.ndarray:
        """The latents of the first ``n`` transitions: the relabel stage's where this dataset's are in memory, else
        the IDM on those ``n`` alone (a decoder fitted after a reload would otherwise pass the whole dataset
        through the LAM again: minutes for 40k Procgen frames on a CPU, for 16 labels)."""
        if self._cache is not None and self._cache[0] is dataset:
            return self._cache[2]["latent_actions"][:n]
        bs = self.config.relabel_batch_size
        return np.concatenate([self.infer_latents(tr.frames(np.arange(s, min(n, s + bs))))[0] for s in range(0, n, bs)])

    def _decoder_loss(self, decoder: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = decoder(batch["latents"].float(), self._features(batch.get("observations")))
        return self._action_loss(out, batch["actions"]), {}

    def _features(self, obs: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.decoder_uses_obs or obs is None:
            return None
        with torch.no_grad():
            return self.model.policy.features(self._obs(obs)).float()

    def _lam_sampler(self, dataset, batch_size, seed, rank, world_size):
        k = self.config.lam.k_step
        sampler = TransitionSampler(Transitions(dataset, self._history, future=k), batch_size, seed, rank, world_size)
        if not self.config.joint_decoder:
            return sampler
        tr = Transitions(dataset, self._history) if k > 1 else sampler.transitions  # the same transitions, 1 step
        n = min(self.config.labels, len(tr))
        labelled = TransitionSampler(tr, min(batch_size, n), seed + 1, rank, world_size, subset=n,
                                     observations=self.config.decoder_uses_obs,
                                     fields={"actions": labelled_actions(dataset, n)})
        return _JointSampler(sampler, labelled)

    def _joint_loss(self, joint: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = self._lam_loss(joint.lam, batch)
        z = joint.lam.idm(self._frames(batch["label_frames"]))  # gradients reach the IDM
        out = joint.decoder(z.float(), self._features(batch.get("label_observations")))
        action_loss = self._action_loss(out, batch["label_actions"])
        metrics["decoder_loss"] = float(action_loss.detach())
        return loss + self.config.joint_weight * action_loss, metrics

    def stages(self):
        m = self.model
        joint = self.config.joint_decoder
        return [
            GradientStage("lam", module=_JointLAM(m.lam, m.decoder) if joint else m.lam,
                          loss=self._joint_loss if joint else self._lam_loss, setup=self._setup_lam,
                          make_sampler=self._lam_sampler),
            SearchStage("relabel", start=lambda ds, seed, rank, ws: _RelabelSearch(self, ds, progress=True)),
            GradientStage("latent_bc", module=m.policy, loss=self._latent_bc_loss, make_sampler=self._latent_bc_sampler),
            GradientStage("decoder", module=m.decoder, loss=self._decoder_loss, make_sampler=self._decoder_sampler),
        ]

    # ---- latents in, actions out (relabel, the wrappers)
    def infer_latents(self, frames: Any) -> tuple[np.ndarray, np.ndarray]:
        """The IDM's latent actions ``(B, latent_dim)`` and code indices ``(B, n_codes)`` of windows
        ``(B, history + 2, *obs)``."""
        lam = self.model.lam
        was = lam.training
        lam.eval()
        try:
            with torch.inference_mode():
                z, _, codes, _ = lam.encode(self._frames(frames))
        finally:
            lam.train(was)
        c = codes.cpu().numpy() if codes is not None else np.zeros((len(z), 0), np.int64)
        return z.float().cpu().numpy(), c

    def decode(self, latents: Any, observations: Any = None, deterministic: bool = True) -> np.ndarray:
        """Env actions for latent actions ``(B, latent_dim)`` (and o_t ``(B, *obs)`` if the decoder uses it)."""
        z = torch.as_tensor(np.asarray(latents, np.float32), device=self.device)
        if self.config.decoder_uses_obs and observations is None:
            raise ValueError("this agent's decoder also reads o_t (decoder_uses_obs=True): pass the observations")
        with torch.inference_mode():
            feats = self._features(observations) if observations is not None else None
            out = self.model.decoder(z, feats)
            return self._postprocess_actions(self._to_actions(out, deterministic))

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        obs = self._obs(observation)
        feats = self.model.policy.features(obs)
        z = self.model.policy.head(feats)
        out = self.model.decoder(z, feats.float() if self.config.decoder_uses_obs else None)
        return self._to_actions(out, deterministic), state


# ----------------------------------------------------------------------------- VPTPolicy
@dataclass
class VPTConfig:
    """Settings of :class:`VPTPolicy`: an IDM on the labelled transitions, then BC on everything it labels."""

    labels: int = 5000
    """Labelled transitions the IDM learns from: the first ``labels`` of the dataset (the prompt-DT work: 5000)."""
    history: int = 1
    """Past frames besides o_t the IDM sees (it always sees o_{t+1})."""
    cnn_channels: tuple[int, ...] = (64, 128, 128)
    """IMPALA CNN widths of the IDM and the policy (images)."""
    cnn_features: int = 256
    mlp_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the IDM and the policy (vectors)."""
    normalize_observations: bool = True
    label_smoothing: float = 0.05
    """Of the IDM's cross-entropy (discrete actions)."""
    relabel_batch_size: int = 256


class VPTNet(nn.Module):
    """The VPT baseline's two networks: ``idm`` (window -> action) and ``policy`` (o_t -> action)."""

    def __init__(self, obs_shape: tuple[int, ...], image: bool, cfg: VPTConfig, n_out: int, discrete: bool) -> None:
        super().__init__()
        net = LAMConfig(history=cfg.history, cnn_channels=cfg.cnn_channels, cnn_features=cfg.cnn_features,
                        mlp_hidden=cfg.mlp_hidden)
        self.idm = InverseDynamics(obs_shape, image, cfg.history + 2, net, n_out)
        self.policy = LatentPolicy(obs_shape, image, net, n_out)
        self.discrete = discrete

    def squash(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.discrete else torch.tanh(out)


@register_agent
class VPTPolicy(_LatentBase):
    """Video PreTraining's recipe (Baker et al., 2022) as a baseline: IDM on few labels -> relabel -> BC.

    Example:
        >>> import gymnasium as gym
        >>> agent = VPTPolicy.from_preset("tiny", gym.spaces.Box(-1, 1, (4,)), gym.spaces.Box(-1, 1, (2,)),
        ...                               device="cpu", seed=0)
        >>> agent.stage_names
        ('idm', 'relabel', 'bc')
    """

    config_class = VPTConfig
    config: VPTConfig
    cli_name = "vpt"
    stage_names = ("idm", "relabel", "bc")
    presets = {
        "default": Preset(
            VPTConfig(),
            {
                "idm": TrainConfig(steps=10_000, batch_size=128, lr=3e-4, grad_clip=2.0),
                "relabel": TrainConfig(steps=1),
                "bc": TrainConfig(steps=20_000, batch_size=128, lr=3e-4, grad_clip=2.0),
            },
            "IMPALA CNN 64/128/128 (images) or MLP 256x256 (vectors), 5000 labels",
        ),
        "tiny": Preset(
            VPTConfig(labels=128, cnn_channels=(8, 16), cnn_features=32, mlp_hidden=(64, 64), relabel_batch_size=512),
            {
                "idm": TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10),
                "relabel": TrainConfig(steps=1),
                "bc": TrainConfig(steps=200, batch_size=64, lr=3e-3, warmup_steps=10),
            },
            "seconds on a CPU (tests)",
        ),
    }

    def _check_spaces(self) -> None:
        _check_common(self, "VPTPolicy")
        if self.config.labels < 1:
            raise ValueError(f"VPTConfig.labels must be >= 1, got {self.config.labels}")

    def _build_model(self) -> nn.Module:
        return VPTNet(tuple(self.observation_space.shape), self.image, self.config, self.n_action_outputs,
                      self.discrete)

    @property
    def _history(self) -> int:
        return self.config.history

    def _idm_sampler(self, dataset, batch_size, seed, rank, world_size) -> TransitionSampler:
        tr = self._transitions(dataset)
        n = min(self.config.labels, len(tr))
        return TransitionSampler(tr, batch_size, seed, rank, world_size, subset=n,
                                 fields={"actions": labelled_actions(dataset, n)})

    def _idm_loss(self, idm: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._action_loss(self.model.squash(idm(self._frames(batch["frames"]))), batch["actions"]), {}

    def _label_all(self, dataset: Any, tr: Transitions, progress: bool) -> dict[str, np.ndarray]:
        n, bs = len(tr), self.config.relabel_batch_size
        idm = self.model.idm
        labels = []
        with torch.inference_mode():
            for s in tqdm(range(0, n, bs), desc="relabel", disable=None if progress else True, dynamic_ncols=True):
                out = self.model.squash(idm(self._frames(tr.frames(np.arange(s, min(n, s + bs))))))
                labels.append(out.argmax(-1).cpu().numpy() if self.discrete else out.float().cpu().numpy())
        pseudo = np.concatenate(labels)
        n = min(self.config.labels, len(tr))
        true = labelled_actions(dataset, n)
        if self.discrete:  # the loss: how often the IDM disagrees with the labels it was trained on
            loss = np.mean(pseudo[:n] != np.asarray(true).reshape(-1))
        else:
            scaled = self.scaler.scale(torch.as_tensor(np.asarray(true, np.float32).reshape(n, -1))).numpy()
            loss = np.mean((pseudo[:n].reshape(n, -1) - scaled) ** 2)
        return {"pseudo_actions": pseudo, "metric_loss": np.float64(loss)}

    def _bc_sampler(self, dataset, batch_size, seed, rank, world_size) -> TransitionSampler:
        tr, labels = self._relabeled(dataset)
        return TransitionSampler(tr, batch_size, seed, rank, world_size, fields={"pseudo": labels["pseudo_actions"]},
                                 frames=False, observations=True)

    def _bc_loss(self, policy: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model.squash(policy(self._obs(batch["observations"])))
        if self.discrete:
            return F.cross_entropy(out.float(), batch["pseudo"].long()), {}
        return F.mse_loss(out.float(), batch["pseudo"].float()), {}  # pseudo-actions are already in [-1, 1]

    def stages(self):
        m = self.model
        return [
            GradientStage("idm", module=m.idm, loss=self._idm_loss, setup=self._setup_idm, make_sampler=self._idm_sampler),
            SearchStage("relabel", start=lambda ds, seed, rank, ws: _RelabelSearch(self, ds, progress=True)),
            GradientStage("bc", module=m.policy, loss=self._bc_loss, make_sampler=self._bc_sampler),
        ]

    def _setup_idm(self, dataset: Any) -> None:
        self._fit_normalizer(dataset)
        self._cache = None

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        return self._to_actions(self.model.squash(self.model.policy(self._obs(observation))), deterministic), state
