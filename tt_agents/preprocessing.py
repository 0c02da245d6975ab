"""Preprocessing shared by the agents, fitted on training data and saved as JSON with the weights.

- :class:`ObservationNormalizer`: standardise vector observations with the data's mean and std.
- :class:`ActionScaler`: map a bounded Box action space to [-1, 1] and back.
- :func:`policy_preprocessing`: both, as a policy over vector or image observations and Box or
  Discrete actions sets them up.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

__all__ = ["ObservationNormalizer", "ActionScaler", "Preprocessing", "policy_preprocessing"]


class ObservationNormalizer:
    """``(obs - mean) / std`` per dimension, with statistics from the training data.

    Disabled normalizers (images, or ``enabled=False``) only convert to float.

    Example:
        >>> norm = ObservationNormalizer((2,))
        >>> norm.mean, norm.std = np.array([1.0, 2.0], np.float32), np.array([2.0, 4.0], np.float32)
        >>> norm(torch.tensor([[3.0, 6.0]])).tolist()
        [[1.0, 1.0]]
    """

    def __init__(self, shape: tuple[int, ...], enabled: bool = True) -> None:
        self.shape = tuple(shape)
        self.enabled = enabled
        self.mean = np.zeros(self.shape, np.float32)
        self.std = np.ones(self.shape, np.float32)
        self._cache: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def fit(self, dataset: Any) -> None:
        """Statistics over every observation that starts a transition."""
        if not self.enabled:
            return
        obs = np.concatenate([np.asarray(ep.observations[:-1], np.float64) for ep in dataset if len(ep)])
        self.mean = obs.mean(0).astype(np.float32)
        self.std = (obs.std(0) + 1e-6).astype(np.float32)
        self._cache = None

    def state(self) -> dict[str, Any]:
        return {"obs_mean": self.mean.ravel().tolist(), "obs_std": self.std.ravel().tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean = np.asarray(state["obs_mean"], np.float32).reshape(self.shape)
        self.std = np.asarray(state["obs_std"], np.float32).reshape(self.shape)
        self._cache = None

    def numpy(self, obs: np.ndarray) -> np.ndarray:
        """:meth:`__call__` on an array, in NumPy (the same float32 operations: bit for bit the same values; a
        CPU agent's per-step path, where torch's per-op cost is larger than the work)."""
        x = np.asarray(obs, np.float32)
        return (x - self.mean) / self.std if self.enabled else x

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        if not self.enabled:
            return x
        if self._cache is None or self._cache[0] != x.device:
            self._cache = (x.device, torch.as_tensor(self.mean, device=x.device), torch.as_tensor(self.std, device=x.device))
        _, mean, std = self._cache
        return (x - mean) / std


class ActionScaler:
    """Affine map between a bounded Box action space and [-1, 1] (for tanh heads).

    Example:
        >>> s = ActionScaler(gym.spaces.Box(0.0, 4.0, (1,)))
        >>> s.scale(torch.tensor([[3.0]])).tolist(), s.unscale(np.array([[0.5]])).tolist()
        ([[0.5]], [[3.0]])
    """

    def __init__(self, space: gym.spaces.Box) -> None:
        self.low = np.asarray(space.low, np.float32).reshape(-1)
        self.high = np.asarray(space.high, np.float32).reshape(-1)
        self.shape = space.shape
        self._half_span = 0.5 * (self.high - self.low)  # exact (a power of two): unscale's values are unchanged

    def scale(self, a: torch.Tensor) -> torch.Tensor:
        """Actions ``(..., A)`` to [-1, 1], clamped."""
        low = torch.as_tensor(self.low, device=a.device)
        high = torch.as_tensor(self.high, device=a.device)
        return (2.0 * (a.float() - low) / (high - low) - 1.0).clamp(-1, 1)

    def unscale(self, a: np.ndarray) -> np.ndarray:
        """Network outputs in [-1, 1], ``(..., A)``, back to the action space."""
        return self.low + (np.asarray(a, np.float32) + 1.0) * self._half_span


class Preprocessing(NamedTuple):
    image: bool
    """Image observations (uint8 ``(H, W, C)``): not normalized, a CNN reads them."""
    discrete: bool
    """Discrete actions: no scaler."""
    normalizer: ObservationNormalizer
    scaler: ActionScaler | None


def policy_preprocessing(observation_space: gym.Space, action_space: gym.Space, normalize: bool) -> Preprocessing:
    """The normalizer (enabled for vector observations when ``normalize``) and the scaler (Box actions) of a policy.

    Example:
        >>> p = policy_preprocessing(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), normalize=True)
        >>> p.image, p.discrete, p.normalizer.enabled, p.scaler
        (False, True, True, None)
    """
    from tt_agents.spaces import is_image_space

    image = is_image_space(observation_space)
    discrete = isinstance(action_space, gym.spaces.Discrete)
    normalizer = ObservationNormalizer(observation_space.shape, enabled=normalize and not image)
    return Preprocessing(image, discrete, normalizer, None if discrete else ActionScaler(action_space))
